//! Which interfaces the TC programs attach to: Calico's tunnels, the underlay NIC and every
//! workload veth, as the observed dataplane lists them.

use calico_conventions::{IPIP, TUNNEL_DEVICES, is_workload_iface};
use serde::Serialize;

use crate::observed::{Link, ObservedDataplane, TABLE_MAIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IfaceClass {
    /// Not one of the interfaces the agent follows (drops only).
    Host,
    Tunnel,
    Underlay,
    Workload,
    Other,
}

impl IfaceClass {
    /// The value the eBPF programs use ([`agent_common::iface_class`]).
    pub fn raw(self) -> u8 {
        use agent_common::iface_class as c;
        match self {
            Self::Host => c::HOST,
            Self::Tunnel => c::TUNNEL,
            Self::Underlay => c::UNDERLAY,
            Self::Workload => c::WORKLOAD,
            Self::Other => c::OTHER,
        }
    }

    pub fn from_raw(raw: u8) -> Self {
        use agent_common::iface_class as c;
        match raw {
            c::TUNNEL => Self::Tunnel,
            c::UNDERLAY => Self::Underlay,
            c::WORKLOAD => Self::Workload,
            c::OTHER => Self::Other,
            _ => Self::Host,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Tunnel => "tunnel",
            Self::Underlay => "underlay",
            Self::Workload => "workload",
            Self::Other => "other",
        }
    }
}

/// An interface to attach to, with what the programs need to know about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// Carries bare IP packets (no Ethernet header).
    pub l3: bool,
    pub class: IfaceClass,
}

impl Target {
    pub fn from_link(l: &Link, class: IfaceClass) -> Self {
        let l3 = matches!(
            l.kind.as_deref(),
            Some("ipip" | "wireguard" | "tun" | "gre" | "sit")
        ) || l.name == IPIP
            || l.mac.is_none();
        Self {
            name: l.name.clone(),
            ifindex: l.index,
            mtu: l.mtu,
            l3,
            class,
        }
    }
}

/// The Calico-relevant interfaces of the node (or just `only`, when given).
pub fn select(obs: &ObservedDataplane, only: Option<&str>) -> Vec<Target> {
    let underlay = underlay_index(obs);
    // A workload's packets are compared with the tunnel they will enter, not with the veth's
    // own MTU: a pod sending more than the tunnel carries is the MTU fault to catch.
    let tunnel_mtu = obs
        .links
        .iter()
        .filter(|l| TUNNEL_DEVICES.contains(&l.name.as_str()) && l.is_up())
        .map(|l| l.mtu)
        .min();
    // Down devices too: attaching needs no carrier, and a new workload veth is attached the
    // moment it exists, before its carrier comes up (which the kernel reports up to a second
    // later).
    obs.links
        .iter()
        .filter(|l| only.is_none_or(|o| o == l.name))
        .filter_map(|l| {
            let class = if TUNNEL_DEVICES.contains(&l.name.as_str()) {
                IfaceClass::Tunnel
            } else if is_workload_iface(&l.name) {
                IfaceClass::Workload
            } else if Some(l.index) == underlay {
                IfaceClass::Underlay
            } else if only.is_some() {
                IfaceClass::Other
            } else {
                return None;
            };
            let mut t = Target::from_link(l, class);
            if class == IfaceClass::Workload {
                t.mtu = tunnel_mtu.unwrap_or(t.mtu);
            }
            Some(t)
        })
        .collect()
}

/// The class of any interface by its index, for counters kept by others (Felix's): `other`
/// when the interface is not (or no longer) on the node.
pub fn class_of(obs: &ObservedDataplane, ifindex: u32) -> IfaceClass {
    let Some(l) = obs.link_by_index(ifindex) else {
        return IfaceClass::Other;
    };
    if TUNNEL_DEVICES.contains(&l.name.as_str()) {
        IfaceClass::Tunnel
    } else if is_workload_iface(&l.name) {
        IfaceClass::Workload
    } else if Some(l.index) == underlay_index(obs) {
        IfaceClass::Underlay
    } else {
        IfaceClass::Host
    }
}

/// The device VXLAN is bound to, else the one holding the main table's default route.
fn underlay_index(obs: &ObservedDataplane) -> Option<u32> {
    obs.links
        .iter()
        .find_map(|l| l.vxlan.as_ref().and_then(|v| v.parent_index))
        .or_else(|| {
            obs.routes
                .iter()
                .find(|r| {
                    r.table == TABLE_MAIN
                        && r.destination.prefix_len() == 0
                        && r.destination.addr().is_ipv4()
                })
                .and_then(|r| r.oif)
        })
}
