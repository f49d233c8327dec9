//! The dataplane Felix should have programmed on one node, computed from the datastore the way
//! Felix computes it (shared/reference/calico-dataplane.md §1–§4, §8).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use regex::Regex;
use serde::Serialize;

use super::{Block, Datastore, EncapMode, Kind, Node, ProtoPort};

use calico_conventions::{
    FAILSAFE_IN, FAILSAFE_OUT, IPIP_OVERHEAD, VXLAN_OVERHEAD, VXLAN_V6_OVERHEAD,
    WIREGUARD_OVERHEAD, WIREGUARD_V6_OVERHEAD,
};
pub use calico_conventions::{
    VXLAN_V4 as VXLAN_DEV, VXLAN_V6 as VXLAN_V6_DEV, vtep_mac, vtep_mac_v6, workload_iface,
};

pub const IPIP_DEV: &str = "tunl0";
pub const WIREGUARD_DEV: &str = "wireguard.cali";
/// Felix's fallback when no interface matches `MTUIfacePattern`.
const DEFAULT_HOST_MTU: u32 = 1460;
/// Felix's default `MTUIfacePattern`.
pub const DEFAULT_MTU_IFACE_PATTERN: &str = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub node: String,
    /// Whether the input says which node this is; without it nothing node-specific (local
    /// blocks, own addresses, which blocks are remote) can be expected.
    pub node_known: bool,
    /// The datastore kinds the input held: a check whose kinds are missing does not run.
    pub kinds: Vec<Kind>,
    /// The IPv4 pools that carry workloads, with their encapsulation: enough to judge which
    /// device each route into a pool must leave by, with or without IPAM blocks.
    pub pools: Vec<PoolEncap>,
    pub node_ip: Option<Ipv4Net>,
    /// `spec.bgp.ipv6Address`: the IPv6 VTEP's node address (IPv6 expected only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip_v6: Option<Ipv6Net>,
    /// Blocks affine to this node, of each family Felix handles.
    pub local_blocks: Vec<IpNet>,
    pub vxlan: Option<ExpectedTunnel>,
    /// `vxlan-v6.calico`, when an IPv6 pool uses VXLAN and Felix has IPv6 support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_v6: Option<ExpectedTunnel>,
    pub ipip: Option<ExpectedTunnel>,
    pub wireguard: Option<ExpectedWireguard>,
    /// `wg-v6.cali`, with `wireguardEnabledV6`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard_v6: Option<ExpectedWireguard>,
    /// Main-table routes of both families: IPv6 ones only where IPv6 is expected.
    pub routes: Vec<ExpectedRoute>,
    /// Remote VTEPs: one permanent ARP (or NDP) entry and one FDB entry each, on the device
    /// of the tunnel address's family.
    pub vteps: Vec<Vtep>,
    pub workloads: Vec<ExpectedWorkload>,
    /// The largest MTU a workload interface may have: the smallest enabled tunnel MTU. `None`
    /// when it depends on an underlay MTU the input does not show.
    pub pod_mtu: Option<u32>,
    /// The MTU Felix detects from the underlay; `None` when the input lacks the underlay link.
    pub host_mtu: Option<u32>,
    pub failsafe_in: Vec<ProtoPort>,
    pub failsafe_out: Vec<ProtoPort>,
    /// Pools with `natOutgoing: true`.
    pub nat_outgoing: Vec<IpNet>,
    pub bpf: bool,
    /// The entries Felix's eBPF route map must hold for other nodes' blocks (judged only
    /// where that map is read).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf_routes: Vec<ExpectedBpfRoute>,
    /// The BGP sessions calico-node's BIRD should have, and the routes it programs; judged
    /// only where BIRD answers (a cluster without BIRD has none of it).
    pub bgp: super::bgp::ExpectedBgp,
    /// FelixConfiguration `interfacePrefix` when set (`eni` in policy-only mode on the AWS VPC
    /// CNI); unset here when calico-node sets it by environment, as the operator does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_prefix: Option<String>,
    /// What could not be derived, e.g. a remote node without a VTEP yet.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolEncap {
    pub cidr: Ipv4Net,
    pub vxlan: EncapMode,
    pub ipip: EncapMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedTunnel {
    pub device: String,
    /// `None` when auto-detected from an underlay the input does not show.
    pub mtu: Option<u32>,
    pub address: Option<IpAddr>,
    /// VXLAN only: VNI, port, the VTEP MAC, and the node IP the device must be bound to.
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub mac: Option<String>,
    pub local: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedWireguard {
    /// 4 for `wireguard.cali`, 6 for `wg-v6.cali`.
    pub family: u8,
    pub device: String,
    pub mtu: Option<u32>,
    /// `spec.wireguard.interfaceIPv4Address` (IPv6: `interfaceIPv6Address`), which Felix puts
    /// on the device as a host address.
    pub address: Option<IpAddr>,
    pub listen_port: u16,
    pub rule_priority: u32,
    /// The routing table the rule looks up: the lowest of `routeTableRanges` (Felix allocates
    /// WireGuard's IPv4 table first).
    pub table: u32,
    pub peers: Vec<WireguardPeer>,
    /// Remote nodes Felix programs no peer for (no public key published, no address, a key
    /// another node also has), with why: their peers are neither expected nor unexpected.
    pub not_programmed: Vec<(String, String)>,
    /// Their keys, when they have one: a peer with such a key is left alone.
    pub tolerated_keys: Vec<String>,
    /// Whether every remote node is known, so that a peer with no node's key is stale.
    pub peers_complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireguardPeer {
    pub node: String,
    pub public_key: String,
    pub allowed_ips: Vec<IpNet>,
    /// `<node IP>:<our own listening port>`, as Felix sets it.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RouteTarget {
    /// `blackhole <block>`: a local block.
    Blackhole,
    /// `<dst> via <gateway> dev <device> onlink` (or a device route when `gateway` is None).
    Device {
        device: String,
        gateway: Option<IpAddr>,
    },
    /// Same-subnet / no-encap: `<dst> via <node IP> dev <underlay> onlink`.
    Underlay { gateway: IpAddr },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedRoute {
    pub destination: IpNet,
    pub target: RouteTarget,
    /// Why the route exists: "block of node-b", "local block", "tunnel address of node-c".
    pub reason: String,
}

/// A remote block's entry in `cali_v4_routes` (an IPv6 block's in `cali_v6_routes`):
/// `bpf_route_mgr.go` `calculateRoute`, one manager per family, programs a
/// `RouteType_REMOTE_WORKLOAD` block as a remote workload route (workload flag, not local) with
/// the block's node IP of that family as next hop, and none when that IP is unknown. The tunnel
/// flags depend on the pool's encapsulation as the route resolver sees it, so they are not
/// expected here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedBpfRoute {
    pub block: IpNet,
    pub node: String,
    pub next_hop: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vtep {
    pub node: String,
    pub tunnel_ip: IpAddr,
    pub mac: String,
    pub node_ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedWorkload {
    pub ip: IpAddr,
    pub iface: String,
    pub pod: String,
}

impl Expected {
    /// Whether Felix handles IPv6 here: it has IPv6 support and an IPv6 pool gives this node
    /// a VXLAN device, blocks or routes. Only then are IPv6 rules and routes judged.
    pub fn ipv6_expected(&self) -> bool {
        self.vxlan_v6.is_some()
            || self.local_blocks.iter().any(|b| b.addr().is_ipv6())
            || self.routes.iter().any(|r| r.destination.addr().is_ipv6())
    }
}

/// Facts about the node that Felix reads from the kernel rather than the datastore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// (name, mtu, oper-up) of every link.
    pub links: Vec<(String, u32, bool)>,
}

impl HostFacts {
    /// Whether these are all the node's links: a full `ip link` listing (and every live read)
    /// starts with `lo`; a pasted `ip link show vxlan.calico` does not, and then a link that
    /// is not there may simply not have been pasted.
    fn complete(&self) -> bool {
        self.links.iter().any(|(name, _, _)| name == "lo")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExpectedError {
    #[error(
        "node {name:?} is not in the datastore (node name follows Felix: --node-name, NODENAME, \
         hostname){}{}",
        looks_like.as_ref().map(|n| format!("; this node looks like {n}")).unwrap_or_default(),
        known_nodes(known)
    )]
    UnknownNode {
        name: String,
        /// The datastore's node names, closest first.
        known: Vec<String>,
        /// The Node whose addresses or VTEP MAC the dataplane holds, when one does.
        looks_like: Option<String>,
    },
    #[error("FelixConfiguration mtuIfacePattern {pattern:?} is not a valid regex")]
    BadPattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

/// The smallest MTU of the oper-up links matching `pattern`; Felix's 1460 fallback when the
/// node has no such link (`findHostMTU`, reference §2); `None` when the links at hand are not
/// all the node's, so that the fallback would be a guess.
pub fn host_mtu(facts: &HostFacts, pattern: &Regex) -> Option<u32> {
    facts
        .links
        .iter()
        .filter(|(name, _, up)| *up && pattern.is_match(name))
        .map(|(_, mtu, _)| *mtu)
        .min()
        .or_else(|| facts.complete().then_some(DEFAULT_HOST_MTU))
}

fn v4(net: &IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

/// One IP family as Felix's per-family managers see the datastore: IPv4 through
/// `vxlan.calico`, IPv6 through `vxlan-v6.calico` with the Node's IPv6 fields (reference §1.3,
/// §1.9; `felix/dataplane/linux/vxlan_mgr.go`, `felix/vxlanfdb/vxlan_fdb.go`, which programs
/// NDP neighbours and FDB entries for IPv6 VTEPs as it does ARP for IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn holds(self, net: &IpNet) -> bool {
        net.addr().is_ipv6() == (self == Self::V6)
    }

    fn vxlan_device(self) -> &'static str {
        match self {
            Self::V4 => VXLAN_DEV,
            Self::V6 => VXLAN_V6_DEV,
        }
    }

    fn node_ip(self, n: &Node) -> Option<IpNet> {
        match self {
            Self::V4 => n.ipv4.map(IpNet::V4),
            Self::V6 => n.ipv6.map(IpNet::V6),
        }
    }

    fn vxlan_tunnel(self, n: &Node) -> Option<IpAddr> {
        match self {
            Self::V4 => n.ipv4_vxlan_tunnel.map(IpAddr::V4),
            Self::V6 => n.ipv6_vxlan_tunnel.map(IpAddr::V6),
        }
    }

    fn vtep_mac(self, n: &Node) -> String {
        match self {
            Self::V4 => n.vxlan_mac.clone().unwrap_or_else(|| vtep_mac(&n.name)),
            Self::V6 => n
                .vxlan_mac_v6
                .clone()
                .unwrap_or_else(|| vtep_mac_v6(&n.name)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

fn ports(configured: Option<&Vec<ProtoPort>>, defaults: &[(&str, u16)]) -> Vec<ProtoPort> {
    configured.cloned().unwrap_or_else(|| {
        defaults
            .iter()
            .map(|(p, port)| ProtoPort {
                protocol: (*p).into(),
                port: *port,
                net: None,
            })
            .collect()
    })
}

/// `; known nodes: a, b, …` (the first ten), or that there are none.
fn known_nodes(known: &[String]) -> String {
    const SHOWN: usize = 10;
    if known.is_empty() {
        return "; the datastore holds no Nodes".into();
    }
    let more = known.len().saturating_sub(SHOWN);
    format!(
        "; known nodes, closest first: {}{}",
        known[..known.len().min(SHOWN)].join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// The name [`Expected::node`] carries when the input does not say which node it is from.
pub const UNKNOWN_NODE: &str = "unknown node";

/// Computes what Felix should program on `node` (`None`: a node the input does not name), from
/// whatever kinds the datastore holds. Only a node named but absent from a datastore that
/// holds Nodes is an error: without Nodes at all, what needs this node's is not expected.
pub fn compute(
    ds: &Datastore,
    node: Option<&str>,
    facts: &HostFacts,
) -> Result<Expected, ExpectedError> {
    let me = match node {
        Some(name) if ds.has(Kind::Node) => {
            Some(ds.node(name).ok_or_else(|| ExpectedError::UnknownNode {
                name: name.to_string(),
                known: super::identity::closest_names(ds, name),
                looks_like: None,
            })?)
        }
        _ => None,
    };
    // Felix's per-node FelixConfiguration applies only to a node we can name.
    let cfg = ds.felix_config(node.unwrap_or_default());
    let pattern_src = cfg
        .mtu_iface_pattern
        .clone()
        .unwrap_or_else(|| DEFAULT_MTU_IFACE_PATTERN.into());
    let pattern = Regex::new(&pattern_src).map_err(|source| ExpectedError::BadPattern {
        pattern: pattern_src,
        source,
    })?;
    let host_mtu = host_mtu(facts, &pattern);
    let v4_pools: Vec<_> = ds
        .pools
        .iter()
        .filter(|p| p.cidr.addr().is_ipv4() && p.routes_workloads())
        .collect();
    // Without pools, this node's own tunnel addresses say which encapsulations it uses:
    // calico-node allocates them only for pools that have the mode.
    let from_pools = |in_pools: bool, own: bool| {
        if ds.has(Kind::IpPool) { in_pools } else { own }
    };
    let vxlan_on = cfg.vxlan_enabled.unwrap_or_else(|| {
        from_pools(
            v4_pools.iter().any(|p| p.vxlan.enabled()),
            me.is_some_and(|n| n.ipv4_vxlan_tunnel.is_some()),
        )
    });
    let ipip_on = cfg.ipip_enabled.unwrap_or_else(|| {
        from_pools(
            v4_pools.iter().any(|p| p.ipip.enabled()),
            me.is_some_and(|n| n.ipv4_ipip_tunnel.is_some()),
        )
    });
    // Felix ignores IPv6 altogether when `ipv6Support` is false (default true); with it,
    // `vxlan-v6.calico` exists iff an IPv6 pool uses VXLAN (`EncapsulationCalculator`),
    // unless `vxlanEnabledV6` says otherwise.
    let ipv6_on = cfg.ipv6_support != Some(false);
    let v6_pools: Vec<_> = ds
        .pools
        .iter()
        .filter(|p| p.cidr.addr().is_ipv6() && p.routes_workloads())
        .collect();
    let vxlan_v6_on = ipv6_on
        && cfg.vxlan_enabled_v6.unwrap_or_else(|| {
            from_pools(
                v6_pools.iter().any(|p| p.vxlan.enabled()),
                me.is_some_and(|n| n.ipv6_vxlan_tunnel.is_some()),
            )
        });
    let wg_on = cfg.wireguard_enabled.unwrap_or(false);
    let configured = |v: Option<u32>| v.filter(|m| *m > 0);
    let auto = |overhead: u32| host_mtu.map(|h| h.saturating_sub(overhead));
    let vxlan_mtu = configured(cfg.vxlan_mtu).or_else(|| auto(VXLAN_OVERHEAD));
    let vxlan_v6_mtu = configured(cfg.vxlan_mtu_v6).or_else(|| auto(VXLAN_V6_OVERHEAD));
    let ipip_mtu = configured(cfg.ipip_mtu).or_else(|| auto(IPIP_OVERHEAD));
    let wg_mtu = configured(cfg.wireguard_mtu).or_else(|| auto(WIREGUARD_OVERHEAD));
    let wg_v6_on = cfg.wireguard_enabled_v6.unwrap_or(false);
    let wg_v6_mtu = configured(cfg.wireguard_mtu_v6).or_else(|| auto(WIREGUARD_V6_OVERHEAD));
    // Felix sizes pods for the smallest enabled encapsulation, the IPv6 ones included.
    let enabled: Vec<Option<u32>> = [
        (vxlan_on, vxlan_mtu),
        (vxlan_v6_on, vxlan_v6_mtu),
        (ipip_on, ipip_mtu),
        (wg_on, wg_mtu),
        (wg_v6_on, wg_v6_mtu),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, m)| *m)
    .collect();
    // The smallest enabled tunnel MTU is known only when each of them is.
    let pod_mtu = if enabled.is_empty() {
        host_mtu
    } else {
        enabled
            .iter()
            .copied()
            .collect::<Option<Vec<u32>>>()
            .and_then(|v| v.into_iter().min())
    };

    let node_ip = me.and_then(|n| n.ipv4);
    let mut notes = Vec::new();
    let blocks: Vec<&Block> = ds.blocks.iter().filter(|b| !b.deleted).collect();
    // Indexed once: at 10,000 nodes a scan of every block per node is 10^8 steps.
    let mut blocks_of: HashMap<&str, Vec<&Block>> = HashMap::new();
    for b in &blocks {
        if let Some(owner) = b.affinity.as_deref() {
            blocks_of.entry(owner).or_default().push(b);
        }
    }
    let families: &[Family] = if ipv6_on {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let local_blocks: Vec<IpNet> = blocks
        .iter()
        .filter(|b| node.is_some() && b.affinity.as_deref() == node)
        .filter(|b| families.iter().any(|f| f.holds(&b.cidr)))
        .map(|b| b.cidr)
        .collect();
    let node_ip_v6 = me.and_then(|n| n.ipv6).filter(|_| ipv6_on);
    // Felix configures `vxlan-v6.calico`, and routes through it, only once this node's own
    // IPv6 VTEP is known: its IPv6 address and IPv6 tunnel address (`vxlan_mgr.go`
    // `getLocalVTEP`, `VXLANResolver.hasVTEPInfo`). Until then nothing of it is expected.
    let v6_vtep_pending =
        vxlan_v6_on && me.is_some_and(|n| n.ipv6.is_none() || n.ipv6_vxlan_tunnel.is_none());
    let vxlan_v6_on = vxlan_v6_on && !v6_vtep_pending;

    let vxlan = vxlan_on.then(|| ExpectedTunnel {
        device: VXLAN_DEV.into(),
        mtu: vxlan_mtu,
        address: me.and_then(|n| n.ipv4_vxlan_tunnel).map(IpAddr::V4),
        vni: Some(cfg.vxlan_vni.unwrap_or(calico_conventions::VXLAN_VNI)),
        port: Some(cfg.vxlan_port.unwrap_or(calico_conventions::VXLAN_PORT)),
        mac: node.map(|name| {
            me.and_then(|n| n.vxlan_mac.clone())
                .unwrap_or_else(|| vtep_mac(name))
        }),
        local: node_ip.map(|n| IpAddr::V4(n.addr())),
    });
    // The same VNI and port as IPv4 (`vxlan_mgr.go` takes both from one config).
    let vxlan_v6 = vxlan_v6_on.then(|| ExpectedTunnel {
        device: VXLAN_V6_DEV.into(),
        mtu: vxlan_v6_mtu,
        address: me.and_then(|n| n.ipv6_vxlan_tunnel).map(IpAddr::V6),
        vni: Some(cfg.vxlan_vni.unwrap_or(calico_conventions::VXLAN_VNI)),
        port: Some(cfg.vxlan_port.unwrap_or(calico_conventions::VXLAN_PORT)),
        mac: node.map(|name| {
            me.and_then(|n| n.vxlan_mac_v6.clone())
                .unwrap_or_else(|| vtep_mac_v6(name))
        }),
        local: node_ip_v6.map(|n| IpAddr::V6(n.addr())),
    });
    let ipip = ipip_on.then(|| ExpectedTunnel {
        device: IPIP_DEV.into(),
        mtu: ipip_mtu,
        address: me.and_then(|n| n.ipv4_ipip_tunnel).map(IpAddr::V4),
        vni: None,
        port: None,
        mac: None,
        local: None,
    });

    // Which blocks are remote, and how to reach them, needs this node's name and the other
    // Nodes; without them only the pools' modes are judged (verify/routes.rs).
    let mut routes = Vec::new();
    let mut vteps = Vec::new();
    if v6_vtep_pending {
        notes.push(format!(
            "node {} has no IPv6 address or IPv6 VXLAN tunnel address yet: Felix creates no \
             vxlan-v6.calico and no IPv6 block routes",
            node.unwrap_or(UNKNOWN_NODE)
        ));
    }
    if let Some(node) = node {
        for &family in families
            .iter()
            .filter(|f| !(v6_vtep_pending && **f == Family::V6))
        {
            let (local_ip, vxlan_on) = match family {
                Family::V4 => (node_ip.map(IpNet::V4), vxlan_on),
                Family::V6 => (node_ip_v6.map(IpNet::V6), vxlan_v6_on),
            };
            remote_routes(
                ds,
                node,
                family,
                local_ip,
                vxlan_on,
                &blocks,
                &mut routes,
                &mut vteps,
                &mut notes,
            );
        }
    }

    let workloads = node.map_or_else(Vec::new, |n| workloads(ds, n, &blocks, families));
    let wg_v4 = wg_on.then(|| wireguard(ds, node, me, &blocks_of, &cfg, wg_mtu, false));
    let wireguard_v6 = wg_v6_on.then(|| wireguard(ds, node, me, &blocks_of, &cfg, wg_v6_mtu, true));
    for wg in wg_v4.iter().chain(&wireguard_v6) {
        notes.extend(wg.not_programmed.iter().map(|(n, why)| {
            format!(
                "{} peer of node {n} not checked: the node {why} (Felix programs no peer for it)",
                wg.device
            )
        }));
    }
    Ok(Expected {
        node: node.unwrap_or(UNKNOWN_NODE).to_string(),
        node_known: node.is_some(),
        kinds: ds.kinds(),
        pools: v4_pools
            .iter()
            .filter_map(|p| {
                Some(PoolEncap {
                    cidr: v4(&p.cidr)?,
                    vxlan: p.vxlan,
                    ipip: p.ipip,
                })
            })
            .collect(),
        node_ip,
        node_ip_v6,
        local_blocks,
        vxlan,
        vxlan_v6,
        ipip,
        wireguard: wg_v4,
        wireguard_v6,
        routes,
        vteps,
        workloads,
        pod_mtu,
        host_mtu,
        failsafe_in: ports(cfg.failsafe_inbound_host_ports.as_ref(), FAILSAFE_IN),
        failsafe_out: ports(cfg.failsafe_outbound_host_ports.as_ref(), FAILSAFE_OUT),
        nat_outgoing: ds
            .pools
            .iter()
            .filter(|p| p.nat_outgoing && !p.disabled)
            .map(|p| p.cidr)
            .collect(),
        bpf: cfg.bpf_enabled.unwrap_or(false),
        // Only Felix in eBPF mode programs the map; pins left from an earlier eBPF run are
        // not its current intent.
        bpf_routes: match node {
            Some(n) if cfg.bpf_enabled == Some(true) => bpf_routes(ds, n, &blocks, ipv6_on),
            _ => Vec::new(),
        },
        // Sessions are per node: none can be expected of a node the input does not identify.
        bgp: me.map(|me| super::bgp::compute(ds, me)).unwrap_or_default(),
        interface_prefix: cfg.interface_prefix.clone(),
        notes,
    })
}

/// Other nodes' blocks, each with its node's IP of the block's family: the remote workload
/// entries of Felix's eBPF route maps (reference §6, `felix/dataplane/linux/bpf_route_mgr.go`).
/// Blocks of nodes without a known address of that family get no entry, as Felix skips them;
/// IPv6 blocks none without `ipv6Support`.
fn bpf_routes(
    ds: &Datastore,
    node: &str,
    blocks: &[&Block],
    ipv6_on: bool,
) -> Vec<ExpectedBpfRoute> {
    // Indexed once: thousands of blocks each looking their node up would be quadratic.
    let node_ips: std::collections::HashMap<&str, &Node> =
        ds.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    blocks
        .iter()
        .filter_map(|b| {
            let owner = b.affinity.as_deref().filter(|o| *o != node)?;
            ds.pool_for(&b.cidr).filter(|p| p.routes_workloads())?;
            let n = node_ips.get(owner)?;
            let next_hop = match b.cidr {
                IpNet::V4(_) => IpAddr::V4(n.ipv4?.addr()),
                IpNet::V6(_) if ipv6_on => IpAddr::V6(n.ipv6?.addr()),
                IpNet::V6(_) => return None,
            };
            Some(ExpectedBpfRoute {
                block: b.cidr.trunc(),
                node: owner.to_string(),
                next_hop,
            })
        })
        .collect()
}

/// The routes Felix programs on `node` for IPAM blocks (local blackholes, remote blocks,
/// borrowed /32s, remote tunnel addresses) and the remote VTEPs (reference §1.3–§1.6).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the outputs are filled together"
)]
fn remote_routes(
    ds: &Datastore,
    node: &str,
    family: Family,
    node_ip: Option<IpNet>,
    vxlan_on: bool,
    blocks: &[&Block],
    routes: &mut Vec<ExpectedRoute>,
    vteps: &mut Vec<Vtep>,
    notes: &mut Vec<String>,
) {
    let first_vtep = vteps.len();
    for remote in ds.nodes.iter().filter(|n| n.name != node) {
        if vxlan_on {
            match (family.node_ip(remote), family.vxlan_tunnel(remote)) {
                (Some(ip), Some(tun)) => vteps.push(Vtep {
                    node: remote.name.clone(),
                    tunnel_ip: tun,
                    mac: family.vtep_mac(remote),
                    node_ip: ip.addr(),
                }),
                _ => notes.push(format!(
                    "node {} has no {}VXLAN tunnel address or node IP yet: Felix programs no VTEP for it",
                    remote.name,
                    if family == Family::V6 { "IPv6 " } else { "" }
                )),
            }
        }
    }
    let vteps: &[Vtep] = &vteps[first_vtep..];
    let device = family.vxlan_device();
    // Indexed once: at 10,000 nodes a scan of every node or VTEP per block is 10^8 steps.
    let nodes = first_by(ds.nodes.iter(), |n| n.name.as_str());
    let vtep_of = first_by(vteps.iter(), |v| v.node.as_str());
    // A remote VTEP's own tunnel address is routed as `<tunnel IP> dev vxlan.calico scope
    // link` — directly connected, no gateway — when it is not inside a block of its owner's
    // that is routed via it: borrowed from another node's block, or from a /32 tunnel pool
    // (`l3_route_resolver.go` isRemoteTunnelRoute/isBorrowedRoute, reference §1.5).
    let tunnel_of = |owner: &str, ip: IpAddr| vtep_of.get(owner).is_some_and(|v| v.tunnel_ip == ip);
    let mut routed_blocks_of: HashMap<&str, Vec<IpNet>> = HashMap::new();
    for b in blocks.iter().filter(|b| family.holds(&b.cidr)) {
        let Some(owner) = b.affinity.as_deref() else {
            continue;
        };
        let cidr = b.cidr;
        let Some(pool) = ds.pool_for(&b.cidr) else {
            notes.push(format!("block {cidr} is in no IP pool: no route expected"));
            continue;
        };
        if !pool.routes_workloads() {
            continue;
        }
        if owner == node {
            // Felix blackholes its own blocks except /32s and /128s (`routeIsLocalBlock`, §1.4).
            if cidr.prefix_len() < cidr.max_prefix_len() {
                routes.push(ExpectedRoute {
                    destination: cidr,
                    target: RouteTarget::Blackhole,
                    reason: "local block".into(),
                });
            }
            continue;
        }
        let Some(remote) = nodes.get(owner).copied() else {
            if ds.has(Kind::Node) {
                notes.push(format!("block {cidr} is affine to {owner}, which is not in the datastore: no route expected"));
            }
            continue;
        };
        if cidr.prefix_len() == cidr.max_prefix_len()
            && pool.vxlan.enabled()
            && tunnel_of(owner, cidr.addr())
        {
            // A /32 tunnel pool's block: the VTEP route below covers it.
            continue;
        }
        let vtep = vtep_of.get(owner).copied();
        if let Some(target) = remote_target(family, pool, node_ip, remote, vtep, notes) {
            routed_blocks_of.entry(owner).or_default().push(cidr);
            routes.push(ExpectedRoute {
                destination: cidr,
                target,
                reason: format!("block of {owner}"),
            });
        }
    }
    // Borrowed addresses: an allocation whose owner is not the block's node gets a /32 to its
    // owner, which beats the block route by longest prefix.
    for b in blocks.iter().filter(|b| family.holds(&b.cidr)) {
        for a in &b.allocations {
            let Some(owner) = a.attrs.node.as_ref() else {
                continue;
            };
            let ip = a.ip;
            if Some(owner.as_str()) == b.affinity.as_deref() || owner == node {
                continue;
            }
            let (Some(pool), Some(remote)) =
                (ds.pool_for(&b.cidr), nodes.get(owner.as_str()).copied())
            else {
                continue;
            };
            if pool.vxlan.enabled() && tunnel_of(owner, ip) {
                // A borrowed VTEP address: the device route below, not `via` itself.
                continue;
            }
            let vtep = vtep_of.get(owner.as_str()).copied();
            if let Some(target) = remote_target(family, pool, node_ip, remote, vtep, notes) {
                routes.push(ExpectedRoute {
                    destination: IpNet::from(ip),
                    target,
                    reason: format!("address borrowed by {owner}"),
                });
            }
        }
    }
    let mut routed: HashSet<IpNet> = routes.iter().map(|r| r.destination).collect();
    let mut tunnel_routes = Vec::new();
    for v in vteps {
        let via_own_block = routed_blocks_of
            .get(v.node.as_str())
            .is_some_and(|own| own.iter().any(|b| b.contains(&v.tunnel_ip)));
        if !via_own_block && routed.insert(IpNet::from(v.tunnel_ip)) {
            tunnel_routes.push(ExpectedRoute {
                destination: IpNet::from(v.tunnel_ip),
                target: RouteTarget::Device {
                    device: device.into(),
                    gateway: None,
                },
                reason: format!("tunnel address of {}", v.node),
            });
        }
    }
    routes.extend(tunnel_routes);
}

/// `items` by `key`; the first one wins, as a scan for it would find it.
fn first_by<'a, T>(
    items: impl Iterator<Item = &'a T>,
    key: impl Fn(&'a T) -> &'a str,
) -> HashMap<&'a str, &'a T> {
    let mut map = HashMap::new();
    for item in items {
        map.entry(key(item)).or_insert(item);
    }
    map
}

/// How this node reaches a block or address owned by `remote`, per the pool's encapsulation.
fn remote_target(
    family: Family,
    pool: &super::Pool,
    local_ip: Option<IpNet>,
    remote: &Node,
    vtep: Option<&Vtep>,
    notes: &mut Vec<String>,
) -> Option<RouteTarget> {
    let (vxlan, ipip) = (pool.vxlan, pool.ipip);
    let remote_ip = family.node_ip(remote).map(|n| n.addr());
    let same_subnet = local_ip
        .zip(remote_ip)
        .is_some_and(|(mine, theirs)| mine.trunc().contains(&theirs));
    let cross_subnet = vxlan == EncapMode::CrossSubnet || ipip == EncapMode::CrossSubnet;
    if cross_subnet && same_subnet {
        return remote_ip.map(|gateway| RouteTarget::Underlay { gateway });
    }
    if vxlan.enabled() {
        if vtep.is_none() {
            notes.push(format!(
                "no route to {}'s blocks until its VTEP is known",
                remote.name
            ));
        }
        return vtep.map(|v| RouteTarget::Device {
            device: family.vxlan_device().into(),
            gateway: Some(v.tunnel_ip),
        });
    }
    let Some(gateway) = remote_ip else {
        notes.push(format!(
            "node {} has no {} address: no route to its blocks",
            remote.name,
            family.name()
        ));
        return None;
    };
    // There is no IPIP for IPv6 (reference §1.9): such a pool is routed unencapsulated.
    if ipip.enabled() && family == Family::V4 {
        Some(RouteTarget::Device {
            device: IPIP_DEV.into(),
            gateway: Some(gateway),
        })
    } else {
        Some(RouteTarget::Underlay { gateway })
    }
}

/// Pods on this node, from the IPAM allocations that name them.
fn workloads(
    ds: &Datastore,
    node: &str,
    blocks: &[&Block],
    families: &[Family],
) -> Vec<ExpectedWorkload> {
    let prefix_ok = ds
        .felix_config(node)
        .interface_prefix
        .is_none_or(|p| p.split(',').next() == Some("cali"));
    if !prefix_ok {
        return Vec::new();
    }
    let mut out = Vec::new();
    for b in blocks {
        for a in &b.allocations {
            let ip = a.ip;
            if !families.iter().any(|f| f.holds(&IpNet::from(ip))) {
                continue;
            }
            let owner = a.attrs.node.as_deref().or(b.affinity.as_deref());
            if owner != Some(node) {
                continue;
            }
            if let (Some(ns), Some(pod)) = (&a.attrs.namespace, &a.attrs.pod) {
                out.push(ExpectedWorkload {
                    ip,
                    iface: workload_iface(ns, pod),
                    pod: format!("{ns}/{pod}"),
                });
            }
        }
    }
    out
}

/// Felix's IPv6 WireGuard device, when the FelixConfiguration does not name it.
pub const WIREGUARD_V6_DEV: &str = "wg-v6.cali";

/// One of Felix's WireGuard devices: `wireguard.cali` (IPv4) or `wg-v6.cali` (`v6`).
fn wireguard(
    ds: &Datastore,
    node: Option<&str>,
    me: Option<&Node>,
    blocks_of: &HashMap<&str, Vec<&Block>>,
    cfg: &super::FelixConfigurationSpec,
    mtu: Option<u32>,
    v6: bool,
) -> ExpectedWireguard {
    let listen_port = if v6 {
        cfg.wireguard_listening_port_v6.unwrap_or(51821)
    } else {
        cfg.wireguard_listening_port.unwrap_or(51820)
    };
    let key_of = |n: &Node| {
        if v6 {
            n.wireguard_public_key_v6.clone()
        } else {
            n.wireguard_public_key.clone()
        }
    };
    let ip_of = |n: &Node| -> Option<IpAddr> {
        if v6 {
            n.ipv6.map(|ip| IpAddr::V6(ip.addr()))
        } else {
            n.ipv4.map(|ip| IpAddr::V4(ip.addr()))
        }
    };
    let tunnels_of = |n: &Node| -> Vec<IpAddr> {
        if v6 {
            n.wireguard_ipv6.map(IpAddr::V6).into_iter().collect()
        } else {
            [n.ipv4_vxlan_tunnel, n.ipv4_ipip_tunnel, n.wireguard_ipv4]
                .into_iter()
                .flatten()
                .map(IpAddr::V4)
                .collect()
        }
    };
    // Which Nodes are peers needs to know which one is this node.
    let remote: Vec<&Node> = ds
        .nodes
        .iter()
        .filter(|n| node.is_some_and(|me| n.name != me))
        .collect();
    // Counted once: thousands of nodes.
    let mut key_counts: HashMap<String, usize> = HashMap::new();
    for k in ds.nodes.iter().filter_map(key_of) {
        *key_counts.entry(k).or_default() += 1;
    }
    let key_count = |k: &str| key_counts.get(k).copied().unwrap_or(0);
    let host_encryption = cfg.wireguard_host_encryption_enabled.unwrap_or(false);
    let mut peers = Vec::new();
    let mut not_programmed = Vec::new();
    let mut tolerated_keys = Vec::new();
    for n in remote {
        let key = key_of(n);
        // Felix skips a node without a key or an address, and both nodes of a shared key
        // (`shouldProgramWireguardPeer`): it routes their CIDRs with `throw` instead.
        let why = match (&key, ip_of(n)) {
            (None, _) => Some("publishes no WireGuard public key"),
            (Some(k), _) if key_count(k) > 1 => {
                Some("shares its WireGuard public key with another node")
            }
            (Some(_), None) => Some("has no address for an endpoint"),
            _ => None,
        };
        if let Some(why) = why {
            not_programmed.push((n.name.clone(), why.to_string()));
            tolerated_keys.extend(key);
            continue;
        }
        let (Some(key), Some(ip)) = (key, ip_of(n)) else {
            continue;
        };
        let mut allowed: Vec<IpNet> = blocks_of
            .get(n.name.as_str())
            .into_iter()
            .flatten()
            .filter(|b| matches!(b.cidr, IpNet::V6(_)) == v6)
            .map(|b| b.cidr)
            .collect();
        // With host encryption the node's own address is routed through the tunnel too.
        let host = host_encryption.then_some(ip);
        for tun in tunnels_of(n).into_iter().chain(host) {
            let net = IpNet::from(tun);
            if !allowed.iter().any(|a| a.contains(&net)) {
                allowed.push(net);
            }
        }
        peers.push(WireguardPeer {
            node: n.name.clone(),
            public_key: key,
            allowed_ips: allowed,
            endpoint: Some(std::net::SocketAddr::new(ip, listen_port).to_string()),
        });
    }
    let (table_v4, table_v6) = wireguard_tables(cfg);
    ExpectedWireguard {
        family: if v6 { 6 } else { 4 },
        device: if v6 {
            cfg.wireguard_interface_name_v6
                .clone()
                .unwrap_or_else(|| WIREGUARD_V6_DEV.into())
        } else {
            cfg.wireguard_interface_name
                .clone()
                .unwrap_or_else(|| WIREGUARD_DEV.into())
        },
        mtu,
        // Felix puts `interfaceIPv4Address` on the device as a /32 (`ensureLinkAddress`,
        // reference §3); with host encryption and no tunnel address, the node IP.
        address: me.and_then(|n| {
            let own = if v6 {
                n.wireguard_ipv6.map(IpAddr::V6)
            } else {
                n.wireguard_ipv4.map(IpAddr::V4)
            };
            own.or_else(|| host_encryption.then(|| ip_of(n)).flatten())
        }),
        listen_port,
        rule_priority: cfg.wireguard_routing_rule_priority.unwrap_or(99),
        table: if v6 { table_v6 } else { table_v4 },
        peers,
        not_programmed,
        tolerated_keys,
        peers_complete: node.is_some() && ds.has(Kind::Node),
    }
}

/// WireGuard's IPv4 and IPv6 tables: Felix allocates them first, lowest first, from
/// `routeTableRanges` (or the older `routeTableRange`), skipping the kernel's 253–255; the
/// default range starts at 1, so 1 and 2.
fn wireguard_tables(cfg: &super::FelixConfigurationSpec) -> (u32, u32) {
    let ranges: Vec<&serde_json::Value> = match (&cfg.route_table_ranges, &cfg.route_table_range) {
        (Some(serde_json::Value::Array(rs)), _) => rs.iter().collect(),
        (_, Some(r)) => vec![r],
        _ => Vec::new(),
    };
    let mut bounds: Vec<(u32, u32)> = ranges
        .iter()
        .filter_map(|r| {
            let min = u32::try_from(r.get("min")?.as_u64()?).ok()?;
            let max = u32::try_from(r.get("max")?.as_u64()?).ok()?;
            Some((min, max))
        })
        .collect();
    bounds.sort_unstable();
    let mut free = bounds
        .into_iter()
        .flat_map(|(min, max)| min..=max)
        .filter(|t| !(253..=255).contains(t));
    let v4 = free.next().unwrap_or(1);
    let v6 = free.next().unwrap_or(v4 + 1);
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::files::load_text;
    use std::net::Ipv4Addr;

    fn ds(text: &str) -> Datastore {
        let mut ds = Datastore::default();
        load_text(&mut ds, "t.yaml", text).expect("valid");
        ds
    }

    fn facts() -> HostFacts {
        HostFacts {
            links: vec![
                ("eth0".into(), 1500, true),
                ("lo".into(), 65536, true),
                ("vxlan.calico".into(), 1450, true),
            ],
        }
    }

    const TWO_NODES: &str = "
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16, vxlanMode: Always, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: a}
spec: {bgp: {ipv4Address: 10.0.0.1/24}, ipv4VXLANTunnelAddr: 10.244.0.0}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: b}
spec: {bgp: {ipv4Address: 10.0.0.2/24}, ipv4VXLANTunnelAddr: 10.244.1.0}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: 10-244-0-0-26}
spec:
  cidr: 10.244.0.0/26
  affinity: host:a
  allocations: [0, 1]
  attributes:
  - {handle_id: vxlan-tunnel-addr-a, secondary: {node: a, type: vxlanTunnelAddress}}
  - {handle_id: k8s-pod-network.x, secondary: {namespace: default, pod: podA, node: a}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: 10-244-1-0-26}
spec:
  cidr: 10.244.1.0/26
  affinity: host:b
  allocations: [0, null, 1]
  attributes:
  - {handle_id: vxlan-tunnel-addr-b, secondary: {node: b, type: vxlanTunnelAddress}}
  - {handle_id: k8s-pod-network.y, secondary: {namespace: default, pod: borrowed, node: a}}
";

    #[test]
    fn vxlan_always_two_nodes() {
        let e = compute(&ds(TWO_NODES), Some("a"), &facts()).expect("expected");
        insta::assert_yaml_snapshot!(e);
    }

    #[test]
    fn cross_subnet_uses_underlay_in_subnet_and_tunnel_outside() {
        let text = TWO_NODES.replace("vxlanMode: Always", "vxlanMode: CrossSubnet");
        let e = compute(&ds(&text), Some("a"), &facts()).expect("expected");
        let r = e
            .routes
            .iter()
            .find(|r| r.reason == "block of b")
            .expect("route");
        assert_eq!(
            r.target,
            RouteTarget::Underlay {
                gateway: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
            }
        );
        let text = text.replace("10.0.0.2/24", "10.1.0.2/24");
        let e = compute(&ds(&text), Some("a"), &facts()).expect("expected");
        let r = e
            .routes
            .iter()
            .find(|r| r.reason == "block of b")
            .expect("route");
        assert_eq!(
            r.target,
            RouteTarget::Device {
                device: VXLAN_DEV.into(),
                gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)))
            }
        );
    }

    /// Issue 14: both WireGuard devices from the Nodes and FelixConfiguration, as Felix
    /// programs them; nodes it gives no peer are noted, not expected.
    #[test]
    fn wireguard_v4_and_v6_peers_ports_tables_and_endpoints() {
        let text = r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  wireguardEnabled: true
  wireguardEnabledV6: true
  routeTableRanges: [{min: 10, max: 20}]
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: a}
spec:
  bgp: {ipv4Address: 10.0.0.1/24, ipv6Address: "fd00::1/64"}
  wireguard: {interfaceIPv4Address: 10.244.0.1, interfaceIPv6Address: "fd00:244::1"}
status: {wireguardPublicKey: KA, wireguardPublicKeyV6: KA6}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: b}
spec:
  bgp: {ipv4Address: 10.0.0.2/24, ipv6Address: "fd00::2/64"}
  wireguard: {interfaceIPv4Address: 10.244.1.1, interfaceIPv6Address: "fd00:244:1::1"}
