//! One-shot `agent check` at real cluster sizes, as an operator runs it: a network namespace
//! holding node 0's real VXLAN state for 100 to 10,000 remote nodes (a route, a permanent ARP
//! entry and an FDB entry each), the datastore as files printed by `kubectl`/`calicoctl` in
//! YAML and in JSON, and the release binary started for every run (process start, reading
//! the kernel, loading the datastore, verifying, printing). The floor is iproute2 dumping the
//! same state (`ip -d link`, `ip addr`, `ip -d route show table all`, `ip neigh show nud
//! all`, `bridge fdb show`, `ip rule`), also one process each. Prints a Markdown table for
//! BENCHMARKS.md. Needs root; `cargo xtask bench` runs it (`--scale-only` runs it alone).
//! `AGENT_BENCH_SIZES=100,1000` measures other sizes; `AGENT_BENCH_RUNS=N` sets the runs per measure; `AGENT_BENCH_KEEP=1` leaves the
//! namespaces and datastore files in place (named on stderr) for profiling.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xtask::cluster::{Cluster, Format};

const SIZES: [u32; 4] = [100, 1_000, 5_000, 10_000];
const AGENT: &str = env!("CARGO_BIN_EXE_agent");
/// The floor: what `agent diag --bundle-out` captures of the same state, with iproute2.
const FLOOR: [&[&str]; 6] = [
    &["ip", "-d", "link", "show"],
    &["ip", "addr", "show"],
    &["ip", "-d", "route", "show", "table", "all"],
    &["ip", "neigh", "show", "nud", "all"],
    &["bridge", "fdb", "show"],
    &["ip", "rule", "show"],
];

/// Runs per measure (median reported): fewer at the largest sizes, where one run is long.
fn runs(nodes: u32) -> usize {
    match std::env::var("AGENT_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        Some(r) if r > 0 => r,
        _ if nodes >= 5_000 => 5,
        _ => 9,
    }
}

/// What one process cost.
#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    code: i32,
}

/// Starts `argv` (in the calling thread's network namespace), drains its output and waits.
fn spawn(argv: &[&str], keep_stdout: bool) -> anyhow::Result<(Run, String)> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let start = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        if keep_stdout {
            stdout.read_to_string(&mut out)?;
        } else {
            std::io::copy(&mut stdout, &mut std::io::sink())?;
        }
    }
    let status = child.wait()?;
    let wall = start.elapsed();
    Ok((
        Run {
            wall,
            code: status.code().unwrap_or(-1),
        },
        out,
    ))
}

/// The median wall time over `n` runs of `one`.
fn measure(n: usize, mut one: impl FnMut() -> anyhow::Result<Run>) -> anyhow::Result<Run> {
    let mut all = (0..n)
        .map(|_| one())
        .collect::<anyhow::Result<Vec<Run>>>()?;
    all.sort_by_key(|r| r.wall);
    Ok(all[all.len() / 2])
}

/// The process's peak RSS in MiB, from GNU time: `ru_maxrss` read by a parent as large as
/// this bench would include the bench's own memory (a child's high-water mark starts from
/// the parent it was forked from).
fn peak_rss(argv: &[String], scratch: &Path) -> anyhow::Result<f64> {
    let out = scratch.join("maxrss");
    let out_arg = out.to_string_lossy().into_owned();
    let mut full: Vec<&str> = vec!["/usr/bin/time", "-f", "%M", "-o", &out_arg];
    full.extend(argv.iter().map(String::as_str));
    spawn(&full, false)?;
    let text = std::fs::read_to_string(&out).context("GNU time's output (apt-get install time)")?;
    // After "Command exited with non-zero status 1" when the check found drift.
    let kib: f64 = text
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("GNU time's %M in {text:?}"))?;
    Ok(kib / 1024.0)
}

struct Row {
    nodes: u32,
    routes: usize,
    yaml_mib: f64,
    json_mib: f64,
    floor: Run,
    json: Run,
    yaml: Run,
    none: Run,
    /// Peak RSS (MiB) from JSON, YAML and without a datastore.
    rss: [f64; 3],
    verdict: String,
}

fn write_datastore(dir: &Path, cluster: Cluster, format: Format) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = 0;
    for (name, text) in cluster.datastore(format) {
        bytes += text.len();
        std::fs::write(dir.join(name), text)?;
    }
    Ok(bytes as f64 / (1024.0 * 1024.0))
}

fn check_args(datastore: Option<&Path>) -> Vec<String> {
    let mut argv: Vec<String> = [AGENT, "check", "--no-daemon", "--node-name"]
        .map(String::from)
        .into();
    argv.push(Cluster::local());
    if let Some(d) = datastore {
        argv.push("--datastore".into());
        argv.push(d.to_string_lossy().into_owned());
    }
    argv
}

fn agent(argv: &[String]) -> anyhow::Result<Run> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (run, _) = spawn(&argv, false)?;
    // 0 clean, 1 drift (this namespace has no Felix chains): both are complete answers.
    if !(0..=1).contains(&run.code) {
        bail!("`{}` exited {}", argv.join(" "), run.code);
    }
    Ok(run)
}

