//! `cargo xtask …`: setup, test, demo and the lab.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum as _};
use xtask::{
    bench, image,
    lab::{
        Fault, Lab, LabMode,
        vpc_cni::{VpcFault, VpcLab},
    },
    setup, sh,
};

/// Namespace prefix of the interactive lab; integration tests use their own prefixes.
const LAB_PREFIX: &str = "cdpa";
/// Prefix shared by every test lab, for the final sweep after the test run.
const TEST_PREFIX: &str = "cdpt";
/// Namespace prefix of the interactive VPC CNI lab.
const VPC_LAB_PREFIX: &str = "cdpv";

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Calico dataplane agent project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what this machine lacks: rust-src, bpf-linker, Debian packages. Idempotent.
    Setup,
    /// Setup, then fmt, clippy, unit and integration tests; cleans up after itself.
    Test,
    /// Build, bring the lab up, and show `agent diag` on one of its nodes.
    Demo {
        /// Leave the lab up afterwards (remove it with `cargo xtask lab down`).
        #[arg(long)]
        keep: bool,
    },
    /// Measure the eBPF programs' cost: iperf3 between two lab pods with and without them,
    /// and their ns per run from bpf_stats; writes BENCHMARKS.md.
    Bench {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only the cluster-scale sections (one-shot `agent check` at 100 to 10,000 nodes, the
        /// Kubernetes datastore the daemon keeps at 1,000 and 5,000): they are replaced in
        /// BENCHMARKS.md, the others kept.
        #[arg(long)]
        scale_only: bool,
    },
    /// Build the container image (Dockerfile stage `runtime`) from the release binary with
    /// buildah, on a debootstrapped bookworm base made once; prints the image ID.
    Image {
        /// Name the image gets in local container storage.
        #[arg(long, default_value = image::DEFAULT_TAG)]
        tag: String,
    },
    /// The fake Calico node lab in network namespaces.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Debug, Subcommand)]
enum LabAction {
    /// Create the lab (replacing an existing one).
    Up {
        /// `vxlan` (Felix's VXLAN) or `bgp` (calico-node's BIRD, node-to-node mesh, no-encap).
        #[arg(long, value_enum, default_value_t = LabMode::Vxlan)]
        mode: LabMode,
        /// Add an IPv6 side (an IPv6 pool in /122 blocks, IPv6 pods) to every node: over
        /// `vxlan-v6.calico` in the VXLAN lab, learned by `bird6` in the BGP lab.
        #[arg(long)]
        dual_stack: bool,
    },
    /// Remove every namespace of the lab.
    Down,
    /// Inject one fault into a node.
    Fault {
        fault: Fault,
        #[arg(long, default_value = "node-a")]
        node: String,
    },
    /// Re-apply Felix's intended state everywhere, undoing every fault.
    Repair,
    /// Write the lab's Calico datastore YAML into DIR (the lab need not be up).
    Datastore {
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = LabMode::Vxlan)]
        mode: LabMode,
        /// The dual-stack lab's datastore.
        #[arg(long)]
        dual_stack: bool,
    },
    /// The policy-only lab: one EKS-shaped node, pods plumbed by the AWS VPC CNI.
    Vpc {
        #[command(subcommand)]
        action: VpcAction,
    },
}

#[derive(Debug, Subcommand)]
enum VpcAction {
    /// Create the VPC CNI lab (replacing an existing one) and check that its pods reach each
    /// other, the VPC and the internet host.
    Up,
    /// Remove every namespace of the VPC CNI lab.
    Down,
    /// Inject one fault into the node.
    Fault { fault: VpcFault },
    /// Re-apply the VPC CNI's and Felix's state, undoing every fault.
    Repair,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::setup(),
        Command::Test => test(),
        Command::Demo { keep } => demo(keep),
        Command::Bench {
            scale_only: true, ..
        } => bench::run_scale_only(&workspace_root()),
        Command::Bench { seconds, .. } => bench::run(&workspace_root(), seconds),
        Command::Image { tag } => image::run(&workspace_root(), &tag),
        Command::Lab { action } => lab(action),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["cargo"];
    argv.extend_from_slice(args);
    sh::stream_env(&argv, &[("CI", "true"), ("INSTA_UPDATE", "no")])
}

fn test() -> anyhow::Result<()> {
    setup::setup()?;
    std::env::set_current_dir(workspace_root()).context("entering the workspace")?;
    let result = cargo(&["fmt", "--all", "--", "--check"])
        .and_then(|()| cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]))
        .and_then(|()| cargo(&["test", "--", "--test-threads=2"]));
    sweep_test_namespaces();
    result?;
    println!("xtask test: all passed");
    Ok(())
}

/// Removes namespaces a crashed test run may have left behind (only our own prefix).
fn sweep_test_namespaces() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{TEST_PREFIX}-"))
            || name.starts_with(&format!("{TEST_PREFIX}_"))
        {
            let _ = sh::run(&["ip", "netns", "del", &name]);
        }
    }
}

fn demo(keep: bool) -> anyhow::Result<()> {
    std::env::set_current_dir(workspace_root()).context("entering the workspace")?;
    cargo(&["build", "--quiet", "-p", "agent"])?;
    let lab = Lab::new(LAB_PREFIX);
    println!("== bringing up the lab: two Calico VXLAN nodes with two pods each");
    lab.up()?;
    let result = demo_steps(&lab);
    if keep {
        println!(
            "\nlab left up: `ip netns exec {LAB_PREFIX}-a target/debug/agent diag`, `cargo xtask lab down`"
        );
    } else {
        lab.down();
    }
    result
}