status: {wireguardPublicKey: KB, wireguardPublicKeyV6: KB6}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: c}
spec: {bgp: {ipv4Address: 10.0.0.3/24}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b4}
spec: {cidr: 10.244.1.0/26, affinity: "host:b", allocations: [], attributes: []}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b6}
spec: {cidr: "fd00:244:1::/122", affinity: "host:b", allocations: [], attributes: []}
"#;
        let e = compute(&ds(text), Some("a"), &facts()).expect("expected");
        let v4 = e.wireguard.as_ref().expect("v4");
        let v6 = e.wireguard_v6.as_ref().expect("v6");
        assert_eq!(
            (v4.device.as_str(), v4.listen_port, v4.table, v4.mtu),
            ("wireguard.cali", 51820, 10, Some(1440))
        );
        assert_eq!(
            (v6.device.as_str(), v6.listen_port, v6.table, v6.mtu),
            ("wg-v6.cali", 51821, 11, Some(1420))
        );
        assert_eq!(v4.address, Some("10.244.0.1".parse().expect("ip")));
        assert_eq!(v6.address, Some("fd00:244::1".parse().expect("ip")));
        assert_eq!(v4.peers.len(), 1);
        assert_eq!(v4.peers[0].public_key, "KB");
        assert_eq!(v4.peers[0].endpoint.as_deref(), Some("10.0.0.2:51820"));
        let nets = |p: &WireguardPeer| {
            p.allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(nets(&v4.peers[0]), ["10.244.1.0/26"]);
        assert_eq!(v6.peers[0].public_key, "KB6");
        assert_eq!(v6.peers[0].endpoint.as_deref(), Some("[fd00::2]:51821"));
        assert_eq!(nets(&v6.peers[0]), ["fd00:244:1::/122"]);
        assert_eq!(e.pod_mtu, Some(1420), "the smallest enabled tunnel MTU");
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("wireguard.cali peer of node c not checked")
                    && n.contains("publishes no WireGuard public key")),
            "{:?}",
            e.notes
        );
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("wg-v6.cali peer of node c")),
            "{:?}",
            e.notes
        );
        // Host encryption routes the node's own address through the tunnel as well.
        let with_hosts = text.replace(
            "wireguardEnabledV6: true",
            "wireguardEnabledV6: true\n  wireguardHostEncryptionEnabled: true",
        );
        let e = compute(&ds(&with_hosts), Some("a"), &facts()).expect("expected");
        let v4 = e.wireguard.as_ref().expect("v4");
        assert_eq!(nets(&v4.peers[0]), ["10.244.1.0/26", "10.0.0.2/32"]);
    }

    #[test]
    fn mtu_follows_host_or_configuration() {
        // A node without any link matching mtuIfacePattern: Felix's 1460 fallback.
        let only_lo = HostFacts {
            links: vec![("lo".into(), 65536, true)],
        };
        let e = compute(&ds(TWO_NODES), Some("a"), &only_lo).expect("expected");
        assert_eq!(
            (e.host_mtu, e.vxlan.as_ref().and_then(|v| v.mtu), e.pod_mtu),
            (Some(1460), Some(1410), Some(1410))
        );
        // Links that are not all the node's (a pasted `ip link show vxlan.calico`), or none:
        // the underlay's MTU is unknown, and so is every MTU derived from it.
        for partial in [
            HostFacts::default(),
            HostFacts {
                links: vec![("vxlan.calico".into(), 1450, true)],
            },
        ] {
            let e = compute(&ds(TWO_NODES), Some("a"), &partial).expect("expected");
            assert_eq!(
                (e.host_mtu, e.vxlan.as_ref().and_then(|v| v.mtu), e.pod_mtu),
                (None, None, None)
            );
        }
        let text = format!(
            "{TWO_NODES}---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec: {{vxlanMTU: 1400}}\n"
        );
        let e = compute(&ds(&text), Some("a"), &facts()).expect("expected");
        assert_eq!(e.vxlan.and_then(|v| v.mtu), Some(1400));
        // A configured MTU needs no underlay.
        let e = compute(&ds(&text), Some("a"), &HostFacts::default()).expect("expected");
        assert_eq!(e.vxlan.and_then(|v| v.mtu), Some(1400));
    }

    /// A third node whose VXLAN tunnel address was borrowed from node b's block.
    const BORROWED_TUNNEL: &str = "
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: c}
spec: {bgp: {ipv4Address: 10.0.0.3/24}, ipv4VXLANTunnelAddr: 10.244.1.5}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: 10-244-1-0-26-c}
spec:
  cidr: 10.244.1.0/26
  affinity: host:b
  allocations: [0, null, null, null, null, 1]
  attributes:
  - {handle_id: vxlan-tunnel-addr-b, secondary: {node: b, type: vxlanTunnelAddress}}
  - {handle_id: vxlan-tunnel-addr-c, secondary: {node: c, type: vxlanTunnelAddress}}
