//! `ip [-d] [-4|-6] route show [table all]` (and plain `ip route`) into [`Route`]s.
//!
//! iproute2 leaves out what equals its default: `proto boot` and `scope global` unless `-d`,
//! `table main` unless `-d`, the `unicast` type unless `-d`. Those defaults are filled in so a
//! route reads the same whichever way it was printed.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    LineNote, Parsed,
    iproute_names::{protocol_number, route_type, scope_number, table_number},
};
use crate::observed::model::{PROTO_BOOT, Route, RouteType, TABLE_MAIN};

/// Words that take one value which this model does not keep (`pref medium`, `expires 299sec`,
/// `rtt 10ms`, …); skipping the value keeps it from being read as a keyword.
const SKIPPED_WITH_VALUE: &[&str] = &[
    "pref",
    "expires",
    "nhid",
    "from",
    "tos",
    "dsfield",
    "realm",
    "realms",
    "advmss",
    "rtt",
    "rttvar",
    "reordering",
    "window",
    "cwnd",
    "initcwnd",
    "initrwnd",
    "ssthresh",
    "features",
    "quickack",
    "congctl",
    "fastopen_no_cookie",
    "hoplimit",
    "rto_min",
    "weight",
    "error",
    "users",
    "age",
    "used",
    "ipid",
    "ttl-propagate",
];

/// Parses route lines. `family` (4 or 6) is what the command asked for (`-4`/`-6`); it decides
/// what `default` means when neither the line nor the lines before it say.
pub fn parse(text: &str, family: Option<u8>) -> Parsed<Route> {
    let mut out = Parsed::default();
    // iproute2 prints IPv4 routes, then IPv6 ones: a `default` without a gateway belongs to the
    // family of the lines around it.
    let mut current_family = family;
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if raw.starts_with(char::is_whitespace) {
            // `nexthop via … dev … weight N` lines of a multipath route. The live reader keeps
            // no gateway or device for multipath routes either, so they are skipped.
            if !line.trim_start().starts_with("nexthop") {
                out.notes
                    .push(LineNote::new(lineno, "unexpected indented line"));
            }
            continue;
        }
        match parse_line(line, family.or(current_family)) {
            Ok((route, warnings)) => {
                if family.is_none() {
                    current_family = Some(if route.destination.addr().is_ipv4() {
                        4
                    } else {
                        6
                    });
                }
                out.notes
                    .extend(warnings.into_iter().map(|w| LineNote::new(lineno, w)));
                out.items.push(route);
            }
            Err(e) => out.notes.push(LineNote::new(lineno, e)),
        }
    }
    out
}

fn parse_line(line: &str, family: Option<u8>) -> Result<(Route, Vec<String>), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut i = 0;
    let kind = match words.first().and_then(|w| route_type(w)) {
        Some(kind) => {
            i += 1;
            kind
        }
        None => RouteType::Unicast,
    };
    let dest_word = *words.get(i).ok_or("route type without a destination")?;
    i += 1;
    let mut route = Route {
        table: TABLE_MAIN,
        destination: IpNet::default(),
        kind,
        protocol: PROTO_BOOT,
        scope: 0,
        gateway: None,
        oif: None,
        dev: None,
        onlink: false,
        metric: 0,
        mtu: None,
        prefsrc: None,
    };
    let mut warnings = Vec::new();
    while i < words.len() {
        let word = words[i];
        let value = words.get(i + 1).copied();
        i += 1;
        match word {
            "via" => {
                // `via inet6 fe80::1` names the gateway's family when it differs from the route's.
                let mut gw = value.ok_or("via without a gateway")?;
                if matches!(gw, "inet" | "inet6") {
                    i += 1;
                    gw = words.get(i).copied().ok_or("via without a gateway")?;
                }
                route.gateway = Some(parse_ip(gw, "gateway")?);
                i += 1;
            }
            "dev" | "oif" => {
                route.dev = Some(value.ok_or("dev without a name")?.to_string());
                i += 1;
            }
            "table" => {
                let t = value.ok_or("table without a value")?;
                match table_number(t) {
                    Some(t) => route.table = t,
                    None => warnings.push(format!(
                        "table {t} is not a number or a default iproute2 name; kept as main"
                    )),
                }
                i += 1;
            }
            "proto" | "protocol" => {
                let p = value.ok_or("proto without a value")?;
                match protocol_number(p) {
                    Some(p) => route.protocol = p,
                    None => {
                        route.protocol = 0;
                        warnings.push(format!("unknown protocol name {p}; kept as 0"));
                    }
                }
                i += 1;
            }
            "scope" => {
                let s = value.ok_or("scope without a value")?;
                route.scope = scope_number(s).ok_or_else(|| format!("unknown scope {s}"))?;
                i += 1;
            }
            "src" => {
                route.prefsrc = Some(parse_ip(value.ok_or("src without an address")?, "src")?);
                i += 1;
            }
            "metric" | "priority" | "preference" => {
                let m = value.ok_or("metric without a value")?;
                route.metric = m.parse().map_err(|_| format!("bad metric {m}"))?;
                i += 1;
            }
            "mtu" => {
                let mut v = value.ok_or("mtu without a value")?;
                if v == "lock" {
                    i += 1;
                    v = words.get(i).copied().ok_or("mtu lock without a value")?;
                }
                route.mtu = Some(v.parse().map_err(|_| format!("bad mtu {v}"))?);
                i += 1;
            }
            "onlink" => route.onlink = true,
            "encap" => {
                // Lightweight-tunnel encapsulation has its own grammar; skip to the next word
                // this parser knows.
                while i < words.len() && !is_route_keyword(words[i]) {
                    i += 1;
                }
            }
            w if SKIPPED_WITH_VALUE.contains(&w) => i += 1,
            // Flags (`linkdown`, `pervasive`, `dead`, `offload`, …) the model does not keep.
            _ => {}
        }
    }
    route.destination = parse_destination(dest_word, family, route.gateway)?;
    Ok((route, warnings))
}

