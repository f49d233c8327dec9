//! What Felix should have programmed: Calico's datastore objects, read from YAML files or the
//! Kubernetes API, turned into an [`expected::Expected`] dataplane for one node.

pub mod document;
pub mod expected;
pub mod files;
pub mod identity;
pub mod kube;
mod object;
pub mod resources;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

pub use self::resources::{FelixConfigurationSpec, ProtoPort};

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
    pub handle: Option<String>,
    /// `secondary` attributes: `node`, `namespace`, `pod`, `type`…
    pub attrs: BTreeMap<String, String>,
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
    /// Unknown fields and kinds that were ignored.
    pub warnings: Vec<String>,
}

impl Datastore {
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

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
            && self.blocks.is_empty()
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

/// Parses an address that may carry a prefix (`10.244.0.0/32`) into the bare address.
pub fn parse_v4_addr(s: &str) -> Result<Ipv4Addr, String> {
    parse_v4_with_prefix(s).map(|n| n.addr())
}
