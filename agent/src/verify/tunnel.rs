//! Tunnel devices (presence, state, address, VNI/port, parent, MAC, MTU), the VXLAN VTEP
//! ARP/FDB entries for every remote node, and workload MTUs, against the datastore.

use std::net::IpAddr;

use super::{
    CheckId, Finding, IndexMap, Severity, node_ip_link, parent_of, tunnel_mtu_limit, workload_mtu,
};
use crate::{
    desired::expected::{Expected, ExpectedTunnel},
    observed::{FdbEntry, Neighbour, ObservedDataplane, Source},
};

/// Encapsulation overhead per device kind (`int_dataplane.go`).
pub(super) fn overhead(device: &str) -> u32 {
    match device {
        calico_conventions::IPIP => calico_conventions::IPIP_OVERHEAD,
        calico_conventions::VXLAN_V6 => calico_conventions::VXLAN_V6_OVERHEAD,
        d if d.starts_with("wg-") => calico_conventions::WIREGUARD_V6_OVERHEAD,
        d if d.starts_with("wireguard") => calico_conventions::WIREGUARD_OVERHEAD,
        _ => calico_conventions::VXLAN_OVERHEAD,
    }
}

pub(super) fn check(e: &Expected, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    for t in e.vxlan.iter().chain(&e.vxlan_v6).chain(&e.ipip) {
        device(e, t, obs, out);
    }
    for vx in e.vxlan.iter().chain(&e.vxlan_v6) {
        vteps(e, vx, obs, out);
    }
    // The expected pod MTU when the underlay is known, and in any case the MTU of the
    // tunnels as they stand: a workload above either sends what the tunnel cannot carry.
    let in_use = |l: &crate::observed::Link| e.ipip.as_ref().is_some_and(|t| t.device == l.name);
    let observed = tunnel_mtu_limit(obs, in_use);
    // A tunnel whose own MTU is already reported wrong is the one cause: its pods, at the MTU
    // Felix wants, are judged against that, not listed once more each.
    let reported = |dev: &str| {
        out.iter()
            .any(|f| f.check == CheckId::MtuTunnelMismatch && f.subject == dev)
    };
    let limit = match (e.pod_mtu, observed) {
        (Some(want), Some((seen, dev))) if seen < want && !reported(&dev) => {
            Some((seen, format!("{dev}'s MTU")))
        }
        (Some(want), _) => Some((want, "the smallest enabled tunnel MTU".to_string())),
        (None, seen) => seen.map(|(m, dev)| (m, format!("{dev}'s MTU"))),
    };
    if let Some((limit, why)) = limit {
        workload_mtu(obs, limit, &why, out);
    }
}

