//! The numbers behind the names iproute2 prints (`proto kernel`, `scope link`, `table main`,
//! `REACHABLE`…), so that text dumps decode to exactly the values netlink reports.

use std::net::IpAddr;

use crate::observed::model::RouteType;

/// Route protocol number for a name from iproute2's default `rt_protos`, or a plain number.
///
/// These are the kernel's `RTPROT_*` values. `keepalived` is 18 (`RTPROT_KEEPALIVED`), which is
/// what the kernel stores and iproute2 prints for it.
pub fn protocol_number(word: &str) -> Option<u8> {
    if let Ok(n) = word.parse() {
        return Some(n);
    }
    Some(match word {
        "unspec" => 0,
        "redirect" => 1,
        "kernel" => 2,
        "boot" => 3,
        "static" => 4,
        "gated" => 8,
        "ra" => 9,
        "mrt" => 10,
        "zebra" => 11,
        "bird" => 12,
        "dnrouted" => 13,
        "xorp" => 14,
        "ntk" => 15,
        "dhcp" => 16,
        "keepalived" => 18,
        "babel" => 42,
        "openr" => 99,
        "bgp" => 186,
        "isis" => 187,
        "ospf" => 188,
        "rip" => 189,
        "eigrp" => 192,
        _ => return None,
    })
}

/// Route or address scope number for a name from iproute2's `rt_scopes`, or a plain number.
pub fn scope_number(word: &str) -> Option<u8> {
    if let Ok(n) = word.parse() {
        return Some(n);
    }
    Some(match word {
        "global" | "universe" => 0,
        "site" => 200,
        "link" => 253,
        "host" => 254,
        "nowhere" => 255,
        _ => return None,
    })
}

/// Routing table id for a name from iproute2's `rt_tables`, or a plain number.
pub fn table_number(word: &str) -> Option<u32> {
    if let Ok(n) = word.parse() {
        return Some(n);
    }
    Some(match word {
        "unspec" => 0,
        "default" => 253,
        "main" => 254,
        "local" => 255,
        _ => return None,
    })
}

/// The route type iproute2 prints as the first word of a route, if `word` is one.
pub fn route_type(word: &str) -> Option<RouteType> {
    Some(match word {
        "unicast" => RouteType::Unicast,
        "local" => RouteType::Local,
        "broadcast" => RouteType::Broadcast,
        "anycast" => RouteType::Anycast,
        "multicast" => RouteType::Multicast,
        "blackhole" => RouteType::Blackhole,
        "unreachable" => RouteType::Unreachable,
        "prohibit" => RouteType::Prohibit,
        "throw" => RouteType::Throw,
        "nat" => RouteType::Nat,
        "xresolve" => RouteType::Other,
        _ => return None,
    })
}

/// NUD state names in the order the live reader ranks them: iproute2 prints every bit that is
/// set (`STALE PERMANENT`), netlink.rs keeps the most significant one.
const NUD_RANK: [&str; 9] = [
    "PERMANENT",
    "NOARP",
    "REACHABLE",
    "STALE",
    "DELAY",
    "PROBE",
    "FAILED",
    "INCOMPLETE",
    "NONE",
];

pub fn is_nud_state(word: &str) -> bool {
    NUD_RANK.contains(&word)
}

/// The state the live reader would report for the NUD words printed on one line.
pub fn nud_state<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let words: Vec<&str> = words.into_iter().collect();
    NUD_RANK
        .iter()
        .find(|name| words.contains(name))
        .unwrap_or(&"NONE")
        .to_string()
}

/// A link-layer address as netlink.rs renders the raw bytes: lowercase hex pairs joined by `:`.
///
/// iproute2 prints tunnel devices' addresses in their own notation (`link/ipip 10.0.0.1`,
/// `link/gre6 ::`); those are converted back to their bytes so both sources agree.
pub fn hw_address(text: &str) -> Option<String> {
    let parts: Vec<&str> = text.split(':').collect();
    let is_hex = |p: &str| p.chars().all(|c| c.is_ascii_hexdigit());
    // Checked before the IP forms: an 8-byte address (`01:02:…:08`) is also valid IPv6.
    if parts.len() > 1 && parts.iter().all(|p| p.len() == 2 && is_hex(p)) {
        return Some(text.to_ascii_lowercase());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        return Some(hex_pairs(&bytes));
    }
    // iproute2 always prints two digits, but pasted text may have lost a leading zero.
    let valid = parts.len() > 1
        && parts
            .iter()
            .all(|p| (1..=2).contains(&p.len()) && is_hex(p));
    valid.then(|| {
        parts
            .iter()
            .map(|p| format!("{:0>2}", p.to_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// `xx:xx:xx:xx:xx:xx` with exactly six hex pairs: what `bridge fdb` starts every line with.
pub fn is_ethernet_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn hex_pairs(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A number as iproute2 prints marks and masks: `0x200000` or decimal.
pub fn parse_u32(word: &str) -> Option<u32> {
    match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::model::{protocol_name, scope_name};

    #[test]
    fn names_invert_the_model_names() {
        for n in 0..=255u8 {
            // The model prints 17 as "keepalived" although the kernel's RTPROT_KEEPALIVED is
            // 18 (what iproute2 prints as keepalived); every other name round-trips.
            if n == 17 || n == 18 {
                continue;
            }
            assert_eq!(protocol_number(&protocol_name(n)), Some(n), "proto {n}");
            assert_eq!(scope_number(&scope_name(n)), Some(n), "scope {n}");
        }
        assert_eq!(protocol_number("keepalived"), Some(18));
        assert_eq!(protocol_number("80"), Some(80));
        assert_eq!(protocol_number("nonsense"), None);
        assert_eq!(table_number("main"), Some(254));
        assert_eq!(table_number("1000"), Some(1000));
        assert_eq!(table_number("calico"), None);
    }

    #[test]
    fn nud_state_keeps_the_most_significant_name() {
        assert_eq!(nud_state(["STALE", "PERMANENT"]), "PERMANENT");
        assert_eq!(nud_state(["router", "REACHABLE"]), "REACHABLE");
        assert_eq!(nud_state([]), "NONE");
    }

    #[test]
    fn hardware_addresses_render_like_netlink() {
        assert_eq!(
            hw_address("66:07:02:C1:CC:60").as_deref(),
            Some("66:07:02:c1:cc:60")
        );
        assert_eq!(hw_address("0.0.0.0").as_deref(), Some("00:00:00:00"));
        assert_eq!(
            hw_address("a:b:c:d:e:f").as_deref(),
            Some("0a:0b:0c:0d:0e:0f")
        );
        assert_eq!(hw_address("zz:00"), None);
        assert_eq!(
            hw_address("01:02:03:04:05:06:07:08").as_deref(),
            Some("01:02:03:04:05:06:07:08")
        );
        assert_eq!(hw_address(""), None);
        assert!(is_ethernet_mac("33:33:00:00:00:01"));
        assert!(!is_ethernet_mac("10.0.0.1"));
        assert_eq!(parse_u32("0x200000"), Some(0x20_0000));
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("0xzz"), None);
    }
}
