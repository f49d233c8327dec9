//! The `agent` command line. Every flag can also be set from an `AGENT_*` environment variable.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use agent::{
    analysis::{self, Analysis},
    desired::{Datastore, files, kube},
    diag, node,
    observed::{self, bundle},
    verify::{GraceTracker, Policy},
};
use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "Calico dataplane agent: what Felix programmed on this node, and what is wrong with it"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `agent=debug`.
    #[arg(long, env = "AGENT_LOG", default_value = "warn", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this node's Calico dataplane: findings first, then devices, routes, FDB/ARP, rules.
    Diag {
        #[command(flatten)]
        input: Input,
        /// Also attach the observe-only eBPF programs for this many seconds while analysing:
        /// drops per kernel reason and interface class, dropped flows, TCP retransmissions and
        /// MTU signals (correlated with the mtu.* findings); 0 skips it.
        #[arg(long, env = "AGENT_DROPS_SECONDS", default_value_t = 1)]
        drops_seconds: u64,
        /// Do not load eBPF programs (no drop or MTU-signal summary).
        #[arg(long, env = "AGENT_NO_EBPF")]
        no_ebpf: bool,
        /// Instead of analysing, write a bundle of this node's dataplane (the text dumps
        /// `--bundle` reads) into DIR, for offline analysis elsewhere.
        #[arg(long, env = "AGENT_BUNDLE_OUT", conflicts_with = "bundle")]
        bundle_out: Option<PathBuf>,
    },
    /// Verify the dataplane: exit 0 when clean, 1 when drift is found, 2 when it could not verify.
    Check {
        #[command(flatten)]
        input: Input,
    },
    /// Count traffic, flows, MTU signals and drops with the agent's observe-only eBPF programs.
    Flows(FlowsArgs),
}

#[derive(Debug, clap::Args)]
struct FlowsArgs {
    /// Node name as Felix knows it; defaults to $NODENAME, then the hostname.
    #[arg(long, env = "AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// Seconds to count before printing (and between refreshes with --watch).
    #[arg(long, env = "AGENT_FLOWS_SECONDS", default_value_t = 5)]
    seconds: u64,
    /// How many flows to show (largest first).
    #[arg(long, env = "AGENT_FLOWS_TOP", default_value_t = 20)]
    top: usize,
    /// Show only the drops.
    #[arg(long)]
    drops: bool,
    /// Attach only to this interface (default: Calico tunnels, the underlay NIC, cali* workloads).
    #[arg(long, env = "AGENT_FLOWS_IFACE")]
    iface: Option<String>,
    /// Keep counting and print every --seconds until interrupted.
    #[arg(long)]
    watch: bool,
    /// Flow table capacity (LRU).
    #[arg(long, env = "AGENT_FLOW_TABLE_SIZE", default_value_t = agent_common::FLOWS_DEFAULT_MAX)]
    flow_table_size: u32,
    /// Do not load eBPF programs (flows are then unavailable).
    #[arg(long, env = "AGENT_NO_EBPF")]
    no_ebpf: bool,
    /// Attach a program that does nothing instead of the counting ones (nothing is counted):
    /// with `kernel.bpf_stats_enabled=1`, its run time is what any TC program costs on this
    /// node, the floor under ours.
    #[arg(long)]
    calibrate: bool,
    /// Print JSON instead of text.
    #[arg(long, env = "AGENT_JSON")]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct Input {
    /// Node name as Felix knows it; defaults to $NODENAME, then the hostname.
    #[arg(long, env = "AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// Directory of Calico YAML (`calicoctl get … -o yaml` / `kubectl get … -o yaml`) to verify against.
    #[arg(long, env = "AGENT_DATASTORE", conflicts_with = "kube")]
    datastore: Option<PathBuf>,
    /// Read the datastore from the Kubernetes API (in-cluster service account or KUBECONFIG),
    /// read-only, through watchers.
    #[arg(long, env = "AGENT_KUBE")]
    kube: bool,
    /// Report a finding only if it is still there after this many seconds (Felix's own resync
    /// can briefly look like drift). 0 reports at once.
    #[arg(long, env = "AGENT_GRACE_SECONDS", default_value_t = 0)]
    grace: u64,
    /// Fill fraction of the conntrack table (nf_conntrack_count / nf_conntrack_max) above which
    /// conntrack.pressure is reported.
    #[arg(long, env = "AGENT_CONNTRACK_PRESSURE", default_value_t = agent::verify::DEFAULT_CONNTRACK_PRESSURE, value_parser = fraction)]
    conntrack_pressure: f64,
    /// Analyse a directory of captured text dumps instead of the live node: ours
    /// (`--bundle-out`), an extracted `calicoctl node diags` archive, or pasted command
    /// outputs. Calico YAML found inside is used as the datastore unless one is given.
    #[arg(long, env = "AGENT_BUNDLE")]
    bundle: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, env = "AGENT_JSON")]
    json: bool,
}

