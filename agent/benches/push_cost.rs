//! The agent's cost per report push, against the floor in the same run: one bare HTTP POST of
//! the same OTLP body on the same client stack. Each push is the whole path `agent run` takes
//! — build the report, spool it (fsync'd), encode it, POST it, remove it — one report at a time
//! (as a change of findings sends it). The endpoint is a local server that answers 200.
//! Prints a Markdown table for BENCHMARKS.md.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent::{
    report::{
        metrics::{Metrics, PushLabels},
        otlp::{self, CounterSummary, Report},
        push::{PushConfig, Pusher},
    },
    verify::{CheckId, Finding, Severity, Verification},
};
use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;

const PUSHES: usize = 300;

/// This process's user + system CPU time.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(f64::NAN, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

fn report() -> Report {
    let findings = (0..3)
        .map(|i| {
            Finding::new(
                CheckId::RouteMissing,
                Severity::Critical,
                format!("10.244.{i}.0/26"),
            )
            .expected("10.244.0.0/26 via 10.244.0.1 dev vxlan.calico onlink")
            .actual("absent")
        })
        .collect();
    let v = Verification {
        findings,
        skipped: Vec::new(),
        with_datastore: true,
        notes: Vec::new(),
    };
    let mut counters = CounterSummary::default();
    counters.drops.insert("NO_SOCKET".into(), 12);
    counters.add_interface("workload", "ingress", 1000, 100_000);
    Report::new("node-a", &["VXLAN".into()], Some(&v), counters, 1)
}

async fn floor_server() -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route(
        "/v1/{signal}",
        axum::routing::post(|_body: axum::body::Bytes| async { "" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let addr = rt.block_on(floor_server())?;
    let url = format!("http://{addr}");

    // The floor: the same request body, POSTed on the same client stack, nothing else.
    let mut r = report();
    r.stream = "bench".into();
    r.sequence = 1;
    let json = serde_json::to_string(&r)?;
    let body = otlp::logs_request(&otlp::resource("node-a", "host"), &[(r, json)]).encode_to_vec();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<axum::body::Bytes>>();
    let (floor_wall, floor_cpu) = rt.block_on(async {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        for _ in 0..PUSHES {
            let req = hyper::Request::post(format!("{url}/v1/logs"))
                .header("content-type", "application/x-protobuf")
                .body(Full::new(axum::body::Bytes::from(body.clone())))?;
            let resp = client.request(req).await?;
            resp.into_body().collect().await?;
        }
        anyhow::Ok((t0.elapsed(), cpu_seconds() - c0))
    })?;

    let spool = std::env::temp_dir().join(format!("push-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let metrics = Arc::new(Metrics::new());
    let _guard = rt.enter();
    let pusher = Pusher::start(
        PushConfig {
            endpoint: url,
            interval: Duration::from_secs(3600),
            token_file: None,
            headers: Vec::new(),
            ca_file: None,
            spool_dir: spool.clone(),
            spool_max_bytes: 64 << 20,
            retry_max: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        },
        "node-a",
        metrics.clone(),
    )
    .context("starting the pusher")?;
    let delivered = || {
        metrics
            .report_push
            .get_or_create(&PushLabels {
                signal: "logs".into(),
                result: "ok".into(),
            })
            .get()
    };
    let (t0, c0) = (Instant::now(), cpu_seconds());
    for i in 0..PUSHES {
        pusher.send(report());
        let wait = Instant::now();
        while delivered() < i as u64 + 1 {
            anyhow::ensure!(
                wait.elapsed() < Duration::from_secs(10),
                "report {i} not delivered"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let (ours_wall, ours_cpu) = (t0.elapsed(), cpu_seconds() - c0);
    pusher.stop();
    let _ = std::fs::remove_dir_all(&spool);

    let per = |d: Duration| d.as_secs_f64() * 1e3 / PUSHES as f64;
    let per_cpu = |s: f64| s * 1e3 / PUSHES as f64;
    println!("| path | wall per report | CPU per report |");
    println!("|---|---|---|");
    println!(
        "| bare POST of the same OTLP body (the floor) | {:.3} ms | {:.3} ms |",
        per(floor_wall),
        per_cpu(floor_cpu)
    );
    println!(
        "| `agent run`'s push: build, spool (fsync), encode, POST, unspool | {:.3} ms | {:.3} ms |",
        per(ours_wall),
        per_cpu(ours_cpu)
    );
    println!(
        "\n- per report, ours / the floor: **{:.1}×** wall, {:.1}× CPU ({PUSHES} reports, one at a time; the wall time includes the bench's 50 µs polling for delivery)",
        ours_wall.as_secs_f64() / floor_wall.as_secs_f64(),
        ours_cpu / floor_cpu
    );
    Ok(())
}
