//! WireGuard on top of any mode: device, routing rule and one peer per remote node with its
//! blocks and tunnel addresses as allowed IPs (shared/reference/calico-dataplane.md §3).

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{CheckId, Finding, IndexMap, Severity, Skipped};
use crate::{
    desired::expected::Expected,
    observed::{ObservedDataplane, Source},
};

pub(super) fn check(
    e: &Expected,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let Some(wg) = &e.wireguard else { return };
    let dev = wg.device.as_str();
    let Some(link) = obs.link(dev) else {
        out.push(
            Finding::new(CheckId::TunnelMissing, Severity::Critical, dev)
                .expected(format!("WireGuard device {dev} (wireguardEnabled)"))
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
    let addrs: Vec<std::net::IpAddr> = obs
        .addresses_of(dev)
        .map(|a| a.address.addr())
        .filter(std::net::IpAddr::is_ipv4)
        .collect();
    match wg.address {
        Some(want) if addrs != [std::net::IpAddr::V4(want)] => out.push(
            Finding::new(CheckId::TunnelAddressMismatch, Severity::Critical, dev)
                .expected(format!("{want}/32 (the node's wireguard.interfaceIPv4Address)"))
                .actual(if addrs.is_empty() {
                    "no IPv4 address".to_string()
                } else {
                    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                })
                .hint(format!("peers route this node's WireGuard traffic to {want}; Felix assigns it on its device check: `ip addr show {dev}`, calico-node's log")),
        ),
        Some(_) => {}
        None => super::infer::unaddressed(obs, link, Severity::Critical, out),
    }
    if let Some(want) = wg.mtu
        && link.mtu != want
    {
        out.push(
            Finding::new(CheckId::MtuTunnelMismatch, Severity::Warning, dev)
                .expected(format!("MTU {want}"))
                .actual(format!("MTU {}", link.mtu))
                .hint(format!(
                    "Felix sets wireguardMTU (underlay minus 60 when 0): `ip link show {dev}`"
                )),
        );
    }
    let rule = obs.rules.iter().find(|r| {
        r.family == 4
            && r.priority == wg.rule_priority
            && r.invert
            && r.fwmark.is_some()
            && r.action == "lookup"
    });
    if rule.is_none() {
        out.push(
            Finding::new(CheckId::WireguardRuleMissing, Severity::Critical, format!("ip rule {}", wg.rule_priority))
                .expected(format!("{}: not from all fwmark <wg mark>/<wg mark> lookup <wireguard table>", wg.rule_priority))
                .actual(format!("{} rule(s), none at priority {} steering unmarked traffic", obs.rules.iter().filter(|r| r.family == 4).count(), wg.rule_priority))
                .hint("pod traffic to other nodes skips WireGuard's table and leaves unencrypted: `ip rule`, Felix re-adds the rule on its route resync"),
        );
    }
    let Some(observed) = obs.wireguard.iter().find(|d| d.name == dev) else {
        skipped.push(Skipped::new(
            CheckId::WireguardPeerMissing,
            super::not_run_kind(obs, &[Source::Wireguard]),
            format!("peers of {dev} not readable (`wg show {dev} dump` needs wireguard-tools and CAP_NET_ADMIN)"),
        ).missing("wg show"));
        return;
    };
    // By key, once: one peer per remote node, thousands of them.
    let mut by_key = IndexMap::default();
    for op in &observed.peers {
        by_key.entry(op.public_key.as_str()).or_insert(op);
    }
    for p in &wg.peers {
        let Some(peer) = by_key.get(p.public_key.as_str()) else {
            out.push(
                Finding::new(CheckId::WireguardPeerMissing, Severity::Critical, p.node.clone())
                    .expected(format!("peer {} (public key from the node's annotation)", p.public_key))
                    .actual(format!("{} peer(s), none with that key", observed.peers.len()))
                    .hint(format!("traffic to {} cannot be encrypted and is dropped; did the node's key change without Felix seeing it? `wg show {dev}`, `kubectl get node {} -o yaml | grep -i wireguard`", p.node, p.node)),
            );
            continue;
        };
        let want: BTreeSet<IpNet> = p.allowed_ips.iter().map(IpNet::trunc).collect();
        let have: BTreeSet<IpNet> = peer
            .allowed_ips
            .iter()
            .filter_map(|a| a.parse::<IpNet>().ok())
            .map(|n| n.trunc())
            .collect();
        if !want.is_subset(&have) {
            let missing: Vec<String> = want.difference(&have).map(ToString::to_string).collect();
            out.push(
                Finding::new(CheckId::WireguardAllowedIpsMismatch, Severity::Critical, p.node.clone())
                    .expected(format!("allowed IPs include {}", want.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
                    .actual(format!("missing {}", missing.join(", ")))
                    .hint(format!("WireGuard drops traffic from {}'s pods in those ranges: `wg show {dev} allowed-ips`", p.node)),
            );
        }
    }
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
            device: "wireguard.cali".into(),
            mtu: Some(1440),
            address: Some("10.244.0.3".parse().expect("ip")),
            listen_port: 51820,
            rule_priority: 99,
            peers: vec![WireguardPeer {
                node: "node-b".into(),
                public_key: "KEYB".into(),
                allowed_ips: vec!["10.244.1.0/26".parse().expect("net")],
            }],
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
            peers: vec![WgPeer {
                public_key: "KEYB".into(),
                allowed_ips: vec!["10.244.1.0/26".into(), "10.244.1.0/32".into()],
                ..Default::default()
            }],
            ..Default::default()
        }];
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
        o.wireguard[0].peers[0].allowed_ips = vec!["10.244.1.0/32".into()];
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::WireguardAllowedIpsMismatch, "node-b".into())]
        );
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
