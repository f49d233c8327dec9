//! The agent's writes to Kubernetes (Node events and the `CalicoDataplaneDrift` condition),
//! tested with the real kube client against an in-process mock API server (axum on 127.0.0.1:0),
//! because no Kubernetes API server exists on this machine. The mock records every request
//! (method, path, query, content type, JSON body) and answers as the API server does: 201 with
//! the created Event echoed, the Node for GET and for the status PATCH, a `Status` object for
//! 403 and 404. The tests assert the request bodies, not only that calls were made.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agent::{
    report::kube_status::{KubeStatusError, NodeStatusReporter, ReporterOptions, UpdateSummary},
    verify::{CheckId, Finding, Severity},
};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const NODE_PATH: &str = "/api/v1/nodes/node-a";
const STATUS_PATH: &str = "/api/v1/nodes/node-a/status";

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Mock {
    /// Answer event creates with 403 Forbidden (no RBAC for events).
    forbid_events: bool,
    /// Answer status patches with 403 Forbidden.
    forbid_status: bool,
    /// Conditions the Node carries before the agent's first patch.
    conditions: Vec<Value>,
    requests: Arc<Mutex<Vec<Request>>>,
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn node(conditions: &[Value]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "uid": "6f1f3c52-0d7e-4a53-9d43-0e8a51c6f001", "resourceVersion": "40100"},
        "status": {"conditions": conditions},
    })
}

async fn handle(
    State(mock): State<Mock>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String("<not JSON>".into()))
    };
    let request = Request {
        method: method.clone(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: body.clone(),
    };
    mock.requests.lock().expect("lock").push(request);
    match (method, uri.path()) {
        (Method::POST, EVENTS_PATH) => {
            if mock.forbid_events {
                return status(
                    403,
                    "Forbidden",
                    r#"events.events.k8s.io is forbidden: User "system:serviceaccount:calico-system:calico-dataplane-agent" cannot create resource "events" in API group "events.k8s.io" in the namespace "default""#,
                );
            }
            let mut created = body;
            if let Some(meta) = created.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), "default".into());
                meta.insert("uid".into(), "0b6a9a4e-2f0c-4a5e-9f6e-5a1d2c3b4e5f".into());
                meta.insert("resourceVersion".into(), "40201".into());
            }
            json_response(StatusCode::CREATED, &created)
        }
        (Method::GET, NODE_PATH) => json_response(StatusCode::OK, &node(&mock.conditions)),
        (Method::PATCH, STATUS_PATH) => {
            if mock.forbid_status {
                return status(
                    403,
                    "Forbidden",
                    r#"nodes "node-a" is forbidden: User "system:serviceaccount:calico-system:calico-dataplane-agent" cannot patch resource "nodes/status""#,
                );
            }
            let conditions = body
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            json_response(StatusCode::OK, &node(&conditions))
        }
        (_, path) => status(404, "NotFound", &format!("{path} not found")),
    }
}

struct Server {
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
    client: kube::Client,
}

impl Server {
    async fn start(mock: Mock) -> Self {
        let requests = mock.requests.clone();
        let app = Router::new().fallback(handle).with_state(mock);
        let (client, task) = support::kube_client_for(app).await;
        Self {
            requests,
            task,
            client,
        }
    }

    fn reporter(&self) -> NodeStatusReporter {
        NodeStatusReporter::new(
            self.client.clone(),
            NODE,
            ReporterOptions {
                event_interval: Duration::from_secs(60),
                reporting_instance: "calico-dataplane-agent-x7k2p".into(),
            },
        )
    }

    /// The requests received since the last call.
    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock().expect("lock"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn posts(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| r.method == Method::POST)
        .collect()
}

fn patches(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| r.method == Method::PATCH)
        .collect()
}

/// 2026-09-21T14:13:20Z plus `secs`.
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
}

const T0: &str = "2026-09-21T14:13:20Z";

fn route(subject: &str) -> Finding {
    Finding::new(CheckId::RouteMissing, Severity::Critical, subject)
        .expected(format!("{subject} via 10.99.0.12 dev vxlan.calico onlink"))
        .actual("no route")
        .hint(format!("ip route show {subject}"))
}

