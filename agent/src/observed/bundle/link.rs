//! `ip [-d] link show` and `ip [-4|-6] addr`: one block per interface, a header line
//! (`3: vxlan.calico: <BROADCAST,UP,LOWER_UP> mtu 1450 … state UNKNOWN …`) followed by indented
//! `link/…`, `-d` detail (`vxlan id 4096 local 10.99.0.11 dev eth0 … dstport 4789 nolearning`),
//! `inet`/`inet6` and `valid_lft` lines. `-o` (one line per block, `\` between lines) is
//! accepted too.
//!
//! Peers (`@v0`), masters and VXLAN parents are printed by name; they are kept as names here
//! and turned into indexes once every link of the bundle is known.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::{
    LineNote, Parsed,
    iproute_names::{hw_address, scope_number},
};
use crate::observed::model::{Address, Link, VxlanInfo, scope_name};

/// One interface block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkBlock {
    /// `index`, `link_index`, `controller` and the VXLAN parent index are left for the caller
    /// to resolve from `peer`, `master` and the VXLAN parent's name.
    pub link: Link,
    /// What follows `@` in the header: `if3` (a peer in another namespace), a link name, or
    /// `NONE`.
    pub peer: Option<String>,
    /// `master <name>`.
    pub master: Option<String>,
    /// The block had a `link/…` line (`ip -4 addr` and `ip -6 addr` leave it out).
    pub has_link_line: bool,
    /// Printed with `-d`: the kind and its details are known (`None` kind then means a
    /// physical NIC, not "unknown").
    pub detailed: bool,
    pub addresses: Vec<Address>,
}

/// Words that can start an indented line of a block without being a link kind.
const NOT_A_KIND: &[&str] = &[
    "altname",
    "alias",
    "inet",
    "inet6",
    "valid_lft",
    "prop",
    "vf",
    "addrgenmode",
    "RX:",
    "TX:",
    "RX",
    "TX",
    "cache",
];

pub fn parse(text: &str) -> Parsed<LinkBlock> {
    let mut out: Parsed<LinkBlock> = Parsed::default();
    for (n, line) in split_oneline(text) {
        let lineno = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            match parse_header(&line) {
                Some(Header::Block(block)) => out.items.push(*block),
                Some(Header::OnelineAddress { index, name, rest }) => {
                    // `ip -o addr`: `2: eth0    inet 10.0.0.1/24 …` repeats the index and
                    // name on every address line instead of a full header.
                    if out.items.last().is_none_or(|b| b.link.index != index) {
                        out.items.push(bare_block(index, &name));
                    }
                    if let Some(block) = out.items.last_mut() {
                        address_line(block, &rest, lineno, &mut out.notes);
                    }
                }
                None => out
                    .notes
                    .push(LineNote::new(lineno, "not an interface header")),
            }
            continue;
        }
        let Some(block) = out.items.last_mut() else {
            out.notes
                .push(LineNote::new(lineno, "indented line before any interface"));
            continue;
        };
        let trimmed = line.trim();
        let first = trimmed.split_whitespace().next().unwrap_or_default();
        if let Some(kind) = first.strip_prefix("link/") {
            link_line(block, kind, trimmed, lineno, &mut out.notes);
        } else if first == "inet" || first == "inet6" {
            address_line(block, trimmed, lineno, &mut out.notes);
        } else if block.has_link_line
            && !NOT_A_KIND.contains(&first)
            && !first.starts_with(|c: char| c.is_ascii_digit())
        {
            detail_line(block, trimmed, lineno, &mut out.notes);
        }
    }
    out
}

/// `ip -o` joins a block's lines with `\` and spaces; split them back, keeping line numbers.
fn split_oneline(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.split('\\');
        if let Some(first) = parts.next() {
            out.push((n, first.trim_end().to_string()));
        }
        for part in parts {
            // Each continuation was an indented line.
            out.push((n, format!("    {}", part.trim())));
        }
    }
    out
}

enum Header {
    Block(Box<LinkBlock>),
    OnelineAddress {
        index: u32,
        name: String,
        rest: String,
    },
}

fn bare_block(index: u32, name: &str) -> LinkBlock {
    LinkBlock {
        link: Link {
            index,
            name: name.to_string(),
            kind: None,
            mtu: 0,
            admin_up: false,
            oper_state: "unknown".into(),
            mac: None,
            link_index: None,
            controller: None,
            vxlan: None,
        },
        peer: None,
        master: None,
        has_link_line: false,
        detailed: false,
        addresses: Vec::new(),
    }
}

