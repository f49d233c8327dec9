//! The Kubernetes datastore source against an in-process mock API server that replays recorded
//! list responses (`kube-responses/`, shaped as the API server returns them: managedFields,
//! resourceVersions, Node items without apiVersion/kind) and scripted watch events. There is no
//! cluster on this machine; this is the real kube client and runtime against real HTTP.

mod support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use support::recorded;

use agent::desired::{
    Datastore,
    expected::{HostFacts, compute},
    files,
    kube::{CalicoGroup, KubeDatastore, KubeError, discover_group, read_once},
};
use axum::{
    Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

#[derive(Clone, Default)]
struct Mock {
    /// Serve Calico resources under projectcalico.org/v3 only (no v1 CRDs).
    v3_only: bool,
    /// Resource plurals answered with 403 Forbidden (missing RBAC).
    forbidden: Vec<&'static str>,
    /// Watch events (JSON lines) per plural, sent on every watch: delivered again, an event
    /// must change nothing.
    watch_events: BTreeMap<&'static str, String>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// Each JSON value of `text` (a list, or a watch's events one per line) as the API server
/// sends it to a client that asked for metadata only.
fn as_metadata(text: &str) -> String {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .map(|v| format!("{}\n", xtask::cluster::metadata_only(&v.expect("JSON"))))
        .collect()
}

async fn resource(
    mock: Mock,
    plural: String,
    api_version: &str,
    query: Option<String>,
    headers: HeaderMap,
) -> Response {
    let watch = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let metadata = xtask::cluster::asks_for_metadata_only(
        headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()),
    );
    mock.requests.lock().expect("lock").push(format!(
        "{api_version}/{plural}{}{}",
        if metadata { " as metadata" } else { "" },
        if watch { "?watch" } else { "" }
    ));
    if mock.forbidden.contains(&plural.as_str()) {
        let status = format!(
            r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"{plural} is forbidden: User \"system:serviceaccount:calico-system:calico-dataplane-agent\" cannot list resource \"{plural}\"","reason":"Forbidden","code":403}}"#
        );
        return json(StatusCode::FORBIDDEN, status);
    }
    let Some(list) = recorded(&plural) else {
        return json(StatusCode::NOT_FOUND, "{}".into());
    };
    if watch {
        // Hold the watch open briefly so the client does not spin, then end it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = mock
            .watch_events
            .get(plural.as_str())
            .cloned()
            .unwrap_or_default();
        return json(
            StatusCode::OK,
            if metadata {
                as_metadata(&events)
            } else {
                events
            },
        );
    }
    let list = list.replace("crd.projectcalico.org/v1", api_version);
    json(
        StatusCode::OK,
        if metadata { as_metadata(&list) } else { list },
    )
}

async fn serve(mock: Mock) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let calico = |m: Mock| {
        move |Path((group, version, plural)): Path<(String, String, String)>,
              RawQuery(q): RawQuery,
              headers: HeaderMap| {
            let m = m.clone();
            async move {
                let expected = if m.v3_only {
                    "projectcalico.org/v3"
                } else {
                    "crd.projectcalico.org/v1"
                };
                let api_version = format!("{group}/{version}");
                if api_version != expected {
                    return json(StatusCode::NOT_FOUND, "{}".into());
                }
                resource(m, plural, &api_version, q, headers).await
            }
        }
    };
    let app = Router::new()
        .route(
            "/apis",
            get(|State(m): State<Mock>| async move {
                let body = if m.v3_only {
                    include_str!("kube-responses/apis-v3-only.json")
                } else {
                    include_str!("kube-responses/apis.json")
                };
                json(StatusCode::OK, body.to_string())
            }),
        )
        .route(
            "/api/v1/nodes",
            get(
                |State(m): State<Mock>, RawQuery(q): RawQuery, headers: HeaderMap| async move {
                    resource(m, "nodes".into(), "v1", q, headers).await
                },
            ),
        )
        .route(
            "/apis/{group}/{version}/{plural}",
            get(calico(mock.clone())),
        )
        .with_state(mock);
    support::kube_client_for(app).await
}

fn lab_yaml_datastore() -> Datastore {
    let mut ds = Datastore::default();
    files::load_text(
        &mut ds,
        "lab.yaml",
        &xtask::lab::LabSpec::new("x").datastore_yaml(),
    )
    .expect("lab yaml");
    ds
}

fn facts() -> HostFacts {
    HostFacts {
        links: vec![("eth0".into(), 1500, true)],
    }
}

#[tokio::test]
async fn recorded_lists_give_the_same_datastore_as_the_yaml() {
    let mock = Mock::default();
    let requests = mock.requests.clone();
    let (client, server) = serve(mock).await;
    assert_eq!(
        discover_group(&client).await.expect("discovery"),
        CalicoGroup::CrdV1
    );
    let ds = read_once(&client, Duration::from_secs(10))
        .await
        .expect("datastore from the API");
    let yaml = lab_yaml_datastore();
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    assert_eq!(ds.pools, yaml.pools);
    assert_eq!(ds.blocks, yaml.blocks);
    assert_eq!(ds.affinities, yaml.affinities);
    let mut nodes = yaml.nodes.clone();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(ds.nodes, nodes);
    for node in ["node-a", "node-b"] {
        assert_eq!(
            compute(&ds, Some(node), &facts()).expect("expected"),
            compute(&yaml, Some(node), &facts()).expect("expected")
        );
    }
    let seen = requests.lock().expect("lock").clone();
    assert!(
        seen.contains(&"crd.projectcalico.org/v1/ipamblocks".to_string()),
        "{seen:?}"
    );
    // Nodes as metadata only (their labels and annotations are all the agent reads), Calico's
    // resources whole.
    assert!(
        seen.contains(&"v1/nodes as metadata".to_string()),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|r| r.starts_with("crd.") && r.contains("as metadata")),
        "{seen:?}"
    );
    server.abort();
}

