//! calico-node's BIRD in the BGP lab: one real BIRD 1.6 per node namespace, configured the way
//! confd renders it for a no-encap pool with the node-to-node mesh (v3.32+ shapes, from
//! `node/filesystem/etc/calico/confd/templates/bird.cfg.template`, `bird_aggr.cfg.template`,
//! `bird_ipam.cfg.template` and the compiled `confd/tests/compiled_templates/mesh/ipip-off`):
//! a `Mesh_<ip>` protocol per other node (passive towards higher addresses), the local block as
//! a static blackhole exported to the kernel `proto bird`, BGP routes with `krt_metric` 1024.
//! Calico's fork adds `krt_tunnel` for IPIP pools; plain BIRD 1.6 lacks it, and the host
//! kernel here has no ipip module, so the lab is no-encap only.
//!
//! Each BIRD's files (config, control socket, pid file, log) live in `<tmp>/<netns>-bird/`;
//! calico-node's socket is `/var/run/calico/bird.ctl`, which the agent reads through
//! `AGENT_BIRD_SOCKET` here. [`stop`] kills the BIRD processes of a namespace by pid.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};

use super::{
    datastore::LAB_AS,
    spec::{LabSpec, NodeSpec},
};
use crate::sh;

/// What a fault changes in one node's BIRD config; the default is what confd renders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deviation {
    /// The mesh peers are configured with this AS instead of theirs (a wrong BGPPeer/Node AS).
    pub peer_as: Option<u32>,
    /// The mesh sessions are left out (confd rendered a stale config).
    pub no_mesh: bool,
    /// An extra session to an address no datastore object names.
    pub extra_peer: Option<std::net::Ipv4Addr>,
    /// The local block's static blackhole is left out: the block is no longer advertised.
    pub no_block: bool,
}

pub fn dir(node: &NodeSpec) -> PathBuf {
    std::env::temp_dir().join(format!("{}-bird", node.netns))
}

/// The node's BIRD control socket (calico-node's `/var/run/calico/bird.ctl`).
pub fn socket(node: &NodeSpec) -> PathBuf {
    dir(node).join("bird.ctl")
}

fn config_path(node: &NodeSpec) -> PathBuf {
    dir(node).join("bird.cfg")
}

