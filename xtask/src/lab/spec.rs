//! The lab's topology as data: nodes, blocks, tunnel addresses, VTEP MACs and pods, derived
//! exactly as Calico derives them (shared/reference/calico-dataplane.md §1.3, §7).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;
use sha1::{Digest as _, Sha1};

pub use calico_conventions::{
    FAILSAFE_IN, FAILSAFE_OUT, PROTO_CALICO, VXLAN_PORT, VXLAN_V4 as VXLAN_DEV,
    VXLAN_V6 as VXLAN_V6_DEV, VXLAN_VNI as VNI, WORKLOAD_HOST_MAC, vtep_mac, vtep_mac_v6,
    workload_iface as workload_veth_name,
};
pub const UNDERLAY_MTU: u32 = 1500;
/// Felix's VXLAN MTU: host MTU minus the 50-byte VXLAN overhead.
pub const VXLAN_MTU: u32 = UNDERLAY_MTU - calico_conventions::VXLAN_OVERHEAD;
/// Felix's `vxlan-v6.calico` MTU: host MTU minus the 70-byte IPv6 VXLAN overhead.
pub const VXLAN_V6_MTU: u32 = UNDERLAY_MTU - calico_conventions::VXLAN_V6_OVERHEAD;
/// The link-local address of every host-side veth (MAC `ee:ee:ee:ee:ee:ee`): the IPv6 pod
/// default gateway Calico's CNI plugin installs.
pub const POD_GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";
pub const UNDERLAY_PREFIX_V6: u8 = 64;
pub const UNDERLAY_DEV: &str = "eth0";
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const UNDERLAY_PREFIX: u8 = 24;

/// Which Calico dataplane the lab's nodes are shaped like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum LabMode {
    /// Felix's VXLAN: `vxlan.calico`, routes via the tunnel, VTEP ARP/FDB entries.
    #[default]
    Vxlan,
    /// calico-node's BIRD with the node-to-node mesh and a no-encap pool: block routes
    /// `proto bird` via the peer's node address, local blocks as BIRD's static blackholes.
    Bgp,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabSpec {
    /// Prefix of every namespace the lab creates; nothing else is ever touched.
    pub prefix: String,
    pub mode: LabMode,
    pub pool: Ipv4Net,
    /// The IPv6 VXLAN pool of a dual-stack lab.
    pub pool_v6: Option<Ipv6Net>,
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
    /// Dual stack: the node's IPv6 side.
    pub v6: Option<NodeV6>,
}

/// A node's IPv6 address, /122 block, `vxlan-v6.calico` address and MAC.
#[derive(Debug, Clone, Serialize)]
pub struct NodeV6 {
    pub ip: Ipv6Addr,
    pub block: Ipv6Net,
    pub tunnel_ip: Ipv6Addr,
    pub vtep_mac: String,
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
    /// Dual stack: the pod's IPv6 address.
    pub ip6: Option<Ipv6Addr>,
}

impl LabSpec {
    /// Two nodes in one /24 underlay, a 10.244.0.0/16 VXLAN pool, one /26 block and two pods
    /// per node.
    pub fn new(prefix: &str) -> Self {
        Self::with_mode(prefix, LabMode::Vxlan)
    }

    /// The same topology shaped like `mode`.
    pub fn with_mode(prefix: &str, mode: LabMode) -> Self {
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
                            ip6: None,
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
                    v6: None,
                }
            })
            .collect();
        Self {
            prefix: prefix.into(),
            mode,
            pool,
            pool_v6: None,
            nodes,
        }
    }

    /// The VXLAN lab with an IPv6 side: pool fd00:244::/64 in /122 blocks, node addresses
    /// fd00:99::11 and ::12 on the underlay, each block's first address on
    /// `vxlan-v6.calico` (as Calico's IPAM hands it out first), one IPv6 per pod.
    pub fn dual_stack(prefix: &str) -> Self {
        Self::dual_stack_with_mode(prefix, LabMode::Vxlan)
    }

    /// [`Self::dual_stack`] shaped like `mode`: in the BGP lab the IPv6 pool is no-encap and
    /// `bird6` meshes over the nodes' IPv6 addresses (no `vxlan-v6.calico`).
    pub fn dual_stack_with_mode(prefix: &str, mode: LabMode) -> Self {
        let mut spec = Self::with_mode(prefix, mode);
        spec.pool_v6 = Some(
            Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0), 64).unwrap_or_default(),
        );
        for (i, n) in spec.nodes.iter_mut().enumerate() {
            let i = u16::try_from(i).unwrap_or(0);
            let base = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x40 * i);
            n.v6 = Some(NodeV6 {
                ip: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x11 + i),
                block: Ipv6Net::new(base, 122).unwrap_or_default(),
                tunnel_ip: base,
                vtep_mac: vtep_mac_v6(&n.name),
            });
            for (p, pod) in (1u16..).zip(n.pods.iter_mut()) {
                pod.ip6 = Some(Ipv6Addr::from(u128::from(base) + u128::from(p)));
            }
        }
        spec
    }

    pub fn is_dual_stack(&self) -> bool {
        self.pool_v6.is_some()
    }

    /// The MTU the CNI plugin gives pods: the smallest tunnel's, or the underlay's without
    /// one.
    pub fn pod_mtu(&self) -> u32 {
        match self.mode {
            LabMode::Vxlan if self.is_dual_stack() => VXLAN_V6_MTU,
            LabMode::Vxlan => VXLAN_MTU,
            LabMode::Bgp => UNDERLAY_MTU,
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

/// A stable, locally administered MAC for a pod's eth0.
fn local_mac(seed: &str) -> String {
    let h = Sha1::digest(seed.as_bytes());
    calico_conventions::mac(0x0a, &h[..5])
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn dual_stack_blocks_hold_their_tunnel_and_pod_addresses() {
        let spec = LabSpec::dual_stack("t");
        let pool = spec.pool_v6.expect("pool");
        for n in &spec.nodes {
            let v6 = n.v6.as_ref().expect("v6");
            assert!(pool.contains(&v6.block) && v6.block.contains(&v6.tunnel_ip));
            for p in &n.pods {
                assert!(
                    p.ip6
                        .is_some_and(|ip| v6.block.contains(&ip) && ip != v6.tunnel_ip)
                );
            }
        }
        assert_eq!(spec.pod_mtu(), 1430);
    }
}
