//! The receiver with its real store: every success and every refusal, what each stores, and a
//! bounded fuzz of the request decoding.

use std::io::Write as _;

use axum::http::HeaderName;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{Histogram, HistogramDataPoint, Metric, metric::Data},
};

use super::*;
use crate::collector::{
    Authenticator, Store,
    store::{self as st},
    testutil::{TempDir, finding, logs_request, report},
};
use crate::report::otlp::resource;

const TOKEN: &str = "s3cret-token";

struct Fixture {
    app: App,
    _dir: TempDir,
}

fn fixture(max: usize) -> Fixture {
    let dir = TempDir::new("ingest");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let store = Store::open(&dir.path().join("c.db")).expect("store");
    let auth = Authenticator::token_file(&token).expect("auth");
    Fixture {
        app: App::new(store, auth, max, std::time::Duration::from_secs(180)),
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The google.rpc.Status message, whatever the encoding.
    fn message(&self) -> String {
        if self.content_type == PROTOBUF {
            Status::decode(self.body.as_ref())
                .expect("a google.rpc.Status")
                .message
        } else if self.content_type == JSON {
            let v: serde_json::Value = serde_json::from_slice(&self.body).expect("JSON Status");
            v["message"].as_str().expect("message").to_string()
        } else {
            self.text()
        }
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-token");
const PB: (&str, &str) = ("content-type", PROTOBUF);
const JS: (&str, &str) = ("content-type", JSON);

async fn post(app: &App, signal: Signal, h: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let response = match signal {
        Signal::Logs => logs(State(app.clone()), headers(h), Body::from(body)).await,
        Signal::Metrics => metrics(State(app.clone()), headers(h), Body::from(body)).await,
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        content_type,
        body,
    }
}

/// Everything stored, in numbers: equal before and after a refused request.
async fn fingerprint(app: &App) -> Vec<i64> {
    app.store
        .read(|c| {
            let mut out = Vec::new();
            for q in [
                "SELECT COUNT(*) FROM reports",
                "SELECT COUNT(*) FROM nodes",
                "SELECT COUNT(*) FROM findings",
                "SELECT COUNT(*) FROM streams",
                "SELECT COUNT(*) FROM gaps",
                "SELECT COUNT(*) FROM metric_points",
                "SELECT COALESCE(SUM(received + duplicates), 0) FROM nodes",
            ] {
                out.push(c.query_row(q, [], |r| r.get(0))?);
            }
            Ok(out)
        })
        .await
        .expect("fingerprint")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn drift_reports(node: &str) -> Vec<otlp::Report> {
    vec![
        report(node, "s1", 1, Vec::new()),
        report(
            node,
            "s1",
            2,
            vec![finding("route.missing", "10.244.1.0/26")],
        ),
    ]
}

fn metrics_request(node: &str) -> ExportMetricsServiceRequest {
    let mut r = report(node, "s1", 1, vec![finding("route.missing", "x")]);
    r.counters.conntrack_entries = Some(42);
    otlp::metrics_request(&resource(node, node), &r)
}

#[tokio::test]
async fn protobuf_json_and_gzip_requests_are_stored() {
    let f = fixture(DEFAULT_MAX);
    let pb = logs_request(&drift_reports("node-pb")).encode_to_vec();
    let a = post(&f.app, Signal::Logs, &[AUTH, PB], pb).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.content_type, PROTOBUF);
    let response = ExportLogsServiceResponse::decode(a.body.as_ref()).expect("response");
    assert_eq!(response.partial_success, None);

    let json = serde_json::to_vec(&logs_request(&drift_reports("node-json"))).expect("json");
    let a = post(&f.app, Signal::Logs, &[AUTH, JS], json).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!((a.content_type.as_str(), a.text().as_str()), (JSON, "{}"));

    let gz = gzip(&logs_request(&drift_reports("node-gz")).encode_to_vec());
    let a = post(
        &f.app,
        Signal::Logs,
        &[AUTH, PB, ("content-encoding", "gzip")],
        gz,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());

    let nodes = f.app.store.read(st::nodes).await.expect("nodes");
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["node-gz", "node-json", "node-pb"]);
    for n in &nodes {
        assert_eq!((n.sequence, n.verdict.as_str(), n.stored), (2, "drift", 2));
    }
    // The body is kept as the agent sent it.
    let body = f
        .app
        .store
        .read(|c| st::report_body(c, "node-pb", "s1", 2))
        .await
        .expect("body")
        .expect("stored");
    let back: otlp::Report = serde_json::from_str(&body).expect("report");
    assert_eq!(back, drift_reports("node-pb")[1]);
}

#[tokio::test]
async fn metrics_keep_sums_and_gauges_and_count_the_rest_as_rejected() {
    let f = fixture(DEFAULT_MAX);
    let mut req = metrics_request("node-a");
    req.resource_metrics[0].scope_metrics[0]
        .metrics
        .push(Metric {
            name: "latency".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint::default(); 2],
                aggregation_temporality: 2,
            })),
            ..Metric::default()
        });
    let a = post(&f.app, Signal::Metrics, &[AUTH, PB], req.encode_to_vec()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let partial = ExportMetricsServiceResponse::decode(a.body.as_ref())
        .expect("response")
        .partial_success
        .expect("partial success");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(
        partial.error_message.contains("histogram"),
        "{}",
        partial.error_message
    );

    let points = f
        .app
        .store
        .read(|c| st::points(c, "node-a"))
        .await
        .expect("points");
    let series: Vec<(String, String)> = points
        .iter()
        .map(|p| (p.name.clone(), p.attributes.to_string()))
        .collect();
    assert!(series.contains(&(
        "calico_dpagent.drops".into(),
        r#"{"reason":"NO_SOCKET"}"#.into()
    )));
    assert!(series.contains(&(
        "calico_dpagent.findings".into(),
        r#"{"check":"route.missing","severity":"critical"}"#.into()
    )));
    let ct = points
        .iter()
        .find(|p| p.name == "calico_dpagent.conntrack.entries")
        .expect("gauge");
    assert_eq!(ct.value, st::PointValue::Int(42));
    // Metrics alone do not make a node.
    assert!(f.app.store.read(st::nodes).await.expect("nodes").is_empty());
}

