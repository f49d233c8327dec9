//! The OTLP/HTTP receiver (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): `POST
//! /v1/logs` and `/v1/metrics`, protobuf or JSON, optionally gzip'd. Each request is stored
//! whole or not at all; a refused one gets a 4xx and a `google.rpc.Status` naming what was
//! wrong, in the request's encoding (text when that is what was wrong).
//!
//! Records that are not our reports (some other application's logs) and metric types other than
//! Sum and Gauge number points are accepted and counted in `partial_success`: a generic OTLP
//! sender is not in error for sending them.

use std::{collections::BTreeMap, io::Read as _, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
        metrics::v1::{
            ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{NumberDataPoint, metric::Data, number_data_point},
};
use prost::Message as _;

use super::{
    App, Refusal,
    auth::Identity,
    now_ms,
    store::{Batch, IncomingReport, MetricPoint, PointValue},
};
use crate::report::otlp::{self, ReportDecodeError, attr};

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";
/// Longest node name Kubernetes allows (a DNS subdomain).
const MAX_NODE_NAME: usize = 253;
const MAX_STREAM: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Logs,
    Metrics,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logs => "logs",
            Self::Metrics => "metrics",
        }
    }

    fn message_name(self) -> &'static str {
        match self {
            Self::Logs => "ExportLogsServiceRequest",
            Self::Metrics => "ExportMetricsServiceRequest",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, the body of every OTLP/HTTP error response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, message)
}

/// The request's encoding, from its Content-Type.
pub fn encoding_of(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let unsupported = |what: &str| {
        Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{what}: send {PROTOBUF} or {JSON}"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("no Content-Type"));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Encoding::Protobuf)
    } else if media.eq_ignore_ascii_case(JSON) {
        Ok(Encoding::Json)
    } else {
        Err(unsupported(&format!("Content-Type {text}")))
    }
}

/// Whether the body is gzip'd (the only Content-Encoding OTLP/HTTP defines).
fn gzipped(headers: &HeaderMap) -> Result<bool, Refusal> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    match text.trim().to_ascii_lowercase().as_str() {
        "gzip" => Ok(true),
        "identity" | "" => Ok(false),
        _ => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {text}: send gzip or no Content-Encoding"),
        )),
    }
}

fn too_large(max: usize, what: &str) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} larger than {max} bytes (the collector's --max-body-bytes)"),
    )
}

/// The body as sent, decompressed, within `max` bytes both ways (a gzip bomb stops at `max`).
pub fn decompress(body: &[u8], gzip: bool, max: usize) -> Result<Vec<u8>, Refusal> {
    if body.len() > max {
        return Err(too_large(max, "body"));
    }
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| bad_request(format!("body is not valid gzip: {e}")))?;
    if out.len() > max {
        return Err(too_large(max, "decompressed body"));
    }
    Ok(out)
}

pub enum Decoded {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// The OTLP message in `bytes`.
pub fn decode(signal: Signal, encoding: Encoding, bytes: &[u8]) -> Result<Decoded, Refusal> {
    let fail = |e: &dyn std::fmt::Display| {
        bad_request(format!(
            "body is not an OTLP {} ({}): {e}",
            signal.message_name(),
            match encoding {
                Encoding::Protobuf => "protobuf",
                Encoding::Json => "JSON",
            }
        ))
    };
    match (signal, encoding) {
        (Signal::Logs, Encoding::Protobuf) => ExportLogsServiceRequest::decode(bytes)
            .map(Decoded::Logs)
            .map_err(|e| fail(&e)),
        (Signal::Logs, Encoding::Json) => from_json(bytes).map(Decoded::Logs).map_err(|e| fail(&e)),
        (Signal::Metrics, Encoding::Protobuf) => ExportMetricsServiceRequest::decode(bytes)
            .map(Decoded::Metrics)
            .map_err(|e| fail(&e)),
        (Signal::Metrics, Encoding::Json) => {
            from_json(bytes).map(Decoded::Metrics).map_err(|e| fail(&e))
        }
    }
}

/// OTLP/JSON, also as protobuf's generic JSON mapping writes it (Python's `json_format`, Go's
/// `protojson`): that writes trace and span IDs as base64 where OTLP/JSON has hex, which
/// opentelemetry-proto refuses. Only a body that fails as it is pays for the second pass.
fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let first = match serde_json::from_slice(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Err(first);
    };
    if !base64_ids_to_hex(&mut value) {
        return Err(first);
    }
    serde_json::from_value(value).map_err(|_| first)
}