#[tokio::test]
async fn v3_only_clusters_are_read_through_projectcalico_org_v3() {
    let mock = Mock {
        v3_only: true,
        ..Default::default()
    };
    let requests = mock.requests.clone();
    let (client, server) = serve(mock).await;
    assert_eq!(
        discover_group(&client).await.expect("discovery"),
        CalicoGroup::V3
    );
    let ds = read_once(&client, Duration::from_secs(10))
        .await
        .expect("datastore");
    assert_eq!((ds.pools.len(), ds.blocks.len(), ds.nodes.len()), (1, 2, 2));
    let seen = requests.lock().expect("lock").clone();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("projectcalico.org/v3/ippools")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|r| r.starts_with("crd.projectcalico.org")),
        "{seen:?}"
    );
    server.abort();
}

/// Waits up to five seconds for the watched node-c to reach the datastore.
async fn node_c_arrives(kds: &KubeDatastore) {
    for _ in 0..50 {
        if kds.snapshot().expect("snapshot").node("node-c").is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the watched ADDED event of node-c never reached the datastore");
}

#[tokio::test]
async fn watch_events_update_the_store() {
    let node_c = r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-c","resourceVersion":"40200","annotations":{"projectcalico.org/IPv4Address":"10.99.0.13/24","projectcalico.org/IPv4VXLANTunnelAddr":"10.244.2.0"}}}}"#;
    let mock = Mock {
        watch_events: BTreeMap::from([("nodes", format!("{node_c}\n"))]),
        ..Default::default()
    };
    let (client, server) = serve(mock).await;
    let kds = KubeDatastore::start(&client, CalicoGroup::CrdV1);
    kds.ready(Duration::from_secs(10))
        .await
        .expect("first lists");
    node_c_arrives(&kds).await;
    let ds = kds.snapshot().expect("snapshot");
    assert_eq!(
        ds.node("node-c")
            .and_then(|n| n.ipv4_vxlan_tunnel)
            .map(|ip| ip.to_string())
            .as_deref(),
        Some("10.244.2.0")
    );
    server.abort();
}

/// The generation once it has not moved for half a second (the watchers bump it just after
/// storing, so a reader may see a store ready a moment before its bump), or after ten seconds
/// of moving.
async fn settled_generation(kds: &KubeDatastore) -> u64 {
    let start = std::time::Instant::now();
    let mut last = kds.generation();
    let mut since = start;
    while since.elapsed() < Duration::from_millis(500) && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let g = kds.generation();
        if g != last {
            (last, since) = (g, std::time::Instant::now());
        }
    }
    last
}

#[tokio::test]
async fn a_kubelet_status_update_is_not_a_datastore_change() {
    // node-a's kubelet posts its status (a new resourceVersion, nothing Calico reads), then
    // node-c joins: only the second is a change worth a new expected state, and only once
    // though the mock repeats both on every watch.
    let list: serde_json::Value =
        serde_json::from_str(recorded("nodes").expect("nodes")).expect("json");
    let mut beat = list["items"][0].clone();
    beat["metadata"]["resourceVersion"] = "40300".into();
    beat["status"]["conditions"] = serde_json::json!([{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": "2026-11-29T02:00:00Z"
    }]);
    let events = format!(
        "{}\n{}\n",
        serde_json::json!({"type": "MODIFIED", "object": beat}),
        r#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-c","resourceVersion":"40301","annotations":{"projectcalico.org/IPv4Address":"10.99.0.13/24"}}}}"#
    );
    let mock = Mock {
        watch_events: BTreeMap::from([("nodes", events)]),
        ..Default::default()
    };
    let (client, server) = serve(mock.clone()).await;
    let kds = KubeDatastore::start(&client, CalicoGroup::CrdV1);
    kds.ready(Duration::from_secs(10))
        .await
        .expect("first lists");
    let before = kds.snapshot().expect("snapshot");
    node_c_arrives(&kds).await;
    // One change per first list of the seven resources, and node-c.
    let lists = mock
        .requests
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| !r.ends_with("?watch"))
        .count();
    assert_eq!(lists, 7, "{:?}", mock.requests);
    // The watch of Nodes too is of their metadata only, as the API server served the events.
    assert!(
        mock.requests
            .lock()
            .expect("lock")
            .contains(&"v1/nodes as metadata?watch".to_string()),
        "{:?}",
        mock.requests
    );
    assert_eq!(settled_generation(&kds).await, 7 + 1);
    assert_eq!(
        kds.snapshot().expect("snapshot").node("node-a"),
        before.node("node-a")
    );
    server.abort();
}

#[tokio::test]
async fn missing_rbac_is_named_not_hung() {
    let mock = Mock {
        forbidden: vec!["ipamblocks"],
        ..Default::default()
    };
    let (client, server) = serve(mock).await;
    let err = read_once(&client, Duration::from_secs(2))
        .await
        .expect_err("forbidden list");
    assert!(
        matches!(&err, KubeError::Timeout(_, plural) if plural == "ipamblocks"),
        "{err}"
    );
    assert!(err.to_string().contains("ipamblocks"));
    server.abort();
}
