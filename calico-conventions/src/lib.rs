//! Calico's own conventions, shared by the agent (to compute what Felix programs) and the lab
//! (to build a node that looks exactly like one Felix programmed). Sources are cited per item
//! in shared/reference/calico-dataplane.md.

use sha1::{Digest as _, Sha1};

pub mod vpc_cni;

/// Devices Felix creates for each encapsulation (`dataplanedefs`, `wireguard.go`).
pub const VXLAN_V4: &str = "vxlan.calico";
pub const VXLAN_V6: &str = "vxlan-v6.calico";
pub const IPIP: &str = "tunl0";
pub const WIREGUARD_V4: &str = "wireguard.cali";
pub const WIREGUARD_V6: &str = "wg-v6.cali";
pub const TUNNEL_DEVICES: [&str; 5] = [VXLAN_V4, VXLAN_V6, IPIP, WIREGUARD_V4, WIREGUARD_V6];
/// Felix's default workload interface prefix (`InterfacePrefix`).
pub const WORKLOAD_PREFIX: &str = "cali";

/// A workload's host-side veth (`cali…`), not one of Felix's own `*.cali` devices.
pub fn is_workload_iface(name: &str) -> bool {
    name.starts_with(WORKLOAD_PREFIX) && !name.contains('.')
}

/// Felix's `VXLANVNI` and `VXLANPort` defaults.
pub const VXLAN_VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
/// Encapsulation overheads Felix subtracts from the host MTU (`int_dataplane.go`).
pub const VXLAN_OVERHEAD: u32 = 50;
/// IPv6 outer header: `vxlanV6MTUOverhead`.
pub const VXLAN_V6_OVERHEAD: u32 = 70;
pub const IPIP_OVERHEAD: u32 = 20;
pub const WIREGUARD_OVERHEAD: u32 = 60;
/// WireGuard over IPv6 (`wg-v6.cali`).
pub const WIREGUARD_V6_OVERHEAD: u32 = 80;
/// Felix's route protocol for blackholes and same-subnet routes (`DefaultRouteProto`).
pub const PROTO_CALICO: u8 = 80;
/// The route protocol BIRD (calico-node's BGP daemon) installs its routes with.
pub const PROTO_BIRD: u8 = 12;
/// The host side of every workload veth (`cni-plugin` `hostSideMAC`).
pub const WORKLOAD_HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// `FailsafeInboundHostPorts` default.
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
/// `FailsafeOutboundHostPorts` default.
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

/// Felix's VTEP MAC for a node without `vxlanTunnelMACAddr`: `0x66` followed by the first five
/// bytes of sha1(node name) (`felix/calc/vxlan_resolver.go` `vtepMACForHost`).
pub fn vtep_mac(node: &str) -> String {
    let h = Sha1::digest(node.as_bytes());
    mac(0x66, &h[..5])
}

/// The IPv6 VTEP's MAC: the same derivation from `<node>-v6` (`vtepMACForHost` with
/// `ipVersion` 6), so that the two devices of a dual-stack node differ.
pub fn vtep_mac_v6(node: &str) -> String {
    vtep_mac(&format!("{node}-v6"))
}

/// Calico's workload interface name: `cali` + the first 11 hex chars of
/// sha1("<namespace>.<pod>") (`VethNameForWorkload`).
pub fn workload_iface(namespace: &str, pod: &str) -> String {
    let h = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// A MAC of `first` followed by five bytes, lowercase and colon-separated.
pub fn mac(first: u8, rest: &[u8]) -> String {
    std::iter::once(first)
        .chain(rest.iter().copied())
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_match_calico_test_vectors() {
        // shared/reference/calico-dataplane.md §1.3 and §7.
        assert_eq!(vtep_mac("node1"), "66:f9:37:c3:7e:94");
        assert_eq!(workload_iface("default", "podA"), "cali7f94ce7c295");
        assert!(workload_iface("namespace", "podname").ends_with("82111e10a96"));
    }
}
