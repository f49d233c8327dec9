//! Delivers reports to the central endpoint over OTLP/HTTP, without loss: each report is
//! spooled (fsync'd) first and removed only once acknowledged; failures back off exponentially
//! with full jitter, `Retry-After` is honoured, and reports go out in sequence order. Runs on
//! its own thread so disk and network waits never delay verification.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Request, StatusCode,
    header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER},
};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceResponse, resource::v1::Resource,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    metrics::{Metrics, PushLabels},
    otlp::{self, Report},
    spool::{Spool, SpoolError},
};

/// Where and how reports go; the `--report-*` and `--spool-*` flags of `agent run`.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Base URL: requests go to `<endpoint>/v1/logs` and `<endpoint>/v1/metrics`.
    pub endpoint: String,
    /// A report at least this often, and on every change of findings.
    pub interval: Duration,
    /// Bearer token, re-read before every request (a projected token rotates).
    pub token_file: Option<PathBuf>,
    /// Extra request headers (`--report-header NAME=VALUE`).
    pub headers: Vec<(String, String)>,
    /// PEM CA bundle for an https endpoint (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// The longest wait between attempts (the backoff's cap).
    pub retry_max: Duration,
    /// One request, connect to last byte.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("--report-endpoint {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("--report-header {0:?} is not NAME=VALUE with a valid header name and value")]
    Header(String),
    #[error("reading the CA bundle {path} (--report-ca-file)")]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the CA bundle {0} holds no certificate usable as a root")]
    NoRoots(PathBuf),
    #[error("setting up TLS")]
    Tls(#[source] rustls::Error),
    #[error("the report spool")]
    Spool(#[source] SpoolError),
    #[error("starting the report thread")]
    Thread(#[source] std::io::Error),
}

/// Where delivery stands, for `agent diag` (the daemon's local API).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PushStatus {
    pub endpoint: String,
    /// Reports waiting in the spool, and their bytes.
    pub spooled: usize,
    pub spool_bytes: u64,
    /// The last attempt: `ok` or why not (a `report_push_total` result), with the detail.
    pub last_result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    pub last_attempt_ms: u64,
    /// When a request was last acknowledged (0: never since start).
    pub last_delivered_ms: u64,
    /// Reports given up since start (spool full, refused).
    pub dropped: u64,
}

/// The running pusher: hand it reports; stopping it leaves undelivered ones in the spool.
pub struct Pusher {
    tx: mpsc::UnboundedSender<Report>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<std::sync::Mutex<PushStatus>>,
}

impl Pusher {
    /// Opens the spool and starts delivering (what an earlier run left there first).
    pub fn start(cfg: PushConfig, node: &str, metrics: Arc<Metrics>) -> Result<Self, PushError> {
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            || endpoint.parse::<hyper::Uri>().is_err()
        {
            return Err(PushError::Endpoint(cfg.endpoint));
        }
        let headers = cfg
            .headers
            .iter()
            .map(parse_header)
            .collect::<Result<Vec<_>, _>>()?;
        let tls = tls_config(cfg.ca_file.as_ref())?;
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes).map_err(PushError::Spool)?;
        metrics.spool_bytes.set(gauge(spool.bytes()));
        let status = Arc::new(std::sync::Mutex::new(PushStatus {
            endpoint: endpoint.clone(),
            spooled: spool.len(),
            spool_bytes: spool.bytes(),
            ..PushStatus::default()
        }));
        let host = crate::node::hostname();
        let sender = Sender {
            client: client(tls),
            logs_url: format!("{endpoint}/v1/logs"),
            metrics_url: format!("{endpoint}/v1/metrics"),
            headers,
            token_file: cfg.token_file.clone(),
            timeout: cfg.timeout,
            resource: otlp::resource(node, &host),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let retry_max = cfg.retry_max;
        let shared = status.clone();
        let thread = std::thread::Builder::new()
            .name("report-push".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "no runtime for the report thread: reports stay spooled");
                        return;
                    }
                };
                let mut d = Delivery {
                    spool,
                    sender,
                    metrics,
                    backoff: Backoff::new(Duration::from_millis(500), retry_max),
                    single: false,
                    latest: None,
                    status: shared,
                };
                rt.block_on(d.run(rx, token));
            })
            .map_err(PushError::Thread)?;
        Ok(Self {
            tx,
            stop,
            thread: Some(thread),
            status,
        })
    }

    pub fn status(&self) -> PushStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn send(&self, report: Report) {
        if self.tx.send(report).is_err() {
            tracing::warn!("the report thread has stopped: report not sent");
        }
    }

    /// Stops after the request in flight (at most its timeout); what is undelivered stays in
    /// the spool for the next start.
    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_header(h: &(String, String)) -> Result<(HeaderName, HeaderValue), PushError> {
    let bad = || PushError::Header(format!("{}={}", h.0, h.1));
    Ok((
        HeaderName::try_from(h.0.as_str()).map_err(|_| bad())?,
        HeaderValue::try_from(h.1.as_str()).map_err(|_| bad())?,
    ))
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, PushError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|source| PushError::Ca {
                path: path.clone(),
                source,
            })? {
                let cert = cert.map_err(|source| PushError::Ca {
                    path: path.clone(),
                    source,
                })?;
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(PushError::NoRoots(path.clone()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!(error = %e, "a system CA certificate could not be read");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    // ring is the process's one TLS provider (kube uses it too): named here, not installed
    // globally, so nothing depends on who initialised first.
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(PushError::Tls)
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client(tls: rustls::ClientConfig) -> HttpsClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    /// Acknowledged; `rejected` records the endpoint accepted but would not keep.
    Delivered { rejected: u64, message: String },
    /// Try again later (`after`: the endpoint's Retry-After).
    Retry {
        result: &'static str,
        after: Option<Duration>,
        why: String,
    },
    /// The endpoint refuses these records for good (400, 413…): resending cannot help.
    Refused { status: StatusCode, why: String },
}

struct Sender {
    client: HttpsClient,
    logs_url: String,
    metrics_url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    token_file: Option<PathBuf>,
    timeout: Duration,
    resource: Resource,
}

/// Bodies above this are gzipped (reports with many findings compress 10×).
const GZIP_ABOVE: usize = 1024;

impl Sender {
    async fn post(&self, url: &str, body: Vec<u8>) -> Outcome {
        let mut req = Request::post(url).header(CONTENT_TYPE, "application/x-protobuf");
        let body = if body.len() > GZIP_ABOVE {
            match gzip(&body) {
                Ok(z) => {
                    req = req.header(CONTENT_ENCODING, "gzip");
                    z
                }
                Err(_) => body,
            }
        } else {
            body
        };
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(path) = &self.token_file {
            match std::fs::read_to_string(path) {
                Ok(t) => match HeaderValue::try_from(format!("Bearer {}", t.trim())) {
                    Ok(v) => req = req.header(AUTHORIZATION, v),
                    Err(_) => {
                        tracing::warn!(file = %path.display(), "the token is not a valid header value; sent without it")
                    }
                },
                Err(e) => {
                    return Outcome::Retry {
                        result: "token_unreadable",
                        after: None,
                        why: format!("reading the token {}: {e}", path.display()),
                    };
                }
            }
        }
        let req = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Refused {
                    status: StatusCode::BAD_REQUEST,
                    why: format!("building the request: {e}"),
                };
            }
        };
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, retry_after, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Retry {
                result: "timeout",
                after: None,
                why: format!("no answer within {:?}", self.timeout),
            },
            Ok(Err(e)) => Outcome::Retry {
                result: "unreachable",
                after: None,
                why: crate::observed::error_chain(e.as_ref()),
            },
            Ok(Ok((status, retry_after, body))) => classify(status, retry_after, &body),
        }
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(body)?;
    z.finish()
}

