//! `agent run` inside a lab node's network namespace: faults appear in `/metrics` and in the
//! local API within a second after the grace window and clear after repair; pod churn and a
//! route table flush-and-restore never surface; a burst that overruns the notification socket
//! ends in a resync and the right state; `/metrics` parses with Prometheus' own Python parser
//! and carries no unbounded label; SIGTERM leaves no program attached. Needs root.

mod support;

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use clap::ValueEnum as _;
use support::{Daemon, LabGuard, POLL_RULES, http_get, sample, serial, sh};
use xtask::lab::Fault;

/// The check each lab fault must raise on node-a.
fn fault_check(f: Fault) -> &'static str {
    match f {
        Fault::RouteDelete => "route.missing",
        Fault::RouteUnderlay => "route.wrong-device",
        Fault::BlackholeDelete => "route.blackhole.missing",
        Fault::TunnelMtu => "mtu.tunnel.mismatch",
        Fault::PodMtu => "mtu.workload.mismatch",
        Fault::FdbFlush => "vxlan.fdb.missing",
        Fault::ArpDelete => "vxlan.neigh.missing",
        Fault::TunnelDown => "tunnel.down",
        Fault::TunnelAddress => "tunnel.address.mismatch",
        Fault::FailsafeDelete => "failsafe.missing",
        Fault::InputJumpDelete => "rules.felix.missing",
        // The dual-stack lab's, should a dual-stack daemon test run them.
        Fault::V6RouteDelete => "route.missing",
        Fault::V6RouteNexthop => "route.wrong-nexthop",
        Fault::V6BlackholeDelete => "route.blackhole.missing",
        Fault::V6TunnelMtu => "mtu.tunnel.mismatch",
        Fault::V6NeighDelete => "vxlan.neigh.missing",
        Fault::V6FdbDelete => "vxlan.fdb.missing",
        Fault::V6TunnelAddressDelete => "tunnel.address.mismatch",
        Fault::V6InputJumpDelete => "rules.felix.missing",
        // The BGP lab's faults are exercised in bgp.rs.
        Fault::BgpWrongAs
        | Fault::BgpFlap
        | Fault::BgpWithdraw
        | Fault::BgpSessionDelete
        | Fault::BgpSessionExtra
        | Fault::Bgp6WrongAs
        | Fault::Bgp6SessionDelete => unreachable!("not a VXLAN lab fault"),
    }
}

/// Faults in iptables or nft: no notification announces them, the daemon polls for them.
fn fault_is_polled(f: Fault) -> bool {
    matches!(
        f,
        Fault::FailsafeDelete | Fault::InputJumpDelete | Fault::V6InputJumpDelete
    )
}

