//! What Felix should have programmed: Calico's datastore objects, read from YAML files or the
//! Kubernetes API, turned into an [`expected::Expected`] dataplane for one node.

pub mod bgp;
mod block_yaml;
pub mod document;
pub mod expected;
pub mod files;
mod halves;
pub mod identity;
pub mod kube;
mod object;
pub mod resources;
pub mod selector;
mod watched;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

pub use self::resources::{BgpConfigurationSpec, BgpPeerSpec, FelixConfigurationSpec, ProtoPort};

/// The datastore kinds a check can need. Real input is partial (an operator pastes `calicoctl
/// get ippool -o yaml` and little else): each check declares the kinds it needs and runs when
/// they are present (DESIGN.md §2, "Verify with what you have").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    IpPool,
    IpamBlock,
    BlockAffinity,
    Node,
    FelixConfiguration,
}

impl Kind {
    pub const ALL: &[Kind] = &[
        Kind::IpPool,
        Kind::IpamBlock,
        Kind::BlockAffinity,
        Kind::Node,
        Kind::FelixConfiguration,
    ];

    /// Calico's own name for the kind, as `calicoctl get` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IpPool => "IPPool",
            Kind::IpamBlock => "IPAMBlock",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::Node => "Node",
            Kind::FelixConfiguration => "FelixConfiguration",
        }
    }
}

/// A pool's `vxlanMode`/`ipipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EncapMode {
    Never,
    Always,
    CrossSubnet,
}

impl EncapMode {
    pub fn parse(v: Option<&str>) -> Result<Self, String> {
        match v.unwrap_or("Never") {
            "Never" | "" => Ok(Self::Never),
            "Always" => Ok(Self::Always),
            "CrossSubnet" => Ok(Self::CrossSubnet),
            other => Err(format!(
                "expected Never, Always or CrossSubnet, got {other:?}"
            )),
        }
    }

