//! The observed dataplane: plain, serialisable data, the same whether read live through netlink
//! or parsed from a bundle of text dumps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{iptables::IptablesDump, nft::NftRuleset, wireguard::WgDevice};

/// Everything the agent read about this node's kernel state in one pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedDataplane {
    /// Node identity as Felix sees it (`--node-name`/`NODENAME`, else the hostname).
    pub node_name: String,
    /// Seconds since the Unix epoch when the snapshot was taken.
    pub captured_at: u64,
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    pub rules: Vec<IpRule>,
    pub sysctls: Sysctls,
    /// One dump per iptables backend and IP family that answered.
    pub iptables: Vec<IptablesDump>,
    pub nft: Option<NftRuleset>,
    /// WireGuard devices with their peers (no private keys).
    pub wireguard: Vec<WgDevice>,
    /// BGP peers from calico-node's BIRD, when its control socket answered.
    pub bgp_peers: Option<Vec<super::bird::BgpPeer>>,
    /// IPv6 BGP peers from calico-node's `bird6`, when its control socket answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp6_peers: Option<Vec<super::bird::BgpPeer>>,
    /// Felix's readiness, when its health endpoint answered.
    pub felix_health: Option<super::felix_health::FelixHealth>,
    /// Connection tracking entries per protocol and TCP state (a streamed netlink dump).
    pub conntrack: Option<super::conntrack::ConntrackCounts>,
    /// Calico eBPF mode's own conntrack map, when Felix has pinned one.
    #[serde(default)]
    pub calico_conntrack: Option<super::calico_ct::CalicoConntrack>,
    /// Calico eBPF-mode maps pinned under `/sys/fs/bpf/tc/globals` (`cali_*`).
    pub calico_bpf_pins: Vec<String>,
    /// Calico eBPF mode's maps decoded (routes, counters) and its pinned program links.
    #[serde(default)]
    pub calico_bpf: Option<super::calico_bpf::CalicoBpf>,
    /// Capabilities this process lacks that some sources need (live reads only).
    pub missing_capabilities: Vec<String>,
    /// Sources that could not be read, and why. A missing source never fails the snapshot.
    pub unavailable: Vec<Unavailable>,
}

/// A source of kernel state that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// What was not observable, for checks to know what they cannot judge.
    pub kind: Source,
    /// The command, file or netlink dump that failed.
    pub source: String,
    pub reason: String,
    /// Whether the state exists and could not be read, or is simply not there.
    #[serde(default)]
    pub cause: Cause,
}

/// Why a source is unavailable: what a check that needs it may conclude.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// It is there but could not be read (permission, missing binary, an error).
    #[default]
    Unreadable,
    /// Nothing serves it on this node (no BIRD control socket, nothing listening on Felix's
    /// health port): the checks that judge it do not apply here.
    NotRunning,
    /// The bundle being analysed does not hold it.
    NotInInput,
}

impl Source {
    /// State read from a live service (Felix's health endpoint, BIRD, the conntrack table,
    /// Calico's pinned eBPF maps) rather than the kernel's routing state: never in a bundle, and not a limit of the
    /// dataplane report when absent (each check that needs it says so).
    pub fn live_service(self) -> bool {
        matches!(
            self,
            Self::FelixHealth
                | Self::Bgp
                | Self::Bgp6
                | Self::Conntrack
                | Self::CalicoBpfRoutes
                | Self::CalicoBpfCounters
        )
    }
}

impl Unavailable {
    pub fn new(kind: Source, source: impl Into<String>, reason: impl Into<String>) -> Self {
        // Tools print several lines (`nft`'s "netlink: Error: …"); a reason is one line, so
        // that nothing reaches the operator unprefixed.
        let reason: String = reason.into();
        let reason = reason
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            kind,
            source: source.into(),
            reason,
            cause: Cause::Unreadable,
        }
    }

    pub fn with_cause(mut self, cause: Cause) -> Self {
        self.cause = cause;
        self
    }
}