#[test]
fn every_fault_is_published_within_a_second_after_grace_and_clears_after_repair() {
    let _serial = serial();
    let lab = LabGuard::up("dmf");
    let grace = Duration::from_secs(2);
    let d = Daemon::start(&lab, "2", &[]);
    assert!(d.findings().is_empty(), "healthy lab: {:?}", d.findings());
    let node = lab.0.spec.nodes[0].name.clone();
    for fault in Fault::value_variants()
        .iter()
        .filter(|f| f.applies_to(&lab.0.spec))
    {
        let check = fault_check(*fault);
        let injected = Instant::now();
        lab.0.fault(&node, *fault).expect("inject");
        // Seen where a scraper sees it, without waiting for the daemon's loop to answer.
        let start = Instant::now();
        while d.published(check) < 1.0 {
            assert!(start.elapsed() < grace * 3, "{check} never published");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (took, since_injected) = (start.elapsed(), injected.elapsed());
        if *fault == Fault::RouteDelete {
            d.check_answers_from_the_daemon(check);
        }
        // Within a second after the grace window; a rule fault is seen only at the next poll
        // of the rules, so that poll adds to its window.
        let poll = if fault_is_polled(*fault) {
            POLL_RULES
        } else {
            Duration::ZERO
        };
        assert!(
            took <= grace + poll + Duration::from_secs(1),
            "{check} took {took:?} (grace {grace:?}, poll {poll:?})"
        );
        // Never before the grace window: Felix's own reprogramming must not page anyone.
        assert!(
            since_injected >= grace,
            "{check} published {since_injected:?} after the fault, inside the grace window"
        );
        d.wait_findings(grace, check, |f| f.iter().any(|(c, _)| c == check));
        lab.0.repair().expect("repair");
        d.wait_findings(
            Duration::from_secs(3),
            "cleared after repair",
            BTreeSet::is_empty,
        );
        assert!(!d.metrics().lines().any(|l| {
            l.starts_with(&format!("calico_dpagent_findings{{check=\"{check}\""))
                && !l.ends_with(" 0")
        }));
    }
    let (status, took) = d.stop();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[test]
fn pod_churn_and_a_route_table_flush_and_restore_raise_nothing() {
    let _serial = serial();
    let lab = LabGuard::up("dmc");
    let ns = lab.0.spec.nodes[0].netns.clone();
    let d = Daemon::start(&lab, "3", &[]);
    // 20 pods the way the CNI plugin wires them, then deleted again.
    for i in 0..20 {
        let host = format!("cali{:011x}", 0xc0ffee_u64 + i);
        let ip = format!("10.244.0.{}", 20 + i);
        sh(&format!(
            "ip -n {ns} link add {host} mtu 1450 type veth peer name cdptpod{i} mtu 1450 && \
             ip -n {ns} link set {host} up && ip -n {ns} link set cdptpod{i} up && \
             ip -n {ns} route add {ip}/32 dev {host} scope link"
        ));
    }
    for i in 0..20 {
        sh(&format!("ip -n {ns} link del cdptpod{i}"));
    }
    let dump = std::env::temp_dir().join(format!("{ns}.routes"));
    sh(&format!(
        "ip -n {ns} route save table main > {d} && ip -n {ns} route flush table main && \
         ip -n {ns} route restore < {d}",
        d = dump.display()
    ));
    let _ = std::fs::remove_file(&dump);
    std::thread::sleep(Duration::from_secs(4));
    assert!(d.findings().is_empty(), "{:?}", d.findings());
    let m = d.metrics();
    assert_eq!(
        sample(&m, "calico_dpagent_drift_detection_seconds_count"),
        0.0,
        "a transient state was published as drift"
    );
    assert!(sample(&m, "calico_dpagent_netlink_events_total{kind=\"message\"}") > 40.0);
}

#[test]
fn a_burst_that_overruns_the_socket_ends_in_a_resync_and_the_right_state() {
    let _serial = serial();
    let lab = LabGuard::up("dmb");
    let node = &lab.0.spec.nodes[0];
    let remote = &lab.0.spec.nodes[1];
    // A small receive buffer makes the overrun certain.
    let d = Daemon::start(&lab, "1", &["--netlink-rcvbuf", "8192"]);
    // 10,000 route changes; the last one (of the burst) really deletes a block route.
    let mut batch = String::new();
    for i in 0..5000u32 {
        batch.push_str(&format!(
            "route add blackhole 10.250.{}.{}/32 proto 80\n",
            i / 250,
            i % 250
        ));
    }
    for i in 0..5000u32 {
        batch.push_str(&format!("route del 10.250.{}.{}/32\n", i / 250, i % 250));
    }
    batch.push_str(&format!("route del {}\n", remote.block));
    let file = std::env::temp_dir().join(format!("{}.batch", node.netns));
    std::fs::write(&file, batch).expect("batch file");
    sh(&format!("ip -n {} -batch {}", node.netns, file.display()));
    let _ = std::fs::remove_file(&file);
    let block = remote.block.to_string();
    // Overruns end in full re-reads, which may overrun again: give them time on a busy machine.
    d.wait_findings(Duration::from_secs(15), "the deleted block route", |f| {
        *f == BTreeSet::from([("route.missing".to_string(), block.clone())])
    });
    let m = d.metrics();
    assert!(
        sample(&m, "calico_dpagent_netlink_overruns_total") >= 1.0,
        "no overrun"
    );
    assert!(sample(&m, "calico_dpagent_resyncs_total{kind=\"overrun\"}") >= 1.0);
    lab.0.repair().expect("repair");
    d.wait_findings(Duration::from_secs(3), "repaired", BTreeSet::is_empty);
}

#[test]
fn metrics_parse_with_prometheus_and_labels_are_bounded_and_sigterm_detaches() {
    let _serial = serial();
    let lab = LabGuard::up("dmm");
    let d = Daemon::start(&lab, "0", &["--poll-services", "0.5"]);
    lab.0
        .fault(&lab.0.spec.nodes[0].name, Fault::FdbFlush)
        .expect("inject");
    lab.0.check_connectivity().ok();
    d.wait_findings(Duration::from_secs(3), "fdb fault", |f| !f.is_empty());
    std::thread::sleep(Duration::from_secs(1));
    let text = d.metrics();
    assert!(d.metric("calico_dpagent_ebpf_attached") == 1.0, "{text}");
    // The lab runs no BIRD, no bird6 and no Felix health endpoint: services not running on a
    // node, polled every 0.5 s, are not failed reads.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("calico_dpagent_source_errors_total")
                && ["bgp", "bgp6", "felix-health"]
                    .iter()
                    .any(|s| l.contains(&format!("source=\"{s}\"")))),
        "{text}"
    );
    // Prometheus' own parser (prometheus_client, OpenMetrics): every family and label.
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    out.append({"family": fam.name, "type": fam.type, "labels": {}})
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels})
print(json.dumps(out))
"#;
    let mut py = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = py.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "prometheus_client rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let families: BTreeSet<&str> = samples
        .iter()
        .filter_map(|s| s["family"].as_str())
        .collect();
    for f in [
        "calico_dpagent_findings",
        "calico_dpagent_checks",
        "calico_dpagent_verify_duration_seconds",
        "calico_dpagent_drift_detection_seconds",
        "calico_dpagent_iface_packets",
        "calico_dpagent_drops",
        "calico_dpagent_conntrack_entries",
        "calico_dpagent_netlink_overruns",
        "calico_dpagent_resyncs",
        "calico_dpagent_resident_memory_bytes",
        "calico_dpagent_ebpf_attached",
    ] {
        assert!(families.contains(f), "{f} missing from {families:?}");
    }
    // Bounded labels: known names only, and no value that is an address, a port, a MAC, a
    // pod's interface or anything else that grows with the cluster.
    let allowed = [
        "check",
        "severity",
        "result",
        "iface_class",
        "direction",
        "reason",
        "hook",
        "assessment",
        "signal",
        "kind",
        "source",
        "le",
    ];
    let lab_names: Vec<String> = lab
        .0
        .spec
        .nodes
        .iter()
        .flat_map(|n| [n.name.clone(), n.ip.to_string(), n.vtep_mac.clone()])
        .collect();
    for s in &samples {
        for (k, v) in s["labels"].as_object().into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            assert!(allowed.contains(&k.as_str()), "unexpected label {k}={v}");
            assert!(
                v.parse::<std::net::IpAddr>().is_err() && !v.contains('/') && !v.contains(':'),
                "unbounded value {k}={v}"
            );
            assert!(
                !v.starts_with("cali") && !lab_names.iter().any(|n| n == v),
                "{k}={v}"
            );
        }
    }
    let (status, took) = d.stop();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let left = support::ours_loaded();
    assert!(
        left.is_empty(),
        "programs left loaded after SIGTERM: {left:?}"
    );
}

