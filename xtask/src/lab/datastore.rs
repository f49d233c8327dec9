//! The lab's Calico datastore as the YAML `calicoctl`/`kubectl` print: the pool, both nodes
//! (one as a Calico v3 Node, one as a Kubernetes Node with Calico's annotations), one IPAM
//! block per node with its tunnel address and pods, and their block affinities.

use std::fmt::Write as _;

use super::spec::{LabMode, LabSpec, NodeSpec, UNDERLAY_PREFIX, UNDERLAY_PREFIX_V6};

/// The AS of the lab's BGP mode: Calico's default, set explicitly as clusters usually do.
pub const LAB_AS: u32 = 64512;

impl LabSpec {
    pub fn datastore_yaml(&self) -> String {
        let vxlan = self.mode == LabMode::Vxlan;
        let mut y = String::new();
        let _ = write!(
            y,
            "# calicoctl get ippools -o yaml\napiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata:\n    name: default-ipv4-ippool\n  spec:\n    allowedUses: [Workload, Tunnel]\n    blockSize: 26\n    cidr: {}\n    ipipMode: Never\n    natOutgoing: true\n    nodeSelector: all()\n    vxlanMode: {}\n",
            self.pool,
            if vxlan { "Always" } else { "Never" }
        );
        if let Some(pool) = self.pool_v6 {
            let _ = write!(
                y,
                "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv6-ippool\nspec:\n  allowedUses: [Workload, Tunnel]\n  blockSize: 122\n  cidr: {pool}\n  ipipMode: Never\n  natOutgoing: false\n  nodeSelector: all()\n  vxlanMode: {}\n",
                if vxlan { "Always" } else { "Never" }
            );
        }
        y.push_str("---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  logSeverityScreen: Info\n  reportingInterval: 0s\n");
        if !vxlan {
            let _ = write!(
                y,
                "---\n# calicoctl get bgpconfiguration default -o yaml\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: {LAB_AS}\n  logSeverityScreen: Info\n  nodeToNodeMeshEnabled: true\n"
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            y.push_str(&if i % 2 == 0 {
                calico_node(n, vxlan)
            } else {
                k8s_node(n, vxlan)
            });
            y.push_str(&block(n, true, vxlan));
            y.push_str(&block_v6(n, vxlan));
        }
        y
    }

    /// A third node that exists in the datastore but was never programmed on any lab node.
    pub fn unprogrammed_node_yaml(&self) -> String {
        let n = NodeSpec {
            name: "node-c".into(),
            netns: String::new(),
            ip: "10.99.0.13"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            block: "10.244.2.0/26".parse().unwrap_or_default(),
            tunnel_ip: "10.244.2.0"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            vtep_mac: super::spec::vtep_mac("node-c"),
            switch_port: String::new(),
            pods: Vec::new(),
            v6: None,
        };
        let vxlan = self.mode == LabMode::Vxlan;
        let mut y = calico_node(&n, vxlan);
        y.push_str(&block(&n, false, vxlan));
        y
    }
}

/// A Calico v3 Node (with the Kubernetes Node's labels, as calicoctl prints them; BGPPeer
/// selectors match them); the VXLAN tunnel address only where VXLAN is in use.
fn calico_node(n: &NodeSpec, vxlan: bool) -> String {
    let mut tun = if vxlan {
        format!("  ipv4VXLANTunnelAddr: {}\n", n.tunnel_ip)
    } else {
        String::new()
    };
    let mut bgp6 = String::new();
    if let Some(v6) = &n.v6 {
        if vxlan {
            let _ = writeln!(tun, "  ipv6VXLANTunnelAddr: '{}'", v6.tunnel_ip);
        }
        bgp6 = format!("    ipv6Address: '{}/{UNDERLAY_PREFIX_V6}'\n", v6.ip);
    }
    format!(
        "---\n# calicoctl get node {name} -o yaml\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\nspec:\n  addresses:\n  - address: {ip}/{UNDERLAY_PREFIX}\n    type: CalicoNodeIP\n  bgp:\n    ipv4Address: {ip}/{UNDERLAY_PREFIX}\n{bgp6}{tun}  orchRefs:\n  - nodeName: {name}\n    orchestrator: k8s\n",
        name = n.name,
        ip = n.ip,
    )
}

fn k8s_node(n: &NodeSpec, vxlan: bool) -> String {
    let mut tun = if vxlan {
        format!(
            "    projectcalico.org/IPv4VXLANTunnelAddr: {}\n",
            n.tunnel_ip
        )
    } else {
        String::new()
    };
    if let Some(v6) = &n.v6 {
        let _ = writeln!(
            tun,
            "    projectcalico.org/IPv6Address: '{}/{UNDERLAY_PREFIX_V6}'",
            v6.ip
        );
        if vxlan {
            let _ = writeln!(
                tun,
                "    projectcalico.org/IPv6VXLANTunnelAddr: '{}'",
                v6.tunnel_ip
            );
        }
    }
    format!(
        "---\n# kubectl get node {name} -o yaml (Calico keeps its data in annotations)\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    projectcalico.org/IPv4Address: {ip}/{UNDERLAY_PREFIX}\n{tun}    node.alpha.kubernetes.io/ttl: \"0\"\n  labels:\n    kubernetes.io/hostname: {name}\nspec:\n  podCIDR: 10.245.0.0/24\n",
        name = n.name,
        ip = n.ip,
    )
}

/// The node's IPAM block: with VXLAN ordinal 0 is the tunnel address, then one per pod.
fn block(n: &NodeSpec, with_affinity_object: bool, vxlan: bool) -> String {
    let base = u32::from(n.block.network());
    let (mut allocations, mut attrs, first) = if vxlan {
        (
            vec!["0".to_string()],
            format!(
                "  - handle_id: vxlan-tunnel-addr-{name}\n    secondary:\n      node: {name}\n      type: vxlanTunnelAddress\n",
                name = n.name
            ),
            1,
        )
    } else {
        (vec!["null".to_string()], String::new(), 0)
    };
    for (i, p) in n.pods.iter().enumerate() {
        let ordinal = u32::from(p.ip) - base;
        allocations.resize(ordinal as usize + 1, "null".into());
        allocations[ordinal as usize] = (i + first).to_string();
        let _ = write!(
            attrs,
            "  - handle_id: k8s-pod-network.{handle}\n    secondary:\n      namespace: {ns}\n      node: {node}\n      pod: {pod}\n      timestamp: 2026-11-23 10:00:00.000000000 +0000 UTC\n",
            handle = &p.veth[4..],
            ns = p.namespace,
            node = n.name,
            pod = p.name
        );
    }
    let name = n.block.to_string().replace(['.', '/'], "-");
    let mut y = format!(
        "---\napiVersion: crd.projectcalico.org/v1\nkind: IPAMBlock\nmetadata:\n  name: {name}\nspec:\n  affinity: host:{node}\n  allocations: [{allocs}]\n  attributes:\n{attrs}  cidr: {cidr}\n  deleted: false\n  strictAffinity: false\n  unallocated: []\n",
        node = n.name,
        allocs = allocations.join(", "),
        cidr = n.block
    );
    if with_affinity_object {
        let _ = write!(
            y,
            "---\napiVersion: crd.projectcalico.org/v1\nkind: BlockAffinity\nmetadata:\n  name: {node}-{name}\nspec:\n  cidr: {cidr}\n  deleted: \"false\"\n  node: {node}\n  state: confirmed\n  type: host\n",
            node = n.name,
            cidr = n.block
        );
    }
    y
}

/// Dual stack: the node's IPv6 block, with VXLAN ordinal 0 its `vxlan-v6.calico` address
/// (secondary type `vxlanV6TunnelAddress`), then its pods' IPv6 addresses.
fn block_v6(n: &NodeSpec, vxlan: bool) -> String {
    let Some(v6) = &n.v6 else {
        return String::new();
    };
    let base = u128::from(v6.block.network());
    let (mut allocations, mut attrs) = if vxlan {
        (
            vec!["0".to_string()],
            format!(
                "  - handle_id: vxlan-v6-tunnel-addr-{name}\n    secondary:\n      node: {name}\n      type: vxlanV6TunnelAddress\n",
                name = n.name
            ),
        )
    } else {
        (vec!["null".to_string()], String::new())
    };
    let first = usize::from(vxlan);
    for (i, p) in n.pods.iter().enumerate() {
        let Some(ip) = p.ip6 else { continue };
        let ordinal = usize::try_from(u128::from(ip) - base).unwrap_or(0);
        allocations.resize(ordinal + 1, "null".into());
        allocations[ordinal] = (i + first).to_string();
        let _ = write!(
            attrs,
            "  - handle_id: k8s-pod-network.{handle}\n    secondary:\n      namespace: {ns}\n      node: {node}\n      pod: {pod}\n",
            handle = &p.veth[4..],
            ns = p.namespace,
            node = n.name,
            pod = p.name
        );
    }
    // `CIDRToName`: the CIDR with `:` and `/` replaced by `-`.
    let name = v6.block.to_string().replace([':', '/'], "-");
    format!(
        "---\napiVersion: crd.projectcalico.org/v1\nkind: IPAMBlock\nmetadata:\n  name: {name}\nspec:\n  affinity: host:{node}\n  allocations: [{allocs}]\n  attributes:\n{attrs}  cidr: '{cidr}'\n  deleted: false\n  strictAffinity: false\n  unallocated: []\n",
        node = n.name,
        allocs = allocations.join(", "),
        cidr = v6.block
    )
}