fn path_str(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The BIRD protocol name confd gives a mesh peer (`bgp_processor.go` `processMeshPeers`).
pub fn mesh_name(peer: &NodeSpec) -> String {
    format!("Mesh_{}", peer.ip.to_string().replace('.', "_"))
}

/// `bird.cfg` with `bird_aggr.cfg` and `bird_ipam.cfg` inlined, for `node`.
pub fn config(spec: &LabSpec, node: &NodeSpec, dev: Deviation) -> String {
    let block = node.block;
    let pool = spec.pool;
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# Rendered like calico-node's confd (bird.cfg, bird_aggr.cfg, bird_ipam.cfg) for the lab.
log "{log}" all;
function apply_communities ()
{{
}}

template kernel kernel_template {{
  learn;             # Learn all alien routes from the kernel
  persist;           # Don't remove routes on bird shutdown
  scan time 2;       # Scan kernel routing table every 2 seconds
  import all;
}}

template direct direct_template {{
  debug {{ states }};
  interface -"cali*", -"kube-ipvs*", "*";
}}

# bird_aggr.cfg: IP blocks for this host.
template static static_template {{
"#,
        log = dir(node).join("bird.log").display()
    );
    if dev.no_block {
        c.push_str("   # No IP blocks or static routes for this host.\n");
    } else {
        let _ = writeln!(c, "   route {block} blackhole;");
    }
    let _ = write!(
        c,
        r#"}}
protocol static from static_template {{
}}

# Aggregation of routes on this host; export the block, nothing beneath it.
function calico_aggr ()
{{
      # Block {block} is confirmed
      if ( net = {block} ) then {{ accept; }}
      if ( net ~ {block} && krt_metric < 1024 ) then {{ accept; }}
      if ( net ~ {block} ) then {{ reject; }}
}}

# bird_ipam.cfg
function reject_local_routes () {{
  if (defined(ifname)) then {{
     if (ifname ~ "bpf*.cali") then {{
        reject;
     }}
  }}
}}

function calico_export_to_bgp_peers(bool internal_peer) {{
  if (internal_peer) then {{
    if (defined(ifname)) then {{
      if ((ifname ~ "*.cali") || (ifname ~ "*.calico") || (ifname ~ "tunl0")) then {{
        reject;
      }}
    }}
  }}
  reject_local_routes();
  apply_communities();
  calico_aggr();
  if (net ~ {pool}) then {{ accept; }}
}}

filter calico_kernel_programming {{
  if (defined(source) && (source = RTS_BGP) && !defined(krt_metric)) then {{
      krt_metric = 1024;
      if (defined(bgp_local_pref)) then {{
          krt_metric = 2147483647 - bgp_local_pref;
      }}
      if (krt_metric < 1024) then {{
          preference = 200;
      }}
  }}
  if (net ~ {pool}) then {{ accept; }}
  accept;
}}

router id {ip};

protocol kernel from kernel_template {{
  export filter calico_kernel_programming; # Default is export none
  graceful restart;
  merge paths on;    # Allow export multipath routes (ECMP)
}}

protocol device {{
  debug {{ states }};
  scan time 2;    # Scan interfaces every 2 seconds
}}

protocol direct from direct_template {{
}}

# Template for all BGP clients
template bgp bgp_template {{
  debug {{ states, routes, filters, events }};
  description "Connection to BGP peer";
  local as {LAB_AS};
  gateway recursive; # This should be the default, but just in case.
  add paths on;
  graceful restart;
  connect delay time 2;
  connect retry time 5;
  error wait time 5,30;
}}
"#,
        ip = node.ip
    );
    let mut peers: Vec<(String, String, u32, bool)> = Vec::new();
    if !dev.no_mesh {
        for remote in spec.remotes_of(node) {
            // confd compares the addresses as strings; the higher one waits passively.
            let passive = remote.ip.to_string() > node.ip.to_string();
            let peer_as = dev.peer_as.unwrap_or(LAB_AS);
            peers.push((mesh_name(remote), remote.ip.to_string(), peer_as, passive));
        }
    }
    if let Some(ip) = dev.extra_peer {
        let name = format!("Global_{}", ip.to_string().replace('.', "_"));
        peers.push((name, ip.to_string(), LAB_AS, false));
    }
    for (name, ip, peer_as, passive) in peers {
        let _ = write!(
            c,
            r#"
protocol bgp {name} from bgp_template {{
  neighbor {ip} as {peer_as};
  source address {me};  # The local address we use for the TCP connection
  ttl security off;
  multihop;
  import filter {{
    if (defined(bgp_local_pref)&&(bgp_local_pref > 2147482623)) then
      preference = 200;
    accept;
  }};
  export filter {{
    if (defined(source) && source = RTS_BGP && defined(bgp_local_pref)) then {{
      krt_metric = 2147483647 - bgp_local_pref;
    }} else {{
      if (!defined(krt_metric)) then {{ krt_metric = 1024; }}
      bgp_local_pref = 2147483647 - krt_metric;
    }}
    calico_export_to_bgp_peers(true);
    reject;
  }};  # Only want to export routes for workloads.{passive}
}}
"#,
            me = node.ip,
            passive = if passive { "\n  passive on;" } else { "" }
        );
    }
    c
}

/// Writes `node`'s config and starts its BIRD inside the node's namespace.
pub fn start(spec: &LabSpec, node: &NodeSpec) -> anyhow::Result<()> {
    let d = dir(node);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let cfg = config_path(node);
    std::fs::write(&cfg, config(spec, node, Deviation::default()))
        .with_context(|| format!("writing {}", cfg.display()))?;
    let pid = d.join("bird.pid");
    sh::run(&[
        "ip",
        "netns",
        "exec",
        &node.netns,
        "bird",
        "-c",
        path_str(&cfg)?,
        "-s",
        path_str(&socket(node))?,
        "-P",
        path_str(&pid)?,
    ])
    .with_context(|| format!("starting BIRD in {}", node.netns))?;
    Ok(())
}

/// Rewrites `node`'s config with `dev` and has its BIRD reload it (`birdc configure`).
pub fn reconfigure(spec: &LabSpec, node: &NodeSpec, dev: Deviation) -> anyhow::Result<()> {
    let cfg = config_path(node);
    std::fs::write(&cfg, config(spec, node, dev))
        .with_context(|| format!("writing {}", cfg.display()))?;
    birdc(node, &["configure"]).map(drop)
}

/// Runs `birdc` against `node`'s BIRD; fails when BIRD answers with an error.
pub fn birdc(node: &NodeSpec, args: &[&str]) -> anyhow::Result<String> {
    let sock = socket(node);
    let mut argv = vec!["birdc", "-s", path_str(&sock)?];
    argv.extend_from_slice(args);
    let out = sh::run(&argv)?;
    // birdc exits 0 even when BIRD refuses a command: its reply codes say so.
    if let Some(err) = out
        .lines()
        .find(|l| l.starts_with('8') || l.starts_with('9'))
    {
        bail!("`birdc {}` on {}: {err}", args.join(" "), node.name);
    }
    Ok(out)
}

/// Waits until every mesh session of every node is Established and each node has the other
/// nodes' blocks `proto bird`.
pub fn wait_converged(spec: &LabSpec, timeout: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let mut pending = Vec::new();
        for node in &spec.nodes {
            let protocols = birdc(node, &["show", "protocols"]).unwrap_or_default();
            let routes = sh::run(&["ip", "-n", &node.netns, "route", "show", "proto", "bird"])
                .unwrap_or_default();
            for remote in spec.remotes_of(node) {
                let name = mesh_name(remote);
                if !protocols
                    .lines()
                    .any(|l| l.contains(&name) && l.contains("Established"))
                {
                    pending.push(format!("{}: {name} not Established", node.name));
                }
                if !routes
                    .lines()
                    .any(|l| l.starts_with(&remote.block.to_string()))
                {
                    pending.push(format!("{}: no route to {}", node.name, remote.block));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "BGP did not converge within {timeout:?}: {}",
                pending.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills every BIRD running in `netns` (by pid, from `ip netns pids`) and removes its files.
pub fn stop(node: &NodeSpec) {
    let pids = sh::run(&["ip", "netns", "pids", &node.netns]).unwrap_or_default();
    let birds: Vec<String> = pids
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bird")
        })
        .map(str::to_string)
        .collect();
    for pid in &birds {
        let _ = sh::run(&["kill", "-TERM", pid]);
    }
    for _ in 0..50 {
        if birds
            .iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &birds {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh::run(&["kill", "-KILL", pid]);
        }
    }
    let _ = std::fs::remove_dir_all(dir(node));
}