#[test]
fn a_malformed_ipv4_header_is_logged_once_by_the_programs() {
    let _serial = serial();
    let lab = LabGuard::up("dml");
    let d = Daemon::start(&lab, "5", &[]);
    let pod = &lab.0.spec.nodes[0].pods[0];
    // A frame that says IPv4 (EtherType 0x0800) but whose header is not: version 5. Ten of
    // them: the programs log the first and hold the rest back (at most one a second). The
    // limit is per CPU, and a frame is handled on its sender's: the sender stays on one.
    let script = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
frame = bytes.fromhex("eeeeeeeeeeee" "020000000001" "0800") + bytes([0x55]) + bytes(45)
for _ in range(10):
    s.send(frame)
"#;
    let ok = Command::new("ip")
        .args(["netns", "exec", &pod.netns, "taskset", "-c", "0"])
        .args(["python3", "-c", script])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "sending raw frames from {}", pod.netns);
    let start = Instant::now();
    let needle = "unparsable IPv4 header";
    while !d.log().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no eBPF log record in:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.log().matches(needle).count(), 1, "{}", d.log());
    assert!(d.log().contains("first byte 85"), "{}", d.log());
}

#[test]
fn datastore_changes_are_followed() {
    let _serial = serial();
    let lab = LabGuard::up("dmd");
    let d = Daemon::start(&lab, "1", &[]);
    assert!(d.findings().is_empty(), "{:?}", d.findings());
    // A node joins the cluster (its YAML lands in the directory) but was never programmed here.
    let extra = d.datastore.join("node-c.yaml");
    std::fs::write(&extra, lab.0.spec.unprogrammed_node_yaml()).expect("node-c.yaml");
    d.wait_findings(Duration::from_secs(6), "node-c's block", |f| {
        f.contains(&("route.missing".to_string(), "10.244.2.0/26".to_string()))
    });
    std::fs::remove_file(&extra).expect("remove node-c.yaml");
    d.wait_findings(
        Duration::from_secs(6),
        "node-c gone again",
        BTreeSet::is_empty,
    );
}