";

    /// Issue 13 point 4: Felix programs `<tunnel IP> dev vxlan.calico scope link` for a
    /// remote VTEP whose tunnel address is borrowed (reference §1.5), not `via` itself.
    #[test]
    fn a_borrowed_tunnel_address_is_a_device_route() {
        let text = TWO_NODES
            .split("---\napiVersion: crd.projectcalico.org/v1\nkind: IPAMBlock\nmetadata: {name: 10-244-1-0-26}")
            .next()
            .expect("prefix")
            .to_string()
            + BORROWED_TUNNEL;
        let e = compute(&ds(&text), Some("a"), &facts()).expect("expected");
        let to_c: Vec<_> = e
            .routes
            .iter()
            .filter(|r| r.destination.to_string() == "10.244.1.5/32")
            .collect();
        assert_eq!(to_c.len(), 1, "{:?}", e.routes);
        assert_eq!(
            to_c[0].target,
            RouteTarget::Device {
                device: VXLAN_DEV.into(),
                gateway: None
            }
        );
        assert_eq!(to_c[0].reason, "tunnel address of c");
        // The lending node's block is still routed via its own VTEP.
        assert!(e.routes.iter().any(|r| r.reason == "block of b"
            && r.target
                == RouteTarget::Device {
                    device: VXLAN_DEV.into(),
                    gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)))
                }));
    }

    /// A tunnel pool of /32 blocks: each remote tunnel address is a device route, and this
    /// node's own /32 gets no blackhole (`routeIsLocalBlock`, reference §1.4–§1.5).
    #[test]
    fn a_32_tunnel_pool_gets_device_routes_and_no_blackhole() {
        let text = format!(
            "{}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: tunnels}}
spec: {{cidr: 10.245.0.0/24, vxlanMode: Always, blockSize: 32, allowedUses: [Tunnel]}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {{name: t-a}}
spec: {{cidr: 10.245.0.0/32, affinity: host:a, allocations: [0], attributes: [{{secondary: {{node: a, type: vxlanTunnelAddress}}}}]}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {{name: t-b}}
spec: {{cidr: 10.245.0.1/32, affinity: host:b, allocations: [0], attributes: [{{secondary: {{node: b, type: vxlanTunnelAddress}}}}]}}
",
            TWO_NODES
                .replace("ipv4VXLANTunnelAddr: 10.244.0.0", "ipv4VXLANTunnelAddr: 10.245.0.0")
                .replace("ipv4VXLANTunnelAddr: 10.244.1.0", "ipv4VXLANTunnelAddr: 10.245.0.1")
        );
        let e = compute(&ds(&text), Some("a"), &facts()).expect("expected");
        let to = |dst: &str| {
            e.routes
                .iter()
                .filter(|r| r.destination.to_string() == dst)
                .map(|r| r.target.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            to("10.245.0.1/32"),
            [RouteTarget::Device {
                device: VXLAN_DEV.into(),
                gateway: None
            }]
        );
        assert_eq!(to("10.245.0.0/32"), []);
        assert_eq!(
            to("10.244.1.0/26"),
            [RouteTarget::Device {
                device: VXLAN_DEV.into(),
                gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 245, 0, 1)))
            }]
        );
    }

    /// Issue 13 point 1: a datastore of one kind is not an error, whatever the node.
    #[test]
    fn a_partial_datastore_expects_what_its_kinds_say() {
        let pool_only = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, vxlanMode: Always}\n";
        for node in [Some("any-name"), None] {
            let e = compute(&ds(pool_only), node, &facts()).expect("no error for a missing kind");
            assert_eq!(e.kinds, [Kind::IpPool]);
            assert_eq!(e.node_known, node.is_some());
            assert!(e.routes.is_empty() && e.vteps.is_empty(), "{e:?}");
            assert_eq!(e.pools.len(), 1);
            let vx = e.vxlan.expect("the pool's mode enables VXLAN");
            assert_eq!((vx.address, vx.local), (None, None));
        }
        // Nodes only: this node's tunnel address says VXLAN is on, and its VTEP's local
        // address is the Node's.
        let node_only = TWO_NODES
            .split("---")
            .filter(|d| d.contains("kind: Node"))
            .collect::<Vec<_>>()
            .join("---");
        let e = compute(&ds(&node_only), Some("a"), &facts()).expect("expected");
        let vx = e.vxlan.expect("vxlan from the node's tunnel address");
        assert_eq!(vx.local, Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        // A named node absent from a datastore that holds Nodes is still an error.
        assert!(compute(&ds(&node_only), Some("zz"), &facts()).is_err());
    }

    #[test]
    fn unknown_node_is_an_error() {
        let err = compute(&ds(TWO_NODES), Some("zz"), &facts()).expect_err("unknown node");
        assert!(err.to_string().contains("\"zz\" is not in the datastore"));
    }
}