/// The kinds of state a snapshot holds; a check that needs one that was not observable is
/// skipped rather than reporting its absence as drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Links,
    /// Link details beyond name, MTU and state: MAC, kind, VXLAN VNI/port/parent.
    LinkDetails,
    Addresses,
    Routes,
    Neighbours,
    Fdb,
    Rules,
    Sysctls,
    /// IPv4 iptables (either backend).
    Iptables,
    Ip6tables,
    Nftables,
    Wireguard,
    Conntrack,
    /// Felix's readiness endpoint.
    FelixHealth,
    /// BIRD's BGP sessions.
    Bgp,
    /// `bird6`'s BGP sessions (IPv6).
    Bgp6,
    /// Calico eBPF mode's pinned conntrack map.
    CalicoConntrack,
    /// Calico eBPF mode's route maps (`cali_v4_routes`, `cali_v6_routes`).
    CalicoBpfRoutes,
    /// Calico eBPF mode's per-interface counters (`cali_counters<N>`).
    CalicoBpfCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`vxlan`, `veth`, `wireguard`, `ipip`, …); `None` for physical NICs.
    pub kind: Option<String>,
    pub mtu: u32,
    /// `IFF_UP`: administratively up.
    pub admin_up: bool,
    /// Operational state as the kernel reports it (`up`, `down`, `unknown`, `lowerlayerdown`…).
    pub oper_state: String,
    pub mac: Option<String>,
    /// `IFLA_LINK`: the peer/lower device index (veth peer, tunnel lower device).
    pub link_index: Option<u32>,
    /// `IFLA_MASTER`: bridge or VRF this link is enslaved to.
    pub controller: Option<u32>,
    pub vxlan: Option<VxlanInfo>,
}

impl Link {
    /// Up in the sense that matters for forwarding: admin up and not operationally down.
    pub fn is_up(&self) -> bool {
        self.admin_up
            && !matches!(
                self.oper_state.as_str(),
                "down" | "lowerlayerdown" | "notpresent"
            )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    /// UDP destination port (`dstport`).
    pub port: Option<u16>,
    /// `IFLA_VXLAN_LINK`: the underlay device the VTEP is bound to.
    pub parent_index: Option<u32>,
    pub parent_name: Option<String>,
    pub learning: bool,
    /// Flow-based (`external`) device, as Felix creates in eBPF mode.
    pub external: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub ifindex: u32,
    pub ifname: String,
    /// Address with its prefix length, e.g. `10.244.0.0/32`.
    pub address: IpNet,
    pub scope: String,
}

/// Route type (`rtm_type`), named as iproute2 prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteType {
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Nat,
    Other,
}

impl RouteType {
    pub fn from_kernel(value: u8) -> Self {
        match value {
            1 => Self::Unicast,
            2 => Self::Local,
            3 => Self::Broadcast,
            4 => Self::Anycast,
            5 => Self::Multicast,
            6 => Self::Blackhole,
            7 => Self::Unreachable,
            8 => Self::Prohibit,
            9 => Self::Throw,
            10 => Self::Nat,
            _ => Self::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unicast => "unicast",
            Self::Local => "local",
            Self::Broadcast => "broadcast",
            Self::Anycast => "anycast",
            Self::Multicast => "multicast",
            Self::Blackhole => "blackhole",
            Self::Unreachable => "unreachable",
            Self::Prohibit => "prohibit",
            Self::Throw => "throw",
            Self::Nat => "nat",
            Self::Other => "other",
        }
    }
}

pub const PROTO_KERNEL: u8 = 2;
pub const PROTO_BOOT: u8 = 3;
/// The main routing table.
pub const TABLE_MAIN: u32 = 254;
/// The kernel's local table (local and broadcast addresses).
pub const TABLE_LOCAL: u32 = 255;

/// Name of a route protocol as iproute2's `rt_protos` spells it; numbers it does not name
/// (Calico's 80 among them) print as the number.
pub fn protocol_name(proto: u8) -> String {
    let name = match proto {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        8 => "gated",
        9 => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        18 => "keepalived",
        42 => "babel",
        99 => "openr",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        192 => "eigrp",
        other => return other.to_string(),
    };
    name.to_string()
}

