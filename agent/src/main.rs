//! The `agent` command line. Every flag can also be set from an `AGENT_*` environment variable.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use agent::{
    analysis::Analysis,
    flows::watch::{self, WatchError, WatchOptions},
    node,
    observed::{self, bundle},
    pipeline::{self, DatastoreSource},
    report,
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
        #[arg(long, env = "AGENT_DROPS_SECONDS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=3600))]
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
    /// Run as the node's daemon: verify continuously, serve /metrics, /healthz, /readyz and the
    /// local API that `diag` and `check` ask first.
    Run(Box<RunArgs>),
    /// Receive the agents' reports over OTLP/HTTP (/v1/logs, /v1/metrics), store them in
    /// SQLite and serve /v1/nodes, /v1/findings, /metrics and a cluster page at /.
    Collector(CollectorArgs),
}

/// Which node, and what it is verified against: the same for `run`, `diag` and `check`.
#[derive(Debug, clap::Args)]
struct Target {
    /// Node name as Felix knows it; defaults to $NODENAME, then the hostname.
    #[arg(long, env = "AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// Directory of Calico YAML, or one file of it (`calicoctl get … -o yaml` / `kubectl get …
    /// -o yaml`), to verify against (`agent run` re-reads it when it changes).
    #[arg(long, env = "AGENT_DATASTORE", conflicts_with = "kube")]
    datastore: Option<PathBuf>,
    /// Read the datastore from the Kubernetes API (in-cluster service account or KUBECONFIG),
    /// read-only, through watchers.
    #[arg(long, env = "AGENT_KUBE")]
    kube: bool,
    /// Fill fraction of the conntrack table (nf_conntrack_count / nf_conntrack_max) above which
    /// conntrack.pressure is reported.
    #[arg(long, env = "AGENT_CONNTRACK_PRESSURE", default_value_t = agent::verify::DEFAULT_CONNTRACK_PRESSURE, value_parser = fraction)]
    conntrack_pressure: f64,
}

impl Target {
    fn datastore(&self) -> DatastoreSource {
        match (&self.datastore, self.kube) {
            (Some(dir), _) => DatastoreSource::Dir(dir.clone()),
            (None, true) => DatastoreSource::Kube,
            (None, false) => DatastoreSource::None,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "AGENT_LISTEN", default_value = "0.0.0.0:9647")]
    listen: std::net::SocketAddr,
    /// Unix socket of the local API (mode 0600; `diag` and `check` ask it first).
    #[arg(long, env = "AGENT_SOCKET", default_value = agent::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Publish a finding only once it has persisted this many seconds (Felix's own
    /// reprogramming briefly looks like drift).
    #[arg(long, env = "AGENT_GRACE_SECONDS", default_value = "5", value_parser = seconds_or_zero)]
    grace: Duration,
    /// Do not load the observe-only eBPF programs (no flow, drop or MTU-signal metrics).
    #[arg(long, env = "AGENT_NO_EBPF")]
    no_ebpf: bool,
    /// Flow table capacity (LRU).
    #[arg(long, env = "AGENT_FLOW_TABLE_SIZE", default_value_t = agent_common::FLOWS_DEFAULT_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    flow_table_size: u32,
    /// Seconds between full re-reads of the node (also done at once after a netlink overrun).
    #[arg(long, env = "AGENT_RESYNC_SECONDS", default_value = "60", value_parser = seconds)]
    resync: Duration,
    /// Seconds between reads of iptables and nftables.
    #[arg(long, env = "AGENT_POLL_RULES_SECONDS", default_value = "10", value_parser = seconds)]
    poll_rules: Duration,
    /// Seconds between reads of sysctls, conntrack and Calico's pinned eBPF maps.
    #[arg(long, env = "AGENT_POLL_KERNEL_SECONDS", default_value = "10", value_parser = seconds)]
    poll_kernel: Duration,
    /// Seconds between reads of Felix's health, BIRD and WireGuard (and eBPF counter exports).
    #[arg(long, env = "AGENT_POLL_SERVICES_SECONDS", default_value = "5", value_parser = seconds)]
    poll_services: Duration,
    /// Verify this many milliseconds after the first netlink notification of a burst (the
    /// burst is one verification).
    #[arg(long, env = "AGENT_DEBOUNCE_MS", default_value_t = 20)]
    debounce_ms: u64,
    /// Receive buffer of the netlink notification socket, in bytes (default: the kernel's).
    #[arg(long, env = "AGENT_NETLINK_RCVBUF")]
    netlink_rcvbuf: Option<usize>,
    /// With --kube: at most one Event per check in this many seconds (the next one says how
    /// many were held back); 0 sends every one.
    #[arg(long, env = "AGENT_EVENT_INTERVAL_SECONDS", default_value = "60", value_parser = seconds_or_zero)]
    event_interval: Duration,
    #[command(flatten)]
    report: ReportArgs,
}