fn demo_steps(lab: &Lab) -> anyhow::Result<()> {
    let agent = workspace_root()
        .join("target/debug/agent")
        .to_string_lossy()
        .into_owned();
    let ds_dir = lab_datastore_dir();
    let ds_file = lab.write_datastore(&ds_dir)?;
    let ds = ds_dir.to_string_lossy().into_owned();
    lab.check_connectivity()?;
    println!(
        "== pods reach each other across vxlan.calico; datastore written to {}",
        ds_file.display()
    );
    let node = &lab.spec.nodes[0];
    let agent_cmd = |cmd: &'static str| -> Vec<String> {
        [
            "ip",
            "netns",
            "exec",
            &node.netns,
            &agent,
            cmd,
            "--node-name",
            &node.name,
            "--datastore",
            &ds,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    };
    let run = |cmd: &'static str| -> anyhow::Result<(i32, String)> {
        let argv = agent_cmd(cmd);
        sh::run_code(&argv.iter().map(String::as_str).collect::<Vec<_>>())
    };
    println!("== agent diag --node-name {} --datastore {ds}\n", node.name);
    print!("{}", run("diag")?.1);

    println!(
        "\n== injecting faults one by one into {}: each is detected, then cleared by a repair",
        node.name
    );
    for fault in Fault::value_variants()
        .iter()
        .filter(|f| f.applies_to(&lab.spec))
    {
        let name = fault
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        let help = fault
            .to_possible_value()
            .and_then(|v| v.get_help().map(ToString::to_string))
            .unwrap_or_default();
        println!("\n-- fault {name}: {help}");
        lab.fault(&node.name, *fault)?;
        let (code, out) = run("check")?;
        print!("{out}");
        println!("   agent check exit code: {code}");
        lab.repair()?;
        let (code, out) = run("check")?;
        println!(
            "   after repair: exit code {code}, {}",
            out.lines().last().unwrap_or_default().trim()
        );
    }
    println!("\n-- datastore fault: node-c added to the datastore but never programmed");
    let extra = ds_dir.join("node-c.yaml");
    std::fs::write(&extra, lab.spec.unprogrammed_node_yaml())?;
    let (code, out) = run("check")?;
    print!("{out}");
    println!("   agent check exit code: {code}");
    std::fs::remove_file(&extra)?;
    let (code, out) = run("check")?;
    println!(
        "   node-c removed again: exit code {code}, {}",
        out.lines().last().unwrap_or_default().trim()
    );
    Ok(())
}

fn lab_datastore_dir() -> PathBuf {
    workspace_root().join("target/lab/datastore")
}

fn lab(action: LabAction) -> anyhow::Result<()> {
    // Down, fault and repair act on the lab as it was brought up.
    let lab = match &action {
        LabAction::Up {
            dual_stack: true,
            mode,
        }
        | LabAction::Datastore {
            dual_stack: true,
            mode,
            ..
        } => Lab::dual_stack_with_mode(LAB_PREFIX, *mode),
        LabAction::Up { mode, .. } | LabAction::Datastore { mode, .. } => {
            Lab::with_mode(LAB_PREFIX, *mode)
        }
        _ => Lab::existing(LAB_PREFIX),
    };
    match action {
        LabAction::Up { .. } => {
            lab.up()?;
            lab.check_connectivity()?;
            let ds = lab.write_datastore(&lab_datastore_dir())?;
            println!("lab up; namespaces: {}", lab.spec.all_netns().join(" "));
            println!("datastore: {}", ds.display());
            println!(
                "try: {}ip netns exec {LAB_PREFIX}-a target/debug/agent diag --node-name node-a --datastore {}",
                if lab.spec.mode == LabMode::Bgp {
                    format!(
                        "AGENT_BIRD_SOCKET={} AGENT_BIRD6_SOCKET={} ",
                        xtask::lab::bird::socket(&lab.spec.nodes[0]).display(),
                        xtask::lab::bird::socket6(&lab.spec.nodes[0]).display()
                    )
                } else {
                    String::new()
                },
                lab_datastore_dir().display()
            );
        }
        LabAction::Down => lab.down(),
        LabAction::Fault { fault, node } => lab.fault(&node, fault)?,
        LabAction::Repair => lab.repair()?,
        LabAction::Datastore { dir, .. } => println!("{}", lab.write_datastore(&dir)?.display()),
        LabAction::Vpc { action } => vpc_lab(action)?,
    }
    Ok(())
}

fn vpc_lab(action: VpcAction) -> anyhow::Result<()> {
    let lab = VpcLab::new(VPC_LAB_PREFIX);
    match action {
        VpcAction::Up => {
            lab.up()?;
            lab.check_connectivity()?;
            let ds = lab.write_datastore(&lab_datastore_dir().with_file_name("datastore-vpc"))?;
            println!("VPC CNI lab up; namespaces: {}", lab.all_netns().join(" "));
            println!(
                "try: ip netns exec {} target/debug/agent diag --node-name {} --datastore {}",
                lab.node.netns,
                lab.node.name,
                ds.parent().unwrap_or(&ds).display()
            );
        }
        VpcAction::Down => lab.down(),
        VpcAction::Fault { fault } => lab.fault(fault)?,
        VpcAction::Repair => lab.repair()?,
    }
    Ok(())
}