fn measure_size(nodes: u32, tmp: &Path) -> anyhow::Result<Row> {
    let cluster = Cluster::new(nodes);
    let (yaml_dir, json_dir) = (
        tmp.join(format!("yaml-{nodes}")),
        tmp.join(format!("json-{nodes}")),
    );
    let yaml_mib = write_datastore(&yaml_dir, cluster, Format::Yaml)?;
    let json_mib = write_datastore(&json_dir, cluster, Format::Json)?;
    let ns = format!("cdpb-cs{}", std::process::id() % 10000);
    xtask::sh::run(&["ip", "netns", "add", &ns])?;
    let result = (|| {
        cluster.program(&ns)?;
        let path = format!("/var/run/netns/{ns}");
        let (yaml_dir, json_dir, scratch) = (yaml_dir.clone(), json_dir.clone(), tmp.to_path_buf());
        std::thread::spawn(move || -> anyhow::Result<Row> {
            // Children inherit this thread's namespace: no `ip netns exec` in what is timed.
            let fd = std::fs::File::open(&path)?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let routes = spawn(FLOOR[2], true)?.1.lines().count();
            let n = runs(nodes);
            let floor = measure(n, || {
                let mut total = Run {
                    wall: Duration::ZERO,
                    code: 0,
                };
                for argv in FLOOR {
                    total.wall += spawn(argv, false)?.0.wall;
                }
                Ok(total)
            })?;
            let (json_args, yaml_args, none_args) = (
                check_args(Some(&json_dir)),
                check_args(Some(&yaml_dir)),
                check_args(None),
            );
            let verdict = {
                let argv: Vec<&str> = json_args.iter().map(String::as_str).collect();
                let (_, out) = spawn(&argv, true)?;
                out.lines()
                    .find_map(|l| l.strip_prefix("verdict: "))
                    .unwrap_or("?")
                    .to_string()
            };
            // Interleaved, so that the machine's drift during the run hits all three alike.
            let (mut json, mut yaml, mut none) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                json.push(agent(&json_args)?);
                yaml.push(agent(&yaml_args)?);
                none.push(agent(&none_args)?);
            }
            let pick = |v: Vec<Run>| {
                let mut it = v.into_iter();
                measure(n, || it.next().context("run"))
            };
            let rss = [
                peak_rss(&json_args, &scratch)?,
                peak_rss(&yaml_args, &scratch)?,
                peak_rss(&none_args, &scratch)?,
            ];
            Ok(Row {
                nodes,
                routes,
                yaml_mib,
                json_mib,
                floor,
                json: pick(json)?,
                yaml: pick(yaml)?,
                none: pick(none)?,
                rss,
                verdict,
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
    })();
    if std::env::var_os("AGENT_BENCH_KEEP").is_some() {
        eprintln!(
            "kept for profiling: namespace {ns}, {} and {}",
            yaml_dir.display(),
            json_dir.display()
        );
        return result;
    }
    let _ = xtask::sh::run(&["ip", "netns", "del", &ns]);
    let _ = std::fs::remove_dir_all(&yaml_dir);
    let _ = std::fs::remove_dir_all(&json_dir);
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sizes() -> anyhow::Result<Vec<u32>> {
    match std::env::var("AGENT_BENCH_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .with_context(|| format!("AGENT_BENCH_SIZES: {s:?} is not a node count"))
            })
            .collect(),
        Err(_) => Ok(SIZES.to_vec()),
    }
}

fn main() -> anyhow::Result<()> {
    let tmp: PathBuf = std::env::temp_dir().join(format!("cdpb-scale-{}", std::process::id()));
    let rows = sizes()?
        .into_iter()
        .map(|n| measure_size(n, &tmp))
        .collect::<anyhow::Result<Vec<Row>>>();
    if std::env::var_os("AGENT_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let rows = rows?;
    let mut md = String::from(
        "| remote nodes | routes | datastore YAML / JSON (MiB) | iproute2 dump, the floor (ms) | `check` from JSON (ms) | / floor | from YAML (ms) | / floor | without a datastore (ms) | / floor | peak RSS JSON / YAML / none (MiB) | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let f = ms(r.floor.wall);
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} / {:.1} | {:.1} | {:.1} | **{:.2}** | {:.1} | **{:.2}** | {:.1} | {:.2} | {:.1} / {:.1} / {:.1} | {} |",
            r.nodes,
            r.routes,
            r.yaml_mib,
            r.json_mib,
            f,
            ms(r.json.wall),
            ms(r.json.wall) / f,
            ms(r.yaml.wall),
            ms(r.yaml.wall) / f,
            ms(r.none.wall),
            ms(r.none.wall) / f,
            r.rss[0],
            r.rss[1],
            r.rss[2],
            r.verdict
        );
    }
    // Growth between consecutive sizes, against the growth of the state itself.
    let mut growth = Vec::new();
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let x = |f: fn(&Row) -> Duration| ms(f(b)) / ms(f(a));
        growth.push(format!(
            "{} → {} nodes (state ×{:.1}): floor ×{:.2}, JSON ×{:.2}, YAML ×{:.2}, none ×{:.2}",
            a.nodes,
            b.nodes,
            f64::from(b.nodes) / f64::from(a.nodes),
            x(|r| r.floor.wall),
            x(|r| r.json.wall),
            x(|r| r.yaml.wall),
            x(|r| r.none.wall)
        ));
    }
    if let Some(r) = rows.iter().find(|r| r.nodes == 5_000) {
        let f = ms(r.floor.wall);
        let (json, yaml) = (ms(r.json.wall) / f, ms(r.yaml.wall) / f);
        let rss = r.rss.iter().copied().fold(0.0, f64::max);
        let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
        let _ = writeln!(
            md,
            "\nTargets at 5,000 nodes: from JSON {json:.2}× the floor (≤ 3×: {}), from YAML \
             {yaml:.2}× (≤ 5×: {}), peak RSS {rss:.1} MiB (< 80 MiB: {}).",
            verdict(json <= 3.0),
            verdict(yaml <= 5.0),
            verdict(rss < 80.0)
        );
    }
    if !growth.is_empty() {
        let _ = writeln!(md, "\nGrowth of the median times: {}.", growth.join("; "));
    }
    print!("{md}");
    Ok(())
}