/// Name of a route scope as iproute2 prints it.
pub fn scope_name(scope: u8) -> String {
    match scope {
        0 => "global".into(),
        200 => "site".into(),
        253 => "link".into(),
        254 => "host".into(),
        255 => "nowhere".into(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Routing table id (`RTA_TABLE`, so ids above 255 are exact).
    pub table: u32,
    pub destination: IpNet,
    #[serde(rename = "type")]
    pub kind: RouteType,
    pub protocol: u8,
    pub scope: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Output device name, resolved from `oif` at capture time.
    pub dev: Option<String>,
    pub onlink: bool,
    /// `RTA_PRIORITY` (metric); 0 when absent.
    pub metric: u32,
    /// The `mtu` route metric, which Felix sets on VXLAN/IPIP routes since v3.31.
    pub mtu: Option<u32>,
    pub prefsrc: Option<IpAddr>,
}

impl Route {
    /// Renders the route the way `ip route show table all` would, for humans.
    pub fn display(&self) -> String {
        let mut s = String::new();
        if self.kind != RouteType::Unicast {
            s.push_str(self.kind.name());
            s.push(' ');
        }
        s.push_str(&host_or_net(&self.destination));
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(dev) = &self.dev {
            s.push_str(&format!(" dev {dev}"));
        }
        if self.table != TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        if self.protocol != PROTO_BOOT {
            s.push_str(&format!(" proto {}", protocol_name(self.protocol)));
        }
        if self.scope != 0 {
            s.push_str(&format!(" scope {}", scope_name(self.scope)));
        }
        if self.onlink {
            s.push_str(" onlink");
        }
        if self.metric != 0 {
            s.push_str(&format!(" metric {}", self.metric));
        }
        if let Some(mtu) = self.mtu {
            s.push_str(&format!(" mtu {mtu}"));
        }
        s
    }
}

/// `10.0.0.1/32` prints as `10.0.0.1`, like iproute2 does.
pub fn host_or_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub ifindex: u32,
    pub dev: String,
    pub destination: IpAddr,
    pub lladdr: Option<String>,
    /// NUD state names, e.g. `PERMANENT`, `REACHABLE`, `STALE`.
    pub state: String,
}

impl Neighbour {
    pub fn is_permanent(&self) -> bool {
        self.state == "PERMANENT"
    }
}

/// A bridge forwarding database entry (`bridge fdb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub dev: String,
    pub mac: String,
    /// Remote VTEP (`dst`) for VXLAN entries.
    pub destination: Option<IpAddr>,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub controller: Option<String>,
    /// `NTF_SELF`: the entry lives in the device's own table (VXLAN), not a bridge's.
    pub self_entry: bool,
    pub state: String,
}

impl FdbEntry {
    pub fn is_permanent(&self) -> bool {
        self.state == "PERMANENT"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRule {
    pub family: u8,
    pub priority: u32,
    pub invert: bool,
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub table: u32,
    /// `lookup`, `goto`, `blackhole`, `unreachable`, `prohibit`, `nop`.
    pub action: String,
}

impl IpRule {
    pub fn display(&self) -> String {
        let mut s = format!("{}:\t", self.priority);
        if self.invert {
            s.push_str("not ");
        }
        s.push_str(
            &self
                .source
                .map_or("from all".into(), |n| format!("from {}", host_or_net(&n))),
        );
        if let Some(d) = self.destination {
            s.push_str(&format!(" to {}", host_or_net(&d)));
        }
        if let Some(mark) = self.fwmark {
            s.push_str(&format!(" fwmark {mark:#x}"));
            if let Some(mask) = self.fwmask.filter(|m| *m != u32::MAX) {
                s.push_str(&format!("/{mask:#x}"));
            }
        }
        if let Some(i) = &self.iif {
            s.push_str(&format!(" iif {i}"));
        }
        if let Some(o) = &self.oif {
            s.push_str(&format!(" oif {o}"));
        }
        match self.action.as_str() {
            "lookup" => s.push_str(&format!(" lookup {}", table_name(self.table))),
            other => s.push_str(&format!(" {other}")),
        }
        s
    }
}

pub fn table_name(table: u32) -> String {
    match table {
        253 => "default".into(),
        254 => "main".into(),
        255 => "local".into(),
        t => t.to_string(),
    }
}

/// Kernel settings that decide whether Calico's routing can work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctls {
    /// `net.ipv4.ip_forward`
    pub ip_forward: Option<u8>,
    /// `net.ipv4.conf.<iface>.rp_filter` for `all`, `default` and every interface.
    pub rp_filter: BTreeMap<String, u8>,
    /// `net.ipv4.conf.<cali*>.proxy_arp`: Felix sets 1 on every workload interface.
    pub proxy_arp: BTreeMap<String, u8>,
    /// `net.ipv4.conf.<cali*>.forwarding`.
    pub forwarding: BTreeMap<String, u8>,
    /// `net.netfilter.nf_conntrack_count` and `nf_conntrack_max`, when the module is loaded.
    pub conntrack_count: Option<u64>,
    pub conntrack_max: Option<u64>,
}

impl ObservedDataplane {
    /// Whether `source` was read (a missing source means "unknown", never "empty").
    pub fn observable(&self, source: Source) -> bool {
        !self.unavailable.iter().any(|u| u.kind == source)
    }

    /// The sessions `family`'s BIRD answered with (`bird` or `bird6`), when it did.
    pub fn bgp_peers_of(&self, family: super::bird::Family) -> Option<&Vec<super::bird::BgpPeer>> {
        match family {
            super::bird::Family::V4 => self.bgp_peers.as_ref(),
            super::bird::Family::V6 => self.bgp6_peers.as_ref(),
        }
    }

    /// Every BGP session either BIRD answered with, IPv4 first.
    pub fn all_bgp_peers(&self) -> impl Iterator<Item = &super::bird::BgpPeer> {
        self.bgp_peers.iter().chain(&self.bgp6_peers).flatten()
    }

    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn addresses_of(&self, ifname: &str) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(move |a| a.ifname == ifname)
    }
}