/// `3: vxlan.calico: <FLAGS> mtu 1450 qdisc noqueue master br0 state UNKNOWN …` or, from
/// `ip -o addr`, `2: eth0    inet …`.
fn parse_header(line: &str) -> Option<Header> {
    let (index, rest) = line.split_once(": ")?;
    let index: u32 = index.trim().parse().ok()?;
    let rest = rest.trim_start();
    let Some((name_part, after)) = rest.split_once(": ") else {
        // No second colon: only the `-o addr` form is valid here.
        let (name, after_name) = rest.split_once(char::is_whitespace)?;
        let address = after_name.trim_start();
        let family = address.split_whitespace().next()?;
        if family != "inet" && family != "inet6" {
            return None;
        }
        return Some(Header::OnelineAddress {
            index,
            name: name.to_string(),
            rest: address.to_string(),
        });
    };
    let after = after.trim_start();
    let flags_end = after.strip_prefix('<')?.find('>')?;
    let flags = &after[1..=flags_end];
    let attrs = &after[flags_end + 2..];
    let (name, peer) = match name_part.split_once('@') {
        Some((n, p)) => (n, Some(p.to_string())),
        None => (name_part, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let mut block = bare_block(index, name);
    block.peer = peer;
    block.link.admin_up = flags.split(',').any(|f| f == "UP");
    let words: Vec<&str> = attrs.split_whitespace().collect();
    for pair in words.windows(2) {
        match pair[0] {
            "mtu" => block.link.mtu = pair[1].parse().unwrap_or(0),
            "state" => block.link.oper_state = pair[1].to_ascii_lowercase(),
            "master" => block.master = Some(pair[1].to_string()),
            _ => {}
        }
    }
    Some(Header::Block(Box::new(block)))
}

/// `link/ether 66:07:02:c1:cc:60 brd ff:ff:ff:ff:ff:ff [link-netns x] [promiscuity 0 …]`.
fn link_line(
    block: &mut LinkBlock,
    kind: &str,
    line: &str,
    lineno: usize,
    notes: &mut Vec<LineNote>,
) {
    block.has_link_line = true;
    let words: Vec<&str> = line.split_whitespace().collect();
    // `promiscuity` is printed only with -d; so is the kind line that may follow.
    if words.contains(&"promiscuity") {
        block.detailed = true;
    }
    if kind == "none" {
        return;
    }
    match words.get(1) {
        Some(addr) if !is_link_attr(addr) => match hw_address(addr) {
            Some(mac) => block.link.mac = Some(mac),
            None => notes.push(LineNote::new(lineno, format!("bad link address {addr}"))),
        },
        _ => {}
    }
}

fn is_link_attr(word: &str) -> bool {
    matches!(
        word,
        "brd" | "peer" | "link-netns" | "link-netnsid" | "promiscuity" | "permaddr"
    )
}

/// The first detail line after `link/…` names the kind (`vxlan id 4096 …`, `veth`, `bridge …`);
/// later ones describe the port of a master (`bridge_slave …`) and are ignored.
fn detail_line(block: &mut LinkBlock, line: &str, lineno: usize, notes: &mut Vec<LineNote>) {
    block.detailed = true;
    if block.link.kind.is_some() {
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(kind) = words.first() else { return };
    if kind.ends_with("_slave") || kind.contains('=') || kind.contains(':') {
        return;
    }
    block.link.kind = Some((*kind).to_string());
    if *kind == "vxlan" {
        block.link.vxlan = Some(vxlan_details(&words[1..], lineno, notes));
    }
}

/// `id 4096 local 10.99.0.11 dev eth0 srcport 0 0 dstport 4789 nolearning ttl auto …`,
/// or `external id 0 …` for a flow-based device.
fn vxlan_details(words: &[&str], lineno: usize, notes: &mut Vec<LineNote>) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: None,
        local: None,
        port: None,
        parent_index: None,
        parent_name: None,
        // The kernel's default; iproute2 prints `nolearning` only when it is off.
        learning: true,
        external: false,
    };
    let mut i = 0;
    while i < words.len() {
        let value = words.get(i + 1).copied();
        let mut bad = |what: &str, v: Option<&str>| {
            notes.push(LineNote::new(
                lineno,
                format!("bad vxlan {what}: {}", v.unwrap_or("(missing)")),
            ));
        };
        match words[i] {
            "id" => match value.and_then(|s| s.parse().ok()) {
                Some(vni) => v.vni = Some(vni),
                None => bad("id", value),
            },
            "local" => match value.map(str::parse::<IpAddr>) {
                Some(Ok(IpAddr::V4(ip))) => v.local = Some(ip),
                // The model (like IFLA_VXLAN_LOCAL) keeps only an IPv4 local address.
                Some(Ok(IpAddr::V6(_))) => {}
                _ => bad("local", value),
            },
            "dstport" | "port" => match value.and_then(|s| s.parse().ok()) {
                Some(port) => v.port = Some(port),
                None => bad("dstport", value),
            },
            "dev" => v.parent_name = value.map(str::to_string),
            "nolearning" => v.learning = false,
            "learning" => v.learning = true,
            "external" => v.external = true,
            _ => {}
        }
        i += match words[i] {
            "id" | "local" | "dstport" | "port" | "dev" => 2,
            _ => 1,
        };
    }
    v
}

/// `inet 10.99.0.11/24 brd 10.99.0.255 scope global eth0`, `inet 10.9.9.1 peer 10.9.9.2/32
/// scope global e1`, `inet6 fe80::1/64 scope link`.
fn address_line(block: &mut LinkBlock, line: &str, lineno: usize, notes: &mut Vec<LineNote>) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(local) = words.get(1) else {
        notes.push(LineNote::new(lineno, "address line without an address"));
        return;
    };
    // On point-to-point links the prefix length is printed after the peer; the interface's
    // own address is the local one, as the live reader keeps it.
    let peer = words.windows(2).find(|w| w[0] == "peer").map(|w| w[1]);
    let address = match parse_address(local, peer) {
        Some(a) => a,
        None => {
            notes.push(LineNote::new(lineno, format!("bad address {local}")));
            return;
        }
    };
    let scope = words
        .windows(2)
        .find(|w| w[0] == "scope")
        .map_or(Some(0), |w| scope_number(w[1]));
    let Some(scope) = scope else {
        notes.push(LineNote::new(lineno, "unknown address scope"));
        return;
    };
    block.addresses.push(Address {
        ifindex: block.link.index,
        ifname: block.link.name.clone(),
        address,
        scope: scope_name(scope),
    });
}