fn device(e: &Expected, t: &ExpectedTunnel, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let name = t.device.as_str();
    let Some(link) = obs.link(name) else {
        out.push(
            Finding::new(CheckId::TunnelMissing, Severity::Critical, name)
                .expected(format!(
                    "device {name}{}",
                    t.mtu.map(|m| format!(" (MTU {m})")).unwrap_or_default()
                ))
                .actual("absent")
                .hint(format!(
                    "no traffic to other nodes' pods can leave this node; Felix recreates the device within 10 s unless it fails: `kubectl logs -n calico-system ds/calico-node -c calico-node | grep -i {name}`"
                )),
        );
        return;
    };
    if !link.is_up() {
        let withdrawn = e.routes.iter().filter(|r| matches!(&r.target, crate::desired::expected::RouteTarget::Device { device, .. } if device == name)).count();
        out.push(
            Finding::new(CheckId::TunnelDown, Severity::Critical, name)
                .expected("up")
                .actual(format!(
                    "{} (admin {}); the kernel withdrew the {withdrawn} route(s) through it",
                    link.oper_state,
                    if link.admin_up { "up" } else { "down" }
                ))
                .hint(format!(
                    "traffic to other nodes' pods is dropped; Felix sets it up again on its 10 s device check — if it stays down, something keeps downing it: `ip link show {name}`, `journalctl | grep {name}`"
                )),
        );
    }
    // The device's addresses of its own family; Felix keeps IPv6 link-local ones.
    let v6 = t.address.is_some_and(|a| a.is_ipv6()) || name == calico_conventions::VXLAN_V6;
    let addrs: Vec<_> = obs
        .addresses_of(name)
        .map(|a| a.address.addr())
        .filter(|a| match a {
            IpAddr::V4(_) => !v6,
            IpAddr::V6(ip) => v6 && !ip.is_unicast_link_local(),
        })
        .collect();
    if t.address.is_none() {
        // No address in the datastore (or no Node for this node): Felix still always gives
        // vxlan.calico one.
        super::infer::unaddressed(obs, link, Severity::Critical, out);
    }
    if let Some(want) = t.address
        && addrs != [want]
    {
        let in_blocks = addrs
            .iter()
            .all(|a| e.local_blocks.iter().any(|b| b.contains(a)));
        let (host, family) = if want.is_ipv6() {
            (128, "IPv6")
        } else {
            (32, "IPv4")
        };
        out.push(
            Finding::new(CheckId::TunnelAddressMismatch, Severity::Critical, name)
                .expected(format!("{want}/{host} (the node's tunnel address)"))
                .actual(if addrs.is_empty() {
                    format!("no {family} address")
                } else {
                    format!(
                        "{}{}",
                        addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        if in_blocks { "" } else { " (outside this node's blocks)" }
                    )
                })
                .hint(format!(
                    "remote nodes route this node's pods via {want}; replies from this node leave with the wrong source. Felix keeps only its own address: check calico-node's log, `ip addr show {name}`"
                )),
        );
    }
    // An MTU derived from an underlay the input lacks is unknown: verify::partial lists the
    // check as not observable instead.
    if let Some(want) = t.mtu
        && link.mtu != want
    {
        let from = match e.host_mtu {
            Some(host) if host.saturating_sub(overhead(name)) == want => {
                format!("underlay MTU {host} minus {}", overhead(name))
            }
            _ => "configured".into(),
        };
        out.push(
            Finding::new(CheckId::MtuTunnelMismatch, Severity::Warning, name)
                .expected(format!("MTU {want} ({from})"))
                .actual(format!("MTU {}", link.mtu))
                .hint(format!(
                    "a tunnel MTU above what the underlay carries drops large packets; below it wastes throughput. Felix resets it on its 10 s device check; if it flips back, another agent sets it: `ip link show {name}`"
                )),
        );
    }
    if let Some(parent) = parent_of(obs, link).or_else(|| node_ip_link(e, obs))
        && let Some(mtu) = t.mtu
        && mtu + overhead(name) > parent.mtu
    {
        out.push(
            Finding::new(CheckId::MtuUnderlayTooSmall, Severity::Warning, name)
                .expected(format!("{name} MTU {mtu} + {} ≤ {} MTU {}", overhead(name), parent.name, parent.mtu))
                .actual(format!("{} > {}", mtu + overhead(name), parent.mtu))
                .hint("the configured tunnel MTU does not fit the underlay: lower vxlanMTU/ipipMTU/wireguardMTU in FelixConfiguration (or leave it 0 for auto-detection)"),
        );
    }
    if let (Some(vx), Some(want_vni)) = (&link.vxlan, t.vni) {
        if vx.vni != Some(want_vni) || vx.port != t.port {
            out.push(
                Finding::new(CheckId::TunnelVniMismatch, Severity::Critical, name)
                    .expected(format!("VNI {want_vni}, port {}", t.port.unwrap_or(4789)))
                    .actual(format!(
                        "VNI {}, port {}",
                        vx.vni.map_or_else(|| "?".into(), |v| v.to_string()),
                        vx.port.map_or_else(|| "?".into(), |p| p.to_string())
                    ))
                    .hint("other nodes encapsulate with the configured VNI/port, so this node drops their packets; Felix recreates an incompatible device: check FelixConfiguration vxlanVNI/vxlanPort"),
            );
        }
        if let Some(local) = t.local {
            // `ip -d link` shows the IPv4 `local` only; an IPv6 VTEP is judged by its parent.
            if vx
                .local
                .map(IpAddr::V4)
                .is_some_and(|l| l.is_ipv4() == local.is_ipv4() && l != local)
            {
                out.push(
                    Finding::new(CheckId::TunnelParentMismatch, Severity::Critical, name)
                        .expected(format!("local {local} (the node's IP)"))
                        .actual(format!("local {}", vx.local.map_or_else(|| "?".into(), |l| l.to_string())))
                        .hint("the VTEP sends from an address other nodes do not expect (their FDB points at the node IP): check the node's IP autodetection (IP_AUTODETECTION_METHOD)"),
                );
            } else if let Some(parent) = parent_of(obs, link)
                && !obs.unavailable.iter().any(|u| u.kind == Source::Addresses)
            {
                // Which device holds the node IP needs the addresses; the VTEP's own
                // `local` above needs only `ip -d link`.
                let carries = obs
                    .addresses_of(&parent.name)
                    .any(|a| a.address.addr() == local);
                if !carries {
                    out.push(
                        Finding::new(CheckId::TunnelParentMismatch, Severity::Critical, name)
                            .expected(format!("bound to the device holding {local}"))
                            .actual(format!("bound to {}, which does not hold {local}", parent.name))
                            .hint(format!("the VTEP is bound to the wrong NIC: check IP_AUTODETECTION_METHOD and `ip -d link show {name}`")),
                    );
                }
            }
        }
    }
    if let Some(mac) = &t.mac
        && link.mac.as_deref() != Some(mac.as_str())
    {
        out.push(
            Finding::new(CheckId::VxlanMacMismatch, Severity::Critical, name)
                .expected(format!("MAC {mac}"))
                .actual(format!("MAC {}", link.mac.as_deref().unwrap_or("none")))
                .hint(format!("other nodes' ARP/FDB entries point at the expected MAC, so they cannot reach this VTEP; Felix recreates the device: `ip link show {name}`")),
        );
    }
}