/// Rewrites `traceId`/`spanId` strings that are base64 (not hex) as hex; true if any was.
fn base64_ids_to_hex(v: &mut serde_json::Value) -> bool {
    let mut changed = false;
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if let ("traceId" | "spanId", serde_json::Value::String(s)) =
                    (key.as_str(), &*value)
                    && !(s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                    && let Some(bytes) = base64(s)
                {
                    *value = serde_json::Value::String(
                        bytes.iter().map(|b| format!("{b:02x}")).collect(),
                    );
                    changed = true;
                } else {
                    changed |= base64_ids_to_hex(value);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                changed |= base64_ids_to_hex(item);
            }
        }
        _ => {}
    }
    changed
}

/// Standard base64 with padding (what protobuf's JSON mapping writes); None if it is not.
fn base64(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        }))
    }
    let trimmed = s.trim_end_matches('=');
    if !s.len().is_multiple_of(4) || s.len() - trimmed.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// What a request stores, and what of it was not stored (counted and explained in
/// `partial_success`).
#[derive(Debug, Default)]
pub struct Accepted {
    pub batch: Batch,
    pub rejected: i64,
    pub message: String,
}

fn check_report(i: usize, r: &otlp::Report) -> Result<(), Refusal> {
    let problem = if r.node.is_empty() {
        "its node is empty".to_string()
    } else if r.node.len() > MAX_NODE_NAME {
        format!("its node name is longer than {MAX_NODE_NAME} bytes")
    } else if r.stream.len() > MAX_STREAM {
        format!("its stream is longer than {MAX_STREAM} bytes")
    } else if r.sequence == 0 || i64::try_from(r.sequence).is_err() {
        format!("its sequence {} is not in 1..2^63", r.sequence)
    } else {
        return Ok(());
    };
    Err(bad_request(format!(
        "log record {i} (node {:?}, sequence {}): {problem}",
        r.node, r.sequence
    )))
}

/// Our reports in a logs request. A record with our schema attribute that is not a valid
/// report of this schema refuses the whole request.
pub fn logs_batch(
    req: &ExportLogsServiceRequest,
    received_at_ms: u64,
) -> Result<Accepted, Refusal> {
    let mut out = Accepted {
        batch: Batch {
            received_at_ms,
            ..Batch::default()
        },
        ..Accepted::default()
    };
    let records = req
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records);
    for (i, record) in records.enumerate() {
        match otlp::report_from_record(record) {
            Ok(Some(report)) => {
                check_report(i, &report)?;
                let Some(Value::StringValue(body)) =
                    record.body.as_ref().and_then(|b| b.value.as_ref())
                else {
                    return Err(bad_request(format!("log record {i}: body is not a string")));
                };
                out.batch.reports.push(IncomingReport {
                    report,
                    body: body.clone(),
                });
            }
            Ok(None) => out.rejected += 1,
            Err(e) => {
                let detail = match &e {
                    ReportDecodeError::Json(inner) => format!("{e}: {inner}"),
                    _ => e.to_string(),
                };
                return Err(bad_request(format!("log record {i}: {detail}")));
            }
        }
    }
    if out.rejected > 0 {
        out.message = format!(
            "{} log record(s) are not {} reports (no {} attribute) and were not stored",
            out.rejected,
            otlp::SCHEMA,
            attr::SCHEMA
        );
    }
    Ok(out)
}

fn any_to_json(v: Option<&AnyValue>) -> serde_json::Value {
    use serde_json::Value as J;
    match v.and_then(|v| v.value.as_ref()) {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Some(Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| any_to_json(Some(v))).collect())
        }
        Some(Value::KvlistValue(kv)) => J::Object(attributes_json(&kv.values)),
        Some(Value::BytesValue(b)) => J::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        // An index into a profiles dictionary: meaningless outside profiles.
        Some(Value::StringValueStrindex(_)) => J::Null,
    }
}

