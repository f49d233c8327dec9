//! Which Calico dataplane this node runs, inferred from devices, routes and chains alone.

use serde::{Deserialize, Serialize};

use calico_conventions::{
    IPIP, PROTO_BIRD, PROTO_CALICO, VXLAN_V4, VXLAN_V6, WIREGUARD_V4, WIREGUARD_V6,
    is_workload_iface,
};

use crate::observed::{ObservedDataplane, RouteType, Source, TABLE_MAIN};

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
    // Without links (a pasted `ip route` alone), routes through tunl0 are the evidence.
    let ipip_routes_only = obs.link(IPIP).is_none()
        && obs.unavailable.iter().any(|u| u.kind == Source::Links)
        && obs.routes.iter().any(|r| r.dev.as_deref() == Some(IPIP));
    if obs.link(IPIP).is_some() || ipip_routes_only {
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
    // Felix's TCX/netkit link pins: its programs attached to the node's interfaces.
    let links = obs.calico_bpf.as_ref().map_or(0, |b| b.attached.len());
    if bpf_devs || links > 0 || !obs.calico_bpf_pins.is_empty() {
        push(&mut modes, Mode::CalicoEbpf);
        why.push(format!(
            "eBPF mode: {} Calico map(s) pinned{}{}",
            obs.calico_bpf_pins.len(),
            if links > 0 {
                format!(", {links} program link(s) pinned")
            } else {
                String::new()
            },
            if bpf_devs {
                ", bpfin.cali/bpfout.cali present"
            } else {
                ""
            }
        ));
    }
    bgp_evidence(obs, &mut why);
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
        } else if (chains > 0 || workloads > 0 || felix_rules_seen(obs)) && routes_unknown(obs) {
            // Felix is here, but without the routes nothing says how it routes: a paste of
            // its chains alone is not policy-only.
            why.push(format!(
                "Felix's rules ({chains} cali- chain(s)) and {workload} workload interface(s); the routes are not in the input, so the mode is unknown",
                workload = workloads
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

fn routes_unknown(obs: &ObservedDataplane) -> bool {
    obs.unavailable.iter().any(|u| u.kind == Source::Routes)
}

/// BIRD's sessions say the node speaks BGP and how it peers (node-to-node mesh, route
/// reflectors or global peers); they do not say how packets are carried (IPIP, VXLAN or
/// none), so they add evidence and no mode.
fn bgp_evidence(obs: &ObservedDataplane, why: &mut Vec<String>) {
    for (label, daemon, peers) in [
        ("BGP", "BIRD", &obs.bgp_peers),
        ("BGP IPv6", "bird6", &obs.bgp6_peers),
    ] {
        let Some(peers) = peers.as_ref() else {
            continue;
        };
        if peers.is_empty() {
            why.push(format!("{label}: {daemon} has no peers"));
            continue;
        }
        let mut kinds: Vec<&str> = peers.iter().map(|p| p.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let up = peers.iter().filter(|p| p.established()).count();
        why.push(format!(
            "{label}: {} peer(s) ({}), {up} Established",
            peers.len(),
            kinds.join(", ")
        ));
    }
}

/// Calico is on the node even when no mode can be told: Felix's chains with the routes not
/// in the input, or BIRD's sessions alone.
pub fn calico_evidence(obs: &ObservedDataplane) -> bool {
    obs.all_bgp_peers().next().is_some() || felix_rules_seen(obs)
}

/// Felix's chains, or rules jumping to them, in iptables or nftables.
fn felix_rules_seen(obs: &ObservedDataplane) -> bool {
    obs.iptables.iter().any(|d| {
        d.felix_chain_count() > 0
            || d.tables
                .iter()
                .flat_map(|t| &t.rules)
                .any(|r| r.target.as_deref().is_some_and(|t| t.starts_with("cali-")))
    }) || obs.nft.as_ref().is_some_and(|n| {
        n.calico_table("ip").is_some()
            || n.chains.iter().any(|c| c.name.starts_with("cali-"))
            || n.rules
                .iter()
                .any(|r| r.target.as_deref().is_some_and(|t| t.starts_with("cali-")))
    })
}

fn push(modes: &mut Vec<Mode>, m: Mode) {
    if !modes.contains(&m) {
        modes.push(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::bird::BgpPeer;

    fn peer(ip: &str, info: &str) -> BgpPeer {
        BgpPeer {
            name: format!("Mesh_{}", ip.replace(['.', ':'], "_")),
            kind: "node-to-node mesh".into(),
            peer_ip: ip.into(),
            state: "up".into(),
            since: "10:00:00".into(),
            info: info.into(),
            since_seconds: None,
        }
    }

    /// Each BIRD says how the node peers in its family; an absent one says nothing.
    #[test]
    fn bgp_evidence_names_each_family() {
        let mut obs = ObservedDataplane {
            bgp_peers: Some(vec![peer("10.99.0.12", "Established")]),
            ..ObservedDataplane::default()
        };
        let mut why = Vec::new();
        bgp_evidence(&obs, &mut why);
        assert_eq!(why, ["BGP: 1 peer(s) (node-to-node mesh), 1 Established"]);
        obs.bgp6_peers = Some(vec![peer("fd00:99::12", "Active")]);
        let mut why = Vec::new();
        bgp_evidence(&obs, &mut why);
        assert_eq!(
            why,
            [
                "BGP: 1 peer(s) (node-to-node mesh), 1 Established",
                "BGP IPv6: 1 peer(s) (node-to-node mesh), 0 Established"
            ]
        );
    }
}
