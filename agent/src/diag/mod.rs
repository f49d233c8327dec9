//! `agent diag`: the Calico-relevant part of the observed dataplane, summarised for an operator
//! in the middle of an incident. Building the summary is pure; `report::diag_text` renders it.

pub mod bpf;
mod mode;

use serde::{Deserialize, Serialize};

pub use crate::verify::Severity;

pub use self::mode::{Mode, detect_modes};
use calico_conventions::{
    PROTO_BIRD, PROTO_CALICO, TUNNEL_DEVICES, VXLAN_V4, VXLAN_V6, WIREGUARD_V4, is_workload_iface,
};

use crate::observed::{
    FdbEntry, IpRule, Link, Neighbour, ObservedDataplane, PROTO_KERNEL, Route, RouteType,
    TABLE_LOCAL, Unavailable, iptables::Backend,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diag {
    pub node: String,
    pub calico_found: bool,
    pub modes: Vec<Mode>,
    /// Why each mode was detected.
    pub evidence: Vec<String>,
    /// What looks wrong, most severe first.
    pub anomalies: Vec<Anomaly>,
    pub tunnels: Vec<Tunnel>,
    pub routes: RouteGroups,
    pub vxlan_fdb: Vec<FdbEntry>,
    pub vxlan_neighbours: Vec<Neighbour>,
    pub workloads: Vec<Workload>,
    pub wireguard: Vec<WireGuard>,
    pub felix_chains: Vec<ChainSource>,
    /// The iptables backend (or nftables) holding Felix's rules.
    pub rules_backend: Option<String>,
    pub sysctls: SysctlSummary,
    /// Policy-only on the AWS VPC CNI: its per-pod plumbing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_cni: Option<crate::observed::vpc_cni::VpcCni>,
    pub unavailable: Vec<Unavailable>,
    pub missing_capabilities: Vec<String>,
    /// calico-node's BGP sessions, when its BIRD answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_sessions: Option<Vec<crate::observed::bird::BgpPeer>>,
    /// calico-node's IPv6 BGP sessions, when its `bird6` answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp6_sessions: Option<Vec<crate::observed::bird::BgpPeer>>,
    /// Calico eBPF mode: Felix's pinned maps, program links, route map and counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_bpf: Option<bpf::BpfSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub severity: Severity,
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub oper_state: String,
    pub mtu: u32,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<String>,
    pub parent: Option<String>,
    pub learning: Option<bool>,
}

/// Calico's routes, by what they are for. Routes Felix and BIRD do not own are only counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGroups {
    pub local_blackholes: Vec<Route>,
    pub remote_via_tunnel: Vec<Route>,
    pub remote_via_underlay: Vec<Route>,
    /// Host routes on tunnel devices: remote tunnel addresses and borrowed IPs.
    pub tunnel_hosts: Vec<Route>,
    pub workload: Vec<Route>,
    /// Routes in tables other than main that lead to a Calico device (WireGuard's table).
    pub other_tables: Vec<Route>,
    pub not_calico: usize,
}

/// How many local blocks and remote block routes one IP family has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FamilyCounts {
    pub local_blocks: usize,
    pub remote_blocks: usize,
    pub workload_routes: usize,
}

impl RouteGroups {
    /// IPv4 and IPv6 counts, in that order: a dual-stack node shows each family's state.
    pub fn per_family(&self) -> [FamilyCounts; 2] {
        let mut out = [FamilyCounts::default(); 2];
        let slot = |r: &Route| usize::from(r.destination.addr().is_ipv6());
        for r in &self.local_blackholes {
            out[slot(r)].local_blocks += 1;
        }
        for r in self
            .remote_via_tunnel
            .iter()
            .chain(&self.remote_via_underlay)
        {
            out[slot(r)].remote_blocks += 1;
        }
        for r in &self.workload {
            out[slot(r)].workload_routes += 1;
        }
        out
    }