fn is_route_keyword(word: &str) -> bool {
    matches!(
        word,
        "via" | "dev" | "table" | "proto" | "scope" | "src" | "metric" | "mtu" | "onlink"
    )
}

fn parse_destination(
    word: &str,
    family: Option<u8>,
    gateway: Option<IpAddr>,
) -> Result<IpNet, String> {
    if word == "default" || word == "any" || word == "all" {
        let v6 = match gateway {
            Some(gw) => gw.is_ipv6(),
            None => family == Some(6),
        };
        let zero: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        return IpNet::new(zero, 0).map_err(|e| e.to_string());
    }
    if word.contains('/') {
        return word
            .parse()
            .map_err(|_| format!("not a route destination: {word}"));
    }
    word.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("not a route destination: {word}"))
}

fn parse_ip(word: &str, what: &str) -> Result<IpAddr, String> {
    word.parse()
        .map_err(|_| format!("bad {what} address {word}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB_DETAILED: &str = include_str!("testdata/ip-d-route-show-table-all.txt");
    const LAB_PLAIN: &str = include_str!("testdata/ip-route.txt");
    const KINDS_DETAILED: &str = include_str!("testdata/ip-d-route-show-table-all-types.txt");
    const KINDS_PLAIN: &str = include_str!("testdata/ip-route-show-table-all-types.txt");

    #[test]
    fn lab_routes_of_every_table() {
        let parsed = parse(LAB_DETAILED, None);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn every_route_type_and_attribute() {
        let parsed = parse(KINDS_DETAILED, None);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn plain_and_detailed_output_agree() {
        // Without -d iproute2 hides proto boot, scope global, table main and `unicast`; the
        // defaults must restore exactly what -d prints.
        assert_eq!(parse(KINDS_PLAIN, None), parse(KINDS_DETAILED, None));
        let lab_main: Vec<Route> = parse(LAB_DETAILED, None)
            .items
            .into_iter()
            .filter(|r| r.table == TABLE_MAIN && r.destination.addr().is_ipv4())
            .collect();
        assert_eq!(parse(LAB_PLAIN, None).items, lab_main);
    }

    #[test]
    fn default_takes_the_family_of_its_context() {
        let v6 = parse("default dev wg0 metric 1024 pref medium\n", Some(6));
        assert_eq!(v6.items[0].destination.to_string(), "::/0");
        let v4 = parse("default dev wg0\n", None);
        assert_eq!(v4.items[0].destination.to_string(), "0.0.0.0/0");
        let after_v6 = parse("fe80::/64 dev eth0 proto kernel\ndefault dev wg0\n", None);
        assert_eq!(after_v6.items[1].destination.to_string(), "::/0");
        let gw = parse("default via inet6 fe80::1 dev eth0\n", Some(4));
        assert_eq!(gw.items[0].destination.to_string(), "::/0");
    }

    #[test]
    fn garbage_and_truncated_lines_become_notes() {
        let text = "10.0.0.0/8 dev eth0\nError: ipv4: FIB table does not exist.\n\
                    blackhole\n10.1.0.0/16 via\n  weird indented\n10.2.0.0/16 dev eth0 proto madeup table custom\n10.3.0.0/16 dev e";
        let parsed = parse(text, None);
        assert_eq!(parsed.items.len(), 3, "{:?}", parsed.items);
        assert_eq!(parsed.items[2].dev.as_deref(), Some("e"));
        insta::assert_yaml_snapshot!(parsed.notes);
    }
}
