//! The `agent` command line. Every flag can also be set from an `AGENT_*` environment variable.

use std::process::ExitCode;

use agent::{diag, node, observed};
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
    /// Show the Calico-relevant dataplane of this node, anomalies first.
    Diag(DiagArgs),
}

#[derive(Debug, clap::Args)]
struct DiagArgs {
    /// Node name as Felix knows it; defaults to $NODENAME, then the hostname.
    #[arg(long, env = "AGENT_NODE_NAME")]
    node_name: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, env = "AGENT_JSON")]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agent: {e:#}");
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
        Command::Diag(args) => {
            let name = node::resolve_name(args.node_name.as_deref());
            let obs = rt.block_on(observed::read_live(&name));
            let d = diag::build(&obs);
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&d).context("encoding JSON")?
                );
            } else {
                print!("{}", diag::render::text(&d));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
