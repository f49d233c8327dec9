//! Which Calico dataplane this node runs, inferred from devices, routes and chains alone.

use serde::{Deserialize, Serialize};

use calico_conventions::{
    IPIP, PROTO_BIRD, PROTO_CALICO, VXLAN_V4, VXLAN_V6, WIREGUARD_V4, WIREGUARD_V6,
    is_workload_iface,
};

use crate::observed::{ObservedDataplane, RouteType, TABLE_MAIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Vxlan,
    Ipip,
    Wireguard,
    /// Routes to other nodes' blocks over the underlay, no tunnel (BGP or Felix no-encap).
    NoEncap,
    /// Felix in eBPF dataplane mode.
    CalicoEbpf,
    /// Felix's policy chains and workloads, but no Calico routing (e.g. on AWS VPC CNI).
    PolicyOnly,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vxlan => "VXLAN",
            Self::Ipip => "IPIP",
            Self::Wireguard => "WireGuard",
            Self::NoEncap => "BGP/no-encap",
            Self::CalicoEbpf => "Calico eBPF",
            Self::PolicyOnly => "policy-only",
        }
    }
}

/// Detects the modes present (several can combine: VXLAN + WireGuard, or CrossSubnet's VXLAN +
/// no-encap) and says why. An empty list means no Calico dataplane on this node.
pub fn detect_modes(obs: &ObservedDataplane) -> (Vec<Mode>, Vec<String>) {
    let mut modes = Vec::new();
    let mut why = Vec::new();
    for dev in [VXLAN_V4, VXLAN_V6] {
        if obs.link(dev).is_some() {
            push(&mut modes, Mode::Vxlan);
            why.push(format!("device {dev} exists"));
        }
    }
    // tunl0 appears whenever the ipip module is loaded; Felix strips its addresses when IPIP
    // is off, so only an address or routes through it count.
    if obs.link(IPIP).is_some() {
        let addrs = obs.addresses_of(IPIP).count();
        let routes = obs
            .routes
            .iter()
            .filter(|r| r.dev.as_deref() == Some(IPIP))
            .count();
        if addrs > 0 || routes > 0 {
            push(&mut modes, Mode::Ipip);
            why.push(format!(
                "{IPIP} has {addrs} address(es) and {routes} route(s)"
            ));
        }
    }
    for dev in [WIREGUARD_V4, WIREGUARD_V6] {
        if obs.link(dev).is_some() {
            push(&mut modes, Mode::Wireguard);
            why.push(format!("device {dev} exists"));
        }
    }
    let underlay = obs
        .routes
        .iter()
        .filter(|r| {
            r.table == TABLE_MAIN
                && r.kind == RouteType::Unicast
                && (r.protocol == PROTO_CALICO || r.protocol == PROTO_BIRD)
                && r.gateway.is_some()
                && !r
                    .dev
                    .as_deref()
                    .is_some_and(|d| d == IPIP || d.contains(".cali") || is_workload_iface(d))
        })
        .count();
    if underlay > 0 {
        push(&mut modes, Mode::NoEncap);
        why.push(format!(
            "{underlay} block route(s) via the underlay with proto 80/bird"
        ));
    }
    let bpf_devs = ["bpfin.cali", "bpfout.cali"]
        .iter()
        .any(|d| obs.link(d).is_some());
    if bpf_devs || !obs.calico_bpf_pins.is_empty() {
        push(&mut modes, Mode::CalicoEbpf);
        why.push(format!(
            "eBPF mode: {} Calico map(s) pinned{}",
            obs.calico_bpf_pins.len(),
            if bpf_devs {
                ", bpfin.cali/bpfout.cali present"
            } else {
                ""
            }
        ));
    }
    if modes.is_empty() {
        let workloads = obs
            .links
            .iter()
            .filter(|l| {
                is_workload_iface(&l.name) || calico_conventions::vpc_cni::is_pod_veth(&l.name)
            })
            .count();
        let chains = obs
            .iptables
            .iter()
            .map(|d| d.felix_chain_count())
            .sum::<usize>()
            + obs
                .nft
                .as_ref()
                .map_or(0, |n| usize::from(n.calico_table("ip").is_some()));
        let blackholes = obs
            .routes
            .iter()
            .filter(|r| {
                r.kind == RouteType::Blackhole
                    && (r.protocol == PROTO_CALICO || r.protocol == PROTO_BIRD)
            })
            .count();
        if blackholes > 0 {
            push(&mut modes, Mode::NoEncap);
            why.push(format!(
                "{blackholes} local block blackhole(s), no tunnel device"
            ));
        } else if chains > 0 || workloads > 0 {
            push(&mut modes, Mode::PolicyOnly);
            why.push(format!(
                "{workloads} workload interface(s) and Felix chains ({chains}) but no Calico routing"
            ));
        }
    }
    (modes, why)
}

fn push(modes: &mut Vec<Mode>, m: Mode) {
    if !modes.contains(&m) {
        modes.push(m);
    }
}
