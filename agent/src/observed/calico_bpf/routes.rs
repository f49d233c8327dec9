//! Felix's eBPF route maps, `cali_v4_routes` and `cali_v6_routes`: the routing tables its TC
//! programs consult.
//!
//! IPv4 layout (`felix/bpf/routes/map.go` and `felix/bpf-gpl/routes.h`, unchanged from v3.26 to
//! master `87c15906f20c`; the map has no version suffix): an LPM trie with an 8-byte key
//! (`u32 prefixlen`, little-endian, then the `be32` address) and an 8-byte value (`u32 flags`,
//! then a `be32` next hop or a `u32` ifindex, by kind). IPv6 (`felix/bpf/routes/map6.go`,
//! Felix's dual-stack eBPF dataplane): the same with a 16-byte address, so 20-byte keys and
//! 20-byte values (`u32 flags`, then a 16-byte next hop, or a `u32` ifindex in its first word).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The pinned files' names (`routes.MapParameters.Name`, `Version` 0 → no suffix).
pub const MAP_NAME: &str = "cali_v4_routes";
pub const MAP_NAME_V6: &str = "cali_v6_routes";
pub const KEY_LEN: usize = 8;
pub const VALUE_LEN: usize = 8;
pub const KEY_LEN_V6: usize = 20;
pub const VALUE_LEN_V6: usize = 20;

// `routes.Flags` (felix/bpf/routes/map.go).
pub const IN_POOL: u32 = 0x01;
pub const NAT_OUT: u32 = 0x02;
pub const WORKLOAD: u32 = 0x04;
pub const LOCAL: u32 = 0x08;
pub const HOST: u32 = 0x10;
pub const SAME_SUBNET: u32 = 0x20;
pub const TUNNELED: u32 = 0x40;
pub const NO_DSR: u32 = 0x80;
pub const BLACKHOLE_DROP: u32 = 0x100;
pub const BLACKHOLE_REJECT: u32 = 0x200;
pub const VXLAN: u32 = 0x400;
pub const SKIP_INGRESS_REDIR: u32 = 0x800;

/// One entry of the route map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfRoute {
    pub destination: IpNet,
    pub flags: u32,
    /// Remote entries: the node the destination lives on. Local workloads carry an ifindex
    /// in the same place instead.
    pub next_hop: Option<IpAddr>,
    pub ifindex: Option<u32>,
}

impl BpfRoute {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// The flag names as `calico-node -bpf routes dump` prints them (`Flags.FlagNames`).
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.has(LOCAL) {
            names.push("local");
        } else if !self.has(BLACKHOLE_DROP | BLACKHOLE_REJECT) {
            names.push("remote");
        }
        if self.has(HOST) {
            names.push("host");
        } else if self.has(WORKLOAD) {
            names.push("workload");
        }
        for (flag, name) in [
            (IN_POOL, "in-pool"),
            (NAT_OUT, "nat-out"),
            (SAME_SUBNET, "same-subnet"),
            (NO_DSR, "no-dsr"),
            (TUNNELED, "tunneled"),
            (VXLAN, "vxlan"),
            (SKIP_INGRESS_REDIR, "skip-ingress-redir"),
            (BLACKHOLE_DROP, "blackhole-drop"),
            (BLACKHOLE_REJECT, "blackhole-reject"),
        ] {
            if self.has(flag) {
                names.push(name);
            }
        }
        names
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route key with prefix length {0}, more than its address holds")]
pub struct BadPrefix(pub u32);

fn word(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

/// Decodes one `cali_v4_routes` entry.
pub fn decode(key: &[u8; KEY_LEN], value: &[u8; VALUE_LEN]) -> Result<BpfRoute, BadPrefix> {
    let hop = word(value, 4);
    entry(
        u32::from_le_bytes(word(key, 0)),
        IpAddr::V4(Ipv4Addr::from(word(key, 4))),
        u32::from_le_bytes(word(value, 0)),
        (hop != [0; 4]).then(|| IpAddr::V4(Ipv4Addr::from(hop))),
        u32::from_le_bytes(hop),
    )
}

/// Decodes one `cali_v6_routes` entry.
pub fn decode_v6(
    key: &[u8; KEY_LEN_V6],
    value: &[u8; VALUE_LEN_V6],
) -> Result<BpfRoute, BadPrefix> {
    let sixteen = |b: &[u8]| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[4..20]);
        a
    };
    let hop = sixteen(value);
    entry(
        u32::from_le_bytes(word(key, 0)),
        IpAddr::V6(Ipv6Addr::from(sixteen(key))),
        u32::from_le_bytes(word(value, 0)),
        (hop != [0; 16]).then(|| IpAddr::V6(Ipv6Addr::from(hop))),
        u32::from_le_bytes(word(value, 4)),
    )
}

