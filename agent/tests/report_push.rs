//! `agent run --report-endpoint`: what the agent sends, as the official OpenTelemetry Python
//! classes read it, and delivery without loss through a proxy that misbehaves on command
//! (tests/otlp/fault_proxy.py) in front of the real `agent collector`: down, slow, 500, 503,
//! 429, reset connections, a full spool, the agent and the collector killed. Every process runs
//! inside a network namespace the test creates and removes. Needs root.

mod support;

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Daemon, LabGuard, get_in_netns, sample, serial};
use xtask::lab::Fault;

const COLLECTOR: u16 = 4318;
const PROXY: u16 = 4319;
const CONTROL: u16 = 4320;
const AGENT_METRICS: u16 = 9647;

/// A bare network namespace with loopback up, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("cdpt-{tag}{}", std::process::id() % 10000);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(argv: &[&str]) {
    let ok = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{argv:?}");
}

/// A process inside a namespace (`ip netns exec` execs it: the child is the process itself),
/// SIGKILLed on drop; its stderr is printed when a test fails.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(netns: &str, name: &str, dir: &Path, argv: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn");
        Self {
            child,
            name: name.into(),
            log,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        run(&["kill", "-TERM", &self.child.id().to_string()]);
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} ignored SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cdpt-push-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn proxy_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/otlp/fault_proxy.py").into()
}

/// The fault proxy in `netns`, forwarding to `upstream` (none: answers 200 itself).
fn proxy(netns: &str, dir: &Path, upstream: Option<&str>) -> (Proc, PathBuf) {
    proxy_with(netns, dir, upstream, &[])
}

