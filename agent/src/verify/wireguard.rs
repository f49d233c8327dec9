//! WireGuard on top of any mode: device, routing rule and one peer per remote node with its
//! blocks and tunnel addresses as allowed IPs (shared/reference/calico-dataplane.md §3).

use std::collections::{BTreeSet, HashSet};

use ipnet::IpNet;

use super::{CheckId, Finding, IndexMap, Severity, Skipped};
use crate::{
    desired::expected::{Expected, ExpectedWireguard, WireguardPeer},
    observed::{
        IpRule, ObservedDataplane, Source,
        wireguard::{WgDevice, WgPeer},
    },
};

/// The checks that read the device itself rather than its link, routes and rules.
const DEVICE_CHECKS: &[CheckId] = &[
    CheckId::WireguardPeerMissing,
    CheckId::WireguardAllowedIpsMismatch,
    CheckId::WireguardPeerEndpointMismatch,
    CheckId::WireguardPeerUnexpected,
    CheckId::WireguardListenPortMismatch,
    CheckId::WireguardFwmarkMismatch,
];

pub(super) fn check(
    e: &Expected,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    for wg in e.wireguard.iter().chain(&e.wireguard_v6) {
        check_device(e, wg, obs, out, skipped);
    }
}

fn check_device(
    e: &Expected,
    wg: &ExpectedWireguard,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let dev = wg.device.as_str();
    let v6 = wg.family == 6;
    let Some(link) = obs.link(dev) else {
        out.push(
            Finding::new(CheckId::TunnelMissing, Severity::Critical, dev)
                .expected(format!("WireGuard device {dev} ({})", if v6 { "wireguardEnabledV6" } else { "wireguardEnabled" }))
                .actual("absent")
                .hint("traffic to other nodes leaves unencrypted or not at all; Felix creates it unless the kernel lacks WireGuard: `lsmod | grep wireguard`, calico-node's log"),
        );
        return;
    };
    if !link.is_up() {
        out.push(
            Finding::new(CheckId::TunnelDown, Severity::Critical, dev)
                .expected("up")
                .actual(link.oper_state.clone())
                .hint(format!("`ip link show {dev}`")),
        );
    }
    // A userspace TUN device gets an IPv6 link-local address; Felix's is the global one.
    let addrs: Vec<std::net::IpAddr> = obs
        .addresses_of(dev)
        .map(|a| a.address.addr())
        .filter(|a| match a {
            std::net::IpAddr::V4(_) => !v6,
            std::net::IpAddr::V6(a) => v6 && !a.is_unicast_link_local(),
        })
        .collect();
    let (host, field, family) = if v6 {
        (128, "interfaceIPv6Address", "IPv6")
    } else {
        (32, "interfaceIPv4Address", "IPv4")
    };
    match wg.address {
        Some(want) if addrs != [want] => out.push(
            Finding::new(CheckId::TunnelAddressMismatch, Severity::Critical, dev)
                .expected(format!("{want}/{host} (the node's wireguard.{field})"))
                .actual(if addrs.is_empty() {
                    format!("no {family} address")
                } else {
                    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                })
                .hint(format!("peers route this node's WireGuard traffic to {want}; Felix assigns it on its device check: `ip addr show {dev}`, calico-node's log")),
        ),
        Some(_) => {}
        None if !v6 => super::infer::unaddressed(obs, link, Severity::Critical, out),
        None => {}
    }
    if let Some(want) = wg.mtu
        && link.mtu != want
    {
        out.push(
            Finding::new(CheckId::MtuTunnelMismatch, Severity::Warning, dev)
                .expected(format!("MTU {want}"))
                .actual(format!("MTU {}", link.mtu))
                .hint(if v6 {
                    format!(
                        "Felix sets wireguardMTUV6 (underlay minus 80 when 0): `ip link show {dev}`"
                    )
                } else {
                    format!(
                        "Felix sets wireguardMTU (underlay minus 60 when 0): `ip link show {dev}`"
                    )
                }),
        );
    }
    let rule = rule(wg, obs, out);
    // The kernel withdraws every route through a device that is down or has lost its last
    // address of the family: the finding above is the one cause, not each route.
    if link.is_up() && !addrs.is_empty() {
        table(wg, obs, out);
    }
    let Some(observed) = obs.wireguard.iter().find(|d| d.name == dev) else {
        // The reader says why this device could not be read; without a word from it, what
        // each kind of device needs.
        let unread = obs
            .unavailable
            .iter()
            .find(|u| u.kind == Source::Wireguard && u.source.contains(dev));
        let reason = unread.map_or_else(
            || format!("{dev} not readable (a kernel device over generic netlink needs CAP_NET_ADMIN; a userspace one its UAPI socket)"),
            |u| format!("not observable ({}: {})", u.source, u.reason),
        );
        for id in DEVICE_CHECKS {
            if skipped.iter().any(|s| s.check == *id) {
                continue;
            }
            skipped.push(
                Skipped::new(
                    *id,
                    super::not_run_kind(obs, &[Source::Wireguard]),
                    reason.clone(),
                )
                .missing(unread.map_or("the WireGuard device", |u| u.source.as_str())),
            );
        }
        return;
    };
    device(wg, observed, rule, out);
    peers(e, wg, observed, out);
}

