//! `agent collector` as its users meet it: the real binary on loopback with a database in a
//! temporary directory. The official OpenTelemetry Python exporter talks to it; it is killed
//! with SIGKILL and must still hold every report it acknowledged; retries and gaps; TokenReview
//! against a mock API server; the cluster page in headless Chromium. No lab, no root.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent::report::otlp::{self, CounterSummary, Report, ReportFinding};
use prost::Message as _;

const TOKEN: &str = "collector-test-token";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("collector-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `agent collector` on 127.0.0.1; killed (SIGKILL) on drop, its log printed if a test failed.
struct Collector {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Collector {
    /// With the shared token in `dir`/token and the database `dir`/db/collector.db.
    fn start(dir: &Path, auth: &[&str]) -> Self {
        Self::start_under(dir, auth, &[])
    }

    /// The same, the command line prefixed by `wrapper` (e.g. setpriv).
    fn start_under(dir: &Path, auth: &[&str], wrapper: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join(format!("collector-{port}.log"));
        let mut argv = wrapper.to_vec();
        argv.push(env!("CARGO_BIN_EXE_agent"));
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .arg("collector")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--db")
            .arg(dir.join("db/collector.db"))
            .args(auth)
            .args(["--log", "info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start agent collector");
        let c = Self { child, port, log };
        let start = Instant::now();
        while c.get("/healthz").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent collector did not answer /healthz"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn with_token(dir: &Path) -> Self {
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token");
        Self::start(dir, &["--token-file", token.to_str().expect("utf-8")])
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (code, body) = request(self.port, "GET", path, &[], &[]);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// POSTs reports as the agent does (protobuf, bearer token); the status and body.
    fn send(&self, reports: &[Report]) -> (u16, String) {
        let (code, body) = request(
            self.port,
            "POST",
            "/v1/logs",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Authorization", &format!("Bearer {TOKEN}")),
            ],
            &logs_body(reports),
        );
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "agent collector's log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// One HTTP/1.0 exchange (so the answer is never chunked): status and body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Vec::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: collector\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .is_err()
    {
        return (0, Vec::new());
    }
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).is_err() {
        return (0, Vec::new());
    }
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new());
    };
    let status = String::from_utf8_lossy(&buf[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, buf[split + 4..].to_vec())
}

fn report(node: &str, stream: &str, seq: u64, findings: Vec<ReportFinding>) -> Report {
    Report::example(
        node,
        stream,
        seq,
        1_700_000_000_000 + seq * 60_000,
        findings,
        CounterSummary::default(),
    )
}

fn route_missing() -> ReportFinding {
    ReportFinding {
        check: "route.missing".into(),
        severity: "critical".into(),
        subject: "10.244.1.0/26".into(),
        expected: "10.244.1.0/26 via 10.244.1.0 dev vxlan.calico onlink (block of node-b)".into(),
        actual: "no route".into(),
        hint: "ip route show 10.244.1.0/26".into(),
        since: 1_700_000_000,
    }
}

fn logs_body(reports: &[Report]) -> Vec<u8> {
    let node = reports.first().map_or("node", |r| r.node.as_str());
    let pairs: Vec<(Report, String)> = reports
        .iter()
        .map(|r| (r.clone(), serde_json::to_string(r).expect("JSON")))
        .collect();
    otlp::logs_request(&otlp::resource(node, node), &pairs).encode_to_vec()
}

fn node<'a>(nodes: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    nodes["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == name)
        .unwrap_or_else(|| panic!("{name} not in {nodes}"))
}

fn sequences(c: &Collector, node: &str) -> Vec<u64> {
    c.json(&format!("/v1/nodes/{node}/reports?limit=10000"))["reports"]
        .as_array()
        .expect("reports")
        .iter()
        // A row is a run of reports in one state.
        .flat_map(|r| {
            r["sequence"].as_u64().expect("sequence")..=r["last_sequence"].as_u64().expect("last")
        })
        .collect()
}

#[test]
fn the_official_opentelemetry_python_exporter_is_understood() {
    let dir = Scratch::new("python");
    let c = Collector::with_token(&dir.0);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/otlp/send_with_official_exporter.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--endpoint", &format!("http://127.0.0.1:{}", c.port)])
        .args(["--token", TOKEN, "--node", "py-node"])
        .output()
        .expect("python3 (cargo xtask setup installs the exporter)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Two reports through the SDK's exporter (protobuf), one as OTLP/JSON from json_format.
    let nodes = c.json("/v1/nodes");
    let n = node(&nodes, "py-node");
    assert_eq!(n["stream"], "py-stream");
    assert_eq!(n["latest_sequence"], 3);
    assert_eq!(n["verdict"], "drift");
    assert_eq!(n["agent_version"], "0.1.0-python");
    assert_eq!(n["reports_stored"], 3);
    assert_eq!(n["missing"], 0);
    assert_eq!(sequences(&c, "py-node"), [1, 2, 3]);
    let findings = c.json("/v1/findings?node=py-node&check=route.missing");
    let f = &findings["findings"][0];
    assert_eq!(
        (&f["check"], &f["severity"], &f["subject"]),
        (
            &serde_json::json!("route.missing"),
            &serde_json::json!("critical"),
            &serde_json::json!("10.244.1.0/26")
        )
    );

    // The SDK's counter and gauge, and the JSON request's sum.
    let points = c.json("/v1/nodes/py-node/metrics");
    let value = |name: &str, attrs: serde_json::Value| {
        points["points"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name && p["attributes"] == attrs)
            .map(|p| p["value"].clone())
            .unwrap_or_else(|| panic!("{name} {attrs} not in {points}"))
    };
    assert_eq!(
        value(
            "calico_dpagent.drops",
            serde_json::json!({"reason": "NO_SOCKET"})
        ),
        7
    );
    assert_eq!(
        value(
            "calico_dpagent.drops",
            serde_json::json!({"reason": "NETFILTER_DROP"})
        ),
        2
    );
    assert_eq!(
        value("calico_dpagent.conntrack.entries", serde_json::json!({})),
        42
    );
    assert_eq!(
        value("calico_dpagent.tcp.retransmits", serde_json::json!({})),
        5
    );
    // The other application's log record was accepted, and counted as not a report.
    let (_, metrics) = c.get("/metrics");
    assert!(
        metrics.contains(
            "calico_dpagent_collector_requests_total{signal=\"logs\",result=\"partial\"} 1"
        ),
        "{metrics}"
    );
}

/// The chart runs the collector as uid/gid 65532 with every capability dropped, no privilege
/// escalation and a read-only root: it needs nothing more than its database directory.
#[test]
fn the_collector_runs_as_the_charts_non_root_user_without_capabilities() {
    let dir = Scratch::new("nonroot");
    let db = dir.0.join("db");
    std::fs::create_dir_all(&db).expect("db dir");
    std::fs::write(dir.0.join("token"), TOKEN).expect("token");
    for p in [&dir.0, &db, &dir.0.join("token")] {
        std::os::unix::fs::chown(p, Some(65532), Some(65532)).expect("chown");
    }
    let c = Collector::start_under(
        &dir.0,
        &["--token-file", dir.0.join("token").to_str().expect("utf-8")],
        &[
            "setpriv",
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
        ],
    );
    let (code, body) = c.send(&[report("nonroot-node", "s1", 1, vec![route_missing()])]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(sequences(&c, "nonroot-node"), [1]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.child.id())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
    };
    assert_eq!(field("Uid:").as_deref(), Some("65532"), "{status}");
    assert_eq!(
        field("CapEff:").as_deref(),
        Some("0000000000000000"),
        "{status}"
    );
    assert_eq!(
        field("CapBnd:").as_deref(),
        Some("0000000000000000"),
        "{status}"
    );
}

#[test]
fn every_acknowledged_report_survives_sigkill() {
    let dir = Scratch::new("sigkill");
    let c = Collector::with_token(&dir.0);
    const NODES: usize = 8;
    const PER_NODE: u64 = 40;
    // Concurrent senders, so acknowledgements come from shared group commits.
    std::thread::scope(|s| {
        for i in 0..NODES {
            let c = &c;
            s.spawn(move || {
                for seq in 1..=PER_NODE {
                    let findings = if seq % 3 == 0 {
                        vec![route_missing()]
                    } else {
                        Vec::new()
                    };
                    let (code, body) = c.send(&[report(&format!("kill-{i}"), "s1", seq, findings)]);
                    assert_eq!(code, 200, "kill-{i} #{seq}: {body}");
                }
            });
        }
    });
    c.sigkill();

    let c = Collector::with_token(&dir.0);
    let nodes = c.json("/v1/nodes");
    for i in 0..NODES {
        let name = format!("kill-{i}");
        assert_eq!(
            sequences(&c, &name),
            (1..=PER_NODE).collect::<Vec<_>>(),
            "{name}: acknowledged reports lost or out of order"
        );
        let n = node(&nodes, &name);
        assert_eq!(
            (&n["latest_sequence"], &n["missing"]),
            (&serde_json::json!(PER_NODE), &serde_json::json!(0))
        );
    }
}

#[test]
fn retries_are_stored_once_and_gaps_are_shown_then_filled() {
    let dir = Scratch::new("gaps");
    let c = Collector::with_token(&dir.0);
    let r = |seq| report("node-g", "s1", seq, Vec::new());
    for batch in [vec![r(1), r(2)], vec![r(1), r(2)], vec![r(5)], vec![r(5)]] {
        assert_eq!(c.send(&batch).0, 200);
    }
    let n = c.json("/v1/nodes");
    let n = node(&n, "node-g");
    assert_eq!(
        n["gaps"],
        serde_json::json!([{"stream": "s1", "from": 3, "to": 4}])
    );
    assert_eq!(
        (&n["missing"], &n["duplicates"], &n["reports_stored"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(3)
        )
    );
    let (_, page) = c.get("/");
    assert!(page.contains("2 missing (3–4)"), "{page}");
    let (_, metrics) = c.get("/metrics");
    assert!(
        metrics.contains("calico_dpagent_collector_report_gaps 2"),
        "{metrics}"
    );

    // The spool delivers the missing ones late: the gap splits, then closes.
    assert_eq!(c.send(&[r(4)]).0, 200);
    let n = c.json("/v1/nodes");
    assert_eq!(
        node(&n, "node-g")["gaps"],
        serde_json::json!([{"stream": "s1", "from": 3, "to": 3}])
    );
    assert_eq!(c.send(&[r(3), r(4)]).0, 200);
    let n = c.json("/v1/nodes");
    let n = node(&n, "node-g");
    assert_eq!(
        (&n["gaps"], &n["missing"]),
        (&serde_json::json!([]), &serde_json::json!(0))
    );
    // Latest stays 5 (by generation time); received order is kept.
    assert_eq!(n["latest_sequence"], 5);
    assert_eq!(sequences(&c, "node-g"), [1, 2, 5, 4, 3]);
    // A node whose spool was lost starts a new stream at 1: not a duplicate, not a gap.
    let mut restarted = report("node-g", "s2", 1, Vec::new());
    restarted.generated_at_ms = r(5).generated_at_ms + 60_000;
    assert_eq!(c.send(&[restarted]).0, 200);
    let n = c.json("/v1/nodes");
    let n = node(&n, "node-g");
    assert_eq!(
        (&n["stream"], &n["missing"]),
        (&serde_json::json!("s2"), &serde_json::json!(0))
    );
}

#[test]
fn collector_refuses_to_start_without_a_choice_of_authentication() {
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["collector", "--listen", "127.0.0.1:0"])
        .env_remove("AGENT_COLLECTOR_NO_AUTH")
        .output()
        .expect("agent collector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--token-file") && stderr.contains("--no-auth"),
        "{stderr}"
    );
}

/// TokenReview against a mock API server: the agents' ServiceAccount, its token bound to
/// node-a, may report for node-a only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_lets_a_node_report_only_for_itself() {
    use axum::{Json, Router, routing::post};
    let api = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(|Json(review): Json<serde_json::Value>| async move {
            let status = if review["spec"]["token"] == "node-a-token" {
                serde_json::json!({"authenticated": true, "user": {
                    "username": "system:serviceaccount:calico-system:calico-dataplane-agent",
                    "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}})
            } else {
                serde_json::json!({"authenticated": false})
            };
            Json(
                serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "metadata": {}, "spec": review["spec"], "status": status}),
            )
        }),
    );
    let (client, _api) = support::kube_client_for(api).await;
    let dir = Scratch::new("tokenreview");
    let store = agent::collector::Store::open(&dir.0.join("c.db")).expect("store");
    let auth = agent::collector::Authenticator::token_review(
        client,
        vec!["calico-system/calico-dataplane-agent".parse().expect("sa")],
        None,
    );
    let app = agent::collector::App::new(store, auth, 1 << 20, Duration::from_secs(180));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, agent::collector::router(app)).await;
    });
    let send = |token: &'static str, node: &'static str| {
        tokio::task::spawn_blocking(move || {
            let (code, body) = request(
                port,
                "POST",
                "/v1/logs",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", &format!("Bearer {token}")),
                ],
                &serde_json::to_vec(&otlp::logs_request(
                    &otlp::resource(node, node),
                    &[(
                        report(node, "s1", 1, Vec::new()),
                        serde_json::to_string(&report(node, "s1", 1, Vec::new())).expect("json"),
                    )],
                ))
                .expect("json"),
            );
            (code, String::from_utf8_lossy(&body).into_owned())
        })
    };
    let (code, body) = send("node-a-token", "node-a").await.expect("join");
    assert_eq!(code, 200, "{body}");
    let (code, body) = send("node-a-token", "node-b").await.expect("join");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("issued on node \\\"node-a\\\"") && body.contains("node-b"),
        "{body}"
    );
    let (code, body) = send("stolen", "node-a").await.expect("join");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("rejected the token"), "{body}");
}

