//! The daemon's HTTP surfaces: `/metrics`, `/healthz`, `/readyz` on `--listen` for Prometheus
//! and the kubelet, and the local API on a unix socket (`GET /v1/analysis`) that `agent diag`
//! and `agent check` ask before reading the node themselves.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::metrics::Metrics;
use crate::analysis::Analysis;
use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// What the daemon publishes after every verification.
#[derive(Debug, Default)]
pub struct Published {
    /// The first verification is done.
    pub verified: bool,
    /// Why the agent is not ready yet (empty once it is).
    pub not_ready: Vec<String>,
    /// When the main loop last went round; `/healthz` fails when it stalls.
    pub heartbeat: Option<Instant>,
}

/// A request for the current analysis, answered by the daemon's loop. The operator's view
/// (routes grouped, workloads, chains) is built only when someone asks: after each event the
/// daemon only verifies.
pub type AnalysisRequest = tokio::sync::oneshot::Sender<Analysis>;

#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub published: Arc<Mutex<Published>>,
    /// The main loop wakes at least this often (the shortest poll timer).
    pub heartbeat_limit: Duration,
    requests: tokio::sync::mpsc::Sender<AnalysisRequest>,
}

impl Shared {
    /// The shared state, and the receiving end of analysis requests for the daemon's loop.
    pub fn new(
        metrics: Arc<Metrics>,
        heartbeat_limit: Duration,
    ) -> (Self, tokio::sync::mpsc::Receiver<AnalysisRequest>) {
        let (requests, rx) = tokio::sync::mpsc::channel(16);
        (
            Self {
                metrics,
                published: Arc::new(Mutex::new(Published::default())),
                heartbeat_limit,
                requests,
            },
            rx,
        )
    }

    pub fn update(&self, f: impl FnOnce(&mut Published)) {
        // A panic elsewhere while holding the lock leaves plain data behind: keep serving it.
        let mut p = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut p);
    }

    fn read<T>(&self, f: impl FnOnce(&Published) -> T) -> T {
        let p = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&p)
    }
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// The local API: `/v1/analysis` (and the same health endpoints, for `curl --unix-socket`).
pub fn local_router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/analysis", get(analysis))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics(State(s): State<Shared>) -> Response {
    if let Some(rss) = super::metrics::resident_memory_bytes() {
        s.metrics
            .resident_memory
            .set(i64::try_from(rss).unwrap_or(i64::MAX));
    }
    match s.metrics.encode() {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(s): State<Shared>) -> Response {
    let limit = s.heartbeat_limit * 3;
    match s.read(|p| p.heartbeat.map(|h| h.elapsed())) {
        Some(age) if age > limit => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the verification loop has not run for {} s", age.as_secs()),
        )
            .into_response(),
        _ => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(s): State<Shared>) -> Response {
    let not_ready = s.read(|p| {
        if !p.verified && p.not_ready.is_empty() {
            vec!["the first verification has not finished".to_string()]
        } else {
            p.not_ready.clone()
        }
    });
    if not_ready.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", not_ready.join("; ")),
        )
            .into_response()
    }
}

async fn analysis(State(s): State<Shared>) -> Response {
    if !s.read(|p| p.verified) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the first verification has not finished\n",
        )
            .into_response();
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if s.requests.send(tx).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down\n",
        )
            .into_response();
    }
    match tokio::time::timeout(TIMEOUT, rx).await {
        Ok(Ok(a)) => Json(a.judged()).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the verification loop did not answer\n",
        )
            .into_response(),
    }
}

/// Why the local API could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("no agent daemon listens on {0}")]
    NotRunning(String),
    #[error("talking to the agent daemon on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent daemon on {path} answered {status}: {body}")]
    Status {
        path: String,
        status: String,
        body: String,
    },
    #[error("the agent daemon on {path} sent an analysis this version cannot read")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent daemon on {path} did not answer within {TIMEOUT:?}")]
    Timeout { path: String },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// The running daemon's current analysis. HTTP/1.0 by hand: one request, the body to EOF.
pub async fn fetch_analysis(socket: &Path) -> Result<Analysis, LocalApiError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let path = socket.display().to_string();
    let io = |source| LocalApiError::Io {
        path: path.clone(),
        source,
    };
    let exchange = async {
        let mut s = match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(LocalApiError::NotRunning(path.clone()));
            }
            Err(e) => return Err(io(e)),
        };
        s.write_all(b"GET /v1/analysis HTTP/1.0\r\nHost: agent\r\n\r\n")
            .await
            .map_err(io)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(io)?;
        Ok(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| LocalApiError::Timeout { path: path.clone() })??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(LocalApiError::Status {
            path,
            status: status.to_string(),
            body: body.trim().chars().take(300).collect(),
        });
    }
    serde_json::from_str(body).map_err(|source| LocalApiError::Decode { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(Arc::new(Metrics::new()), Duration::from_millis(100)).0
    }

    #[tokio::test]
    async fn readyz_waits_for_the_first_verification_and_names_what_is_missing() {
        let s = shared();
        assert_eq!(
            readyz(State(s.clone())).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.update(|p| p.verified = true);
        assert_eq!(readyz(State(s.clone())).await.status(), StatusCode::OK);
        s.update(|p| p.not_ready = vec!["routes not readable: EPERM".into()]);
        let r = readyz(State(s)).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn healthz_fails_when_the_loop_stalls() {
        let s = shared();
        s.update(|p| p.heartbeat = Some(Instant::now()));
        assert_eq!(healthz(State(s.clone())).await.status(), StatusCode::OK);
        s.update(|p| p.heartbeat = Instant::now().checked_sub(Duration::from_secs(1)));
        assert_eq!(
            healthz(State(s)).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let r = metrics(State(shared())).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
    }
}