/// What the mock API server saw: (method, path, body).
type Seen = std::sync::Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// An in-process mock of the Kubernetes API server (there is none on this machine), listening
/// inside `netns` so that the agent there reaches it on loopback. It serves the lab's Calico
/// datastore as the API server returns it (the recordings of `kube.rs`), accepts Events and
/// Node status patches, and records every request. Returns the URL.
fn mock_api_server(netns: &str, seen: Seen) -> String {
    use axum::{
        Router,
        extract::RawQuery,
        http::{Method, StatusCode, Uri},
        response::IntoResponse,
    };
    let json = |status: StatusCode, body: String| {
        (status, [("content-type", "application/json")], body).into_response()
    };
    let app = Router::new()
        .route(
            "/apis",
            axum::routing::get(move || async move {
                json(
                    StatusCode::OK,
                    include_str!("kube-responses/apis.json").to_string(),
                )
            }),
        )
        .fallback(
            move |method: Method, uri: Uri, RawQuery(q): RawQuery, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let path = uri.path().to_string();
                    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    seen.lock()
                        .expect("lock")
                        .push((method.to_string(), path.clone(), value.clone()));
                    let watch = q.as_deref().is_some_and(|q| q.contains("watch=true"));
                    let plural = path.rsplit('/').next().unwrap_or_default().to_string();
                    match method {
                        Method::GET if watch => {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            json(StatusCode::OK, String::new())
                        }
                        Method::GET if path.starts_with("/api/v1/nodes/") => json(
                            StatusCode::OK,
                            format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{plural}"}},"status":{{}}}}"#),
                        ),
                        Method::GET => match support::recorded(&plural) {
                            Some(l) => json(StatusCode::OK, l.to_string()),
                            None => json(StatusCode::NOT_FOUND, "{}".into()),
                        },
                        Method::POST => json(StatusCode::CREATED, value.to_string()),
                        Method::PATCH => json(
                            StatusCode::OK,
                            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"}}"#
                                .into(),
                        ),
                        _ => json(StatusCode::METHOD_NOT_ALLOWED, "{}".into()),
                    }
                }
            },
        );
    let path = format!("/var/run/netns/{netns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let _ = tx.send(format!("http://{addr}"));
            let _ = axum::serve(listener, app).await;
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("mock API server started")
}