fn fdb(subject: &str) -> Finding {
    Finding::new(CheckId::VxlanFdbMissing, Severity::Warning, subject)
        .expected("dst 10.99.0.12 self permanent")
        .actual("no FDB entry")
}

fn assert_event(r: &Request, type_: &str, reason: &str) {
    assert_eq!(r.path, EVENTS_PATH, "{r:?}");
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let b = &r.body;
    assert_eq!(b["apiVersion"], "events.k8s.io/v1", "{b}");
    assert_eq!(b["kind"], "Event", "{b}");
    assert_eq!(b["type"], type_, "{b}");
    assert_eq!(b["reason"], reason, "{b}");
    assert_eq!(
        b["regarding"],
        json!({"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}),
        "the event is about the Node, referenced as kubelet does: {b}"
    );
    assert_eq!(b["reportingController"], "calico-dataplane-agent", "{b}");
    assert_eq!(
        b["reportingInstance"], "calico-dataplane-agent-x7k2p",
        "{b}"
    );
    assert_eq!(b["action"], "VerifyDataplane", "{b}");
    assert!(
        b["eventTime"].is_string(),
        "events.k8s.io/v1 requires eventTime: {b}"
    );
    assert!(
        b["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("node-a.")),
        "{b}"
    );
    assert!(b.get("series").is_none(), "a new event, not a series: {b}");
}

fn note(r: &Request) -> &str {
    r.body["note"].as_str().unwrap_or_default()
}

/// The one condition in a status patch, after checking the patch's shape.
fn assert_condition_patch(r: &Request) -> &Value {
    assert_eq!(r.path, STATUS_PATH, "{r:?}");
    assert_eq!(
        r.content_type, "application/strategic-merge-patch+json",
        "{r:?}"
    );
    assert!(
        r.query.contains("fieldManager=calico-dataplane-agent"),
        "{r:?}"
    );
    let conditions = r.body["status"]["conditions"]
        .as_array()
        .expect("status.conditions");
    assert_eq!(conditions.len(), 1, "{}", r.body);
    assert_eq!(
        r.body.as_object().map(|o| o.len()),
        Some(1),
        "only status: {}",
        r.body
    );
    &conditions[0]
}

#[tokio::test]
async fn drift_appears_repeats_and_clears() {
    let server = Server::start(Mock::default()).await;
    let mut reporter = server.reporter();

    // (a) route.missing appears: one Warning event, one status patch (after one read of the Node).
    let summary = reporter
        .update(&[route("10.244.3.64/26")], at(0))
        .await
        .expect("update");
    assert_eq!(
        summary,
        UpdateSummary {
            events_sent: 1,
            events_suppressed: 0,
            condition_patched: true
        }
    );
    let requests = server.take();
    let methods: Vec<_> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        methods,
        [
            format!("POST {EVENTS_PATH}"),
            format!("GET {NODE_PATH}"),
            format!("PATCH {STATUS_PATH}"),
        ]
    );
    let event = posts(&requests)[0];
    assert_event(event, "Warning", "DataplaneDrift");
    assert_eq!(
        note(event),
        "route.missing on 10.244.3.64/26 (critical): expected 10.244.3.64/26 via 10.99.0.12 dev vxlan.calico onlink; actual no route. Hint: ip route show 10.244.3.64/26"
    );
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(
        *condition,
        json!({
            "type": "CalicoDataplaneDrift",
            "status": "True",
            "reason": "DriftDetected",
            "message": "route.missing (1)",
            "lastHeartbeatTime": T0,
            "lastTransitionTime": T0,
        })
    );

    // (b) The same findings again: nothing to say.
    let summary = reporter
        .update(&[route("10.244.3.64/26")], at(30))
        .await
        .expect("update");
    assert_eq!(summary, UpdateSummary::default());
    assert!(server.take().is_empty());

    // A second check ID with the same status: patched, but lastTransitionTime stays.
    let summary = reporter
        .update(&[route("10.244.3.64/26"), fdb("66:de:ad:be:ef:02")], at(40))
        .await
        .expect("update");
    assert_eq!((summary.events_sent, summary.condition_patched), (1, true));
    let requests = server.take();
    assert_event(posts(&requests)[0], "Warning", "DataplaneDrift");
    assert!(
        note(posts(&requests)[0])
            .starts_with("vxlan.fdb.missing on 66:de:ad:be:ef:02 (warning): expected dst 10.99.0.12 self permanent; actual no FDB entry.")
    );
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(condition["status"], "True");
    assert_eq!(
        condition["message"],
        "route.missing (1), vxlan.fdb.missing (1)"
    );
    assert_eq!(condition["lastTransitionTime"], T0);
    assert_eq!(condition["lastHeartbeatTime"], "2026-09-21T14:14:00Z");

    // (c) Everything cleared (after the rate-limit interval): Normal events and status False.
    let summary = reporter.update(&[], at(120)).await.expect("update");
    assert_eq!(
        summary,
        UpdateSummary {
            events_sent: 2,
            events_suppressed: 0,
            condition_patched: true
        }
    );
    let requests = server.take();
    let events = posts(&requests);
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_event(e, "Normal", "DataplaneDriftCleared");
    }
    assert!(
        note(events[0]).starts_with("route.missing on 10.244.3.64/26 cleared:"),
        "{}",
        note(events[0])
    );
    assert!(
        note(events[1]).starts_with("vxlan.fdb.missing on 66:de:ad:be:ef:02 cleared:"),
        "{}",
        note(events[1])
    );
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(
        *condition,
        json!({
            "type": "CalicoDataplaneDrift",
            "status": "False",
            "reason": "NoDrift",
            "message": "the dataplane matches what Felix programs",
            "lastHeartbeatTime": "2026-09-21T14:15:20Z",
            "lastTransitionTime": "2026-09-21T14:15:20Z",
        })
    );
    assert!(
        !requests.iter().any(|r| r.method == Method::GET),
        "the Node is read once, before the first patch"
    );
}

#[tokio::test]
async fn events_are_rate_limited_per_check() {
    let server = Server::start(Mock::default()).await;
    let mut reporter = server.reporter();

    // (d) Three subjects of one check within the interval: one event, two held back.
    let mut suppressed = 0;
    let mut sent = 0;
    let steps: [(&[&str], u64); 3] = [
        (&["10.244.3.64/26"], 0),
        (&["10.244.3.64/26", "10.244.5.0/26"], 10),
        (&["10.244.3.64/26", "10.244.5.0/26", "10.244.7.0/26"], 20),
    ];
    for (subjects, t) in steps {
        let findings: Vec<_> = subjects.iter().map(|s| route(s)).collect();
        let summary = reporter.update(&findings, at(t)).await.expect("update");
        sent += summary.events_sent;
        suppressed += summary.events_suppressed;
    }
    assert_eq!((sent, suppressed), (1, 2));
    let requests = server.take();
    let events = posts(&requests);
    assert_eq!(events.len(), 1);
    assert!(note(events[0]).contains("10.244.3.64/26"));
    // The set of check IDs never changed: one patch.
    assert_eq!(patches(&requests).len(), 1);

    // After the interval, the next route.missing event says what was held back.
    let findings: Vec<_> = [
        "10.244.3.64/26",
        "10.244.5.0/26",
        "10.244.7.0/26",
        "10.244.9.0/26",
    ]
    .iter()
    .map(|s| route(s))
    .collect();
    let summary = reporter.update(&findings, at(70)).await.expect("update");
    assert_eq!(summary.events_sent, 1);
    let requests = server.take();
    let events = posts(&requests);
    assert_eq!(events.len(), 1);
    assert_event(events[0], "Warning", "DataplaneDrift");
    let text = note(events[0]);
    assert!(
        text.starts_with("route.missing on 10.244.9.0/26 "),
        "{text}"
    );
    assert!(
        text.ends_with(
            "(and 2 more route.missing changes since 2026-09-21T14:13:30Z, not sent: at most one event per check every 60s)"
        ),
        "{text}"
    );
    assert!(patches(&requests).is_empty());
}

#[tokio::test]
async fn info_findings_never_page_anyone() {
    let server = Server::start(Mock::default()).await;
    let mut reporter = server.reporter();
    // (e) Only info findings: no events, and the condition says False.
    let findings = [
        Finding::new(CheckId::ConntrackPressure, Severity::Info, "nf_conntrack")
            .expected("below 90% of nf_conntrack_max")
            .actual("unknown: /proc/sys/net/netfilter/nf_conntrack_count unreadable"),
        Finding::new(CheckId::BgpSessionFlapping, Severity::Info, "10.99.0.12"),
    ];
    let summary = reporter.update(&findings, at(0)).await.expect("update");
    assert_eq!(
        summary,
        UpdateSummary {
            events_sent: 0,
            events_suppressed: 0,
            condition_patched: true
        }
    );
    let requests = server.take();
    assert!(posts(&requests).is_empty(), "{requests:?}");
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "NoDrift");
    assert_eq!(
        condition["message"],
        "the dataplane matches what Felix programs"
    );
}