fn attributes_json(attrs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    // Sorted keys: the same attributes in another order are the same series.
    let sorted: BTreeMap<&str, serde_json::Value> = attrs
        .iter()
        .map(|kv| (kv.key.as_str(), any_to_json(kv.value.as_ref())))
        .collect();
    sorted
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The Sum and Gauge number points of a metrics request, by node (the resource's
/// `k8s.node.name`, else `host.name`, else `unknown`).
pub fn metrics_batch(req: &ExportMetricsServiceRequest, received_at_ms: u64) -> Accepted {
    let mut out = Accepted {
        batch: Batch {
            received_at_ms,
            ..Batch::default()
        },
        ..Accepted::default()
    };
    let (mut other_types, mut invalid) = (0i64, 0i64);
    for rm in &req.resource_metrics {
        let attrs = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let node = otlp::attribute(attrs, attr::NODE)
            .or_else(|| otlp::attribute(attrs, attr::HOST))
            .unwrap_or("unknown");
        for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let points: &[NumberDataPoint] = match &metric.data {
                Some(Data::Sum(s)) => &s.data_points,
                Some(Data::Gauge(g)) => &g.data_points,
                Some(Data::Histogram(h)) => {
                    other_types += count(h.data_points.len());
                    continue;
                }
                Some(Data::ExponentialHistogram(h)) => {
                    other_types += count(h.data_points.len());
                    continue;
                }
                Some(Data::Summary(s)) => {
                    other_types += count(s.data_points.len());
                    continue;
                }
                None => continue,
            };
            for p in points {
                let value = match p.value {
                    Some(number_data_point::Value::AsInt(v)) => PointValue::Int(v),
                    Some(number_data_point::Value::AsDouble(v)) if v.is_finite() => {
                        PointValue::Double(v)
                    }
                    _ => {
                        invalid += 1;
                        continue;
                    }
                };
                out.batch.points.push(MetricPoint {
                    node: node.to_string(),
                    name: metric.name.clone(),
                    attributes: serde_json::Value::Object(attributes_json(&p.attributes))
                        .to_string(),
                    value,
                    time_unix_nano: p.time_unix_nano,
                });
            }
        }
    }
    out.rejected = other_types + invalid;
    let mut why = Vec::new();
    if other_types > 0 {
        why.push(format!(
            "{other_types} point(s) of histogram or summary metrics were not stored (this collector keeps Sum and Gauge number points)"
        ));
    }
    if invalid > 0 {
        why.push(format!(
            "{invalid} number point(s) without a finite value were not stored"
        ));
    }
    out.message = why.join("; ");
    out
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Everything between the request's bytes and a batch to store (no authentication, no
/// storage): the part that reads untrusted input, and the part the fuzz test drives.
pub fn prepare(
    signal: Signal,
    headers: &HeaderMap,
    body: &[u8],
    max: usize,
    received_at_ms: u64,
) -> Result<Accepted, Refusal> {
    let encoding = encoding_of(headers)?;
    let bytes = decompress(body, gzipped(headers)?, max)?;
    match decode(signal, encoding, &bytes)? {
        Decoded::Logs(req) => logs_batch(&req, received_at_ms),
        Decoded::Metrics(req) => Ok(metrics_batch(&req, received_at_ms)),
    }
}

/// Reports and points for another node than the token was issued on are refused.
fn check_node(identity: &Identity, accepted: &Accepted) -> Result<(), Refusal> {
    let Some(bound) = identity.node() else {
        return Ok(());
    };
    let nodes = accepted
        .batch
        .reports
        .iter()
        .map(|r| r.report.node.as_str())
        .chain(accepted.batch.points.iter().map(|p| p.node.as_str()));
    for node in nodes {
        if node != bound {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the token was issued on node {bound:?}; it may not report for node {node:?}"
                ),
            ));
        }
    }
    Ok(())
}

async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        return Err(too_large(max, "body"));
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(max, "body")),
        Err(e) => Err(bad_request(format!("reading the body failed: {e}"))),
    }
}

pub async fn logs(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    handle(app, Signal::Logs, headers, body).await
}