/// Thousands of nodes, through the indexes rather than a scan of every node per block.
#[cfg(test)]
mod scale_tests {
    use super::*;
    use xtask::cluster::{Cluster, Format};

    fn datastore(nodes: u32) -> Datastore {
        let mut ds = Datastore::default();
        for (name, text) in Cluster::new(nodes).datastore(Format::Json) {
            crate::desired::files::load_text(&mut ds, &name, &text).expect("loads");
        }
        ds
    }

    #[test]
    fn every_remote_block_is_routed_via_its_own_vtep() {
        let e = compute(
            &datastore(2_000),
            Some(&Cluster::local()),
            &HostFacts::default(),
        )
        .expect("expected");
        assert_eq!((e.routes.len(), e.vteps.len()), (2_001, 2_000));
        assert!(e.notes.is_empty(), "{:?}", e.notes);
        let r = e
            .routes
            .iter()
            .find(|r| r.reason == "block of bench-1234")
            .expect("route");
        assert_eq!(
            r.target,
            RouteTarget::Device {
                device: VXLAN_DEV.into(),
                gateway: Some(IpAddr::V4(Cluster::block(1234))),
            }
        );
    }

    #[test]
    fn a_node_without_a_vtep_among_thousands_has_no_route_and_a_note() {
        let mut ds = datastore(2_000);
        let n = ds
            .nodes
            .iter_mut()
            .find(|n| n.name == "bench-777")
            .expect("node");
        n.ipv4_vxlan_tunnel = None;
        let e = compute(&ds, Some(&Cluster::local()), &HostFacts::default()).expect("expected");
        assert_eq!((e.routes.len(), e.vteps.len()), (2_000, 1_999));
        assert!(!e.routes.iter().any(|r| r.reason == "block of bench-777"));
        assert_eq!(
            e.notes,
            [
                "node bench-777 has no VXLAN tunnel address or node IP yet: Felix programs no VTEP for it",
                "no route to bench-777's blocks until its VTEP is known"
            ]
        );
    }
}