/// What `google.protobuf.json_format.MessageToJson(msg, use_integers_for_enums=True)` prints for
/// OTLP requests built with the official Python classes: int64 as strings, bytes as base64.
const PYTHON_LOGS_JSON: &str = r#"{"resourceLogs": [{"resource": {"attributes": [{"key": "k8s.node.name", "value": {"stringValue": "NODE"}}]}, "scopeLogs": [{"scope": {"name": "x"}, "logRecords": [{"timeUnixNano": "1700000000000000000", "severityNumber": 9, "body": {"stringValue": BODY}, "attributes": [{"key": "calico_dpagent.schema", "value": {"stringValue": "calico-dpagent.report/v1"}}, {"key": "k8s.node.name", "value": {"stringValue": "NODE"}}, {"key": "calico_dpagent.sequence", "value": {"intValue": "1"}}, {"key": "calico_dpagent.checks", "value": {"arrayValue": {"values": [{"stringValue": "route.missing"}]}}}], "traceId": "AQEBAQEBAQEBAQEBAQEBAQ==", "spanId": "AgICAgICAgI="}]}]}]}"#;
const PYTHON_METRICS_JSON: &str = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "py-host"}}]}, "scopeMetrics": [{"metrics": [{"name": "c", "sum": {"dataPoints": [{"startTimeUnixNano": "1", "timeUnixNano": "17", "asInt": "5"}], "aggregationTemporality": 2, "isMonotonic": true}}, {"name": "g", "gauge": {"dataPoints": [{"asDouble": 1.5, "timeUnixNano": "18"}]}}]}]}]}"#;

fn python_logs_json(node: &str) -> String {
    let r = report(
        node,
        "s1",
        1,
        vec![finding("route.missing", "10.244.1.0/26")],
    );
    let body = serde_json::to_string(&serde_json::to_string(&r).expect("report")).expect("str");
    PYTHON_LOGS_JSON
        .replace("NODE", node)
        .replace("BODY", &body)
}