/// Felix's rule: `<priority>: not from all fwmark <mark>/<mark> lookup <table>`. Returns it.
fn rule<'a>(
    wg: &ExpectedWireguard,
    obs: &'a ObservedDataplane,
    out: &mut Vec<Finding>,
) -> Option<&'a IpRule> {
    let at_priority: Vec<&IpRule> = obs
        .rules
        .iter()
        .filter(|r| r.family == wg.family && r.priority == wg.rule_priority)
        .collect();
    let found = at_priority
        .iter()
        .copied()
        .find(|r| r.invert && r.fwmark.is_some() && r.action == "lookup" && r.table == wg.table);
    if found.is_none() {
        let actual = if at_priority.is_empty() {
            format!(
                "{} rule(s), none at priority {}",
                obs.rules.iter().filter(|r| r.family == wg.family).count(),
                wg.rule_priority
            )
        } else {
            at_priority
                .iter()
                .map(|r| r.display())
                .collect::<Vec<_>>()
                .join("; ")
        };
        out.push(
            Finding::new(CheckId::WireguardRuleMissing, Severity::Critical, format!("{} {}", if wg.family == 6 { "ip -6 rule" } else { "ip rule" }, wg.rule_priority))
                .expected(format!("{}: not from all fwmark <wg mark>/<wg mark> lookup {}", wg.rule_priority, wg.table))
                .actual(actual)
                .hint("pod traffic to other nodes skips WireGuard's table and leaves unencrypted: `ip rule`, Felix re-adds the rule on its route resync"),
        );
    }
    found
}

/// WireGuard's table: `<cidr> dev <device> scope link` for every remote peer's CIDR.
fn table(wg: &ExpectedWireguard, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    // Indexed once: thousands of peers, each with its blocks.
    let routed: HashSet<IpNet> = obs
        .routes
        .iter()
        .filter(|r| r.table == wg.table && r.dev.as_deref() == Some(wg.device.as_str()))
        .map(|r| r.destination.trunc())
        .collect();
    for p in &wg.peers {
        for cidr in &p.allowed_ips {
            let want = cidr.trunc();
            if !routed.contains(&want) {
                out.push(
                    Finding::new(CheckId::WireguardRouteMissing, Severity::Critical, want.to_string())
                        .expected(format!("{want} dev {} scope link table {} ({} of {})", wg.device, wg.table, if want.prefix_len() == want.max_prefix_len() { "tunnel address" } else { "block" }, p.node))
                        .actual(format!("no route to {want} through {} in table {}", wg.device, wg.table))
                        .hint(format!("traffic to {want} is not sent through WireGuard (falls through to main, unencrypted, or is dropped): `ip route show table {}`", wg.table)),
                );
            }
        }
    }
}