/// Felix writes a next hop for remote kinds and an ifindex for local workloads
/// (`bpf_route_mgr.go` `calculateRoute`); other kinds leave the field zero.
fn entry(
    prefix: u32,
    addr: IpAddr,
    flags: u32,
    next_hop: Option<IpAddr>,
    ifindex: u32,
) -> Result<BpfRoute, BadPrefix> {
    let len = u8::try_from(prefix).map_err(|_| BadPrefix(prefix))?;
    let destination = IpNet::new(addr, len).map_err(|_| BadPrefix(prefix))?;
    let local_workload = flags & (LOCAL | WORKLOAD) == LOCAL | WORKLOAD;
    let remote = flags & LOCAL == 0 && flags & (WORKLOAD | HOST) != 0;
    Ok(BpfRoute {
        destination,
        flags,
        next_hop: next_hop.filter(|_| remote),
        ifindex: local_workload.then_some(ifindex),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// An entry as Felix writes it (`routes.NewKey`, `NewValueWithNextHop`).
    pub fn entry(cidr: &str, flags: u32, next_hop: [u8; 4]) -> ([u8; KEY_LEN], [u8; VALUE_LEN]) {
        let net: ipnet::Ipv4Net = cidr.parse().expect("cidr");
        let mut k = [0u8; KEY_LEN];
        k[..4].copy_from_slice(&u32::from(net.prefix_len()).to_le_bytes());
        k[4..].copy_from_slice(&net.addr().octets());
        let mut v = [0u8; VALUE_LEN];
        v[..4].copy_from_slice(&flags.to_le_bytes());
        v[4..].copy_from_slice(&next_hop);
        (k, v)
    }

    #[test]
    fn a_remote_vxlan_block_decodes_with_its_node_as_next_hop() {
        // Bytes as `calico-node -bpf routes dump` shows for 10.65.1.0/26 via 192.168.0.12.
        let key = [26, 0, 0, 0, 10, 65, 1, 0];
        let value = [0x45, 0x04, 0, 0, 192, 168, 0, 12];
        let r = decode(&key, &value).expect("decode");
        assert_eq!(r.destination.to_string(), "10.65.1.0/26");
        assert_eq!(r.next_hop, Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 12))));
        assert_eq!(r.ifindex, None);
        assert_eq!(
            r.flag_names(),
            ["remote", "workload", "in-pool", "tunneled", "vxlan"]
        );
    }

    #[test]
    fn a_local_workload_carries_an_ifindex_and_a_blackhole_no_next_hop() {
        let (k, v) = entry(
            "10.65.0.5/32",
            IN_POOL | LOCAL | WORKLOAD,
            7u32.to_le_bytes(),
        );
        let r = decode(&k, &v).expect("decode");
        assert_eq!((r.ifindex, r.next_hop), (Some(7), None));
        assert_eq!(r.flag_names(), ["local", "workload", "in-pool"]);
        let (k, v) = entry("10.96.0.0/12", BLACKHOLE_DROP, [0; 4]);
        let r = decode(&k, &v).expect("decode");
        assert_eq!((r.ifindex, r.next_hop), (None, None));
        assert_eq!(r.flag_names(), ["blackhole-drop"]);
    }

    #[test]
    fn an_impossible_prefix_is_an_error_not_a_route() {
        let key = [33, 0, 0, 0, 10, 0, 0, 0];
        assert_eq!(decode(&key, &[0; VALUE_LEN]), Err(BadPrefix(33)));
        let key = [0, 1, 0, 0, 10, 0, 0, 0];
        assert_eq!(decode(&key, &[0; VALUE_LEN]), Err(BadPrefix(256)));
    }

    /// `NewKeyV6`, `NewValueV6WithNextHop` and `NewValueV6WithIfIndex` byte for byte.
    #[test]
    fn ipv6_entries_decode_with_a_16_byte_next_hop_or_an_ifindex() {
        let mut key = [0u8; KEY_LEN_V6];
        key[0] = 122;
        key[4..20].copy_from_slice(&"fd00:244::40".parse::<Ipv6Addr>().expect("ip").octets());
        let mut value = [0u8; VALUE_LEN_V6];
        value[..4].copy_from_slice(&(IN_POOL | WORKLOAD | TUNNELED | VXLAN).to_le_bytes());
        value[4..20].copy_from_slice(&"fd00:99::12".parse::<Ipv6Addr>().expect("ip").octets());
        let r = decode_v6(&key, &value).expect("decode");
        assert_eq!(r.destination.to_string(), "fd00:244::40/122");
        assert_eq!(r.next_hop, Some("fd00:99::12".parse().expect("ip")));
        assert_eq!(r.ifindex, None);
        let mut value = [0u8; VALUE_LEN_V6];
        value[..4].copy_from_slice(&(IN_POOL | LOCAL | WORKLOAD).to_le_bytes());
        value[4..8].copy_from_slice(&9u32.to_le_bytes());
        key[0] = 128;
        let r = decode_v6(&key, &value).expect("decode");
        assert_eq!((r.ifindex, r.next_hop), (Some(9), None));
        key[0] = 129;
        assert_eq!(decode_v6(&key, &value), Err(BadPrefix(129)));
    }
}
