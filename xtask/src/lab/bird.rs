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
//!
//! The dual-stack BGP lab also runs Debian's `bird6` (BIRD 1.6) per node, configured like
//! confd's `bird6.cfg` (`bird6.cfg.template`, `bird6_aggr.cfg.template`,
//! `bird6_ipam.cfg.template`): the same shape over the nodes' IPv6 addresses and /122 blocks,
//! with the IPv4 address as router id (BIRD's router id is 4 octets even for IPv6), socket
//! `bird6.ctl` (calico-node's `/var/run/calico/bird6.ctl`, `AGENT_BIRD6_SOCKET`).

use std::{fmt::Write as _, net::IpAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;

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
    pub extra_peer: Option<IpAddr>,
    /// The local block's static blackhole is left out: the block is no longer advertised.
    pub no_block: bool,
}

/// Which of calico-node's BIRDs: `bird` (IPv4) or `bird6` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The daemon, and the stem of its files.
    fn daemon(self) -> &'static str {
        match self {
            Self::V4 => "bird",
            Self::V6 => "bird6",
        }
    }

    fn client(self) -> &'static str {
        match self {
            Self::V4 => "birdc",
            Self::V6 => "birdc6",
        }
    }
}

pub fn dir(node: &NodeSpec) -> PathBuf {
    std::env::temp_dir().join(format!("{}-bird", node.netns))
}

/// The node's BIRD control socket (calico-node's `/var/run/calico/bird.ctl`).
pub fn socket(node: &NodeSpec) -> PathBuf {
    socket_of(node, Family::V4)
}

/// The node's `bird6` control socket (calico-node's `/var/run/calico/bird6.ctl`).
pub fn socket6(node: &NodeSpec) -> PathBuf {
    socket_of(node, Family::V6)
}

fn socket_of(node: &NodeSpec, family: Family) -> PathBuf {
    dir(node).join(format!("{}.ctl", family.daemon()))
}

fn config_path(node: &NodeSpec, family: Family) -> PathBuf {
    dir(node).join(format!("{}.cfg", family.daemon()))
}

/// The families whose BIRD runs on `node`: `bird` always, `bird6` in the dual-stack BGP lab.
pub fn families(spec: &LabSpec, node: &NodeSpec) -> Vec<Family> {
    let mut f = vec![Family::V4];
    if spec.pool_v6.is_some() && node.v6.is_some() {
        f.push(Family::V6);
    }
    f
}

/// A node's address, block and the pool of `family`, as confd renders them.
struct Side {
    ip: IpAddr,
    block: IpNet,
    pool: IpNet,
}

fn side(spec: &LabSpec, node: &NodeSpec, family: Family) -> anyhow::Result<Side> {
    Ok(match family {
        Family::V4 => Side {
            ip: node.ip.into(),
            block: node.block.into(),
            pool: spec.pool.into(),
        },
        Family::V6 => {
            let v6 = node
                .v6
                .as_ref()
                .with_context(|| format!("{} has no IPv6 side", node.name))?;
            Side {
                ip: v6.ip.into(),
                block: v6.block.into(),
                pool: spec.pool_v6.context("the lab has no IPv6 pool")?.into(),
            }
        }
    })
}

fn path_str(p: &std::path::Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The BIRD protocol name confd gives a mesh peer (`bgp_processor.go` `processMeshPeers`).
pub fn mesh_name(peer: &NodeSpec) -> String {
    protocol_name("Mesh", peer.ip.into())
}

/// The same for `bird6`'s mesh peer (`:` replaced by `_`); `None` without an IPv6 side.
pub fn mesh_name6(peer: &NodeSpec) -> Option<String> {
    peer.v6
        .as_ref()
        .map(|v6| protocol_name("Mesh", v6.ip.into()))
}

fn protocol_name(prefix: &str, ip: IpAddr) -> String {
    format!("{prefix}_{}", ip.to_string().replace(['.', ':'], "_"))
}

/// `bird.cfg` (or `bird6.cfg`) with its `_aggr` and `_ipam` files inlined, for `node`.
pub fn config(
    spec: &LabSpec,
    node: &NodeSpec,
    family: Family,
    dev: Deviation,
) -> anyhow::Result<String> {
    let Side {
        ip: me,
        block,
        pool,
    } = side(spec, node, family)?;
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
        log = dir(node).join(format!("{}.log", family.daemon())).display()
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

router id {router_id};

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
        // confd: the IPv4 address, for bird6 too (a router id is 4 octets).
        router_id = node.ip
    );
    let mut peers: Vec<(String, String, u32, bool)> = Vec::new();
    if !dev.no_mesh {
        for remote in spec.remotes_of(node) {
            let Ok(theirs) = side(spec, remote, family) else {
                continue;
            };
            // confd compares the addresses as strings; the higher one waits passively.
            let passive = theirs.ip.to_string() > me.to_string();
            let peer_as = dev.peer_as.unwrap_or(LAB_AS);
            peers.push((
                protocol_name("Mesh", theirs.ip),
                theirs.ip.to_string(),
                peer_as,
                passive,
            ));
        }
    }
    if let Some(ip) = dev
        .extra_peer
        .filter(|ip| ip.is_ipv6() == (family == Family::V6))
    {
        peers.push((protocol_name("Global", ip), ip.to_string(), LAB_AS, false));
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
            passive = if passive { "\n  passive on;" } else { "" }
        );
    }
    Ok(c)
}