fn parse_address(local: &str, peer: Option<&str>) -> Option<IpNet> {
    let (ip, len) = match local.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (local, peer.and_then(|p| p.split_once('/')).map(|(_, l)| l)),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let len = match len {
        Some(l) => l.parse().ok()?,
        None if ip.is_ipv4() => 32,
        None => 128,
    };
    IpNet::new(ip, len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB_LINKS: &str = include_str!("testdata/ip-d-link-show.txt");
    const KINDS: &str = include_str!("testdata/ip-d-link-show-kinds.txt");
    const LAB_ADDR: &str = include_str!("testdata/ip-addr.txt");
    const ADDR_V4: &str = include_str!("testdata/ip-4-addr.txt");

    #[test]
    fn lab_links_with_details() {
        let parsed = parse(LAB_LINKS);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn bridge_veth_tun_and_external_vxlan() {
        let parsed = parse(KINDS);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn addresses_and_link_headers_from_ip_addr() {
        let parsed = parse(LAB_ADDR);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        insta::assert_yaml_snapshot!(parsed);
    }

    #[test]
    fn ip_4_addr_has_no_link_lines() {
        let parsed = parse(ADDR_V4);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        assert!(
            parsed
                .items
                .iter()
                .all(|b| !b.has_link_line && b.link.mac.is_none())
        );
        let names: Vec<&str> = parsed.items.iter().map(|b| b.link.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "vxlan.calico"]);
        assert_eq!(
            parsed.items[1].addresses[0].address.to_string(),
            "10.99.0.11/24"
        );
    }

    #[test]
    fn oneline_output_reads_like_blocks() {
        let oneline = "3: vxlan.calico: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether 66:07:02:c1:cc:60 brd ff:ff:ff:ff:ff:ff promiscuity 0 \\    vxlan id 4096 local 10.99.0.11 dev eth0 srcport 0 0 dstport 4789 nolearning ttl auto\n\
                       2: eth0    inet 10.99.0.11/24 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        let parsed = parse(oneline);
        assert!(parsed.notes.is_empty(), "{:?}", parsed.notes);
        let vx = &parsed.items[0].link;
        assert_eq!(vx.kind.as_deref(), Some("vxlan"));
        assert_eq!(vx.vxlan.as_ref().and_then(|v| v.vni), Some(4096));
        assert_eq!(parsed.items[1].addresses.len(), 1);
    }

    #[test]
    fn truncated_and_garbage_blocks() {
        let text = "    link/ether 00:11:22:33:44:55\n7: broken\n8: cut@if9: <UP,LOWER_UP> mtu 1400 state UP\n    link/ether zz:zz brd\n    vxlan id x dstport\n    inet 10.0.0.1/99 scope global cut\n    inet6\n9: half: <BROADCAST";
        let parsed = parse(text);
        assert_eq!(parsed.items.len(), 1);
        let cut = &parsed.items[0];
        assert_eq!(cut.link.name, "cut");
        assert_eq!(cut.peer.as_deref(), Some("if9"));
        assert!(cut.link.admin_up);
        insta::assert_yaml_snapshot!(parsed.notes);
    }
}