#[test]
fn with_kube_drift_becomes_node_events_and_the_node_condition() {
    let _serial = serial();
    let lab = LabGuard::up("dmk");
    let node = lab.0.spec.nodes[0].clone();
    let seen: Seen = Default::default();
    let url = mock_api_server(&node.netns, seen.clone());
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", node.netns));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {url}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: agent\ncurrent-context: mock\nusers:\n- name: agent\n  user:\n    token: test-token\n"
        ),
    )
    .expect("kubeconfig");
    let d = Daemon::spawn(
        &lab,
        "1",
        &["--kube", "--event-interval", "0"],
        &[
            ("KUBECONFIG", kubeconfig.to_str().expect("utf-8")),
            ("POD_NAME", "calico-dataplane-agent-x7k2p"),
        ],
        PathBuf::new(),
    );
    let writes = |method: &str, suffix: &str| -> Vec<serde_json::Value> {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|(m, p, _)| m == method && p.ends_with(suffix))
            .map(|(_, _, b)| b.clone())
            .collect()
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                seen.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let condition = |b: &serde_json::Value| b["status"]["conditions"][0].clone();
    let status_patch = format!("/api/v1/nodes/{}/status", node.name);
    // Healthy: the condition says so, and no event is sent.
    wait("the first condition patch", &|| {
        !writes("PATCH", &status_patch).is_empty()
    });
    let first = condition(&writes("PATCH", &status_patch)[0]);
    assert_eq!(first["type"], "CalicoDataplaneDrift");
    assert_eq!(first["status"], "False");
    assert_eq!(first["reason"], "NoDrift");
    assert!(writes("POST", "/events").is_empty());
    // Drift: a Warning event on the Node, and the condition turns True naming the check.
    lab.0.fault(&node.name, Fault::RouteDelete).expect("inject");
    wait("the drift event", &|| !writes("POST", "/events").is_empty());
    let event = writes("POST", "/events")[0].clone();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "DataplaneDrift");
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], node.name.as_str());
    assert_eq!(event["reportingInstance"], "calico-dataplane-agent-x7k2p");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("route.missing") && note.contains("10.244.1.0/26"),
        "{note}"
    );
    wait("the True condition", &|| {
        writes("PATCH", &status_patch)
            .iter()
            .any(|b| condition(b)["status"] == "True")
    });
    let drift = writes("PATCH", &status_patch)
        .into_iter()
        .map(|b| condition(&b))
        .find(|c| c["status"] == "True")
        .expect("True condition");
    assert_eq!(drift["reason"], "DriftDetected");
    assert!(
        drift["message"]
            .as_str()
            .unwrap_or_default()
            .contains("route.missing")
    );
    // Repair: a Normal event, and the condition back to False.
    lab.0.repair().expect("repair");
    wait("the cleared event", &|| {
        writes("POST", "/events")
            .iter()
            .any(|e| e["reason"] == "DataplaneDriftCleared" && e["type"] == "Normal")
    });
    wait("the False condition again", &|| {
        writes("PATCH", &status_patch)
            .last()
            .is_some_and(|b| condition(b)["status"] == "False")
    });
    // The agent writes nothing else: Events and the Node's status only.
    for (method, path, _) in seen.lock().expect("lock").iter() {
        assert!(
            method == "GET"
                || (method == "POST" && path == "/apis/events.k8s.io/v1/namespaces/default/events")
                || (method == "PATCH" && *path == status_patch),
            "unexpected write {method} {path}"
        );
    }
    // Counted once the API server's answer is in, a moment after the mock saw the request.
    wait("three writes counted", &|| {
        d.metric("calico_dpagent_k8s_writes_total{kind=\"ok\"}") >= 3.0
    });
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn without_bpf_privileges_flows_are_unavailable_and_verification_goes_on() {
    let _serial = serial();
    let lab = LabGuard::up("dmp");
    let node = lab.0.spec.nodes[0].clone();
    let ds = lab.datastore();
    let socket = std::env::temp_dir().join(format!("{}.sock", node.netns));
    // Root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: the programs cannot load.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.netns, "setpriv"])
        .args(["--bounding-set=-bpf,-perfmon,-sys_admin", "--inh-caps=-all"])
        .args([
            env!("CARGO_BIN_EXE_agent"),
            "run",
            "--node-name",
            &node.name,
        ])
        .args(["--grace", "0", "--listen", "127.0.0.1:0"])
        .arg("--datastore")
        .arg(&ds)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent run under setpriv");
    let answer = || -> Option<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        let (code, body) = http_get(&mut s, "/v1/analysis")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let start = Instant::now();
    let a = loop {
        if let Some(a) = answer() {
            break a;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ebpf = a["daemon"]["ebpf"].as_str().unwrap_or_default().to_string();
    assert!(ebpf.starts_with("flows unavailable"), "{ebpf}");
    lab.0.fault(&node.name, Fault::RouteDelete).expect("inject");
    let start = Instant::now();
    loop {
        let a = answer().expect("answer");
        let found = a["verification"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["check"] == "route.missing");
        if found {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "{a}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
}

#[test]
fn an_underlay_mtu_change_moves_the_expected_tunnel_mtu_at_once() {
    let _serial = serial();
    let lab = LabGuard::up("dmu");
    let ns = lab.0.spec.nodes[0].netns.clone();
    let d = Daemon::start(&lab, "0.5", &[]);
    // Felix would now program vxlan.calico with 1350: the 1450 it has is wrong, and the
    // daemon must know before its 60 s resync.
    sh(&format!("ip -n {ns} link set eth0 mtu 1400"));
    d.wait_findings(Duration::from_secs(3), "the tunnel MTU", |f| {
        f.contains(&(
            "mtu.tunnel.mismatch".to_string(),
            "vxlan.calico".to_string(),
        ))
    });
    sh(&format!("ip -n {ns} link set eth0 mtu 1500"));
    d.wait_findings(Duration::from_secs(3), "back to 1500", BTreeSet::is_empty);
}