    pub fn enabled(self) -> bool {
        self != Self::Never
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub name: String,
    pub cidr: IpNet,
    pub vxlan: EncapMode,
    pub ipip: EncapMode,
    pub nat_outgoing: bool,
    pub disabled: bool,
    pub block_size: u8,
    pub allowed_uses: Vec<String>,
}

impl Pool {
    /// LoadBalancer-only pools carry no workloads and no routes (`poolTypeForPool`: NONE).
    pub fn routes_workloads(&self) -> bool {
        self.allowed_uses.is_empty()
            || self
                .allowed_uses
                .iter()
                .any(|u| u == "Workload" || u == "Tunnel")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub ip: IpAddr,
    /// The `secondary` attributes that say who uses the address.
    pub attrs: resources::Secondary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub name: String,
    pub cidr: IpNet,
    /// Node named by `affinity: host:<node>` or `virtual:<node>`.
    pub affinity: Option<String>,
    pub allocations: Vec<Allocation>,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Affinity {
    pub node: String,
    pub cidr: IpNet,
    pub state: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    /// `spec.bgp.ipv4Address` with its prefix: the prefix defines "same subnet".
    pub ipv4: Option<Ipv4Net>,
    pub ipv4_vxlan_tunnel: Option<Ipv4Addr>,
    pub vxlan_mac: Option<String>,
    pub ipv4_ipip_tunnel: Option<Ipv4Addr>,
    pub wireguard_ipv4: Option<Ipv4Addr>,
    pub wireguard_public_key: Option<String>,
    /// `spec.bgp.ipv6Address` with its prefix: the node IP of its IPv6 VTEP, and the endpoint
    /// of its `wg-v6.cali` peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Net>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_vxlan_tunnel: Option<Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan_mac_v6: Option<String>,
    /// `spec.wireguard.interfaceIPv6Address`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard_ipv6: Option<Ipv6Addr>,
    /// `status.wireguardPublicKeyV6`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key_v6: Option<String>,
    /// `spec.bgp.asNumber` (annotation `projectcalico.org/ASNumber`): overrides the global AS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// `spec.bgp.routeReflectorClusterID`: a route reflector takes no part in the mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rr_cluster_id: Option<String>,
    /// The labels BGPPeer selectors match (in KDD, the Kubernetes Node's labels).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A `BGPPeer` object: its name and spec.
#[derive(Debug, Clone)]
pub struct BgpPeerObject {
    pub name: String,
    pub spec: BgpPeerSpec,
}

/// Everything read from the datastore, validated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Datastore {
    pub pools: Vec<Pool>,
    pub blocks: Vec<Block>,
    pub affinities: Vec<Affinity>,
    pub nodes: Vec<Node>,
    /// FelixConfiguration objects by name (`default`, `node.<name>`).
    #[serde(skip)]
    pub felix: BTreeMap<String, FelixConfigurationSpec>,
    /// BGPConfiguration objects by name (`default`, `node.<name>`).
    #[serde(skip)]
    pub bgp_configs: BTreeMap<String, BgpConfigurationSpec>,
    #[serde(skip)]
    pub bgp_peers: Vec<BgpPeerObject>,
    /// Unknown fields and kinds that were ignored.
    pub warnings: Vec<String>,
}

impl Datastore {
    /// Gives back what the collections reserved while they grew. A datastore kept long (the
    /// daemon's, of a cluster's every object) would otherwise hold up to 4 times the room of
    /// a one-object Vec and twice that of a grown one.
    pub fn shrink_to_fit(&mut self) {
        self.pools.shrink_to_fit();
        self.blocks.shrink_to_fit();
        for b in &mut self.blocks {
            b.allocations.shrink_to_fit();
        }
        self.affinities.shrink_to_fit();
        self.nodes.shrink_to_fit();
        self.bgp_peers.shrink_to_fit();
        self.warnings.shrink_to_fit();
    }

    /// Adds `other`'s objects to these, as reading them after these would.
    pub fn absorb(&mut self, other: &Self) {
        let Self {
            pools,
            blocks,
            affinities,
            nodes,
            felix,
            bgp_configs,
            bgp_peers,
            warnings,
        } = other;
        self.pools.extend_from_slice(pools);
        self.blocks.extend_from_slice(blocks);
        self.affinities.extend_from_slice(affinities);
        self.nodes.extend_from_slice(nodes);
        self.felix
            .extend(felix.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.bgp_configs
            .extend(bgp_configs.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.bgp_peers.extend_from_slice(bgp_peers);
        self.warnings.extend_from_slice(warnings);
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Felix's effective configuration for `node`: `default` overlaid with `node.<node>`.
    pub fn felix_config(&self, node: &str) -> FelixConfigurationSpec {
        let global = self.felix.get("default").cloned().unwrap_or_default();
        match self.felix.get(&format!("node.{node}")) {
            Some(per_node) => global.overlay(per_node),
            None => global,
        }
    }

    pub fn pool_for(&self, net: &IpNet) -> Option<&Pool> {
        self.pools.iter().find(|p| p.cidr.contains(net))
    }

    /// Whether the input held objects of `kind`. A cluster always has at least one of each
    /// (calico-node creates the `default` FelixConfiguration, every node with pods has a
    /// block), so none means the input did not carry the kind, not that the cluster lacks it.
    pub fn has(&self, kind: Kind) -> bool {
        match kind {
            Kind::IpPool => !self.pools.is_empty(),
            Kind::IpamBlock => !self.blocks.is_empty(),
            Kind::BlockAffinity => !self.affinities.is_empty(),
            Kind::Node => !self.nodes.is_empty(),
            Kind::FelixConfiguration => !self.felix.is_empty(),
        }
    }

    /// The kinds the input held.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL.iter().copied().filter(|k| self.has(*k)).collect()
    }

    /// Adds `other`'s objects after this one's, as if they had been read after them.
    pub fn append(&mut self, other: Datastore) {
        self.pools.extend(other.pools);
        self.blocks.extend(other.blocks);
        self.affinities.extend(other.affinities);
        self.nodes.extend(other.nodes);
        self.felix.extend(other.felix);
        self.bgp_configs.extend(other.bgp_configs);
        self.bgp_peers.extend(other.bgp_peers);
        self.warnings.extend(other.warnings);
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
            && self.blocks.is_empty()
            && self.affinities.is_empty()
            && self.nodes.is_empty()
            && self.felix.is_empty()
    }
}

/// Parses `10.0.0.5/24` or a bare `10.0.0.5` (host prefix) into an IPv4 network.
pub fn parse_v4_with_prefix(s: &str) -> Result<Ipv4Net, String> {
    if s.contains('/') {
        s.parse::<Ipv4Net>()
            .map_err(|_| format!("{s:?} is not an IPv4 address/prefix"))
    } else {
        s.parse::<Ipv4Addr>()
            .map(Ipv4Net::from)
            .map_err(|_| format!("{s:?} is not an IPv4 address"))
    }
}

/// Parses an AS number as Calico writes it (`numorstring.ASNumber`): a number, a string of
/// digits, or the dotted `<high>.<low>` form.
pub fn parse_as_number(v: &serde_json::Value) -> Result<u32, String> {
    let bad = || format!("{v} is not an AS number");
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad),
        serde_json::Value::String(s) => parse_as_text(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn parse_as_text(s: &str) -> Option<u32> {
    match s.split_once('.') {
        Some((hi, lo)) => {
            let (hi, lo) = (hi.parse::<u16>().ok()?, lo.parse::<u16>().ok()?);
            Some(u32::from(hi) << 16 | u32::from(lo))
        }
        None => s.trim().parse().ok(),
    }
}

/// Parses an address that may carry a prefix (`10.244.0.0/32`) into the bare address.
pub fn parse_v4_addr(s: &str) -> Result<Ipv4Addr, String> {
    parse_v4_with_prefix(s).map(|n| n.addr())
}

/// Parses `fd00::5/64` or a bare `fd00::5` (host prefix) into an IPv6 network.
pub fn parse_v6_with_prefix(s: &str) -> Result<Ipv6Net, String> {
    if s.contains('/') {
        s.parse::<Ipv6Net>()
            .map_err(|_| format!("{s:?} is not an IPv6 address/prefix"))
    } else {
        s.parse::<Ipv6Addr>()
            .map(Ipv6Net::from)
            .map_err(|_| format!("{s:?} is not an IPv6 address"))
    }
}

pub fn parse_v6_addr(s: &str) -> Result<Ipv6Addr, String> {
    parse_v6_with_prefix(s).map(|n| n.addr())
}