#[tokio::test]
async fn otlp_json_as_pythons_json_format_writes_it_is_accepted() {
    let f = fixture(DEFAULT_MAX);
    let logs = python_logs_json("py-node");
    let a = post(&f.app, Signal::Logs, &[AUTH, JS], logs.into_bytes()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let f2 = f
        .app
        .store
        .read(|c| st::findings(c, None, None))
        .await
        .expect("f");
    assert_eq!(
        (f2[0].node.as_str(), f2[0].check.as_str()),
        ("py-node", "route.missing")
    );

    let a = post(
        &f.app,
        Signal::Metrics,
        &[AUTH, ("content-type", "application/json; charset=utf-8")],
        PYTHON_METRICS_JSON.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let points = f
        .app
        .store
        .read(|c| st::points(c, "py-host"))
        .await
        .expect("points");
    let values: Vec<(&str, st::PointValue, u64)> = points
        .iter()
        .map(|p| (p.name.as_str(), p.value, p.time_unix_nano))
        .collect();
    assert_eq!(
        values,
        [
            ("c", st::PointValue::Int(5), 17),
            ("g", st::PointValue::Double(1.5), 18)
        ]
    );
}

#[tokio::test]
async fn other_applications_logs_are_a_partial_success_not_an_error() {
    let f = fixture(DEFAULT_MAX);
    let mut req = logs_request(&drift_reports("node-a"));
    let records = &mut req.resource_logs[0].scope_logs[0].log_records;
    let mut foreign = records[0].clone();
    foreign.attributes.clear();
    records.push(foreign);
    let a = post(
        &f.app,
        Signal::Logs,
        &[AUTH, JS],
        serde_json::to_vec(&req).expect("json"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
    assert_eq!(v["partialSuccess"]["rejectedLogRecords"], "1");
    assert!(
        v["partialSuccess"]["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("not calico-dpagent.report/v1 reports")),
        "{v}"
    );
    assert_eq!(fingerprint(&f.app).await[0], 2);
}

const DEFAULT_MAX: usize = 64 * 1024;

/// Each bad request: its status, a message naming what was wrong, in the request's encoding,
/// and nothing stored.
#[tokio::test]
async fn bad_requests_get_a_4xx_naming_the_problem_and_change_nothing() {
    let f = fixture(DEFAULT_MAX);
    let good = logs_request(&drift_reports("node-a")).encode_to_vec();
    let ok = post(&f.app, Signal::Logs, &[AUTH, PB], good.clone()).await;
    assert_eq!(ok.status, StatusCode::OK);
    let before = fingerprint(&f.app).await;

    let mut unknown = logs_request(&[report("node-a", "s1", 3, Vec::new())]);
    let mut v9 = unknown.resource_logs[0].scope_logs[0].log_records[0].clone();
    v9.attributes[0].value = Some(AnyValue {
        value: Some(Value::StringValue("calico-dpagent.report/v9".into())),
    });
    unknown.resource_logs[0].scope_logs[0].log_records.push(v9);
    let mut bad_json_report = logs_request(&[report("node-a", "s1", 4, Vec::new())]);
    bad_json_report.resource_logs[0].scope_logs[0].log_records[0].body = Some(AnyValue {
        value: Some(Value::StringValue(
            "{\"schema\": \"calico-dpagent.report/v1\"".into(),
        )),
    });
    let seq0 = logs_request(&[report("node-a", "s1", 0, Vec::new())]);
    let bomb = gzip(&vec![0u8; DEFAULT_MAX * 4]);
    const GZ: (&str, &str) = ("content-encoding", "gzip");

    /// What, headers, body, the status, and a part of the message.
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Vec<u8>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "wrong content type",
            &[AUTH, ("content-type", "text/plain")],
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type text/plain: send application/x-protobuf or application/json",
        ),
        (
            "no content type",
            &[AUTH],
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no Content-Type: send application/x-protobuf or application/json",
        ),
        (
            "unknown encoding",
            &[AUTH, PB, ("content-encoding", "br")],
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding br: send gzip or no Content-Encoding",
        ),
        (
            "no token",
            &[PB],
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "no Authorization header",
        ),
        (
            "wrong token",
            &[("authorization", "Bearer nope"), PB],
            good.clone(),
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ),
        (
            "truncated protobuf",
            &[AUTH, PB],
            good[..good.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "body is not an OTLP ExportLogsServiceRequest (protobuf)",
        ),
        (
            "invalid JSON",
            &[AUTH, JS],
            b"{\"resourceLogs\": [".to_vec(),
            StatusCode::BAD_REQUEST,
            "body is not an OTLP ExportLogsServiceRequest (JSON)",
        ),
        (
            "unknown schema",
            &[AUTH, PB],
            unknown.encode_to_vec(),
            StatusCode::BAD_REQUEST,
            "log record 1: unknown report schema \"calico-dpagent.report/v9\"",
        ),
        (
            "report JSON invalid",
            &[AUTH, PB],
            bad_json_report.encode_to_vec(),
            StatusCode::BAD_REQUEST,
            "log record 0: the report's JSON is invalid",
        ),
        (
            "sequence 0",
            &[AUTH, PB],
            seq0.encode_to_vec(),
            StatusCode::BAD_REQUEST,
            "sequence 0 is not in 1..2^63",
        ),
        (
            "not gzip",
            &[AUTH, PB, GZ],
            good.clone(),
            StatusCode::BAD_REQUEST,
            "body is not valid gzip",
        ),
        (
            "too large",
            &[AUTH, PB],
            vec![0u8; DEFAULT_MAX + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than 65536 bytes",
        ),
        (
            "gzip bomb",
            &[AUTH, PB, GZ],
            bomb,
            StatusCode::PAYLOAD_TOO_LARGE,
            "decompressed body larger than 65536 bytes",
        ),
    ];
    for (what, h, body, status, message) in cases {
        let a = post(&f.app, Signal::Logs, h, body).await;
        assert_eq!(a.status, status, "{what}: {}", a.text());
        assert!(
            a.message().contains(message),
            "{what}: {:?} lacks {message:?}",
            a.message()
        );
        let expected_type = match h.iter().find(|(k, _)| *k == "content-type") {
            Some((_, t)) if *t == PROTOBUF || *t == JSON => *t,
            _ => "text/plain; charset=utf-8",
        };
        assert_eq!(a.content_type, expected_type, "{what}");
        assert_eq!(
            fingerprint(&f.app).await,
            before,
            "{what} changed the store"
        );
    }
    let a = post(&f.app, Signal::Metrics, &[AUTH, JS], b"[1, 2]".to_vec()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.message()
            .contains("not an OTLP ExportMetricsServiceRequest (JSON)"),
        "{}",
        a.message()
    );
    assert_eq!(fingerprint(&f.app).await, before);
}

/// Valid requests of every kind, to mutate.
fn seeds() -> Vec<(Signal, Encoding, Vec<u8>)> {
    let logs = logs_request(&drift_reports("node-f"));
    let metrics = metrics_request("node-f");
    vec![
        (Signal::Logs, Encoding::Protobuf, logs.encode_to_vec()),
        (
            Signal::Logs,
            Encoding::Json,
            serde_json::to_vec(&logs).expect("json"),
        ),
        (Signal::Metrics, Encoding::Protobuf, metrics.encode_to_vec()),
        (
            Signal::Metrics,
            Encoding::Json,
            serde_json::to_vec(&metrics).expect("json"),
        ),
        (
            Signal::Metrics,
            Encoding::Json,
            PYTHON_METRICS_JSON.as_bytes().to_vec(),
        ),
        (
            Signal::Logs,
            Encoding::Json,
            python_logs_json("node-f").into_bytes(),
        ),
    ]
}

fn mutate(rng: &mut fastrand::Rng, body: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    match rng.u8(0..6) {
        0 => b.truncate(rng.usize(0..=b.len())),
        1 => {
            for _ in 0..rng.usize(1..=8) {
                if !b.is_empty() {
                    let i = rng.usize(0..b.len());
                    b[i] ^= 1 << rng.u8(0..8);
                }
            }
        }
        2 => {
            let (cut, from) = (rng.usize(0..=b.len()), rng.usize(0..=other.len()));
            b.truncate(cut);
            b.extend_from_slice(&other[from..]);
        }
        3 => {
            let i = rng.usize(0..=b.len());
            let junk: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
            b.splice(i..i, junk);
        }
        4 => {
            // Structural bytes where protobuf and JSON are most sensitive: lengths, quotes.
            for _ in 0..rng.usize(1..4) {
                if !b.is_empty() {
                    let i = rng.usize(0..b.len());
                    b[i] = *rng
                        .choice(b"\x00\x0a\x12\x1a\x22\xff\x7f\"{}[],:0-e")
                        .unwrap_or(&0);
                }
            }
        }
        _ => {
            if !b.is_empty() {
                let (s, e) = (rng.usize(0..b.len()), rng.usize(0..b.len()));
                let (s, e) = (s.min(e), s.max(e));
                let chunk = b[s..e].to_vec();
                let at = rng.usize(0..=b.len());
                b.splice(at..at, chunk);
            }
        }
    }
    b
}

fn content_type(e: Encoding) -> (&'static str, &'static str) {
    match e {
        Encoding::Protobuf => PB,
        Encoding::Json => JS,
    }
}

#[test]
fn fuzzed_bodies_never_panic_the_decoder_and_are_ok_or_a_4xx() {
    let mut rng = fastrand::Rng::with_seed(0x00c0_11ec_7042);
    let seeds = seeds();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..6000 {
        let (signal, encoding, body) = &seeds[i % seeds.len()];
        let other = &seeds[rng.usize(0..seeds.len())].2;
        let mut body = mutate(&mut rng, body, other);
        let mut h = vec![content_type(*encoding)];
        if rng.u8(0..4) == 0 {
            body = if rng.bool() {
                gzip(&body)
            } else {
                mutate(&mut rng, &gzip(&body), other)
            };
            h.push(("content-encoding", "gzip"));
        }
        match prepare(*signal, &headers(&h), &body, DEFAULT_MAX, 1) {
            Ok(_) => ok += 1,
            Err(r) => {
                assert!(r.status.is_client_error(), "{:?} for input {i}", r);
                assert!(!r.message.is_empty());
                refused += 1;
            }
        }
    }
    // The mutations reach both outcomes (a fuzz that only ever fails to parse proves little).
    assert!(ok > 300 && refused > 3000, "ok {ok}, refused {refused}");
}

#[tokio::test]
async fn fuzzed_requests_through_the_handler_get_200_or_a_4xx() {
    let f = fixture(DEFAULT_MAX);
    let mut rng = fastrand::Rng::with_seed(7);
    let seeds = seeds();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..400 {
        let (signal, encoding, body) = &seeds[i % seeds.len()];
        let other = rng.usize(0..seeds.len());
        let body = mutate(&mut rng, body, &seeds[other].2);
        let a = post(&f.app, *signal, &[AUTH, content_type(*encoding)], body).await;
        assert!(
            a.status == StatusCode::OK || a.status.is_client_error(),
            "{} for input {i}: {}",
            a.status,
            a.text()
        );
        *statuses.entry(a.status.as_u16()).or_insert(0) += 1;
    }
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
    // The store still answers.
    f.app.store.read(st::nodes).await.expect("nodes");
}

#[test]
fn base64_ids_become_hex_and_other_strings_stay() {
    assert_eq!(base64("AQEBAQEBAQEBAQEBAQEBAQ=="), Some(vec![1u8; 16]));
    assert_eq!(base64("AgICAgICAgI="), Some(vec![2u8; 8]));
    assert_eq!(base64("TWFu"), Some(b"Man".to_vec()));
    assert_eq!(base64(""), Some(Vec::new()));
    for bad in ["A", "AQE", "A===", "!!!!"] {
        assert_eq!(base64(bad), None, "{bad}");
    }
    let mut v = serde_json::json!({"a": [{"traceId": "AQEBAQEBAQEBAQEBAQEBAQ==", "spanId": "0102030405060708"}]});
    assert!(base64_ids_to_hex(&mut v));
    assert_eq!(v["a"][0]["traceId"], "01010101010101010101010101010101");
    assert_eq!(v["a"][0]["spanId"], "0102030405060708");
}