#[tokio::test]
async fn forbidden_events_still_patch_the_condition() {
    let server = Server::start(Mock {
        forbid_events: true,
        ..Mock::default()
    })
    .await;
    let mut reporter = server.reporter();
    // (f) 403 on events: the error names the event create and the node; the patch went out.
    let err = reporter
        .update(&[route("10.244.3.64/26")], at(0))
        .await
        .expect_err("events are forbidden");
    assert!(
        matches!(&err, KubeStatusError::EventCreate { node, reason: "DataplaneDrift", check: CheckId::RouteMissing, .. } if node == NODE),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("event") && text.contains(NODE), "{text}");
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<kube::Error>())
        .expect("the kube error is kept as the source");
    assert!(
        matches!(source, kube::Error::Api(status) if status.code == 403),
        "{source:?}"
    );
    let requests = server.take();
    assert_eq!(posts(&requests).len(), 1);
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["message"], "route.missing (1)");

    // The failed event is not re-sent; the patched condition is not patched again.
    let summary = reporter
        .update(&[route("10.244.3.64/26")], at(90))
        .await
        .expect("nothing to write");
    assert_eq!(summary, UpdateSummary::default());
    assert!(server.take().is_empty());
}

#[tokio::test]
async fn a_failed_patch_is_named_and_retried() {
    let server = Server::start(Mock {
        forbid_status: true,
        ..Mock::default()
    })
    .await;
    let mut reporter = server.reporter();
    let err = reporter
        .update(&[route("10.244.3.64/26")], at(0))
        .await
        .expect_err("status patches are forbidden");
    assert!(
        matches!(&err, KubeStatusError::StatusPatch { node, .. } if node == NODE),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("CalicoDataplaneDrift") && err.to_string().contains(NODE),
        "{err}"
    );
    assert_eq!(posts(&server.take()).len(), 1, "the event went out");
    // Same findings: the event is not repeated, the patch is.
    let _ = reporter.update(&[route("10.244.3.64/26")], at(30)).await;
    let requests = server.take();
    assert!(posts(&requests).is_empty());
    assert_eq!(patches(&requests).len(), 1);
}

