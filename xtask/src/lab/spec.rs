//! The lab's topology as data: nodes, blocks, tunnel addresses, VTEP MACs and pods, derived
//! exactly as Calico derives them (shared/reference/calico-dataplane.md §1.3, §7).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use sha1::{Digest as _, Sha1};

pub const VXLAN_DEV: &str = "vxlan.calico";
pub const VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
pub const UNDERLAY_MTU: u32 = 1500;
/// Felix's VXLAN MTU: host MTU minus the 50-byte VXLAN overhead.
pub const VXLAN_MTU: u32 = UNDERLAY_MTU - 50;
/// The host-side MAC of every workload veth (`cni-plugin` `hostSideMAC`).
pub const WORKLOAD_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
pub const UNDERLAY_DEV: &str = "eth0";
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const UNDERLAY_PREFIX: u8 = 24;
/// Felix's route protocol for blackholes and same-subnet routes.
pub const PROTO_CALICO: u8 = 80;
/// Felix's default failsafe ports (`FailsafeInboundHostPorts`/`FailsafeOutboundHostPorts`).
pub const FAILSAFE_IN: &[(&str, u16)] = &[
    ("tcp", 22),
    ("udp", 68),
    ("tcp", 179),
    ("tcp", 2379),
    ("tcp", 2380),
    ("tcp", 5473),
    ("tcp", 6443),
    ("tcp", 6666),
    ("tcp", 6667),
];
pub const FAILSAFE_OUT: &[(&str, u16)] = &[
    ("udp", 53),
    ("udp", 67),
    ("tcp", 179),
    ("tcp", 2379),
    ("tcp", 2380),
    ("tcp", 5473),
    ("tcp", 6443),
    ("tcp", 6666),
    ("tcp", 6667),
];

#[derive(Debug, Clone, Serialize)]
pub struct LabSpec {
    /// Prefix of every namespace the lab creates; nothing else is ever touched.
    pub prefix: String,
    pub pool: Ipv4Net,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSpec {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub block: Ipv4Net,
    pub tunnel_ip: Ipv4Addr,
    pub vtep_mac: String,
    /// Name of the node's underlay veth end inside the switch namespace.
    pub switch_port: String,
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Host-side veth, `cali` + 11 hex chars of sha1("<namespace>.<pod>").
    pub veth: String,
}

impl LabSpec {
    /// Two nodes in one /24 underlay, a 10.244.0.0/16 VXLAN pool, one /26 block and two pods
    /// per node.
    pub fn new(prefix: &str) -> Self {
        let pool: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default();
        let nodes = ["node-a", "node-b"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let i = u8::try_from(i).unwrap_or(0);
                let base = Ipv4Addr::new(10, 244, i, 0);
                let block = Ipv4Net::new(base, 26).unwrap_or_default();
                let letter = &name[name.len() - 1..];
                let netns = format!("{prefix}-{letter}");
                let pods = (1..=2u8)
                    .map(|p| {
                        let pod = format!("pod-{letter}{p}");
                        PodSpec {
                            namespace: "default".into(),
                            netns: format!("{netns}-{pod}"),
                            ip: Ipv4Addr::new(10, 244, i, p),
                            mac: local_mac(&pod),
                            veth: workload_veth_name("default", &pod),
                            name: pod,
                        }
                    })
                    .collect();
                NodeSpec {
                    name: (*name).to_string(),
                    netns,
                    ip: Ipv4Addr::new(10, 99, 0, 11 + i),
                    block,
                    // Calico's IPAM hands the tunnel address out first, so it is the block's base.
                    tunnel_ip: base,
                    vtep_mac: vtep_mac(name),
                    switch_port: format!("ul-{letter}"),
                    pods,
                }
            })
            .collect();
        Self {
            prefix: prefix.into(),
            pool,
            nodes,
        }
    }

    pub fn switch_netns(&self) -> String {
        format!("{}-net", self.prefix)
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&NodeSpec> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow::anyhow!("no lab node named {name:?} (have: node-a, node-b)"))
    }

    pub fn remotes_of<'a>(&'a self, node: &'a NodeSpec) -> impl Iterator<Item = &'a NodeSpec> {
        self.nodes.iter().filter(move |n| n.name != node.name)
    }

    /// Every namespace the lab owns, pods first so that veths go before their nodes.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(|p| p.netns.clone()))
            .collect();
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v.push(self.switch_netns());
        v
    }
}

/// Felix's VTEP MAC for a node: `0x66` followed by the first five bytes of sha1(node name)
/// (`felix/calc/vxlan_resolver.go` `vtepMACForHost`).
pub fn vtep_mac(node: &str) -> String {
    let h = Sha1::digest(node.as_bytes());
    let mut bytes = vec![0x66u8];
    bytes.extend_from_slice(&h[..5]);
    mac(&bytes)
}

/// Calico's workload veth name (`VethNameForWorkload`).
pub fn workload_veth_name(namespace: &str, pod: &str) -> String {
    let h = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// A stable, locally administered MAC for a pod's eth0.
fn local_mac(seed: &str) -> String {
    let h = Sha1::digest(seed.as_bytes());
    let mut bytes = vec![0x0au8];
    bytes.extend_from_slice(&h[..5]);
    mac(&bytes)
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_match_calico_test_vectors() {
        // From the reference: node1 → 66:f9:37:c3:7e:94; default.podA → cali7f94ce7c295.
        assert_eq!(vtep_mac("node1"), "66:f9:37:c3:7e:94");
        assert_eq!(workload_veth_name("default", "podA"), "cali7f94ce7c295");
        assert!(workload_veth_name("namespace", "podname").ends_with("82111e10a96"));
    }

    #[test]
    fn blocks_and_tunnels_are_consistent() {
        let spec = LabSpec::new("t");
        for n in &spec.nodes {
            assert!(spec.pool.contains(&n.block));
            assert!(n.block.contains(&n.tunnel_ip));
            for p in &n.pods {
                assert!(n.block.contains(&p.ip));
                assert_eq!(p.veth.len(), 15);
            }
        }
        assert_eq!(spec.all_netns().len(), 7);
    }
}
