//! `ip [-4|-6] neigh [show]`: `10.244.1.0 dev vxlan.calico lladdr 66:89:3a:22:7a:ac PERMANENT`,
//! `fe80::1 dev eth0 lladdr … router STALE`, `10.0.0.5 dev eth0 FAILED`.
//!
//! `ip neigh` without `nud all` hides NOARP entries (multicast and loopback neighbours): a
//! bundle taken that way has fewer entries than netlink, never different ones.

use std::net::IpAddr;

use super::{
    LineNote, Parsed,
    iproute_names::{hw_address, is_nud_state, nud_state},
};
use crate::observed::model::Neighbour;

/// Parses neighbour lines. `ifindex` is left 0 for the caller to resolve from the device name.
pub fn parse(text: &str) -> Parsed<Neighbour> {
    let mut out = Parsed::default();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(neigh) => out.items.push(neigh),
            Err(e) => out.notes.push(LineNote::new(lineno, e)),
        }
    }
    out
}

fn parse_line(line: &str) -> Result<Neighbour, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let first = words.first().copied().unwrap_or_default();
    let destination: IpAddr = first
        .parse()
        .map_err(|_| format!("not a neighbour entry: {first} is not an address"))?;
    let mut dev = None;
    let mut lladdr = None;
    let mut rest = words[1..].iter().copied();
    while let Some(word) = rest.next() {
        match word {
            "dev" => dev = rest.next().map(str::to_string),
            "lladdr" => {
                let addr = rest.next().ok_or("lladdr without an address")?;
                lladdr = Some(hw_address(addr).ok_or_else(|| format!("bad lladdr {addr}"))?);
            }
            // Values the model does not keep.
            "probes" | "vni" | "protocol" => {
                rest.next();
            }
            // Flags (`router`, `proxy`, `extern_learn`…) and the state words, read below.
            _ => {}
        }
    }
    let dev = dev.ok_or("neighbour entry without a device")?;
    Ok(Neighbour {
        ifindex: 0,
        dev,
        destination,
        lladdr,
        state: nud_state(words.iter().copied().filter(|w| is_nud_state(w))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_neighbours() {
        let parsed = parse(include_str!("testdata/ip-neigh.txt"));
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn every_nud_state() {
        let parsed = parse(include_str!("testdata/ip-neigh-nud-all.txt"));
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn garbage_and_truncated_lines() {
        let parsed = parse(
            "10.0.0.1 dev eth0 lladdr 02:00:00:00:00:01 REACHABLE\nnot an entry\n10.0.0.2 lladdr\n\
             10.0.0.3 dev eth0 lladdr zz STALE\n10.0.0.4 dev",
        );
        assert_eq!(parsed.items.len(), 1);
        insta::assert_yaml_snapshot!(parsed.notes);
    }
}