/// The endpoint's answer, per OTLP/HTTP: 2xx delivered (with partial success), 429/502/503/504
/// retryable with Retry-After. Unlike the specification's default, 5xx and 401/403/408 are
/// retried too: a report is worth more than the request, a collector's 500 is usually passing,
/// and a rotated token or a fixed RBAC makes the next attempt succeed.
fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Outcome {
    let message = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let text: String = text.chars().take(300).collect();
        format!("HTTP {status}: {text}")
    };
    if status.is_success() {
        // A JSON or empty answer is fine: only a protobuf partial success carries counts.
        let partial = ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .unwrap_or_default();
        return Outcome::Delivered {
            rejected: u64::try_from(partial.rejected_log_records).unwrap_or(0),
            message: partial.error_message,
        };
    }
    match status.as_u16() {
        429 | 503 => Outcome::Retry {
            result: "throttled",
            after: retry_after,
            why: message(),
        },
        401 | 403 => Outcome::Retry {
            result: "unauthorized",
            after: retry_after,
            why: message(),
        },
        408 => Outcome::Retry {
            result: "timeout",
            after: retry_after,
            why: message(),
        },
        s if s >= 500 => Outcome::Retry {
            result: "server_error",
            after: retry_after,
            why: message(),
        },
        _ => Outcome::Refused {
            status,
            why: message(),
        },
    }
}

/// Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base·2ⁿ)],
/// so thousands of agents retrying after one collector outage spread out instead of arriving
/// together.
struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Retry-After is honoured, but never beyond an hour (a misconfigured proxy must not silence
/// the node for a day).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// One request carries at most this many reports / about this many bytes of them.
const BATCH_REPORTS: usize = 100;
const BATCH_BYTES: u64 = 1 << 20;

struct Delivery {
    spool: Spool,
    sender: Sender,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// After a refused batch: send one report at a time to find the one refused.
    single: bool,
    /// The newest report, whose counters go out as OTLP metrics once its log is delivered.
    latest: Option<Report>,
    status: Arc<std::sync::Mutex<PushStatus>>,
}

impl Delivery {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Report>, stop: CancellationToken) {
        let mut not_before = Instant::now();
        loop {
            while let Ok(r) = rx.try_recv() {
                self.spool(r);
            }
            let wait = if self.spool.is_empty() {
                None
            } else {
                Some(not_before.saturating_duration_since(Instant::now()))
            };
            if wait.is_none_or(|w| !w.is_zero()) {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = rx.recv() => match r {
                        Some(r) => self.spool(r),
                        None => break,
                    },
                    () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
                }
                continue;
            }
            // Not raced against the stop: a request the endpoint may already have taken is
            // finished (bounded by its timeout), so that the spool knows what was delivered.
            let delay = self.attempt().await;
            not_before = Instant::now() + delay;
            if stop.is_cancelled() {
                break;
            }
        }
    }

    fn spool(&mut self, report: Report) {
        match self.spool.append(report) {
            Ok((report, dropped)) => {
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        max_bytes = self.spool.max_bytes(),
                        "report spool full: oldest reports dropped"
                    );
                    self.count_dropped("spool_full", dropped);
                }
                self.latest = Some(report);
            }
            Err(e) => {
                tracing::error!(error = %crate::observed::error_chain(&e), "report not spooled: lost");
                self.count_dropped("spool_error", 1);
            }
        }
        self.metrics.spool_bytes.set(gauge(self.spool.bytes()));
        self.update(|_| {});
    }

    fn update(&self, f: impl FnOnce(&mut PushStatus)) {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.spooled = self.spool.len();
        s.spool_bytes = self.spool.bytes();
        f(&mut s);
    }

    fn count_dropped(&self, reason: &str, n: u64) {
        self.update(|s| s.dropped += n);
        self.metrics
            .report_dropped
            .get_or_create(&super::metrics::ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    fn count(&self, signal: &str, result: &str) {
        self.metrics
            .report_push
            .get_or_create(&PushLabels {
                signal: signal.into(),
                result: result.into(),
            })
            .inc();
    }

    /// One request with the oldest spooled reports; how long to wait before the next.
    async fn attempt(&mut self) -> Duration {
        let limit = if self.single { 1 } else { BATCH_REPORTS };
        let batch = match self.spool.oldest(limit, BATCH_BYTES) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %crate::observed::error_chain(&e), "reading the report spool");
                return self.backoff.next();
            }
        };
        let mut reports = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for e in &batch {
            match serde_json::from_str::<Report>(&e.json) {
                Ok(r) => reports.push((r, e.json.clone())),
                Err(err) => unreadable.push((e.sequence, err)),
            }
        }
        let Some(last) = batch.last().map(|e| e.sequence) else {
            return Duration::ZERO;
        };
        // A spooled file that no longer parses (disk corruption) can never be sent.
        for (seq, err) in &unreadable {
            tracing::error!(sequence = seq, error = %err, "spooled report unreadable: dropped");
        }
        if !unreadable.is_empty() {
            self.count_dropped("unreadable", unreadable.len() as u64);
        }
        let body = otlp::logs_request(&self.sender.resource, &reports).encode_to_vec();
        let outcome = if reports.is_empty() {
            Outcome::Delivered {
                rejected: 0,
                message: String::new(),
            }
        } else {
            self.sender.post(&self.sender.logs_url, body).await
        };
        match outcome {
            Outcome::Delivered { rejected, message } => {
                self.count("logs", "ok");
                let now = crate::pipeline::now_ms();
                self.update(|s| {
                    s.last_result = "ok".into();
                    s.last_error.clear();
                    s.last_attempt_ms = now;
                    s.last_delivered_ms = now;
                });
                if rejected > 0 {
                    tracing::warn!(
                        rejected,
                        message,
                        "the endpoint accepted the request but not every report"
                    );
                    self.count_dropped("rejected", rejected);
                }
                self.remove_through(last);
                self.backoff.reset();
                self.single = false;
                if self.spool.is_empty() {
                    self.push_metrics().await;
                }
                Duration::ZERO
            }
            Outcome::Retry { result, after, why } => {
                self.count("logs", result);
                self.update(|s| {
                    s.last_result = result.into();
                    s.last_error.clone_from(&why);
                    s.last_attempt_ms = crate::pipeline::now_ms();
                });
                let delay = match after {
                    Some(a) => a.min(RETRY_AFTER_MAX),
                    None => self.backoff.next(),
                };
                tracing::warn!(result, why, retry_in = ?delay, spooled = self.spool.len(), "report not delivered; spooled");
                delay
            }
            Outcome::Refused { status, why } => {
                self.count("logs", "rejected");
                self.update(|s| {
                    s.last_result = "rejected".into();
                    s.last_error.clone_from(&why);
                    s.last_attempt_ms = crate::pipeline::now_ms();
                });
                if batch.len() > 1 {
                    // Resend one at a time: only the report the endpoint refuses is given up.
                    self.single = true;
                    return Duration::ZERO;
                }
                tracing::error!(sequence = last, %status, why, "the endpoint refuses this report: dropped");
                self.count_dropped("rejected", 1);
                self.remove_through(last);
                Duration::ZERO
            }
        }
    }

    fn remove_through(&mut self, last: u64) {
        if let Err(e) = self.spool.remove_through(last) {
            // Delivered but still on disk: sent again later, which the collector ignores.
            tracing::warn!(error = %crate::observed::error_chain(&e), "removing delivered reports from the spool");
        }
        self.metrics.spool_bytes.set(gauge(self.spool.bytes()));
        self.update(|_| {});
    }

    /// The newest counters as OTLP metrics: cumulative, so a failed request is not retried
    /// (the next one carries the totals).
    async fn push_metrics(&mut self) {
        let Some(report) = self.latest.take() else {
            return;
        };
        let body = otlp::metrics_request(&self.sender.resource, &report).encode_to_vec();
        let result = match self.sender.post(&self.sender.metrics_url, body).await {
            Outcome::Delivered { .. } => "ok",
            Outcome::Retry { result, .. } => result,
            Outcome::Refused { .. } => "rejected",
        };
        self.count("metrics", result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let waits: Vec<Duration> = (0..40).map(|_| b.next()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
        // Jittered: not all the same once the cap is reached.
        let capped = &waits[10..];
        assert!(capped.iter().any(|w| *w != capped[0]));
        assert!(capped.iter().any(|w| *w > Duration::from_millis(500)));
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn answers_are_classified_as_otlp_http_says_and_5xx_is_retried() {
        let ra = Some(Duration::from_secs(7));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, ra, b""),
            Outcome::Retry { result: "throttled", after: Some(a), .. } if a == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, None, b"db locked"),
            Outcome::Retry { result: "server_error", why, .. } if why.contains("db locked")
        ));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, None, b""),
            Outcome::Retry {
                result: "unauthorized",
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, None, b"unknown report schema"),
            Outcome::Refused { why, .. } if why.contains("unknown report schema")
        ));
        let partial = ExportLogsServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: 2,
                    error_message: "not ours".into(),
                },
            ),
        }
        .encode_to_vec();
        assert!(matches!(
            classify(StatusCode::OK, None, &partial),
            Outcome::Delivered { rejected: 2, .. }
        ));
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(matches!(
            parse_header(&("bad name".into(), "v".into())),
            Err(PushError::Header(h)) if h == "bad name=v"
        ));
        let e = tls_config(Some(&PathBuf::from("/nonexistent/ca.pem"))).err();
        assert!(e.is_some_and(|e| e.to_string().contains("/nonexistent/ca.pem")));
    }
}