/// The device's own settings: listening port, and a fwmark its routing rule exempts.
fn device(wg: &ExpectedWireguard, d: &WgDevice, rule: Option<&IpRule>, out: &mut Vec<Finding>) {
    let dev = &wg.device;
    if d.listen_port != Some(wg.listen_port) {
        out.push(
            Finding::new(CheckId::WireguardListenPortMismatch, Severity::Critical, dev.clone())
                .expected(format!("listen port {} (wireguardListeningPort)", wg.listen_port))
                .actual(d.listen_port.map_or_else(|| "no listen port".to_string(), |p| format!("listen port {p}")))
                .hint(format!("the other nodes send to port {} and reach nothing: `wg show {dev} listen-port`; Felix resets it on its device check", wg.listen_port)),
        );
    }
    // The mark's value depends on Felix's version and dataplane; what cannot vary is that the
    // device marks its own UDP packets with the mark the rule exempts, else they loop back
    // into WireGuard's table.
    match (d.fwmark_value(), rule.and_then(|r| r.fwmark)) {
        (None, _) => out.push(
            Finding::new(CheckId::WireguardFwmarkMismatch, Severity::Critical, dev.clone())
                .expected("a fwmark, the one the WireGuard routing rule exempts")
                .actual("fwmark off")
                .hint(format!("the device's encrypted packets match `not fwmark` and are routed back into {dev}: `wg show {dev} fwmark`")),
        ),
        (Some(have), Some(want)) if have & want != want => out.push(
            Finding::new(CheckId::WireguardFwmarkMismatch, Severity::Critical, dev.clone())
                .expected(format!("fwmark 0x{want:x} (the rule's mark)"))
                .actual(format!("fwmark 0x{have:x}"))
                .hint(format!("the device's encrypted packets match `not fwmark` and are routed back into {dev}: `wg show {dev} fwmark`, `ip rule`")),
        ),
        _ => {}
    }
}

/// A peer's subject: its node, and for IPv6 the device too (a node has a peer on each).
fn subject(wg: &ExpectedWireguard, node: &str) -> String {
    if wg.family == 6 {
        format!("{node} ({})", wg.device)
    } else {
        node.to_string()
    }
}

fn peers(e: &Expected, wg: &ExpectedWireguard, observed: &WgDevice, out: &mut Vec<Finding>) {
    let dev = &wg.device;
    // By key, once: one peer per remote node, thousands of them.
    let mut by_key = IndexMap::default();
    for op in &observed.peers {
        by_key.entry(op.public_key.as_str()).or_insert(op);
    }
    for p in &wg.peers {
        let Some(peer) = by_key.get(p.public_key.as_str()).copied() else {
            out.push(
                Finding::new(CheckId::WireguardPeerMissing, Severity::Critical, subject(wg, &p.node))
                    .expected(format!("peer {} (public key from the node's annotation)", p.public_key))
                    .actual(format!("{} peer(s), none with that key", observed.peers.len()))
                    .hint(format!("traffic to {} cannot be encrypted and is dropped; did the node's key change without Felix seeing it? `wg show {dev}`, `kubectl get node {} -o yaml | grep -i wireguard`", p.node, p.node)),
            );
            continue;
        };
        allowed_ips(e, wg, p, peer, out);
        if let Some(want) = &p.endpoint
            && peer.endpoint.as_deref() != Some(want.as_str())
        {
            out.push(
                Finding::new(CheckId::WireguardPeerEndpointMismatch, Severity::Warning, subject(wg, &p.node))
                    .expected(format!("endpoint {want} (the node's IP, this node's listening port)"))
                    .actual(peer.endpoint.as_ref().map_or_else(|| "no endpoint".to_string(), |ep| format!("endpoint {ep}")))
                    .hint(format!("this node cannot start a handshake with {} until it hears from it: `wg show {dev} endpoints`; did the node's address change?", p.node)),
            );
        }
    }
    if !wg.peers_complete {
        return;
    }
    let expected: HashSet<&str> = wg.peers.iter().map(|p| p.public_key.as_str()).collect();
    for op in &observed.peers {
        let known =
            expected.contains(op.public_key.as_str()) || wg.tolerated_keys.contains(&op.public_key);
        if !known {
            out.push(
                Finding::new(CheckId::WireguardPeerUnexpected, Severity::Warning, format!("peer {}", op.public_key))
                    .expected("only peers with a remote node's published key")
                    .actual(format!("peer with endpoint {}, allowed IPs {}", op.endpoint.as_deref().unwrap_or("none"), if op.allowed_ips.is_empty() { "none".to_string() } else { op.allowed_ips.join(",") }))
                    .hint(format!("a removed node or a rotated key Felix did not clean up; its allowed IPs may capture another node's traffic: `wg show {dev}`")),
            );
        }
    }
}