fn vteps(e: &Expected, vx: &ExpectedTunnel, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let dev = vx.device.as_str();
    if obs.link(dev).is_none_or(|l| !l.is_up()) {
        // The kernel flushes a down device's neighbours; tunnel.missing/down say why.
        return;
    }
    let Some(index) = obs.link(dev).map(|l| l.index) else {
        return;
    };
    // Indexed once (by the device's ifindex, not its name): thousands of VTEPs must not mean
    // thousands of scans.
    let neighbours: IndexMap<IpAddr, &Neighbour> = obs
        .neighbours
        .iter()
        .filter(|n| n.ifindex == index)
        .map(|n| (n.destination, n))
        .collect();
    let mut fdb_by_mac: IndexMap<&str, Vec<&FdbEntry>> = IndexMap::default();
    for f in obs.fdb.iter().filter(|f| f.ifindex == index) {
        fdb_by_mac.entry(f.mac.as_str()).or_default().push(f);
    }
    // Each device carries the VTEPs of its own family.
    let v6 = dev == calico_conventions::VXLAN_V6;
    for v in e.vteps.iter().filter(|v| v.tunnel_ip.is_ipv6() == v6) {
        let neigh = neighbours.get(&v.tunnel_ip).copied();
        let (entry, ip_cmd) = if v6 {
            ("NDP", "ip -6 neigh")
        } else {
            ("ARP", "ip neigh")
        };
        match neigh {
            None => out.push(
                Finding::new(CheckId::VxlanNeighMissing, Severity::Critical, v.tunnel_ip.to_string())
                    .expected(format!("{} dev {dev} lladdr {} PERMANENT (VTEP of {})", v.tunnel_ip, v.mac, v.node))
                    .actual(format!("no {entry} entry"))
                    .hint(format!(
                        "{dev} does not learn: without this entry packets to {}'s pods are dropped. Felix rewrites it on its 90 s resync: `{ip_cmd} show dev {dev}`",
                        v.node
                    )),
            ),
            Some(n) if n.lladdr.as_deref() != Some(v.mac.as_str()) => out.push(
                Finding::new(CheckId::VxlanMacMismatch, Severity::Critical, v.tunnel_ip.to_string())
                    .expected(format!("lladdr {} (VTEP of {})", v.mac, v.node))
                    .actual(format!("lladdr {} {}", n.lladdr.as_deref().unwrap_or("none"), n.state))
                    .hint(format!("frames for {} go to a MAC no VTEP owns: `{ip_cmd} show {} dev {dev}`", v.node, v.tunnel_ip)),
            ),
            Some(_) => {}
        }
        let fdb = fdb_by_mac
            .get(v.mac.as_str())
            .map_or(&[][..], Vec::as_slice);
        if !fdb.iter().any(|f| f.destination == Some(v.node_ip)) {
            out.push(
                Finding::new(CheckId::VxlanFdbMissing, Severity::Critical, v.mac.clone())
                    .expected(format!("{} dev {dev} dst {} self permanent (VTEP of {})", v.mac, v.node_ip, v.node))
                    .actual(if fdb.is_empty() {
                        "no FDB entry".into()
                    } else {
                        fdb.iter().map(|f| format!("dst {}", f.destination.map_or_else(|| "none".into(), |d| d.to_string()))).collect::<Vec<_>>().join(", ")
                    })
                    .hint(format!(
                        "the kernel does not know where to send {}'s VTEP frames, so they are dropped; Felix rewrites the FDB on its 90 s resync: `bridge fdb show dev {dev}`",
                        v.node
                    )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testutil::{expected_from, healthy, ids, run};

    #[test]
    fn missing_and_down_tunnel() {
        let (e, mut o) = healthy();
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| {
                l.admin_up = false;
                l.oper_state = "down".into();
            });
        // The kernel withdraws the routes and ARP entries of a down device.
        o.routes
            .retain(|r| r.dev.as_deref() != Some("vxlan.calico"));
        o.neighbours.clear();
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelDown, "vxlan.calico".into())]
        );
        o.links.retain(|l| l.name != "vxlan.calico");
        o.addresses.retain(|a| a.ifname != "vxlan.calico");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelMissing, "vxlan.calico".into())]
        );
    }

    #[test]
    fn tunnel_address_outside_blocks() {
        let (e, mut o) = healthy();
        let a = o
            .addresses
            .iter_mut()
            .find(|a| a.ifname == "vxlan.calico")
            .expect("addr");
        a.address = "10.244.200.1/32".parse().expect("net");
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::TunnelAddressMismatch, "vxlan.calico".into())]
        );
        assert!(v.findings[0].actual.contains("outside this node's blocks"));
    }

    #[test]
    fn mtus() {
        let (e, mut o) = healthy();
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.mtu = 1500);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::MtuTunnelMismatch, "vxlan.calico".into())]
        );
        let (e, mut o) = healthy();
        let veth = e.workloads[0].iface.clone();
        o.links
            .iter_mut()
            .filter(|l| l.name == veth)
            .for_each(|l| l.mtu = 1500);
        assert_eq!(ids(&run(&e, &o)), [(CheckId::MtuWorkloadMismatch, veth)]);
        // A configured MTU too large for the underlay.
        let (mut e, mut o) = healthy();
        e.vxlan.as_mut().expect("vxlan").mtu = Some(1480);
        e.pod_mtu = Some(1480);
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.mtu = 1480);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::MtuUnderlayTooSmall, "vxlan.calico".into())]
        );
    }

    /// Issue 13 point 3: without the underlay's link the expected tunnel MTU is unknown:
    /// listed as not observable, never measured against Felix's 1460 fallback.
    #[test]
    fn an_unknown_underlay_mtu_is_not_a_finding() {
        let (_, mut o) = healthy();
        o.links.retain(|l| l.name != "eth0" && l.name != "lo");
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.mtu = 1500);
        let lab = include_str!("testdata/datastore-lab.yaml");
        let e = expected_from(lab, Some("node-a"));
        // expected_from reads the healthy links; recompute from these partial ones.
        let mut ds = crate::desired::Datastore::default();
        crate::desired::files::load_text(&mut ds, "lab.yaml", lab).expect("lab");
        let partial = crate::desired::expected::compute(
            &ds,
            Some("node-a"),
            &crate::analysis::host_facts(&o),
        )
        .expect("expected");
        assert_eq!(partial.host_mtu, None);
        let v = run(&partial, &o);
        assert!(
            !ids(&v)
                .iter()
                .any(|(c, _)| *c == CheckId::MtuTunnelMismatch),
            "{:?}",
            v.findings
        );
        let s = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::MtuTunnelMismatch)
            .expect("listed as not run");
        assert_eq!(
            (s.kind, s.missing.as_str()),
            (crate::verify::NotRun::NotInInput, "the underlay link")
        );
        // With the underlay in the input, the same MTU is a finding.
        assert_eq!(e.host_mtu, Some(1500));
        let (_, mut o) = healthy();
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.mtu = 1500);
        assert!(ids(&run(&e, &o)).contains(&(CheckId::MtuTunnelMismatch, "vxlan.calico".into())));
    }

    /// Issue 13 point 4: vxlan.calico without any address, where Felix always assigns one.
    #[test]
    fn vxlan_without_any_address() {
        let (e, mut o) = healthy();
        o.addresses.retain(|a| a.ifname != "vxlan.calico");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::TunnelAddressMismatch, "vxlan.calico".into())]
        );
        // The datastore gives none (the Node lacks ipv4VXLANTunnelAddr): still reported.
        let mut e2 = e.clone();
        e2.vxlan.as_mut().expect("vxlan").address = None;
        let v = run(&e2, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::TunnelAddressMismatch, "vxlan.calico".into())]
        );
        assert_eq!(v.findings[0].actual, "no IPv4 address");
        // Without a datastore: reported too (a warning).
        let v = crate::verify::testutil::run_inferred(&o);
        assert_eq!(
            ids(&v),
            [(CheckId::TunnelAddressMismatch, "vxlan.calico".into())]
        );
        assert_eq!(v.findings[0].severity, Severity::Warning);
        // The eBPF dataplane's flow-based device legitimately has none.
        o.links
            .iter_mut()
            .filter_map(|l| l.vxlan.as_mut())
            .for_each(|v| v.external = true);
        assert!(
            crate::verify::testutil::run_inferred(&o)
                .findings
                .is_empty()
        );
        // The address itself is judged only when addresses are in the input.
        let (e, mut o) = healthy();
        o.addresses.clear();
        o.unavailable.push(crate::observed::Unavailable::new(
            crate::observed::Source::Addresses,
            "ip addr",
            "not in the bundle",
        ));
        assert!(
            !ids(&run(&e, &o))
                .iter()
                .any(|(c, _)| *c == CheckId::TunnelAddressMismatch)
        );
    }

    /// Issue 13 point 1: a Node and `ip -d link` without addresses or links of the underlay:
    /// the VTEP's local address against the Node's address.
    #[test]
    fn a_node_without_links_checks_the_vteps_local_address() {
        let lab = include_str!("testdata/datastore-lab.yaml");
        let nodes: String = lab
            .split("---")
            .filter(|d| d.contains("kind: Node"))
            .collect::<Vec<_>>()
            .join("---");
        let e = expected_from(&nodes, Some("node-a"));
        let (_, mut o) = healthy();
        o.addresses.clear();
        o.unavailable.push(crate::observed::Unavailable::new(
            crate::observed::Source::Addresses,
            "ip addr",
            "not in the bundle",
        ));
        let parent = |v: &crate::verify::Verification| {
            ids(v)
                .into_iter()
                .filter(|(c, _)| *c == CheckId::TunnelParentMismatch)
                .collect::<Vec<_>>()
        };
        assert_eq!(parent(&run(&e, &o)), []);
        o.links
            .iter_mut()
            .filter_map(|l| l.vxlan.as_mut())
            .for_each(|v| v.local = Some("10.99.0.99".parse().expect("ip")));
        assert_eq!(
            parent(&run(&e, &o)),
            [(CheckId::TunnelParentMismatch, "vxlan.calico".into())]
        );
    }

    #[test]
    fn vni_parent_and_mac() {
        let (e, mut o) = healthy();
        let l = o
            .links
            .iter_mut()
            .find(|l| l.name == "vxlan.calico")
            .expect("vxlan");
        l.vxlan.as_mut().expect("info").vni = Some(1);
        l.mac = Some("66:00:00:00:00:01".into());
        l.vxlan.as_mut().expect("info").local = Some("10.99.0.99".parse().expect("ip"));
        assert_eq!(
            ids(&run(&e, &o)),
            [
                (CheckId::TunnelVniMismatch, "vxlan.calico".into()),
                (CheckId::TunnelParentMismatch, "vxlan.calico".into()),
                (CheckId::VxlanMacMismatch, "vxlan.calico".into()),
            ]
        );
    }

    #[test]
    fn bpf_mode_configured_but_not_in_use() {
        let (mut e, o) = healthy();
        e.bpf = true;
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::DataplaneModeMismatch, "bpfEnabled".into())]
        );
        // With Calico's eBPF maps pinned, the configured mode is the one in use.
        let mut o = o;
        o.calico_bpf_pins = vec!["cali_v4_ct4".into()];
        assert!(
            !ids(&run(&e, &o))
                .iter()
                .any(|(c, _)| *c == CheckId::DataplaneModeMismatch)
        );
    }

    #[test]
    fn vtep_arp_and_fdb() {
        let (e, mut o) = healthy();
        o.neighbours.clear();
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::VxlanNeighMissing, "10.244.1.0".into())]
        );
        let (e, mut o) = healthy();
        o.fdb.clear();
        let mac = e.vteps[0].mac.clone();
        assert_eq!(ids(&run(&e, &o)), [(CheckId::VxlanFdbMissing, mac)]);
        let (e, mut o) = healthy();
        o.neighbours[0].lladdr = Some("66:00:00:00:00:02".into());
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::VxlanMacMismatch, "10.244.1.0".into())]
        );
    }
}