/// A fill fraction: more than 0, at most 1.
fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction in (0, 1]"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent: could not verify: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Network namespaces are per thread: a single-threaded runtime keeps every netlink socket
    // and child process in the namespace this process was started in.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Diag {
            input,
            bundle_out: Some(dir),
            ..
        } => {
            let files = rt
                .block_on(bundle::capture(
                    &dir,
                    &node::resolve_name(input.node_name.as_deref()),
                ))
                .with_context(|| format!("writing a bundle to {}", dir.display()))?;
            println!(
                "wrote {} file(s) to {}; analyse them with `agent diag --bundle {}`",
                files.len(),
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Diag {
            input,
            bundle_out: None,
            drops_seconds,
            no_ebpf,
        } => {
            let a = rt.block_on(async {
                // The drop sample counts while the dataplane is read and verified.
                let want = !no_ebpf && drops_seconds > 0 && input.bundle.is_none();
                let sample = async {
                    if want {
                        let name = node::resolve_name(input.node_name.as_deref());
                        Some(analysis::sample_traffic(&name, drops_seconds).await)
                    } else {
                        None
                    }
                };
                let (a, sample) = tokio::join!(analyse(&input), sample);
                let mut a = a?;
                match sample {
                    Some(Ok(mut t)) => {
                        t.mtu_correlation = analysis::correlate_mtu(a.verification.as_ref(), &t);
                        a.traffic = Some(t);
                    }
                    Some(Err(e)) => a.traffic_unavailable = Some(observed::error_chain(&e)),
                    None => {}
                }
                anyhow::Ok(a)
            })?;
            print(&input, &a, diag::render::text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows(args) => rt.block_on(flows(args)),
        Command::Check { input } => {
            let a = rt.block_on(analyse(&input))?;
            print(&input, &a, diag::render::check_text)?;
            Ok(match &a.verification {
                None => {
                    eprintln!("agent: could not verify: no Calico dataplane found on this node");
                    ExitCode::from(2)
                }
                Some(v) if v.has_drift() => ExitCode::from(1),
                Some(_) => ExitCode::SUCCESS,
            })
        }
    }
}

/// How long `--kube` waits for the first list of every resource.
const KUBE_LIST_TIMEOUT: Duration = Duration::from_secs(30);

async fn load_datastore(input: &Input, in_bundle: &[PathBuf]) -> anyhow::Result<Option<Datastore>> {
    let ds = if input.kube {
        let client = kube::client().await?;
        kube::read_once(&client, KUBE_LIST_TIMEOUT)
            .await
            .context("reading the Calico datastore from the Kubernetes API")?
    } else if let Some(dir) = &input.datastore {
        files::load_dir(dir).with_context(|| format!("datastore {}", dir.display()))?
    } else if !in_bundle.is_empty() {
        files::load_files(in_bundle).context("Calico YAML in the bundle")?
    } else {
        return Ok(None);
    };
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    if ds.is_empty() {
        anyhow::bail!(
            "the datastore holds no Calico objects (IPPools, IPAMBlocks, Nodes, FelixConfigurations)"
        );
    }
    Ok(Some(ds))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn analyse(input: &Input) -> anyhow::Result<Analysis> {
    if let Some(dir) = &input.bundle {
        return analyse_bundle(input, dir).await;
    }
    let ds = load_datastore(input, &[]).await?;
    let name = node::resolve_name(input.node_name.as_deref());
    let grace = Duration::from_secs(input.grace);
    let mut tracker = GraceTracker::default();
    let first = pass(&ds, &name, grace, input.conntrack_pressure, &mut tracker).await?;
    if grace.is_zero() || tracker.pending() == 0 {
        return Ok(first);
    }
    // Something looked wrong: look again once the grace window has passed.
    tokio::time::sleep(grace).await;
    pass(&ds, &name, grace, input.conntrack_pressure, &mut tracker).await
}

/// A captured bundle is a single moment: no grace window applies.
async fn analyse_bundle(input: &Input, dir: &std::path::Path) -> anyhow::Result<Analysis> {
    let b = bundle::read_dir(dir)?;
    let mut obs = b.observed;
    // The bundle's hostname file is the node's identity unless the operator says otherwise.
    if let Some(n) = input.node_name.as_deref().filter(|n| !n.is_empty()) {
        obs.node_name = n.to_string();
    } else if obs.node_name.is_empty() {
        obs.node_name = node::resolve_name(None);
    }
    let ds = load_datastore(input, &b.datastore_files).await?;
    let expected = analysis::expected_for(&obs, ds.as_ref())?;
    let mut a = analysis::analyse(
        &obs,
        expected.as_ref(),
        &Policy {
            now: obs.captured_at,
            conntrack_pressure: input.conntrack_pressure,
        },
    );
    a.input_notes = b
        .recognised
        .iter()
        .map(|(p, f)| format!("read {} as {f}", p.display()))
        .chain(b.notes)
        .collect();
    Ok(a)
}

async fn pass(
    ds: &Option<Datastore>,
    name: &str,
    grace: Duration,
    conntrack_pressure: f64,
    tracker: &mut GraceTracker,
) -> anyhow::Result<Analysis> {
    let obs = observed::read_live(name).await;
    let expected = analysis::expected_for(&obs, ds.as_ref())?;
    let policy = Policy {
        now: now(),
        conntrack_pressure,
    };
    let mut a = analysis::analyse(&obs, expected.as_ref(), &policy);
    a.verification = a
        .verification
        .map(|v| tracker.confirm(v, policy.now, grace));
    Ok(a)
}

/// Counts for a window (or until interrupted with --watch); the probe is dropped, and every
/// program detached, on every way out: end of window, SIGINT, SIGTERM, error.
async fn flows(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    if args.no_ebpf {
        println!("flows unavailable: eBPF disabled by --no-ebpf");
        return Ok(ExitCode::SUCCESS);
    }
    let name = node::resolve_name(args.node_name.as_deref());
    let opts = agent::flows::ProbeOptions {
        flow_table_size: args.flow_table_size,
        drops: true,
        calibrate: args.calibrate,
    };
    let mut session = match agent::flows::Session::start(opts, args.iface.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            println!("flows unavailable: {}", observed::error_chain(&e));
            return Ok(ExitCode::from(2));
        }
    };
    let started = std::time::Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    // Workload veths come and go with pods: a link event attaches to a new one within
    // milliseconds. Without events (a socket error), a re-scan every second does it.
    let mut events = match observed::netlink::LinkEvents::subscribe() {
        Ok(e) => Some(e),
        Err(e) => {
            session.notes.push(format!(
                "no link events ({}): new interfaces are found by a re-scan every second",
                observed::error_chain(&e)
            ));
            None
        }
    };
    loop {
        refresh(&mut session).await;
        if session.targets.is_empty() && args.iface.is_some() {
            anyhow::bail!(
                "no interface {} to attach to",
                args.iface.as_deref().unwrap_or_default()
            );
        }
        let mut stop = false;
        let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds.max(1));
        loop {
            let changed = async {
                match events.as_mut() {
                    Some(e) => e.changed().await,
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Some(())
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                c = changed => match c {
                    Some(()) => refresh(&mut session).await,
                    // The subscription ended: fall back to re-scanning.
                    None => events = None,
                },
                _ = tokio::signal::ctrl_c() => { stop = true; break; }
                _ = term.recv() => { stop = true; break; }
            }
        }
        // Counts are cumulative from the first attach (also across --watch refreshes).
        let report = session.report(&name, started.elapsed().as_secs(), args.top)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&report).context("encoding JSON")?
            );
        } else {
            print!("{}", agent::flows::report::text(&report, args.drops));
        }
        if stop || !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Attaches to new interfaces; a failed listing is logged and retried on the next event or
/// tick, never the end of the run.
async fn refresh(session: &mut agent::flows::Session) {
    match observed::read_interfaces().await {
        Ok(obs) => session.refresh(&obs),
        Err(e) => {
            tracing::warn!(error = %observed::error_chain(&e), "listing interfaces over netlink")
        }
    }
}

fn print(input: &Input, a: &Analysis, human: fn(&Analysis) -> String) -> anyhow::Result<()> {
    if input.json {
        println!(
            "{}",
            serde_json::to_string_pretty(a).context("encoding JSON")?
        );
    } else {
        print!("{}", human(a));
    }
    Ok(())
}