/// Writes `node`'s configs and starts its BIRD (and `bird6`, dual stack) inside the node's
/// namespace.
pub fn start(spec: &LabSpec, node: &NodeSpec) -> anyhow::Result<()> {
    let d = dir(node);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    for family in families(spec, node) {
        let cfg = config_path(node, family);
        std::fs::write(&cfg, config(spec, node, family, Deviation::default())?)
            .with_context(|| format!("writing {}", cfg.display()))?;
        let pid = d.join(format!("{}.pid", family.daemon()));
        sh::run(&[
            "ip",
            "netns",
            "exec",
            &node.netns,
            family.daemon(),
            "-c",
            path_str(&cfg)?,
            "-s",
            path_str(&socket_of(node, family))?,
            "-P",
            path_str(&pid)?,
        ])
        .with_context(|| format!("starting {} in {}", family.daemon(), node.netns))?;
    }
    Ok(())
}

/// Rewrites `node`'s BIRD config with `dev` and has BIRD reload it (`birdc configure`).
pub fn reconfigure(spec: &LabSpec, node: &NodeSpec, dev: Deviation) -> anyhow::Result<()> {
    reconfigure_family(spec, node, Family::V4, dev)
}

/// The same for `family`'s BIRD (`birdc6 configure` for `bird6`).
pub fn reconfigure_family(
    spec: &LabSpec,
    node: &NodeSpec,
    family: Family,
    dev: Deviation,
) -> anyhow::Result<()> {
    let cfg = config_path(node, family);
    std::fs::write(&cfg, config(spec, node, family, dev)?)
        .with_context(|| format!("writing {}", cfg.display()))?;
    birdc_family(node, family, &["configure"]).map(drop)
}

/// Runs `birdc` against `node`'s BIRD; fails when BIRD answers with an error.
pub fn birdc(node: &NodeSpec, args: &[&str]) -> anyhow::Result<String> {
    birdc_family(node, Family::V4, args)
}

/// Runs `birdc` (`birdc6`) against `node`'s `family` BIRD; fails when it answers with an
/// error.
pub fn birdc_family(node: &NodeSpec, family: Family, args: &[&str]) -> anyhow::Result<String> {
    let sock = socket_of(node, family);
    let mut argv = vec![family.client(), "-s", path_str(&sock)?];
    argv.extend_from_slice(args);
    let out = sh::run(&argv)?;
    // birdc exits 0 even when BIRD refuses a command: its reply codes say so.
    if let Some(err) = out
        .lines()
        .find(|l| l.starts_with('8') || l.starts_with('9'))
    {
        bail!(
            "`{} {}` on {}: {err}",
            family.client(),
            args.join(" "),
            node.name
        );
    }
    Ok(out)
}

/// Waits until every mesh session of every node's BIRDs is Established and each node has
/// the other nodes' blocks (of each family) `proto bird`.
pub fn wait_converged(spec: &LabSpec, timeout: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let mut pending = Vec::new();
        for node in &spec.nodes {
            for family in families(spec, node) {
                let protocols =
                    birdc_family(node, family, &["show", "protocols"]).unwrap_or_default();
                let inet = match family {
                    Family::V4 => "-4",
                    Family::V6 => "-6",
                };
                let routes = sh::run(&[
                    "ip",
                    "-n",
                    &node.netns,
                    inet,
                    "route",
                    "show",
                    "proto",
                    "bird",
                ])
                .unwrap_or_default();
                for remote in spec.remotes_of(node) {
                    let Ok(theirs) = side(spec, remote, family) else {
                        continue;
                    };
                    let name = protocol_name("Mesh", theirs.ip);
                    if !protocols
                        .lines()
                        .any(|l| l.contains(&name) && l.contains("Established"))
                    {
                        pending.push(format!("{}: {name} not Established", node.name));
                    }
                    if !routes
                        .lines()
                        .any(|l| l.starts_with(&theirs.block.to_string()))
                    {
                        pending.push(format!("{}: no route to {}", node.name, theirs.block));
                    }
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

/// Kills every BIRD (and `bird6`) running in `netns` (by pid, from `ip netns pids`) and removes its files.
pub fn stop(node: &NodeSpec) {
    let pids = sh::run(&["ip", "netns", "pids", &node.netns]).unwrap_or_default();
    let birds: Vec<String> = pids
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "bird" | "bird6"))
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
