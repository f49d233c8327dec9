//! What `agent collector` sustains: 5,000 simulated nodes push their reports (one OTLP/HTTP
//! protobuf request per report, as the agent does: a few findings, counters) over 32 concurrent
//! keep-alive connections into the real receiver — authentication, decoding, SQLite with
//! `synchronous=FULL` and group commit — on a database in the temporary directory. In the same
//! run, the floor: an HTTP server on the same stack (tokio, hyper, axum) that reads the body and
//! answers 200 without decoding or storing. Prints a Markdown section for BENCHMARKS.md;
//! `cargo xtask bench` runs it. Needs no root.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use agent::{
    collector::{self, App, Authenticator, Store},
    report::otlp::{self, CounterSummary, InterfaceCounts, Report, ReportFinding},
};
use anyhow::Context as _;
use axum::{Router, body::Bytes, routing::post};
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;

const NODES: u64 = 5000;
const REPORTS_PER_NODE: u64 = 3;
const CONNECTIONS: usize = 32;
const TOKEN: &str = "bench-token";

fn report(node: u64, seq: u64) -> Report {
    let name = format!("bench-node-{node:05}");
    // Every tenth node drifts; all have the counters a busy node has.
    let findings: Vec<ReportFinding> = if node.is_multiple_of(10) {
        (0..3)
            .map(|i| ReportFinding {
                check: ["route.missing", "fdb.missing", "mtu.mismatch"][i].into(),
                severity: "critical".into(),
                subject: format!("10.244.{}.0/26", i + 1),
                expected: format!(
                    "10.244.{}.0/26 via 10.244.{}.0 dev vxlan.calico onlink (block of node-{i})",
                    i + 1,
                    i + 1
                ),
                actual: "no route".into(),
                hint: format!("ip route show 10.244.{}.0/26; calicoctl ipam check", i + 1),
                since: 1_700_000_000,
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut counters = CounterSummary {
        since_ms: 1_700_000_000_000,
        tcp_retransmits: 1234,
        conntrack_entries: Some(20_000),
        conntrack_max: Some(262_144),
        ..CounterSummary::default()
    };
    for reason in [
        "NO_SOCKET",
        "NETFILTER_DROP",
        "OTHERHOST",
        "TCP_CSUM",
        "NEIGH_FAILED",
    ] {
        counters.drops.insert(reason.into(), 1000 + node);
    }
    for class in ["tunnel", "underlay", "workload", "host"] {
        for direction in ["ingress", "egress"] {
            counters.interfaces.push(InterfaceCounts {
                iface_class: class.into(),
                direction: direction.into(),
                packets: 1_000_000 + node,
                bytes: 1_500_000_000 + node,
            });
        }
    }
    Report::example(
        &name,
        &format!("{node:016x}"),
        seq,
        1_700_000_000_000 + seq * 60_000,
        findings,
        counters,
    )
}

/// Every request of the run, in sending order: round after round over all nodes.
fn bodies() -> Vec<Bytes> {
    (1..=REPORTS_PER_NODE)
        .flat_map(|seq| (0..NODES).map(move |n| (n, seq)))
        .map(|(n, seq)| {
            let r = report(n, seq);
            let json = serde_json::to_string(&r).unwrap_or_default();
            let resource = otlp::resource(&r.node, &r.node);
            Bytes::from(otlp::logs_request(&resource, &[(r, json)]).encode_to_vec())
        })
        .collect()
}

struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// Sends every body over `CONNECTIONS` keep-alive connections; every answer must be 200.
async fn drive(port: u16, bodies: Arc<Vec<Bytes>>) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (next, bodies) = (next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let req = hyper::Request::post("/v1/logs")
                    .header("host", "collector")
                    .header("content-type", "application/x-protobuf")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Full::new(body.clone()))?;
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                let status = resp.status();
                let answer = resp.into_body().collect().await?.to_bytes();
                latencies.push(t.elapsed());
                anyhow::ensure!(
                    status == hyper::StatusCode::OK,
                    "request {i}: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.context("client task")??);
    }
    let wall = start.elapsed();
    latencies.sort();
    Ok(Run { wall, latencies })
}

/// Serves `app` on loopback from `rt`; the port.
fn serve(rt: &tokio::runtime::Runtime, app: Router) -> anyhow::Result<u16> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

/// The client on its own thread and runtime, as separate from the server as one process allows.
fn client(port: u16, bodies: Arc<Vec<Bytes>>) -> anyhow::Result<Run> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(drive(port, bodies))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::temp_dir().join(format!("collector-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> anyhow::Result<String> {
        let token = dir.join("token");
        std::fs::write(&token, TOKEN)?;
        let bodies = Arc::new(bodies());
        let mean_body = bodies.iter().map(Bytes::len).sum::<usize>() / bodies.len().max(1);
        // The server as `agent collector` runs it: a multi-threaded runtime on both cores.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;

        let floor_port = serve(
            &rt,
            Router::new().route(
                "/v1/logs",
                post(|body: axum::body::Body| async move {
                    let _ = body.collect().await;
                    axum::http::StatusCode::OK
                }),
            ),
        )?;
        let floor = client(floor_port, bodies.clone())?;

        let store = Store::open(&dir.join("collector.db"))?;
        let app = App::new(
            store.clone(),
            Authenticator::token_file(&token)?,
            collector::DEFAULT_MAX_BODY_BYTES,
            Duration::from_secs(180),
        );
        let port = serve(&rt, collector::router(app))?;
        let ours = client(port, bodies.clone())?;

        // Everything acknowledged is there, once, without gaps.
        let nodes = rt.block_on(store.read(collector::store::nodes))?;
        let stored: u64 = nodes.iter().map(|n| n.stored).sum();
        let missing: u64 = nodes.iter().map(|n| n.missing()).sum();
        anyhow::ensure!(
            nodes.len() as u64 == NODES && stored == NODES * REPORTS_PER_NODE && missing == 0,
            "stored {} nodes, {stored} reports, {missing} missing",
            nodes.len()
        );
        let db_bytes: u64 = ["collector.db", "collector.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum();
        rt.block_on(store.close());
        let process = as_a_process(&dir, &token, bodies.clone())?;

        let mut md = format!(
            "{NODES} nodes × {REPORTS_PER_NODE} reports = {} requests of one report each (protobuf, mean {mean_body} bytes: counters for 5 drop reasons and 8 interface classes, every tenth node with 3 findings), over {CONNECTIONS} keep-alive connections.\n\n\
             | server | reports/s | p50 latency (ms) | p99 latency (ms) | max (ms) |\n|---|---|---|---|---|\n",
            bodies.len()
        );
        for (name, run) in [
            (
                "`agent collector` (token auth, decode, SQLite WAL `synchronous=FULL`, group commit)",
                &ours,
            ),
            (
                "floor: same HTTP stack, reads the body, answers 200, stores nothing",
                &floor,
            ),
        ] {
            let _ = writeln!(
                md,
                "| {name} | **{:.0}** | {} | {} | {} |",
                run.rate(),
                ms(run.percentile(0.50)),
                ms(run.percentile(0.99)),
                ms(run.latencies.last().copied().unwrap_or_default())
            );
        }
        let _ = writeln!(
            md,
            "\n- collector / floor throughput: {:.2}; every report stored once, no gap; database after the run: {:.1} MiB\n- target: ≥ 2,000 reports/s on this 2-core machine: **{}**",
            ours.rate() / floor.rate(),
            db_bytes as f64 / (1024.0 * 1024.0),
            if ours.rate() >= 2000.0 {
                "met"
            } else {
                "not met"
            }
        );
        md.push_str(&process);
        Ok(md)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", result?);
    Ok(())
}

/// `agent collector` as the chart runs it (the release binary, its own process): its memory at
/// idle and at the peak of the same ingest, and what the read side costs once 5,000 nodes
/// have reported — `/v1/nodes`, `/v1/findings` and the cluster page, each the median of 5.
fn as_a_process(
    dir: &std::path::Path,
    token: &std::path::Path,
    bodies: Arc<Vec<Bytes>>,
) -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("collector")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--db")
        .arg(dir.join("process.db"))
        .arg("--token-file")
        .arg(token)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting agent collector")?;
    let result = (|| -> anyhow::Result<String> {
        let start = Instant::now();
        while get(port, "/healthz").map(|(code, _, _)| code) != Some(200) {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "no /healthz");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = |field: &str| -> anyhow::Result<f64> {
            let text = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(field)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .map(|kib: f64| kib / 1024.0)
                .with_context(|| format!("{field} in /proc/<pid>/status"))
        };
        let idle = status("VmRSS:")?;
        let run = client(port, bodies)?;
        let mut md = format!(
            "\n`agent collector` as its own process (the release binary): {:.0} reports/s for the same load.\n\n| | |\n|---|---|\n| RSS at idle | {idle:.1} MiB |\n| peak RSS (VmHWM) through the 5,000-node ingest | {:.1} MiB |\n",
            run.rate(),
            status("VmHWM:")?
        );
        for path in ["/v1/nodes", "/v1/findings", "/"] {
            let mut times = Vec::new();
            let mut size = 0;
            for _ in 0..5 {
                let t = Instant::now();
                let (code, len, _) = get(port, path).context("GET")?;
                anyhow::ensure!(code == 200, "{path}: HTTP {code}");
                times.push(t.elapsed());
                size = len;
            }
            times.sort();
            let _ = writeln!(
                md,
                "| `GET {path}` with 5,000 nodes (median of 5; {:.0} KiB) | {} ms |",
                size as f64 / 1024.0,
                ms(times[2])
            );
        }
        let _ = writeln!(
            md,
            "| peak RSS after those reads | {:.1} MiB |",
            status("VmHWM:")?
        );
        Ok(md)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// One HTTP/1.0 GET (the read API needs no token): status, body length, body.
fn get(port: u16, path: &str) -> Option<(u16, usize, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.len(), body.to_string()))
}
