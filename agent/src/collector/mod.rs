//! `agent collector`: the embedded default receiver of the agents' reports (DESIGN.md §5). An
//! OTLP/HTTP endpoint (`/v1/logs`, `/v1/metrics`) that stores reports in SQLite, and what the
//! cluster looks like from them: `/v1/nodes`, `/v1/findings`, `/metrics` and a cluster page.
//! Clusters that outgrow it point the agents at an OpenTelemetry Collector instead; the agent
//! does not change.

pub mod api;
pub mod auth;
pub mod ingest;
pub mod metrics;
pub mod page;
pub mod store;
#[cfg(test)]
mod testutil;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    http::StatusCode,
    routing::{get, post},
};
use tokio_util::sync::CancellationToken;

pub use auth::{Authenticator, ServiceAccount};
pub use store::Store;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:4318";
pub const DEFAULT_DB: &str = "/var/lib/calico-dataplane-agent/collector.db";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Retention runs at start and then this often.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// How reporters prove who they are.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// A shared bearer token, read from this file.
    TokenFile(PathBuf),
    /// TokenReview against the API server (in-cluster config or KUBECONFIG).
    TokenReview {
        allowed: Vec<ServiceAccount>,
        audience: Option<String>,
    },
    /// Nobody is checked.
    None,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub auth: AuthConfig,
    pub retention: Duration,
    /// A node whose latest report is older than this is stale.
    pub stale_after: Duration,
    /// Limit on the request body, compressed and decompressed.
    pub max_body_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("connecting to the Kubernetes API server for TokenReview")]
    Kube(#[source] kube::Error),
    #[error("--kube-tokenreview needs at least one --allow-service-account NAMESPACE/NAME")]
    NoServiceAccount,
    #[error("listening on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// A request refused: its status and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct App(Arc<AppInner>);

pub struct AppInner {
    pub store: Store,
    pub auth: Authenticator,
    pub metrics: metrics::CollectorMetrics,
    pub max_body_bytes: usize,
    pub stale_after: Duration,
}

impl App {
    pub fn new(
        store: Store,
        auth: Authenticator,
        max_body_bytes: usize,
        stale_after: Duration,
    ) -> Self {
        Self(Arc::new(AppInner {
            store,
            auth,
            metrics: metrics::CollectorMetrics::new(),
            max_body_bytes,
            stale_after,
        }))
    }
}

impl std::ops::Deref for App {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v1/logs", post(ingest::logs))
        .route("/v1/metrics", post(ingest::metrics))
        .route("/v1/nodes", get(api::nodes))
        .route("/v1/nodes/{node}/reports", get(api::reports))
        .route("/v1/nodes/{node}/metrics", get(api::points))
        .route("/v1/findings", get(api::findings))
        .route("/metrics", get(api::prometheus))
        .route("/healthz", get(api::healthz))
        .route("/", get(page::cluster))
        .with_state(app)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `7d`, `24h`, `90m`, `3600s` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 7d, 24h, 90m or 3600s"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use d, h, m or s)")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("{s:?} is not a positive duration")),
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => Err(format!("{s:?} is too long")),
    }
}

/// `2024-05-01T12:00:00.123Z` for milliseconds since the epoch (UTC; no leap seconds, like
/// Unix time).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Runs the collector until `shutdown`; requests in flight are finished and acknowledged
/// reports are on disk when it returns.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), CollectorError> {
    let auth = match &cfg.auth {
        AuthConfig::None => {
            tracing::warn!("--no-auth: anyone who can reach the collector can report");
            Authenticator::anyone()
        }
        AuthConfig::TokenFile(path) => Authenticator::token_file(path)?,
        AuthConfig::TokenReview { allowed, audience } => {
            if allowed.is_empty() {
                return Err(CollectorError::NoServiceAccount);
            }
            let client = kube::Client::try_default()
                .await
                .map_err(CollectorError::Kube)?;
            Authenticator::token_review(client, allowed.clone(), audience.clone())
        }
    };
    let db = cfg.db.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|_| CollectorError::Store(store::StoreError::ReaderPanicked))??;
    let app = App::new(store.clone(), auth, cfg.max_body_bytes, cfg.stale_after);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| CollectorError::Bind(cfg.listen, e))?;
    tracing::info!(listen = %cfg.listen, db = %cfg.db.display(), "collector listening");
    let retention = tokio::spawn(retain(store.clone(), cfg.retention, shutdown.clone()));
    let served = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .map_err(CollectorError::Serve);
    shutdown.cancel();
    let _ = retention.await;
    store.close().await;
    served
}

/// Retention at start and every hour.
async fn retain(store: Store, retention: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let keep = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        match store.retention(now_ms().saturating_sub(keep)).await {
            Ok(p) if p.reports + p.nodes > 0 => {
                tracing::info!(reports = p.reports, nodes = p.nodes, "retention: deleted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %crate::observed::error_chain(&e), "retention failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_days_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("3600s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        for bad in ["", "d", "7w", "0d", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