pub async fn metrics(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    handle(app, Signal::Metrics, headers, body).await
}

async fn handle(app: App, signal: Signal, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let encoding = encoding_of(&headers).ok();
    let outcome = accept(&app, signal, &headers, body).await;
    let (result, response) = match outcome {
        Ok(accepted) => (
            if accepted.rejected > 0 {
                "partial"
            } else {
                "ok"
            },
            success(signal, encoding.unwrap_or(Encoding::Protobuf), &accepted),
        ),
        Err(refusal) => {
            if refusal.status.is_server_error() {
                tracing::warn!(signal = signal.as_str(), status = %refusal.status, "{}", refusal.message);
            } else {
                tracing::debug!(signal = signal.as_str(), status = %refusal.status, "{}", refusal.message);
            }
            (result_label(refusal.status), refused(encoding, &refusal))
        }
    };
    app.metrics.request(signal.as_str(), result);
    app.metrics
        .ingest_duration
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn accept(
    app: &App,
    signal: Signal,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, Refusal> {
    encoding_of(headers)?;
    gzipped(headers)?;
    let identity = app.auth.check(headers).await?;
    let bytes = read_body(headers, body, app.max_body_bytes).await?;
    let mut accepted = prepare(signal, headers, &bytes, app.max_body_bytes, now_ms())?;
    check_node(&identity, &accepted)?;
    if accepted.batch.reports.is_empty() && accepted.batch.points.is_empty() {
        return Ok(accepted);
    }
    let ingested = app
        .store
        .ingest(std::mem::take(&mut accepted.batch))
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "storing the request failed (retry later): {}",
                    crate::observed::error_chain(&e)
                ),
            )
        })?;
    app.metrics.reports_stored.inc_by(ingested.stored as u64);
    Ok(accepted)
}

fn result_label(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "error",
    }
}

fn success(signal: Signal, encoding: Encoding, a: &Accepted) -> Response {
    let partial = a.rejected > 0 || !a.message.is_empty();
    match encoding {
        Encoding::Protobuf => {
            let body = match signal {
                Signal::Logs => ExportLogsServiceResponse {
                    partial_success: partial.then(|| ExportLogsPartialSuccess {
                        rejected_log_records: a.rejected,
                        error_message: a.message.clone(),
                    }),
                }
                .encode_to_vec(),
                Signal::Metrics => ExportMetricsServiceResponse {
                    partial_success: partial.then(|| ExportMetricsPartialSuccess {
                        rejected_data_points: a.rejected,
                        error_message: a.message.clone(),
                    }),
                }
                .encode_to_vec(),
            };
            ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
        }
        Encoding::Json => {
            let rejected_key = match signal {
                Signal::Logs => "rejectedLogRecords",
                Signal::Metrics => "rejectedDataPoints",
            };
            // proto3 JSON: int64 as a string.
            let body = if partial {
                serde_json::json!({"partialSuccess": {
                    rejected_key: a.rejected.to_string(),
                    "errorMessage": a.message,
                }})
            } else {
                serde_json::json!({})
            };
            ([(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
        }
    }
}

/// The gRPC code the HTTP status stands for (google.rpc.Code).
fn grpc_code(status: StatusCode) -> i32 {
    match status {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => 7,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        s if s.is_server_error() => 13,
        _ => 3,
    }
}

/// A refusal in the request's encoding; text when the encoding is what was wrong.
pub fn refused(encoding: Option<Encoding>, r: &Refusal) -> Response {
    let status = Status {
        code: grpc_code(r.status),
        message: r.message.clone(),
    };
    let mut response = match encoding {
        Some(Encoding::Protobuf) => {
            ([(header::CONTENT_TYPE, PROTOBUF)], status.encode_to_vec()).into_response()
        }
        Some(Encoding::Json) => (
            [(header::CONTENT_TYPE, JSON)],
            serde_json::json!({"code": status.code, "message": status.message}).to_string(),
        )
            .into_response(),
        None => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", r.message),
        )
            .into_response(),
    };
    *response.status_mut() = r.status;
    match r.status {
        StatusCode::UNAUTHORIZED => {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests;