fn proxy_with(netns: &str, dir: &Path, upstream: Option<&str>, extra: &[&str]) -> (Proc, PathBuf) {
    let requests = dir.join("requests.jsonl");
    let (listen, control) = (format!("127.0.0.1:{PROXY}"), format!("127.0.0.1:{CONTROL}"));
    let mut argv = vec![
        "python3",
        "-u",
        &proxy_path(),
        "--listen",
        &listen,
        "--control",
        &control,
        "--log",
        requests.to_str().expect("utf-8"),
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if let Some(u) = upstream {
        argv.extend(["--upstream".into(), u.into()]);
    }
    argv.extend(extra.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let p = Proc::spawn(netns, "fault proxy", dir, &argv);
    wait_until(Duration::from_secs(20), "the proxy", || {
        set_mode(netns, "ok").is_some()
    });
    (p, requests)
}

/// Sets the proxy's mode (see fault_proxy.py).
fn set_mode(netns: &str, mode: &str) -> Option<()> {
    let ns = format!("/var/run/netns/{netns}");
    let mode = mode.to_string();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", CONTROL)).ok()?;
        write!(
            s,
            "POST /_control HTTP/1.0\r\nContent-Length: {}\r\n\r\n{mode}",
            mode.len()
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        answer.contains(" 204 ").then_some(())
    })
    .join()
    .ok()?
}

fn requests(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn records(reqs: &[Value]) -> Vec<&Value> {
    reqs.iter()
        .filter_map(|r| r["records"].as_array())
        .flatten()
        .collect()
}

#[test]
fn reports_decode_with_the_official_classes_and_carry_node_mode_checks_and_sequence() {
    let _serial = serial();
    let lab = LabGuard::up("rpd");
    let node = lab.0.spec.nodes[0].clone();
    let dir = scratch("decode");
    let (_proxy, log) = proxy(&node.netns, &dir, None);
    let token = dir.join("token");
    std::fs::write(&token, "first-token\n").expect("token");
    let spool = dir.join("spool");
    let d = Daemon::start(
        &lab,
        "0",
        &[
            "--no-ebpf",
            "--report-endpoint",
            &format!("http://127.0.0.1:{PROXY}/"),
            "--report-interval",
            "0.5",
            "--report-token-file",
            token.to_str().expect("utf-8"),
            "--report-header",
            "x-cluster=lab",
            "--spool-dir",
            spool.to_str().expect("utf-8"),
        ],
    );
    wait_until(
        Duration::from_secs(10),
        "a clean report and its metrics",
        || {
            let reqs = requests(&log);
            !records(&reqs).is_empty() && reqs.iter().any(|r| r["path"] == "/v1/metrics")
        },
    );
    lab.0.fault(&node.name, Fault::RouteDelete).expect("inject");
    wait_until(
        Duration::from_secs(10),
        "a report with route.missing",
        || {
            records(&requests(&log))
                .iter()
                .any(|r| r["attributes"]["calico_dpagent.checks"][0] == "route.missing")
        },
    );
    std::fs::write(&token, "rotated-token\n").expect("token");
    wait_until(Duration::from_secs(10), "the rotated token", || {
        requests(&log)
            .iter()
            .any(|r| r["authorization"] == "Bearer rotated-token")
    });
    drop(d);

    let reqs = requests(&log);
    assert!(
        reqs.iter().all(|r| r.get("decode_error").is_none()),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .all(|r| r["content_type"] == "application/x-protobuf")
    );
    assert_eq!(reqs[0]["authorization"], "Bearer first-token");
    let recs = records(&reqs);
    let mut seqs = Vec::new();
    for r in &recs {
        let a = &r["attributes"];
        assert_eq!(
            a["calico_dpagent.schema"], "calico-dpagent.report/v1",
            "{r}"
        );
        assert_eq!(a["k8s.node.name"], node.name.as_str(), "{r}");
        assert_eq!(a["calico_dpagent.mode"], "VXLAN", "{r}");
        assert_eq!(r["event_name"], "calico_dpagent.report");
        assert_eq!(r["resource"]["service.name"], "calico-dataplane-agent");
        assert_eq!(r["resource"]["k8s.node.name"], node.name.as_str());
        assert!(r["resource"]["host.name"].is_string());
        // The body is the report; the attributes repeat its keys for pipelines that index them.
        let body = &r["body"];
        assert_eq!(body["schema"], "calico-dpagent.report/v1");
        assert_eq!(body["node"], node.name.as_str());
        assert_eq!(body["sequence"], a["calico_dpagent.sequence"]);
        assert_eq!(body["stream"], a["calico_dpagent.stream"]);
        seqs.push(a["calico_dpagent.sequence"].as_i64().expect("sequence"));
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let drift = recs
        .iter()
        .find(|r| r["body"]["verdict"] == "drift")
        .expect("a drift report");
    assert_eq!(drift["severity_number"], 13, "WARN");
    let finding = &drift["body"]["findings"][0];
    assert_eq!(finding["check"], "route.missing");
    assert!(finding["subject"].as_str().is_some_and(|s| s.contains('/')));
    assert!(recs.iter().any(|r| r["body"]["verdict"] == "clean"));
    // Counters as cumulative monotonic sums; the findings as a gauge per check and severity.
    let metrics: Vec<&Value> = reqs
        .iter()
        .filter_map(|r| r["metrics"].as_array())
        .flatten()
        .collect();
    let retrans = metrics
        .iter()
        .find(|m| m["name"] == "calico_dpagent.tcp.retransmits")
        .expect("retransmits");
    assert_eq!(
        (retrans["kind"].as_str(), retrans["monotonic"].as_bool()),
        (Some("sum"), Some(true))
    );
    assert_eq!(retrans["temporality"], 2, "cumulative");
    assert!(
        metrics
            .iter()
            .any(|m| m["name"] == "calico_dpagent.findings"
                && m["points"][0]["attributes"]["check"] == "route.missing")
    );
    // Everything delivered: nothing left in the spool.
    let left = std::fs::read_dir(spool.join("reports"))
        .expect("spool")
        .count();
    assert!(left <= 1, "{left} report(s) left in the spool");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `agent collector` (no auth: only this namespace's loopback reaches it) on `db`.
fn collector(netns: &str, dir: &Path) -> Proc {
    let db = dir.join("collector.db");
    let p = Proc::spawn(
        netns,
        "agent collector",
        dir,
        &[
            env!("CARGO_BIN_EXE_agent"),
            "collector",
            "--no-auth",
            "--listen",
            &format!("127.0.0.1:{COLLECTOR}"),
            "--db",
            db.to_str().expect("utf-8"),
        ],
    );
    wait_until(Duration::from_secs(30), "the collector", || {
        get_in_netns(netns, COLLECTOR, "/healthz").is_some_and(|(c, _)| c == 200)
    });
    p
}

/// `agent run` without eBPF in a bare namespace (no Calico: "unverifiable" reports), pushing
/// through the proxy with short timeouts so that every fault is met many times.
fn agent(netns: &str, dir: &Path, name: &str, extra: &[&str]) -> Proc {
    let spool = dir.join("spool");
    let socket = dir.join("agent.sock");
    let mut argv = vec![
        env!("CARGO_BIN_EXE_agent"),
        "run",
        "--no-ebpf",
        "--node-name",
        name,
        "--listen",
    ];
    let listen = format!("127.0.0.1:{AGENT_METRICS}");
    let proxied = format!("http://127.0.0.1:{PROXY}");
    argv.push(&listen);
    argv.extend([
        "--socket",
        socket.to_str().expect("utf-8"),
        "--spool-dir",
        spool.to_str().expect("utf-8"),
    ]);
    // The proxy, short retries and timeouts unless the test gives its own.
    for (flag, value) in [
        ("--report-endpoint", proxied.as_str()),
        ("--report-retry-max", "0.5"),
        ("--report-timeout", "1"),
        ("--log", "info"),
    ] {
        if !extra.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    argv.extend_from_slice(extra);
    let p = Proc::spawn(netns, "agent run", dir, &argv);
    wait_until(Duration::from_secs(30), "agent run", || {
        get_in_netns(netns, AGENT_METRICS, "/readyz").is_some_and(|(c, _)| c == 200)
    });
    p
}

fn agent_metric(netns: &str, series: &str) -> f64 {
    get_in_netns(netns, AGENT_METRICS, "/metrics")
        .map(|(_, body)| sample(&body, series))
        .unwrap_or(0.0)
}

/// The reports the collector stored for `node`, in the order it received them.
fn stored(netns: &str, node: &str) -> Vec<(String, u64)> {
    let Some((200, body)) = get_in_netns(netns, COLLECTOR, &format!("/v1/nodes/{node}/reports"))
    else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["reports"]
        .as_array()
        .expect("a list of reports")
        .iter()
        // A row is a run of consecutive reports in one state.
        .flat_map(|r| {
            let stream = r["stream"].as_str().expect("stream").to_string();
            let first = r["sequence"].as_u64().expect("sequence");
            let last = r["last_sequence"].as_u64().expect("last_sequence");
            (first..=last).map(move |s| (stream.clone(), s))
        })
        .collect()
}

/// The collector's view of `node`: its gaps as (from, to) ranges.
fn gaps(netns: &str, node: &str) -> Vec<(u64, u64)> {
    let (code, body) = get_in_netns(netns, COLLECTOR, "/v1/nodes").expect("/v1/nodes");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let n = v["nodes"]
        .as_array()
        .expect("a list of nodes")
        .iter()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("{node} not in {body}"));
    n["gaps"]
        .as_array()
        .expect("gaps")
        .iter()
        .map(|g| {
            (
                g["from"].as_u64().expect("from"),
                g["to"].as_u64().expect("to"),
            )
        })
        .collect()
}

/// The spool's last assigned sequence and the sequences still waiting in it.
/// The bytes of the reports waiting in the spool under `dir`.
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("spool/reports"))
        .expect("spool")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn spool_state(dir: &Path) -> (u64, Vec<u64>) {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("spool/state")).expect("spool state"),
    )
    .expect("state JSON");
    let mut waiting: Vec<u64> = std::fs::read_dir(dir.join("spool/reports"))
        .expect("spool")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    waiting.sort_unstable();
    (
        state["next_sequence"].as_u64().expect("next_sequence") - 1,
        waiting,
    )
}

#[test]
fn through_outages_errors_resets_and_kills_the_collector_gets_every_report_in_order() {
    let ns = Netns::new("rpf");
    let dir = scratch("faults");
    let mut coll = collector(&ns.0, &dir);
    let (_proxy, log) = proxy(&ns.0, &dir, Some(&format!("http://127.0.0.1:{COLLECTOR}")));
    let node = "push-node";
    let mut a = agent(&ns.0, &dir, node, &["--report-interval", "0.2"]);
    wait_until(Duration::from_secs(10), "the first reports", || {
        stored(&ns.0, node).len() >= 3
    });
    for (mode, result) in [
        ("down:2", "unreachable"),
        ("status:500", "server_error"),
        ("status:503", "throttled"),
        ("status:429", "throttled"),
        ("slow:1.5", "timeout"),
        ("reset", "unreachable"),
    ] {
        let before = agent_metric(
            &ns.0,
            &format!("calico_dpagent_report_push_total{{signal=\"logs\",result=\"{result}\"}}"),
        );
        set_mode(&ns.0, mode).expect("proxy mode");
        wait_until(
            Duration::from_secs(10),
            &format!("{mode} counted as {result} (from {before})"),
            || {
                agent_metric(
                    &ns.0,
                    &format!(
                        "calico_dpagent_report_push_total{{signal=\"logs\",result=\"{result}\"}}"
                    ),
                ) > before
            },
        );
        set_mode(&ns.0, "ok").expect("proxy mode");
        // Delivery resumes: the newest report reaches the collector.
        let (last, _) = spool_state(&dir);
        wait_until(
            Duration::from_secs(15),
            &format!("delivery after {mode}"),
            || stored(&ns.0, node).iter().any(|(_, s)| *s >= last),
        );
    }
    // The collector killed mid-stream and restarted on its database: what it acknowledged
    // before is still there (else the agent, which removed it from its spool, leaves a gap).
    coll.kill();
    std::thread::sleep(Duration::from_secs(1));
    coll = collector(&ns.0, &dir);
    // The agent killed while the endpoint refuses: its spool holds the reports.
    set_mode(&ns.0, "status:503").expect("proxy mode");
    std::thread::sleep(Duration::from_secs(2));
    // What `agent diag` shows the operator meanwhile: the daemon's local API.
    let mut sock = std::os::unix::net::UnixStream::connect(dir.join("agent.sock")).expect("socket");
    let (_, body) = support::http_get(&mut sock, "/v1/analysis").expect("local API");
    let status: Value = serde_json::from_str(&body).expect("JSON");
    let r = &status["daemon"]["report"];
    assert_eq!(r["last_result"], "throttled", "{r}");
    assert!(
        r["last_error"].as_str().is_some_and(|e| e.contains("503")),
        "{r}"
    );
    assert!(r["spooled"].as_u64().is_some_and(|n| n >= 3), "{r}");
    a.kill();
    let (last_before_kill, waiting) = spool_state(&dir);
    assert!(waiting.len() >= 3, "spooled while refused: {waiting:?}");
    // A kill between taking a sequence and writing its report loses that one report, by
    // design: the collector sees it as a gap, never a reused number.
    let lost: Vec<u64> = (waiting.last() != Some(&last_before_kill))
        .then_some(last_before_kill)
        .into_iter()
        .collect();
    set_mode(&ns.0, "ok").expect("proxy mode");
    a = agent(&ns.0, &dir, node, &["--report-interval", "0.2"]);
    wait_until(Duration::from_secs(15), "the spool to drain", || {
        stored(&ns.0, node)
            .iter()
            .any(|(_, s)| *s > last_before_kill)
    });
    a.terminate();
    let (last, waiting) = spool_state(&dir);
    // What the agent had not yet delivered when it stopped stays spooled for its next start.
    wait_until(
        Duration::from_secs(5),
        "every delivered report stored",
        || stored(&ns.0, node).len() as u64 == last - waiting.len() as u64 - lost.len() as u64,
    );

    let reports = stored(&ns.0, node);
    let streams: std::collections::BTreeSet<&String> = reports.iter().map(|(s, _)| s).collect();
    assert_eq!(
        streams.len(),
        1,
        "one stream across the agent's restart: {streams:?}"
    );
    let seqs: Vec<u64> = reports.iter().map(|(_, s)| *s).collect();
    // Every report, once, in the order generated — across the restart, the sequence went on.
    let expected: Vec<u64> = (1..=last)
        .filter(|s| !waiting.contains(s) && !lost.contains(s))
        .collect();
    assert_eq!(seqs, expected, "stored in order without gap or duplicate");
    assert_eq!(
        gaps(&ns.0, node),
        lost.iter().map(|s| (*s, *s)).collect::<Vec<_>>()
    );
    assert!(
        last > last_before_kill,
        "the restarted agent continued the sequence"
    );
    let reqs = requests(&log);
    for mode in [
        "status:500",
        "status:503",
        "status:429",
        "slow:1.5",
        "reset",
    ] {
        assert!(
            reqs.iter().any(|r| r["mode"] == mode),
            "{mode} was never met"
        );
    }
    drop(coll);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while the endpoint holds a request it has already stored: the agent waits for the
/// answer, so the report leaves its spool rather than being sent again by the next start.
#[test]
fn a_stopping_agent_finishes_the_request_in_flight() {
    let ns = Netns::new("rpi");
    let dir = scratch("inflight");
    let _coll = collector(&ns.0, &dir);
    let (_proxy, _log) = proxy(&ns.0, &dir, Some(&format!("http://127.0.0.1:{COLLECTOR}")));
    // Stored at once, answered two seconds later.
    set_mode(&ns.0, "slow:2").expect("proxy mode");
    let node = "inflight-node";
    let mut a = agent(
        &ns.0,
        &dir,
        node,
        &["--report-interval", "3600", "--report-timeout", "10"],
    );
    wait_until(Duration::from_secs(10), "the report stored", || {
        !stored(&ns.0, node).is_empty()
    });
    a.terminate();
    let (_, waiting) = spool_state(&dir);
    assert!(
        waiting.is_empty(),
        "delivered, yet still spooled: {waiting:?}"
    );
    let sequences: Vec<u64> = stored(&ns.0, node).into_iter().map(|(_, s)| s).collect();
    assert_eq!(sequences, [1]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spool_drops_the_oldest_reports_and_counts_each_exactly() {
    let ns = Netns::new("rps");
    let dir = scratch("full");
    let _coll = collector(&ns.0, &dir);
    let (_proxy, _log) = proxy(&ns.0, &dir, Some(&format!("http://127.0.0.1:{COLLECTOR}")));
    let node = "full-node";
    // With an interval of an hour each start sends exactly one report (its first
    // verification): every start is one report, so every drop is counted by one process.
    let once = ["--report-interval", "3600", "--spool-max-bytes", "4096"];
    // Killed only once its report is in: a kill is the next start's business, not this one's.
    let first = agent(&ns.0, &dir, node, &once);
    wait_until(Duration::from_secs(10), "the first report", || {
        stored(&ns.0, node).len() == 1
    });
    drop(first);
    set_mode(&ns.0, "status:503").expect("proxy mode");
    let mut dropped = 0;
    let mut starts = 0;
    while dropped < 4 {
        starts += 1;
        assert!(starts < 40, "the spool never filled");
        let before = spool_state(&dir).1;
        let a = agent(&ns.0, &dir, node, &once);
        let seq = 1 + starts;
        // The sequence is taken before the report is written and the oldest dropped, and the
        // drops are counted after: wait for all three, the count being what left the disk.
        let mut gone = 0;
        wait_until(Duration::from_secs(10), "the report spooled", || {
            let (last, waiting) = spool_state(&dir);
            if last != seq || !waiting.contains(&seq) || spool_bytes(&dir) > 4096 {
                return false;
            }
            gone = before.iter().filter(|s| !waiting.contains(s)).count();
            agent_metric(
                &ns.0,
                "calico_dpagent_report_dropped_total{reason=\"spool_full\"}",
            ) == gone as f64
        });
        dropped += gone;
        drop(a);
    }
    let (last, waiting) = spool_state(&dir);
    let bytes = spool_bytes(&dir);
    assert!(bytes <= 4096, "the spool holds {bytes} bytes");
    // The oldest were dropped: what waits is the newest, contiguous up to the last.
    assert_eq!(
        waiting,
        ((last - waiting.len() as u64 + 1)..=last).collect::<Vec<_>>()
    );
    set_mode(&ns.0, "ok").expect("proxy mode");
    let a = agent(&ns.0, &dir, node, &once);
    wait_until(Duration::from_secs(15), "delivery", || {
        stored(&ns.0, node).iter().any(|(_, s)| *s == last)
    });
    drop(a);
    // The collector sees exactly the dropped reports as its one gap, right after the report
    // delivered before the outage.
    let gaps = gaps(&ns.0, node);
    assert_eq!(gaps, [(2, 1 + dropped as u64)], "dropped {dropped}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Headless Chromium's DOM of `url`, loaded from inside `netns`.
fn dump_dom(netns: &str, dir: &Path, url: &str) -> String {
    let profile = dir.join("chromium-profile");
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "timeout", "60", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .stderr(Stdio::null())
        .output()
        .expect("chromium");
    assert!(out.status.success(), "chromium: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cluster_page_lists_the_lab_nodes_and_shows_the_injected_fault() {
    let _serial = serial();
    let lab = LabGuard::up("rpc");
    let (a, b) = (lab.0.spec.nodes[0].clone(), lab.0.spec.nodes[1].clone());
    let dir = scratch("page");
    let ds = lab.datastore();
    // The collector on node-a's underlay address: node-b's agent reaches it across the lab.
    let listen = format!("{}:{COLLECTOR}", a.ip);
    let db = dir.join("collector.db");
    let _coll = Proc::spawn(
        &a.netns,
        "agent collector",
        &dir,
        &[
            env!("CARGO_BIN_EXE_agent"),
            "collector",
            "--no-auth",
            "--listen",
            &listen,
            "--db",
            db.to_str().expect("utf-8"),
        ],
    );
    let endpoint = format!("http://{listen}");
    let agents: Vec<Proc> = [&a, &b]
        .iter()
        .map(|n| {
            let spool = dir.join(format!("spool-{}", n.name));
            let socket = dir.join(format!("{}.sock", n.name));
            Proc::spawn(
                &n.netns,
                &format!("agent run on {}", n.name),
                &dir,
                &[
                    env!("CARGO_BIN_EXE_agent"),
                    "run",
                    "--no-ebpf",
                    "--node-name",
                    &n.name,
                    "--datastore",
                    ds.to_str().expect("utf-8"),
                    "--grace",
                    "0",
                    "--listen",
                    "127.0.0.1:9647",
                    "--socket",
                    socket.to_str().expect("utf-8"),
                    "--spool-dir",
                    spool.to_str().expect("utf-8"),
                    "--report-endpoint",
                    &endpoint,
                ],
            )
        })
        .collect();
    let findings = || {
        std::thread::spawn({
            let (ns, ip) = (a.netns.clone(), a.ip);
            move || -> Option<String> {
                let fd = std::fs::File::open(format!("/var/run/netns/{ns}")).ok()?;
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                let mut s = std::net::TcpStream::connect((ip, COLLECTOR)).ok()?;
                support::http_get(&mut s, "/v1/findings").map(|(_, body)| body)
            }
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or_default()
    };
    lab.0.fault(&b.name, Fault::RouteDelete).expect("inject");
    wait_until(
        Duration::from_secs(20),
        "node-b's finding at the collector",
        || {
            let f = findings();
            f.contains(&b.name) && f.contains("route.missing")
        },
    );
    let dom = dump_dom(&a.netns, &dir, &format!("{endpoint}/"));
    assert!(dom.contains(&a.name) && dom.contains(&b.name), "{dom}");
    assert!(dom.contains("route.missing"), "{dom}");
    // The finding's subject: the block route node-b lost.
    let v: Value = serde_json::from_str(&findings()).expect("JSON");
    let list = &v["findings"];
    let subject = list
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["node"] == b.name.as_str() && f["check"] == "route.missing")
        .and_then(|f| f["subject"].as_str())
        .expect("node-b's route.missing")
        .to_string();
    assert!(dom.contains(&subject), "{subject} not on the page");
    // node-a is healthy: none of its findings is drift.
    assert!(
        !list
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["node"] == a.name.as_str() && f["severity"] != "info"),
        "{v}"
    );
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA and a certificate for 127.0.0.1 that it signed, made with openssl in `dir`: (ca.pem,
/// server.pem, server.key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=cdpa-test-ca -keyout ca.key -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj /CN=127.0.0.1 -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
  -extfile server.ext -out server.pem
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn an_https_endpoint_is_trusted_through_the_configured_ca_and_only_then() {
    let ns = Netns::new("rpt");
    let dir = scratch("tls");
    let (ca, cert, key) = certificates(&dir);
    let (_proxy, log) = proxy_with(
        &ns.0,
        &dir,
        None,
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let https = format!("https://127.0.0.1:{PROXY}");
    let trusting = dir.join("trusting");
    std::fs::create_dir_all(&trusting).expect("dir");
    let a = agent(
        &ns.0,
        &trusting,
        "tls-node",
        &[
            "--report-endpoint",
            &https,
            "--report-ca-file",
            ca.to_str().expect("utf-8"),
        ],
    );
    // A delivered report is followed by its metrics: both are in before the agent goes.
    wait_until(Duration::from_secs(10), "a report over https", || {
        let reqs = requests(&log);
        !records(&reqs).is_empty() && reqs.iter().any(|r| r["path"] == "/v1/metrics")
    });
    drop(a);
    let delivered = requests(&log).len();

    // The same endpoint without the CA: the system's roots do not know it, nothing is sent,
    // and the report waits in the spool.
    let untrusting = dir.join("untrusting");
    std::fs::create_dir_all(&untrusting).expect("dir");
    let mut a = agent(
        &ns.0,
        &untrusting,
        "tls-node",
        &["--report-endpoint", &https],
    );
    wait_until(Duration::from_secs(10), "a refused handshake", || {
        agent_metric(
            &ns.0,
            "calico_dpagent_report_push_total{signal=\"logs\",result=\"unreachable\"}",
        ) >= 1.0
    });
    a.terminate();
    assert_eq!(
        requests(&log).len(),
        delivered,
        "nothing reached the endpoint"
    );
    let log_text = std::fs::read_to_string(untrusting.join("agent run.log")).unwrap_or_default();
    assert!(log_text.contains("certificate"), "{log_text}");
    assert!(
        !spool_state(&untrusting).1.is_empty(),
        "the report waits in the spool"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