/// Runs `cmd`, killing it if it takes longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    std::process::Output {
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr,
    }
}

#[test]
fn the_cluster_page_renders_in_headless_chromium() {
    let dir = Scratch::new("chromium");
    let c = Collector::with_token(&dir.0);
    assert_eq!(c.send(&[report("node-clean", "s1", 1, Vec::new())]).0, 200);
    assert_eq!(
        c.send(&[report("node-<drift>", "s1", 1, vec![route_missing()])])
            .0,
        200
    );
    let profile = dir.0.join("chromium-profile");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("--dump-dom")
    .arg(format!("http://127.0.0.1:{}/", c.port));
    let out = output_within(cmd, Duration::from_secs(90));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The browser parsed the page: the escaped name is text again, inside the nodes table.
    let table = dom
        .split("id=\"nodes\"")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or_else(|| panic!("no nodes table in {dom}"));
    assert!(table.contains("node-clean"), "{dom}");
    assert!(table.contains("node-&lt;drift&gt;"), "{dom}");
    assert!(
        table.find("node-&lt;drift&gt;") < table.find("node-clean"),
        "drifting node first: {table}"
    );
    assert!(dom.contains("1 drifting"), "{dom}");
    let details = dom
        .split("node-&lt;drift&gt;</h2>")
        .nth(1)
        .unwrap_or_else(|| panic!("no findings section for the drifting node in {dom}"));
    assert!(details.contains("route.missing"), "{details}");
    assert!(details.contains("10.244.1.0/26"), "{details}");
    assert!(details.contains("no route"), "{details}");
    assert!(!dom.contains("<drift>"), "unescaped node name in {dom}");
}
