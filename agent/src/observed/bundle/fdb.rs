//! `bridge fdb [show]`: `66:89:3a:22:7a:ac dev vxlan.calico dst 10.99.0.12 self permanent`,
//! `02:00:00:00:00:aa dev v0 master br0 static`.
//!
//! `bridge` prints the NUD state as one word: `permanent` (NUD_PERMANENT), `static` (NUD_NOARP),
//! `stale`, or nothing for a learned (reachable) entry; they map back to the names netlink.rs
//! gives.

use super::{LineNote, Parsed, iproute_names::is_ethernet_mac};
use crate::observed::model::FdbEntry;

/// Parses FDB lines. `ifindex` is left 0 for the caller to resolve from the device name.
pub fn parse(text: &str) -> Parsed<FdbEntry> {
    let mut out = Parsed::default();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(entry) => out.items.push(entry),
            Err(e) => out.notes.push(LineNote::new(lineno, e)),
        }
    }
    out
}

fn parse_line(line: &str) -> Result<FdbEntry, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mac = words.first().copied().unwrap_or_default();
    if !is_ethernet_mac(mac) {
        return Err(format!("not an FDB entry: {mac} is not a MAC address"));
    }
    let mut e = FdbEntry {
        ifindex: 0,
        dev: String::new(),
        mac: mac.to_ascii_lowercase(),
        destination: None,
        vni: None,
        port: None,
        controller: None,
        self_entry: false,
        state: "REACHABLE".into(),
    };
    let mut rest = words[1..].iter().copied();
    while let Some(word) = rest.next() {
        let mut value = |what: &str| rest.next().ok_or_else(|| format!("{what} without a value"));
        match word {
            "dev" => e.dev = value("dev")?.to_string(),
            "dst" => {
                let v = value("dst")?;
                e.destination = Some(v.parse().map_err(|_| format!("bad dst address {v}"))?);
            }
            "vni" => {
                let v = value("vni")?;
                e.vni = Some(v.parse().map_err(|_| format!("bad vni {v}"))?);
            }
            "port" => {
                let v = value("port")?;
                e.port = Some(v.parse().map_err(|_| format!("bad port {v}"))?);
            }
            "master" => e.controller = Some(value("master")?.to_string()),
            // Values the model does not keep.
            "vlan" | "src_vni" | "via" | "nhid" => {
                value(word)?;
            }
            "self" => e.self_entry = true,
            "permanent" => e.state = "PERMANENT".into(),
            "static" => e.state = "NOARP".into(),
            "stale" => e.state = "STALE".into(),
            // Flags (`router`, `extern_learn`, `offload`, `sticky`, …).
            _ => {}
        }
    }
    if e.dev.is_empty() {
        return Err("FDB entry without a device".into());
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_fdb() {
        let parsed = parse(include_str!("testdata/bridge-fdb-show.txt"));
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn bridge_ports_and_vxlan_remotes() {
        let parsed = parse(include_str!("testdata/bridge-fdb-bridge.txt"));
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn garbage_and_truncated_lines() {
        let parsed = parse(
            "66:89:3a:22:7a:ac dev vxlan.calico dst 10.99.0.12 self permanent\n\
             garbage\n02:00:00:00:00:01 dev\n02:00:00:00:00:02 dev x dst nope\n02:00:00:00:00:03 vni 1\n",
        );
        assert_eq!(parsed.items.len(), 1);
        insta::assert_yaml_snapshot!(parsed.notes);
    }
}