#[tokio::test]
async fn an_agent_restart_keeps_the_condition_transition_time() {
    let since = "2026-09-01T08:00:00Z";
    let server = Server::start(Mock {
        conditions: vec![
            json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
                   "lastHeartbeatTime": "2026-09-21T14:13:00Z", "lastTransitionTime": "2026-08-01T00:00:00Z"}),
            json!({"type": "CalicoDataplaneDrift", "status": "True", "reason": "DriftDetected",
                   "message": "route.missing (1)",
                   "lastHeartbeatTime": "2026-09-21T14:00:00Z", "lastTransitionTime": since}),
        ],
        ..Mock::default()
    })
    .await;
    let mut reporter = server.reporter();
    reporter
        .update(&[route("10.244.3.64/26")], at(0))
        .await
        .expect("update");
    let requests = server.take();
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(condition["status"], "True");
    assert_eq!(
        condition["lastTransitionTime"], since,
        "still drifting: the transition time is the Node's"
    );
    assert_eq!(condition["lastHeartbeatTime"], T0);
    // Cleared: now the status changes, and so does the transition time.
    reporter.update(&[], at(90)).await.expect("update");
    let requests = server.take();
    let condition = assert_condition_patch(patches(&requests)[0]);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["lastTransitionTime"], "2026-09-21T14:14:50Z");
}