/// Reports to a central endpoint: `agent collector`, or any OpenTelemetry Collector.
#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// OTLP/HTTP endpoint (base URL) to push reports to: POSTs go to URL/v1/logs and
    /// URL/v1/metrics. Without it nothing is pushed.
    #[arg(long, env = "AGENT_REPORT_ENDPOINT")]
    report_endpoint: Option<String>,
    /// Push a report at least this often (and on every change of findings).
    #[arg(long, env = "AGENT_REPORT_INTERVAL_SECONDS", default_value = "60", value_parser = seconds)]
    report_interval: Duration,
    /// Bearer token file, re-read before every request (the pod's projected ServiceAccount
    /// token rotates).
    #[arg(long, env = "AGENT_REPORT_TOKEN_FILE")]
    report_token_file: Option<PathBuf>,
    /// Extra request header NAME=VALUE (repeat the flag for more; the variable holds one, as
    /// header values may contain commas).
    #[arg(long, env = "AGENT_REPORT_HEADER", value_parser = header)]
    report_header: Vec<(String, String)>,
    /// PEM CA bundle that signs an https endpoint's certificate (default: the system's roots).
    #[arg(long, env = "AGENT_REPORT_CA_FILE")]
    report_ca_file: Option<PathBuf>,
    /// Longest wait between delivery attempts, seconds (exponential backoff with jitter up to
    /// it; an endpoint's Retry-After is honoured).
    #[arg(long, env = "AGENT_REPORT_RETRY_MAX_SECONDS", default_value = "30", value_parser = seconds)]
    report_retry_max: Duration,
    /// Give up one request after this many seconds.
    #[arg(long, env = "AGENT_REPORT_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds)]
    report_timeout: Duration,
    /// Where reports wait until the endpoint acknowledges them (fsync'd; survives restarts).
    #[arg(
        long,
        env = "AGENT_SPOOL_DIR",
        default_value = "/var/lib/calico-dataplane-agent/spool"
    )]
    spool_dir: PathBuf,
    /// The spool's bound: past it the oldest reports are dropped (and counted).
    #[arg(long, env = "AGENT_SPOOL_MAX_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    spool_max_bytes: u64,
}

impl ReportArgs {
    fn config(&self) -> Option<agent::report::push::PushConfig> {
        Some(agent::report::push::PushConfig {
            endpoint: self.report_endpoint.clone()?,
            interval: self.report_interval,
            token_file: self.report_token_file.clone(),
            headers: self.report_header.clone(),
            ca_file: self.report_ca_file.clone(),
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            retry_max: self.report_retry_max,
            timeout: self.report_timeout,
        })
    }
}