    /// Whether any Calico route is IPv6.
    pub fn has_ipv6(&self) -> bool {
        self.per_family()[1] != FamilyCounts::default()
            || self
                .tunnel_hosts
                .iter()
                .any(|r| r.destination.addr().is_ipv6())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub iface: String,
    pub mtu: u32,
    pub up: bool,
    pub routes: Vec<String>,
    pub proxy_arp: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuard {
    pub name: String,
    pub listen_port: Option<u16>,
    pub fwmark: Option<String>,
    pub peers: usize,
    /// Peers that completed a handshake at least once.
    pub peers_with_handshake: usize,
    /// The routing rule steering unmarked traffic into WireGuard's table, as `ip rule` prints it.
    pub rules: Vec<String>,
    /// Routes in the tables those rules look up.
    pub table_routes: usize,
    /// Each peer, named by the Node that published its key when the datastore says.
    #[serde(default)]
    pub peer_details: Vec<WireGuardPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardPeer {
    /// The Node whose published key this is; `None` without a datastore or for a key no Node
    /// has.
    pub node: Option<String>,
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: usize,
    /// Seconds between the latest handshake and the snapshot; `None`: never.
    pub handshake_age_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSource {
    /// `iptables-nft`, `iptables-legacy`, `ip6tables-nft`, `nft ip calico`…
    pub source: String,
    pub felix_chains: usize,
    pub felix_rules: usize,
    /// Hooks from built-in/base chains into Felix's chains, e.g. `filter INPUT -> cali-INPUT`.
    pub hooks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlSummary {
    pub ip_forward: Option<u8>,
    pub rp_filter_all: Option<u8>,
    pub rp_filter_default: Option<u8>,
    /// Calico-relevant interfaces whose rp_filter is strict (1).
    pub rp_filter_strict: Vec<String>,
    /// Workload interfaces without proxy_arp=1.
    pub proxy_arp_off: Vec<String>,
    pub conntrack: Option<(u64, u64)>,
    /// Per-protocol and TCP-state counts, e.g. `tcp 120 (ESTABLISHED 80, TIME_WAIT 40)`.
    pub conntrack_breakdown: Option<String>,
    /// Calico eBPF mode's conntrack map: `cali_v4_ct4 used/max: breakdown`.
    pub calico_conntrack: Option<String>,
}

/// Summarises the observed dataplane.
pub fn build(obs: &ObservedDataplane) -> Diag {
    let (modes, mut evidence) = detect_modes(obs);
    let vpc_cni = crate::observed::vpc_cni::read(obs).filter(|_| !modes.is_empty());
    if let Some(v) = &vpc_cni {
        evidence.extend(v.evidence());
    }
    let routes = group_routes(obs);
    let tunnels: Vec<Tunnel> = TUNNEL_DEVICES
        .iter()
        .filter_map(|n| obs.link(n))
        .map(|l| tunnel(obs, l))
        .collect();
    let vxlan_index: Vec<u32> = [VXLAN_V4, VXLAN_V6]
        .iter()
        .filter_map(|n| obs.link(n))
        .map(|l| l.index)
        .collect();
    let vxlan_fdb = obs
        .fdb
        .iter()
        .filter(|f| vxlan_index.contains(&f.ifindex))
        .cloned()
        .collect();
    // Multicast/NOARP entries are the kernel's (IPv6 MLD); Felix writes PERMANENT ones.
    let vxlan_neighbours = obs
        .neighbours
        .iter()
        .filter(|n| vxlan_index.contains(&n.ifindex) && n.state != "NOARP")
        .cloned()
        .collect();
    let workloads = workloads(obs);
    let wireguard = wireguard(obs);
    let felix_chains = felix_chains(obs);
    let rules_backend = rules_backend(&felix_chains);
    let sysctls = sysctl_summary(obs, &tunnels);
    let calico_found = !modes.is_empty() || mode::calico_evidence(obs);
    let mut d = Diag {
        node: obs.node_name.clone(),
        calico_found,
        modes,
        evidence,
        anomalies: Vec::new(),
        tunnels,
        routes,
        vxlan_fdb,
        vxlan_neighbours,
        workloads,
        wireguard,
        felix_chains,
        rules_backend,
        sysctls,
        vpc_cni,
        unavailable: obs.unavailable.clone(),
        missing_capabilities: obs.missing_capabilities.clone(),
        bgp_sessions: obs.bgp_peers.clone(),
        bgp6_sessions: obs.bgp6_peers.clone(),
        calico_bpf: bpf::summary(obs),
    };
    d.anomalies = anomalies(&d);
    d
}

fn tunnel(obs: &ObservedDataplane, l: &Link) -> Tunnel {
    let vx = l.vxlan.as_ref();
    Tunnel {
        name: l.name.clone(),
        kind: l.kind.clone(),
        up: l.is_up(),
        oper_state: l.oper_state.clone(),
        mtu: l.mtu,
        mac: l.mac.clone(),
        addresses: obs
            .addresses_of(&l.name)
            .map(|a| a.address.to_string())
            .collect(),
        vni: vx.and_then(|v| v.vni),
        port: vx.and_then(|v| v.port),
        local: vx.and_then(|v| v.local).map(|ip| ip.to_string()),
        parent: vx.and_then(|v| v.parent_name.clone()),
        learning: vx.map(|v| v.learning),
    }
}

fn is_tunnel_dev(dev: Option<&str>) -> bool {
    dev.is_some_and(|d| TUNNEL_DEVICES.contains(&d))
}

pub fn group_routes(obs: &ObservedDataplane) -> RouteGroups {
    let mut g = RouteGroups::default();
    for r in &obs.routes {
        let dev = r.dev.as_deref();
        let host = r.destination.prefix_len() == r.destination.max_prefix_len();
        let calico_proto = r.protocol == PROTO_CALICO || r.protocol == PROTO_BIRD;
        // The local table and kernel-made routes (connected subnets, IPv6 link-local) are the
        // kernel's, never Felix's.
        if r.table == TABLE_LOCAL
            || r.protocol == PROTO_KERNEL
            || matches!(
                r.kind,
                RouteType::Local | RouteType::Multicast | RouteType::Broadcast
            )
        {
            g.not_calico += 1;
            continue;
        }
        if r.table != crate::observed::TABLE_MAIN {
            if is_tunnel_dev(dev)
                || (r.kind == RouteType::Throw && r.table < 253 && obs.link(WIREGUARD_V4).is_some())
            {
                g.other_tables.push(r.clone());
            } else {
                g.not_calico += 1;
            }
            continue;
        }
        if dev.is_some_and(is_workload_iface) {
            g.workload.push(r.clone());
        } else if r.kind == RouteType::Blackhole && calico_proto {
            g.local_blackholes.push(r.clone());
        } else if is_tunnel_dev(dev) && r.kind == RouteType::Unicast {
            if host {
                g.tunnel_hosts.push(r.clone())
            } else {
                g.remote_via_tunnel.push(r.clone())
            }
        } else if calico_proto && r.kind == RouteType::Unicast && r.gateway.is_some() {
            g.remote_via_underlay.push(r.clone());
        } else {
            g.not_calico += 1;
        }
    }
    g
}

fn workloads(obs: &ObservedDataplane) -> Vec<Workload> {
    obs.links
        .iter()
        .filter(|l| is_workload_iface(&l.name))
        .map(|l| Workload {
            iface: l.name.clone(),
            mtu: l.mtu,
            up: l.is_up(),
            routes: obs
                .routes
                .iter()
                .filter(|r| {
                    r.dev.as_deref() == Some(&l.name)
                        && r.kind == RouteType::Unicast
                        && r.protocol != PROTO_KERNEL
                })
                .map(|r| crate::observed::host_or_net(&r.destination))
                .collect(),
            proxy_arp: obs.sysctls.proxy_arp.get(&l.name).copied(),
        })
        .collect()
}

fn wireguard(obs: &ObservedDataplane) -> Vec<WireGuard> {
    obs.wireguard
        .iter()
        .map(|dev| {
            // Felix's rule: `not from all fwmark <mark>/<mark> lookup <table>`. Each family has
            // its own device and table: the device's rule is the one whose table routes
            // through it, or every such rule when its table has lost its routes.
            let family_of = |n: &ipnet::IpNet| {
                if matches!(n, ipnet::IpNet::V6(_)) {
                    6
                } else {
                    4
                }
            };
            let candidates = obs
                .rules
                .iter()
                .filter(|r| r.invert && r.fwmark.is_some() && r.action == "lookup");
            let routes_through = |rule: &&IpRule| {
                obs.routes.iter().any(|r| {
                    r.table == rule.table
                        && family_of(&r.destination) == rule.family
                        && r.dev.as_deref() == Some(dev.name.as_str())
                })
            };
            let mut rules: Vec<&IpRule> = candidates.clone().filter(routes_through).collect();
            if rules.is_empty() {
                rules = candidates.collect();
            }
            WireGuard {
                name: dev.name.clone(),
                listen_port: dev.listen_port,
                fwmark: dev.fwmark.clone(),
                peers: dev.peers.len(),
                peers_with_handshake: dev
                    .peers
                    .iter()
                    .filter(|p| p.latest_handshake.is_some())
                    .count(),
                table_routes: obs
                    .routes
                    .iter()
                    .filter(|r| {
                        rules.iter().any(|rule| {
                            rule.table == r.table && rule.family == family_of(&r.destination)
                        })
                    })
                    .count(),
                rules: rules.iter().map(|r| r.display()).collect(),
                peer_details: dev
                    .peers
                    .iter()
                    .map(|p| WireGuardPeer {
                        node: None,
                        public_key: p.public_key.clone(),
                        endpoint: p.endpoint.clone(),
                        allowed_ips: p.allowed_ips.len(),
                        handshake_age_secs: p
                            .latest_handshake
                            .map(|t| obs.captured_at.saturating_sub(t)),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Names each WireGuard peer by the Node that published its key (the datastore's view).
pub fn name_wireguard_peers(d: &mut Diag, expected: &crate::desired::expected::Expected) {
    for w in &mut d.wireguard {
        let Some(wg) = expected
            .wireguard
            .iter()
            .chain(&expected.wireguard_v6)
            .find(|wg| wg.device == w.name)
        else {
            continue;
        };
        for p in &mut w.peer_details {
            p.node = wg
                .peers
                .iter()
                .find(|e| e.public_key == p.public_key)
                .map(|e| e.node.clone());
        }
    }
}

fn felix_chains(obs: &ObservedDataplane) -> Vec<ChainSource> {
    let mut out = Vec::new();
    for dump in &obs.iptables {
        let mut src = ChainSource {
            source: dump.label(),
            felix_chains: 0,
            felix_rules: 0,
            hooks: Vec::new(),
        };
        for t in &dump.tables {
            src.felix_chains += t
                .chains
                .iter()
                .filter(|c| c.name.starts_with("cali-"))
                .count();
            src.felix_rules += t
                .rules
                .iter()
                .filter(|r| r.chain.starts_with("cali-") || r.felix_hash().is_some())
                .count();
            for r in &t.rules {
                let builtin = t.chain(&r.chain).is_some_and(|c| c.policy.is_some());
                if let Some(target) = r
                    .target
                    .as_deref()
                    .filter(|t| builtin && t.starts_with("cali-"))
                {
                    src.hooks
                        .push(format!("{} {} -> {target}", t.name, r.chain));
                }
            }
        }
        if src.felix_chains > 0 || !src.hooks.is_empty() {
            out.push(src);
        }
    }
    if let Some(nft) = &obs.nft {
        for fam in ["ip", "ip6"] {
            if nft.calico_table(fam).is_none() {
                continue;
            }
            let chains: Vec<_> = nft.chains_of(fam, "calico").collect();
            let mut src = ChainSource {
                source: format!("nft {fam} calico"),
                felix_chains: chains.len(),
                felix_rules: nft
                    .rules
                    .iter()
                    .filter(|r| r.family == fam && r.table == "calico")
                    .count(),
                hooks: Vec::new(),
            };
            for c in chains.iter().filter(|c| c.hook.is_some()) {
                for r in nft
                    .rules
                    .iter()
                    .filter(|r| r.family == fam && r.table == "calico" && r.chain == c.name)
                {
                    if let Some(t) = &r.target {
                        src.hooks.push(format!("{} -> {t}", c.name));
                    }
                }
            }
            out.push(src);
        }
    }
    out
}

fn rules_backend(sources: &[ChainSource]) -> Option<String> {
    let mut names: Vec<&str> = sources
        .iter()
        .map(|s| {
            if s.source.starts_with("nft ") {
                "nftables"
            } else if s.source.ends_with(Backend::Legacy.name()) {
                "iptables-legacy"
            } else {
                "iptables-nft"
            }
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    (!names.is_empty()).then(|| names.join(" + "))
}

fn sysctl_summary(obs: &ObservedDataplane, tunnels: &[Tunnel]) -> SysctlSummary {
    let s = &obs.sysctls;
    let relevant = |name: &str| is_workload_iface(name) || tunnels.iter().any(|t| t.name == name);
    SysctlSummary {
        ip_forward: s.ip_forward,
        rp_filter_all: s.rp_filter.get("all").copied(),
        rp_filter_default: s.rp_filter.get("default").copied(),
        rp_filter_strict: s
            .rp_filter
            .iter()
            .filter(|(n, v)| **v == 1 && relevant(n))
            .map(|(n, _)| n.clone())
            .collect(),
        proxy_arp_off: s
            .proxy_arp
            .iter()
            .filter(|(_, v)| **v != 1)
            .map(|(n, _)| n.clone())
            .collect(),
        conntrack: s.conntrack_count.zip(s.conntrack_max),
        conntrack_breakdown: obs.conntrack.as_ref().map(conntrack_breakdown),
        calico_conntrack: obs.calico_conntrack.as_ref().map(|c| {
            format!(
                "{} {}/{}: {}",
                c.map,
                c.counts.total,
                c.max_entries,
                conntrack_breakdown(&c.counts)
            )
        }),
    }
}

/// `tcp 12; udp 3; tcp states: ESTABLISHED 10, …`.
fn conntrack_breakdown(c: &crate::observed::conntrack::ConntrackCounts) -> String {
    let mut parts: Vec<String> = c
        .by_protocol
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    if !c.tcp_states.is_empty() {
        let states: Vec<String> = c
            .tcp_states
            .iter()
            .map(|(st, n)| format!("{st} {n}"))
            .collect();
        parts.push(format!("tcp states: {}", states.join(", ")));
    }
    if !c.complete {
        parts.push("read incomplete (table changed faster than it was read)".into());
    }
    parts.join("; ")
}

/// What limits this very report: missing privileges and unreadable sources. Everything wrong
/// with the dataplane itself is a `verify/` finding.
fn anomalies(d: &Diag) -> Vec<Anomaly> {
    let mut out = Vec::new();
    if !d.calico_found {
        return out;
    }
    if !d.missing_capabilities.is_empty() {
        out.push(Anomaly {
            severity: Severity::Warning,
            subject: "privileges".into(),
            message: format!(
                "running without {}: iptables/nftables state is not observable and drift there cannot be seen",
                d.missing_capabilities.join(", ")
            ),
        });
    }
    // Live services (Felix health, BIRD) feed one check each; their absence is not a limit of
    // this report.
    for u in d.unavailable.iter().filter(|u| !u.kind.live_service()) {
        let a = Anomaly {
            severity: Severity::Info,
            subject: u.source.clone(),
            message: format!("not observable: {}", u.reason),
        };
        // One failed source can stand for several kinds of state: say it once.
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.sort_by_key(|a| a.severity);
    out
}