/// A peer's allowed IPs are exactly its node's blocks and tunnel addresses, plus /32s inside
/// the pools (addresses the node borrowed from other blocks, which the datastore's blocks do
/// not attribute to it).
fn allowed_ips(
    e: &Expected,
    wg: &ExpectedWireguard,
    p: &WireguardPeer,
    peer: &WgPeer,
    out: &mut Vec<Finding>,
) {
    let dev = &wg.device;
    let want: BTreeSet<IpNet> = p.allowed_ips.iter().map(IpNet::trunc).collect();
    let have: BTreeSet<IpNet> = peer
        .allowed_ips
        .iter()
        .filter_map(|a| a.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect();
    let missing: Vec<String> = want.difference(&have).map(ToString::to_string).collect();
    // IPv6 pools are not read: any IPv6 host address may be a borrowed one.
    let borrowed = |n: &IpNet| {
        n.prefix_len() == n.max_prefix_len()
            && (matches!(n, IpNet::V6(_))
                || e.pools.iter().any(|pool| IpNet::V4(pool.cidr).contains(n)))
    };
    let extra: Vec<String> = have
        .iter()
        .filter(|n| !want.iter().any(|w| w.contains(*n)) && !borrowed(n))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return;
    }
    let mut actual = Vec::new();
    if !missing.is_empty() {
        actual.push(format!("missing {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        actual.push(format!("also {} (not {}'s)", extra.join(", "), p.node));
    }
    out.push(
        Finding::new(CheckId::WireguardAllowedIpsMismatch, Severity::Critical, subject(wg, &p.node))
            .expected(format!("allowed IPs {}", want.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
            .actual(actual.join("; "))
            .hint(format!("WireGuard drops traffic from {}'s pods in missing ranges and sends extra ranges to the wrong node: `wg show {dev} allowed-ips`", p.node)),
    );
}

#[cfg(test)]
mod tests {
    use crate::{
        desired::expected::{ExpectedWireguard, WireguardPeer},
        observed::{
            IpRule,
            wireguard::{WgDevice, WgPeer},
        },
        verify::{
            CheckId,
            testutil::{healthy, ids, run},
        },
    };

    fn with_wireguard() -> (
        crate::desired::expected::Expected,
        crate::observed::ObservedDataplane,
    ) {
        let (mut e, mut o) = healthy();
        e.wireguard = Some(ExpectedWireguard {
            family: 4,
            device: "wireguard.cali".into(),
            mtu: Some(1440),
            address: Some("10.244.0.3".parse().expect("ip")),
            listen_port: 51820,
            rule_priority: 99,
            table: 1,
            peers: vec![WireguardPeer {
                node: "node-b".into(),
                public_key: "KEYB".into(),
                allowed_ips: vec![
                    "10.244.1.0/26".parse().expect("net"),
                    "10.244.9.1/32".parse().expect("net"),
                ],
                endpoint: Some("10.99.0.12:51820".into()),
            }],
            not_programmed: vec![("node-c".into(), "publishes no WireGuard public key".into())],
            tolerated_keys: Vec::new(),
            peers_complete: true,
        });
        let mut link = o
            .links
            .iter()
            .find(|l| l.name == "eth0")
            .expect("eth0")
            .clone();
        link.name = "wireguard.cali".into();
        link.index = 99;
        link.mtu = 1440;
        link.kind = Some("wireguard".into());
        o.links.push(link);
        o.addresses.push(crate::observed::Address {
            ifindex: 99,
            ifname: "wireguard.cali".into(),
            address: "10.244.0.3/32".parse().expect("net"),
            scope: "global".into(),
        });
        // With WireGuard on, pods get the smallest tunnel MTU (reference §2).
        e.pod_mtu = Some(1440);
        o.links
            .iter_mut()
            .filter(|l| l.name.starts_with("cali"))
            .for_each(|l| l.mtu = 1440);
        o.rules.push(IpRule {
            family: 4,
            priority: 99,
            invert: true,
            source: None,
            destination: None,
            fwmark: Some(0x20_0000),
            fwmask: Some(0x20_0000),
            iif: None,
            oif: None,
            table: 1,
            action: "lookup".into(),
        });
        o.wireguard = vec![WgDevice {
            name: "wireguard.cali".into(),
            listen_port: Some(51820),
            fwmark: Some("0x200000".into()),
            peers: vec![WgPeer {
                public_key: "KEYB".into(),
                endpoint: Some("10.99.0.12:51820".into()),
                // Felix lists the tunnel address inside the block as well; a /32 in a pool
                // may be an address node-b borrowed.
                allowed_ips: vec![
                    "10.244.1.0/26".into(),
                    "10.244.1.0/32".into(),
                    "10.244.9.1/32".into(),
                    "10.244.5.7/32".into(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }];
        for dst in ["10.244.1.0/26", "10.244.9.1/32"] {
            o.routes.push(crate::observed::Route {
                table: 1,
                destination: dst.parse().expect("net"),
                kind: crate::observed::RouteType::Unicast,
                protocol: 80,
                scope: 253,
                gateway: None,
                oif: Some(99),
                dev: Some("wireguard.cali".into()),
                onlink: false,
                metric: 0,
                mtu: None,
                prefsrc: None,
            });
        }
        (e, o)
    }

    #[test]
    fn healthy_wireguard_is_quiet() {
        let (e, o) = with_wireguard();
        assert!(run(&e, &o).findings.is_empty());
    }

    #[test]
    fn wireguard_faults() {
        let (e, mut o) = with_wireguard();
        o.rules.clear();
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardRuleMissing, "ip rule 99".into())]
        );
        let (e, mut o) = with_wireguard();
        o.wireguard[0].peers[0].allowed_ips = vec!["10.244.1.0/32".into(), "10.244.9.1/32".into()];
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::WireguardAllowedIpsMismatch, "node-b".into())]
        );
        assert_eq!(v.findings[0].actual, "missing 10.244.1.0/26");
        // Exactly: another node's block is drift too.
        let (e, mut o) = with_wireguard();
        o.wireguard[0].peers[0]
            .allowed_ips
            .push("172.16.0.0/24".into());
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::WireguardAllowedIpsMismatch, "node-b".into())]
        );
        assert_eq!(v.findings[0].actual, "also 172.16.0.0/24 (not node-b's)");
        let (e, mut o) = with_wireguard();
        o.wireguard[0].peers.clear();
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardPeerMissing, "node-b".into())]
        );
        let (e, mut o) = with_wireguard();
        o.links.retain(|l| l.name != "wireguard.cali");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelMissing, "wireguard.cali".into())]
        );
    }

    #[test]
    fn device_settings_listen_port_and_fwmark() {
        let (e, mut o) = with_wireguard();
        o.wireguard[0].listen_port = Some(51999);
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(
                CheckId::WireguardListenPortMismatch,
                "wireguard.cali".into()
            )]
        );
        assert_eq!(v.findings[0].actual, "listen port 51999");
        let (e, mut o) = with_wireguard();
        o.wireguard[0].fwmark = Some("off".into());
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardFwmarkMismatch, "wireguard.cali".into())]
        );
        let (e, mut o) = with_wireguard();
        o.wireguard[0].fwmark = Some("0x100000".into());
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::WireguardFwmarkMismatch, "wireguard.cali".into())]
        );
        assert_eq!(v.findings[0].expected, "fwmark 0x200000 (the rule's mark)");
        // Another Felix version's mark is fine as long as the rule exempts that one.
        let (e, mut o) = with_wireguard();
        o.wireguard[0].fwmark = Some("0x100000".into());
        o.rules[0].fwmark = Some(0x10_0000);
        o.rules[0].fwmask = Some(0x10_0000);
        assert!(run(&e, &o).findings.is_empty());
    }

    #[test]
    fn peer_endpoint_and_unexpected_peers() {
        let (e, mut o) = with_wireguard();
        o.wireguard[0].peers[0].endpoint = Some("10.99.0.99:51820".into());
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::WireguardPeerEndpointMismatch, "node-b".into())]
        );
        assert_eq!(v.findings[0].severity, crate::verify::Severity::Warning);
        let (e, mut o) = with_wireguard();
        o.wireguard[0].peers.push(WgPeer {
            public_key: "STALE".into(),
            allowed_ips: vec!["10.244.7.0/26".into()],
            ..Default::default()
        });
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardPeerUnexpected, "peer STALE".into())]
        );
        // A node Felix programs no peer for (shared key): its peer is left alone.
        let (mut e, mut o) = with_wireguard();
        e.wireguard.as_mut().expect("wg").tolerated_keys = vec!["STALE".into()];
        o.wireguard[0].peers.push(WgPeer {
            public_key: "STALE".into(),
            ..Default::default()
        });
        assert!(run(&e, &o).findings.is_empty());
        // Without every Node, a peer of no known node may be one of the missing ones.
        let (mut e, mut o) = with_wireguard();
        e.wireguard.as_mut().expect("wg").peers_complete = false;
        o.wireguard[0].peers.push(WgPeer {
            public_key: "OTHER".into(),
            ..Default::default()
        });
        assert!(run(&e, &o).findings.is_empty());
    }

    #[test]
    fn wireguard_table_routes_and_rule_table() {
        let (e, mut o) = with_wireguard();
        o.routes
            .retain(|r| !(r.table == 1 && r.destination.to_string() == "10.244.9.1/32"));
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::WireguardRouteMissing, "10.244.9.1/32".into())]
        );
        assert!(v.findings[0].expected.contains("tunnel address of node-b"));
        let (e, mut o) = with_wireguard();
        o.rules[0].table = 7;
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::WireguardRuleMissing, "ip rule 99".into())]
        );
        assert!(
            v.findings[0].actual.contains("lookup 7"),
            "{}",
            v.findings[0].actual
        );
    }

    #[test]
    fn routes_withdrawn_with_the_address_or_link_are_not_listed_again() {
        let (e, mut o) = with_wireguard();
        o.addresses.retain(|a| a.ifname != "wireguard.cali");
        o.routes.retain(|r| r.table != 1);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelAddressMismatch, "wireguard.cali".into())]
        );
        let (e, mut o) = with_wireguard();
        for l in o.links.iter_mut().filter(|l| l.name == "wireguard.cali") {
            l.admin_up = false;
            l.oper_state = "down".into();
        }
        o.routes.retain(|r| r.table != 1);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelDown, "wireguard.cali".into())]
        );
    }

    #[test]
    fn an_unreadable_device_skips_its_checks_without_findings() {
        let (e, mut o) = with_wireguard();
        o.wireguard.clear();
        o.unavailable.push(crate::observed::Unavailable::new(
            crate::observed::Source::Wireguard,
            "WireGuard generic netlink wireguard.cali",
            "reading WireGuard devices needs CAP_NET_ADMIN in this network namespace",
        ));
        let v = run(&e, &o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        for id in [
            CheckId::WireguardPeerMissing,
            CheckId::WireguardListenPortMismatch,
            CheckId::WireguardPeerUnexpected,
        ] {
            let s = v.skipped.iter().find(|s| s.check == id).expect("skipped");
            assert!(s.reason.contains("CAP_NET_ADMIN"), "{id}: {}", s.reason);
        }
    }

    /// `wg-v6.cali` beside `wireguard.cali`: its own address family, port, table and rule.
    fn with_wireguard_v6() -> (
        crate::desired::expected::Expected,
        crate::observed::ObservedDataplane,
    ) {
        let (mut e, mut o) = with_wireguard();
        e.wireguard_v6 = Some(ExpectedWireguard {
            family: 6,
            device: "wg-v6.cali".into(),
            mtu: Some(1420),
            address: Some("fd00:244::3".parse().expect("ip")),
            listen_port: 51821,
            rule_priority: 99,
            table: 2,
            peers: vec![WireguardPeer {
                node: "node-b".into(),
                public_key: "KEYB6".into(),
                allowed_ips: vec!["fd00:244:1::/122".parse().expect("net")],
                endpoint: Some("[fd00:99::12]:51821".into()),
            }],
            not_programmed: Vec::new(),
            tolerated_keys: Vec::new(),
            peers_complete: true,
        });
        // Pods get the smallest tunnel MTU, IPv6 WireGuard's included.
        e.pod_mtu = Some(1420);
        o.links
            .iter_mut()
            .filter(|l| l.name.starts_with("cali"))
            .for_each(|l| l.mtu = 1420);
        let mut link = o.link("wireguard.cali").expect("wg").clone();
        link.name = "wg-v6.cali".into();
        link.index = 100;
        link.mtu = 1420;
        o.links.push(link);
        for a in ["fd00:244::3/128", "fe80::1/64"] {
            o.addresses.push(crate::observed::Address {
                ifindex: 100,
                ifname: "wg-v6.cali".into(),
                address: a.parse().expect("net"),
                scope: "global".into(),
            });
        }
        let mut rule = o.rules[0].clone();
        rule.family = 6;
        rule.table = 2;
        o.rules.push(rule);
        let mut route = o
            .routes
            .iter()
            .find(|r| r.table == 1)
            .expect("wg route")
            .clone();
        route.table = 2;
        route.destination = "fd00:244:1::/122".parse().expect("net");
        route.dev = Some("wg-v6.cali".into());
        o.routes.push(route);
        o.wireguard.push(WgDevice {
            name: "wg-v6.cali".into(),
            listen_port: Some(51821),
            fwmark: Some("0x200000".into()),
            peers: vec![WgPeer {
                public_key: "KEYB6".into(),
                endpoint: Some("[fd00:99::12]:51821".into()),
                allowed_ips: vec!["fd00:244:1::/122".into(), "fd00:244:1::1/128".into()],
                ..Default::default()
            }],
            ..Default::default()
        });
        (e, o)
    }

    #[test]
    fn ipv6_device_is_checked_on_its_own() {
        let (e, o) = with_wireguard_v6();
        let v = run(&e, &o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        let (e, mut o) = with_wireguard_v6();
        o.rules.retain(|r| r.family != 6);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardRuleMissing, "ip -6 rule 99".into())]
        );
        let (e, mut o) = with_wireguard_v6();
        o.wireguard[1].peers.clear();
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardPeerMissing, "node-b (wg-v6.cali)".into())]
        );
        // Only the link-local address left: Felix's global one is missing.
        let (e, mut o) = with_wireguard_v6();
        o.addresses
            .retain(|a| a.ifname != "wg-v6.cali" || a.address.to_string() == "fe80::1/64");
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::TunnelAddressMismatch, "wg-v6.cali".into())]
        );
        assert_eq!(v.findings[0].actual, "no IPv6 address");
        let (e, mut o) = with_wireguard_v6();
        o.links.retain(|l| l.name != "wg-v6.cali");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelMissing, "wg-v6.cali".into())]
        );
    }

    /// `agent diag` shows each device with its own family's rule and table, not both.
    #[test]
    fn diag_pairs_each_device_with_its_own_rule() {
        let (_, o) = with_wireguard_v6();
        let d = crate::diag::build(&o);
        let rules_of = |dev: &str| {
            let w = d.wireguard.iter().find(|w| w.name == dev).expect(dev);
            (
                w.rules.len(),
                w.rules[0].ends_with(if dev == "wg-v6.cali" {
                    "lookup 2"
                } else {
                    "lookup 1"
                }),
            )
        };
        assert_eq!(rules_of("wireguard.cali"), (1, true), "{:?}", d.wireguard);
        assert_eq!(rules_of("wg-v6.cali"), (1, true), "{:?}", d.wireguard);
        // A table without routes through its device: every candidate rule is shown.
        let (_, mut o) = with_wireguard_v6();
        o.routes.retain(|r| r.table != 2);
        let d = crate::diag::build(&o);
        let v6 = d
            .wireguard
            .iter()
            .find(|w| w.name == "wg-v6.cali")
            .expect("v6");
        assert_eq!(v6.rules.len(), 2, "{v6:?}");
    }

    /// Issue 13 point 4: the device without the node's `interfaceIPv4Address`, or another.
    #[test]
    fn wireguard_device_without_its_address() {
        let (e, mut o) = with_wireguard();
        o.addresses.retain(|a| a.ifname != "wireguard.cali");
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::TunnelAddressMismatch, "wireguard.cali".into())]
        );
        assert_eq!(v.findings[0].actual, "no IPv4 address");
        let (e, mut o) = with_wireguard();
        for a in o
            .addresses
            .iter_mut()
            .filter(|a| a.ifname == "wireguard.cali")
        {
            a.address = "10.244.0.9/32".parse().expect("net");
        }
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelAddressMismatch, "wireguard.cali".into())]
        );
    }

    /// A wireguard.cali MTU below the pods' is drift even with no routes in the input.
    #[test]
    fn wireguard_mtu_below_the_pods_is_a_workload_mismatch_without_routes() {
        let (mut e, mut o) = with_wireguard();
        o.routes.clear();
        e.routes.clear();
        e.pod_mtu = None;
        e.wireguard.as_mut().expect("wg").mtu = None;
        for l in o.links.iter_mut().filter(|l| l.name.starts_with("cali")) {
            l.mtu = 1450;
        }
        let got = ids(&run(&e, &o));
        assert!(
            got.iter()
                .any(|(c, s)| *c == CheckId::MtuWorkloadMismatch && s.starts_with("cali")),
            "{got:?}"
        );
    }
}