/// `NAME=VALUE`.
fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("auth").required(true).args(["token_file", "kube_tokenreview", "no_auth"])))]
struct CollectorArgs {
    /// Address of the OTLP/HTTP receiver, the API, /metrics and the cluster page.
    #[arg(long, env = "AGENT_COLLECTOR_LISTEN", default_value = agent::collector::DEFAULT_LISTEN)]
    listen: std::net::SocketAddr,
    /// The SQLite database (created with its directory when missing).
    #[arg(long, env = "AGENT_COLLECTOR_DB", default_value = agent::collector::DEFAULT_DB)]
    db: PathBuf,
    /// Accept requests carrying `Authorization: Bearer <the token in this file>` (re-read when
    /// the file changes).
    #[arg(long, env = "AGENT_COLLECTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Accept the agents' ServiceAccount tokens, checked with a TokenReview against the
    /// Kubernetes API server (answers cached for 60 s).
    #[arg(
        long,
        env = "AGENT_COLLECTOR_KUBE_TOKENREVIEW",
        requires = "allow_service_account"
    )]
    kube_tokenreview: bool,
    /// With --kube-tokenreview: a ServiceAccount allowed to report (repeatable; env:
    /// comma-separated).
    #[arg(
        long,
        env = "AGENT_COLLECTOR_ALLOW_SERVICE_ACCOUNT",
        value_name = "NAMESPACE/NAME",
        value_delimiter = ','
    )]
    allow_service_account: Vec<agent::collector::ServiceAccount>,
    /// With --kube-tokenreview: the audience the tokens must be issued for (TokenReview
    /// spec.audiences).
    #[arg(long, env = "AGENT_COLLECTOR_AUDIENCE", requires = "kube_tokenreview")]
    audience: Option<String>,
    /// Accept reports from anyone who can connect (explicit: no authentication).
    #[arg(long, env = "AGENT_COLLECTOR_NO_AUTH")]
    no_auth: bool,
    /// Keep reports this long (`7d`, `24h`, `90m`, `3600s`); a node's latest is always kept
    /// until the node itself has been silent this long.
    #[arg(long, env = "AGENT_COLLECTOR_RETENTION", default_value = "7d", value_parser = agent::collector::parse_duration)]
    retention: Duration,
    /// A node whose latest report is older than this many seconds is stale (three report
    /// intervals by default).
    #[arg(long, env = "AGENT_COLLECTOR_STALE_AFTER", default_value = "180", value_parser = seconds)]
    stale_after: Duration,
    /// Largest request body accepted, compressed and decompressed (bytes).
    #[arg(long, env = "AGENT_COLLECTOR_MAX_BODY_BYTES", default_value_t = agent::collector::DEFAULT_MAX_BODY_BYTES, value_parser = clap::value_parser!(usize))]
    max_body_bytes: usize,
}

#[derive(Debug, clap::Args)]
struct FlowsArgs {
    /// Node name as Felix knows it; defaults to $NODENAME, then the hostname.
    #[arg(long, env = "AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// Seconds to count before printing (and between refreshes with --watch), 1 to 86400.
    #[arg(long, env = "AGENT_FLOWS_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86400))]
    seconds: u64,
    /// How many flows to show (largest first), at least 1.
    #[arg(long, env = "AGENT_FLOWS_TOP", default_value_t = 20, value_parser = top)]
    top: usize,
    /// Show only the drops.
    #[arg(long, env = "AGENT_FLOWS_DROPS")]
    drops: bool,
    /// Attach only to this interface (default: Calico tunnels, the underlay NIC, cali* workloads).
    #[arg(long, env = "AGENT_FLOWS_IFACE")]
    iface: Option<String>,
    /// Keep counting and print every --seconds until interrupted.
    #[arg(long, env = "AGENT_FLOWS_WATCH")]
    watch: bool,
    /// Flow table capacity (LRU), at least 1. Each interface also holds its latest flow per
    /// CPU and direction outside the table, so a small table can list a few more flows.
    #[arg(long, env = "AGENT_FLOW_TABLE_SIZE", default_value_t = agent_common::FLOWS_DEFAULT_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    flow_table_size: u32,
    /// Do not load eBPF programs (flows are then unavailable).
    #[arg(long, env = "AGENT_NO_EBPF")]
    no_ebpf: bool,
    /// Attach a program that does nothing instead of the counting ones (nothing is counted):
    /// with `kernel.bpf_stats_enabled=1`, its run time is what any TC program costs on this
    /// node, the floor under ours.
    #[arg(long, env = "AGENT_FLOWS_CALIBRATE")]
    calibrate: bool,
    /// Print JSON instead of text.
    #[arg(long, env = "AGENT_JSON")]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct Input {
    #[command(flatten)]
    target: Target,
    /// Report a finding only if it is still there after this many seconds (Felix's own resync
    /// can briefly look like drift). 0 reports at once.
    #[arg(long, env = "AGENT_GRACE_SECONDS", default_value = "0", value_parser = seconds_or_zero)]
    grace: Duration,
    /// Analyse a directory of captured text dumps instead of the live node: ours
    /// (`--bundle-out`), an extracted `calicoctl node diags` archive, or pasted command
    /// outputs. Calico YAML found inside is used as the datastore unless one is given.
    #[arg(long, env = "AGENT_BUNDLE")]
    bundle: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, env = "AGENT_JSON")]
    json: bool,
    /// The running daemon's local API; asked first, unless --bundle or --no-daemon.
    #[arg(long, env = "AGENT_SOCKET", default_value = agent::daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Read the node directly even when a daemon (`agent run`) answers on --socket.
    #[arg(long, env = "AGENT_NO_DAEMON")]
    no_daemon: bool,
}

/// A positive number of seconds, fractions allowed (`0.5`).
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v)),
        Ok(_) => Err(format!("{s} is not a positive number of seconds")),
        Err(_) => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// Seconds, 0 allowed (no grace window, no rate limit).
fn seconds_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        seconds(s)
    }
}

/// At least 1 (`--top 0` would list nothing and look like no traffic).
fn top(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("0 is not in 1.. (list at least one flow)".into()),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
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
    // Only diag and check verify; the others fail at something else.
    let (prefix, code) = match &cli.command {
        Command::Run(_) | Command::Collector(_) => ("", ExitCode::FAILURE),
        Command::Flows(_)
        | Command::Diag {
            bundle_out: Some(_),
            ..
        } => ("", ExitCode::from(2)),
        Command::Diag { .. } | Command::Check { .. } => ("could not verify: ", ExitCode::from(2)),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent: {prefix}{}", agent::observed::anyhow_chain(&e));
            code
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

impl Input {
    fn pipeline(&self) -> pipeline::Input {
        pipeline::Input {
            node_name: self.target.node_name.clone(),
            datastore: self.target.datastore(),
            grace: self.grace,
            conntrack_pressure: self.target.conntrack_pressure,
            bundle: self.bundle.clone(),
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Network namespaces are per thread: a single-threaded runtime keeps every netlink socket
    // and child process in the namespace this process was started in.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        // Its own runtime: multi-threaded.
        Command::Collector(args) => collector(args),
        Command::Diag {
            input,
            bundle_out: Some(dir),
            ..
        } => {
            let files = rt
                .block_on(bundle::capture(
                    &dir,
                    &node::resolve_name(input.target.node_name.as_deref()),
                ))
                .with_context(|| format!("writing a bundle to {}", dir.display()))?;
            out(&format!(
                "wrote {} file(s) to {}; analyse them with `agent diag --bundle {}`\n",
                files.len(),
                dir.display(),
                dir.display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diag {
            input,
            bundle_out: None,
            drops_seconds,
            no_ebpf,
        } => {
            let seconds = if no_ebpf { 0 } else { drops_seconds };
            let a = rt.block_on(async {
                match from_daemon(&input).await {
                    Some(a) => pipeline::add_sample(a, &input.pipeline(), seconds).await,
                    None => pipeline::diag_with_sample(&input.pipeline(), seconds).await,
                }
            })?;
            print(&input, &a, report::diag_text::text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows(args) => rt.block_on(flows(args)),
        Command::Run(args) => rt.block_on(daemon(*args)),
        Command::Check { input } => {
            let a = rt.block_on(analyse(&input))?;
            print(&input, &a, report::diag_text::check_text)?;
            let verdict = a.verdict();
            if verdict == agent::verify::Verdict::Unverifiable {
                eprintln!("agent: {}", report::diag_text::verdict_line(&a));
            }
            Ok(ExitCode::from(verdict.exit_code()))
        }
    }
}

/// The running daemon's analysis, when one answers (and the input is the live node).
async fn from_daemon(input: &Input) -> Option<Analysis> {
    if input.no_daemon || input.bundle.is_some() {
        return None;
    }
    match report::http::fetch_analysis(&input.socket).await {
        Ok(a) => Some(a),
        Err(report::http::LocalApiError::NotRunning(_)) => None,
        Err(e) => {
            tracing::warn!(error = %observed::error_chain(&e), "reading the node directly");
            None
        }
    }
}

async fn analyse(input: &Input) -> anyhow::Result<Analysis> {
    match from_daemon(input).await {
        Some(a) => Ok(a),
        None => pipeline::analyse(&input.pipeline()).await,
    }
}

async fn daemon(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = agent::daemon::Config {
        node_name: node::resolve_name(args.target.node_name.as_deref()),
        datastore: args.target.datastore(),
        listen: args.listen,
        socket: args.socket,
        grace: args.grace,
        conntrack_pressure: args.target.conntrack_pressure,
        no_ebpf: args.no_ebpf,
        flow_table_size: args.flow_table_size,
        resync: args.resync,
        poll_rules: args.poll_rules,
        poll_kernel: args.poll_kernel,
        poll_services: args.poll_services,
        poll_datastore: Duration::from_secs(2),
        debounce: Duration::from_millis(args.debounce_ms),
        netlink_rx_buffer: args.netlink_rcvbuf,
        event_interval: args.event_interval,
        report: args.report.config(),
    };
    agent::daemon::run(cfg, shutdown_on_signal()?).await?;
    Ok(ExitCode::SUCCESS)
}

/// Cancelled on SIGTERM or SIGINT.
fn shutdown_on_signal() -> anyhow::Result<tokio_util::sync::CancellationToken> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: shutting down");
        token.cancel();
    });
    Ok(shutdown)
}

fn collector(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    use agent::collector::AuthConfig;
    let auth = match (args.token_file, args.kube_tokenreview) {
        (Some(path), _) => AuthConfig::TokenFile(path),
        (None, true) => AuthConfig::TokenReview {
            allowed: args.allow_service_account,
            audience: args.audience,
        },
        (None, false) => AuthConfig::None,
    };
    let cfg = agent::collector::Config {
        listen: args.listen,
        db: args.db,
        auth,
        retention: args.retention,
        stale_after: args.stale_after,
        max_body_bytes: args.max_body_bytes,
    };
    // Unlike the node agent (network namespaces are per thread), the collector has no reason to
    // stay on one thread: decoding requests uses both cores while the store's thread writes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        agent::collector::run(cfg, shutdown_on_signal()?).await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn flows(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    if args.no_ebpf {
        out("flows unavailable: eBPF disabled by --no-ebpf\n")?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = WatchOptions {
        node: node::resolve_name(args.node_name.as_deref()),
        probe: agent::flows::ProbeOptions {
            flow_table_size: args.flow_table_size,
            drops: true,
            calibrate: args.calibrate,
        },
        iface: args.iface.clone(),
        seconds: args.seconds,
        top: args.top,
        watch: args.watch,
    };
    let mut emit_error = None;
    let result = watch::run(opts, |r| {
        let text = if args.json {
            serde_json::to_string_pretty(r)
                .map(|j| j + "\n")
                .context("encoding JSON")
        } else {
            Ok(report::flows_text::text(r, args.drops))
        };
        if let Err(e) = text.and_then(|t| out(&t)) {
            emit_error = Some(e);
        }
    })
    .await;
    if let Some(e) = emit_error {
        return Err(e);
    }
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(WatchError::Flows(e)) => {
            out(&format!(
                "flows unavailable: {}\n",
                observed::error_chain(&e)
            ))?;
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn print(input: &Input, a: &Analysis, human: fn(&Analysis) -> String) -> anyhow::Result<()> {
    if input.json {
        out(&(serde_json::to_string_pretty(&a.judged()).context("encoding JSON")? + "\n"))
    } else {
        out(&human(a))
    }
}

/// Writes to stdout. A reader that went away (`agent diag | head`) is not an error, and
/// never a panic as `println!` would make it.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
