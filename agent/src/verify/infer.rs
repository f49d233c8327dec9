//! Checks that need no datastore: what is wrong on any Calico node whatever its configuration,
//! inferred from the node's own devices, routes, ARP and FDB entries. Where the node alone
//! cannot tell drift from a legitimate configuration, the finding is `info`.

use std::{collections::BTreeSet, net::IpAddr};

use super::{
    CheckId, Finding, IndexMap, IndexSet, Severity, parent_of, present_tunnels, tunnel::overhead,
    workload_mtu,
};
use calico_conventions::{IPIP, PROTO_BIRD, PROTO_CALICO, VXLAN_V4, VXLAN_V6};

use crate::observed::{FdbEntry, Neighbour, ObservedDataplane, RouteType, TABLE_MAIN};

/// The checks this module can make without a datastore.
pub(super) const CHECKS: &[CheckId] = &[
    CheckId::TunnelDown,
    CheckId::TunnelAddressMismatch,
    CheckId::MtuTunnelMismatch,
    CheckId::MtuUnderlayTooSmall,
    CheckId::MtuWorkloadMismatch,
    CheckId::VxlanNeighMissing,
    CheckId::VxlanFdbMissing,
    CheckId::RouteMissing,
    CheckId::RouteWrongDevice,
];

pub(super) fn check(obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    tunnels(obs, out);
    workloads(obs, out);
    for dev in [VXLAN_V4, VXLAN_V6] {
        vxlan_next_hops(obs, dev, out);
    }
    tunnel_addresses(obs, out);
}

fn tunnels(obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    for t in present_tunnels(obs) {
        // tunl0 exists whenever the ipip module is loaded; unaddressed, it is not Calico's.
        if t.name == IPIP && obs.addresses_of(IPIP).next().is_none() {
            continue;
        }
        unaddressed(obs, t, Severity::Warning, out);
        if !t.is_up() {
            out.push(
                Finding::new(CheckId::TunnelDown, Severity::Critical, t.name.clone())
                    .expected("up")
                    .actual(format!("{} (admin {})", t.oper_state, if t.admin_up { "up" } else { "down" }))
                    .hint(format!("traffic to other nodes' pods through {} is dropped and its routes are withdrawn: `ip link show {}`", t.name, t.name)),
            );
        }
        if let Some(parent) = parent_of(obs, t) {
            let oh = overhead(&t.name);
            if t.mtu + oh < parent.mtu {
                // Felix's auto-detected MTU is exactly the parent's minus the overhead; a
                // lower one is legitimate only if configured, which only the datastore says.
                out.push(
                    Finding::new(CheckId::MtuTunnelMismatch, Severity::Info, t.name.clone())
                        .expected(format!("MTU {} ({} MTU {} minus {oh}, Felix's auto-detection), unless configured lower", parent.mtu - oh, parent.name, parent.mtu))
                        .actual(format!("MTU {}", t.mtu))
                        .hint("fine if FelixConfiguration sets vxlanMTU/ipipMTU to this value; otherwise pods get a smaller MTU than the network allows. Run with --datastore to tell"),
                );
            }
            if t.mtu + oh > parent.mtu {
                out.push(
                    Finding::new(CheckId::MtuUnderlayTooSmall, Severity::Warning, t.name.clone())
                        .expected(format!("{} MTU ≤ {} ({} MTU {} minus {oh})", t.name, parent.mtu.saturating_sub(oh), parent.name, parent.mtu))
                        .actual(format!("MTU {}", t.mtu))
                        .hint("encapsulated packets exceed the underlay MTU and are dropped or fragmented: set the tunnel MTU to the underlay's minus the overhead (FelixConfiguration vxlanMTU/ipipMTU, 0 = auto)"),
                );
            }
        }
    }
}

/// Felix always puts an address on vxlan.calico (the node's VXLAN tunnel address; only the
/// eBPF dataplane's flow-based device may go without, reference §1.3), on vxlan-v6.calico (its
/// IPv6 one, §1.9; the kernel's link-local address does not count) and on wireguard.cali
/// (`interfaceIPv4Address`, or the node IP with host encryption, §3). Without one, traffic
/// from this host to remote pods has no source the other nodes route back. tunl0 exists
/// whenever the ipip module is loaded and is Calico's only when addressed, so it is not judged.
pub(super) fn unaddressed(
    obs: &ObservedDataplane,
    t: &crate::observed::Link,
    severity: Severity,
    out: &mut Vec<Finding>,
) {
    let v6 = t.name == VXLAN_V6;
    let always_addressed = v6 || t.name == VXLAN_V4 || t.name == calico_conventions::WIREGUARD_V4;
    let flow_based = t.vxlan.as_ref().is_some_and(|v| v.external);
    if !always_addressed
        || flow_based
        || !t.is_up()
        || obs.addresses_of(&t.name).any(|a| match a.address.addr() {
            IpAddr::V4(_) => !v6,
            IpAddr::V6(a) => v6 && !a.is_unicast_link_local(),
        })
    {
        return;
    }
    let (family, host) = if v6 { ("IPv6", 128) } else { ("IPv4", 32) };
    out.push(
        Finding::new(CheckId::TunnelAddressMismatch, severity, t.name.clone())
            .expected(format!("an {family} /{host} on {} (Felix always assigns the node's tunnel address)", t.name))
            .actual(format!("no {family} address"))
            .hint(format!("remote nodes cannot route replies to this host's traffic through the tunnel; calico-node allocates the address and Felix assigns it: `ip addr show {}`, `calicoctl get node $(hostname) -o yaml | grep -i tunnel`", t.name)),
    );
}

fn workloads(obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    if let Some((limit, dev)) = super::tunnel_mtu_limit(obs, |_| false) {
        workload_mtu(obs, limit, &format!("{dev}'s MTU"), out);
    }
}

/// Every route through vxlan.calico needs a permanent ARP entry for its next hop and an FDB
/// entry for that MAC; every complete VTEP needs a route through it. The same for
/// vxlan-v6.calico with NDP entries (Felix's IPv6 VTEP manager programs both, §1.9).
fn vxlan_next_hops(obs: &ObservedDataplane, dev: &str, out: &mut Vec<Finding>) {
    let Some(vx) = obs.link(dev).filter(|l| l.is_up()) else {
        return;
    };
    let arp = if dev == VXLAN_V6 { "NDP" } else { "ARP" };
    // Indexed once (the first entry wins, as a scan would find it): thousands of VTEPs must
    // not mean thousands of scans of every neighbour, FDB entry and route.
    let mut neighbours: IndexMap<IpAddr, &Neighbour> = IndexMap::default();
    for n in obs.neighbours.iter().filter(|n| n.dev == vx.name) {
        neighbours.entry(n.destination).or_insert(n);
    }
    let mut fdb: IndexMap<&str, &FdbEntry> = IndexMap::default();
    for f in obs
        .fdb
        .iter()
        .filter(|f| f.dev == vx.name && f.destination.is_some())
    {
        fdb.entry(f.mac.as_str()).or_insert(f);
    }
    let neigh_of = |ip: IpAddr| neighbours.get(&ip).copied();
    let fdb_of = |mac: &str| fdb.get(mac).copied();
    let main = || obs.routes.iter().filter(|r| r.table == TABLE_MAIN);
    let tunnel_route_to: IndexSet<IpAddr> = main()
        .filter(|r| r.dev.as_deref() == Some(dev))
        .map(|r| r.destination.addr())
        .collect();
    let any_route_via: IndexSet<IpAddr> = main().filter_map(|r| r.gateway).collect();
    let via_tunnel = obs
        .routes
        .iter()
        .filter(|r| r.table == TABLE_MAIN && r.dev.as_deref() == Some(dev));
    let mut gateways = BTreeSet::new();
    for r in via_tunnel {
        if let Some(gw) = r.gateway {
            gateways.insert(gw);
        }
    }
    for gw in &gateways {
        match neigh_of(*gw).and_then(|n| n.lladdr.as_deref().map(|m| (n, m))) {
            None => out.push(
                Finding::new(CheckId::VxlanNeighMissing, Severity::Critical, gw.to_string())
                    .expected(format!("a permanent {arp} entry for {gw} on {dev} (routes use it as next hop)"))
                    .actual(format!("no {arp} entry"))
                    .hint(format!("{dev} does not learn, so packets via {gw} are dropped; Felix rewrites it on its 90 s resync: `ip neigh show dev {dev}`")),
            ),
            Some((_, mac)) if fdb_of(mac).is_none() => out.push(
                Finding::new(CheckId::VxlanFdbMissing, Severity::Critical, mac.to_string())
                    .expected(format!("{mac} dev {dev} dst <node IP> self permanent (VTEP behind {gw})"))
                    .actual("no FDB entry")
                    .hint(format!("the kernel does not know which node owns {mac}; Felix rewrites the FDB on its 90 s resync: `bridge fdb show dev {dev}`")),
            ),
            Some(_) => {}
        }
    }
    let vtep_nodes: BTreeSet<IpAddr> = obs
        .fdb
        .iter()
        .filter(|f| f.dev == vx.name)
        .filter_map(|f| f.destination)
        .collect();
    for n in obs
        .neighbours
        .iter()
        .filter(|n| n.dev == vx.name && n.is_permanent())
    {
        let complete = n.lladdr.as_deref().is_some_and(|m| fdb_of(m).is_some());
        let node_ip = n
            .lladdr
            .as_deref()
            .and_then(fdb_of)
            .and_then(|f| f.destination);
        // A route via the peer's node IP instead is reported as route.wrong-device below.
        let routed = gateways.contains(&n.destination)
            || tunnel_route_to.contains(&n.destination)
            || node_ip.is_some_and(|ip| any_route_via.contains(&ip));
        if complete && !routed {
            out.push(
                Finding::new(CheckId::RouteMissing, Severity::Warning, format!("via {}", n.destination))
                    .expected(format!("at least one route via {} dev {dev} (the remote node's block)", n.destination))
                    .actual(format!("a programmed VTEP ({arp} + FDB) with no route through it"))
                    .hint(format!("the remote node's block route is gone, so its pods are unreachable from here; with the datastore (--datastore) the exact block is named: `ip route | grep {dev}`")),
            );
        }
    }
    for r in obs
        .routes
        .iter()
        .filter(|r| r.table == TABLE_MAIN && r.kind == RouteType::Unicast)
    {
        let Some(gw) = r.gateway else { continue };
        let felix_shaped = r.protocol == PROTO_CALICO || r.protocol == PROTO_BIRD;
        if vtep_nodes.contains(&gw)
            && r.dev.as_deref() != Some(dev)
            && !felix_shaped
            && r.destination.prefix_len() > 0
        {
            let subject = crate::observed::host_or_net(&r.destination);
            out.push(
                Finding::new(CheckId::RouteWrongDevice, Severity::Warning, subject.clone())
                    .expected(format!("{subject} through {dev} ({gw} is a VXLAN peer, and CrossSubnet routes carry proto 80)"))
                    .actual(r.display())
                    .hint(format!("traffic to {subject} bypasses the tunnel and the peer drops it unencapsulated: who added it? `ip -d route show {subject}`")),
            );
        }
    }
}

/// A tunnel address should come from one of this node's blocks (the blackholed ones) of its
/// family. A borrowed tunnel address is legitimate but rare, so this is only `info` without the
/// datastore.
fn tunnel_addresses(obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let blocks: Vec<_> = obs
        .routes
        .iter()
        .filter(|r| {
            r.table == TABLE_MAIN
                && r.kind == RouteType::Blackhole
                && (r.protocol == PROTO_CALICO || r.protocol == PROTO_BIRD)
        })
        .map(|r| r.destination)
        .collect();
    for (dev, v6) in [(VXLAN_V4, false), (IPIP, false), (VXLAN_V6, true)] {
        let own: Vec<_> = blocks.iter().filter(|b| b.addr().is_ipv6() == v6).collect();
        if own.is_empty() {
            continue;
        }
        let addresses = obs.addresses_of(dev).filter(|a| match a.address.addr() {
            IpAddr::V4(_) => !v6,
            IpAddr::V6(a) => v6 && !a.is_unicast_link_local(),
        });
        for a in addresses {
            if !own.iter().any(|b| b.contains(&a.address.addr())) {
                out.push(
                    Finding::new(CheckId::TunnelAddressMismatch, Severity::Info, dev)
                        .expected(format!("an address inside this node's blocks ({})", own.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
                        .actual(a.address.to_string())
                        .hint("either borrowed from another node's block (legitimate) or not the node's tunnel address; run with --datastore to tell: `calicoctl get node $(hostname) -o yaml | grep -i tunnel`"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        observed::{Source, Unavailable},
        verify::{
            CheckId, Severity,
            testutil::{healthy, ids, route_mut, run_inferred},
        },
    };

    #[test]
    fn healthy_node_is_quiet_without_datastore() {
        let (_, o) = healthy();
        let v = run_inferred(&o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert!(
            v.skipped.iter().any(
                |s| s.check == CheckId::RouteBlackholeMissing && s.reason.contains("datastore")
            )
        );
    }

    /// Without a datastore, vxlan-v6.calico is judged like vxlan.calico: quiet when healthy,
    /// each missing piece its own finding with an IPv6 subject.
    #[test]
    fn ipv6_vxlan_is_inferred_like_ipv4() {
        use crate::verify::testutil::healthy_dual_stack;
        use calico_conventions::VXLAN_V6;
        let (_, o) = healthy_dual_stack();
        let v = run_inferred(&o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        let mac = calico_conventions::vtep_mac_v6("node-b");
        let (_, mut o) = healthy_dual_stack();
        o.neighbours.retain(|n| n.dev != VXLAN_V6);
        let v = run_inferred(&o);
        assert_eq!(
            ids(&v),
            [(CheckId::VxlanNeighMissing, "fd00:244::40".into())]
        );
        assert!(
            v.findings[0].expected.contains("NDP"),
            "{:?}",
            v.findings[0]
        );
        let (_, mut o) = healthy_dual_stack();
        o.fdb.retain(|f| f.dev != VXLAN_V6);
        assert_eq!(ids(&run_inferred(&o)), [(CheckId::VxlanFdbMissing, mac)]);
        let (_, mut o) = healthy_dual_stack();
        o.routes
            .retain(|r| r.dev.as_deref() != Some(VXLAN_V6) || r.gateway.is_none());
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::RouteMissing, "via fd00:244::40".into())]
        );
        // Only the kernel's link-local address left.
        let (_, mut o) = healthy_dual_stack();
        o.addresses
            .retain(|a| a.ifname != VXLAN_V6 || a.scope == "link");
        let v = run_inferred(&o);
        assert_eq!(ids(&v), [(CheckId::TunnelAddressMismatch, VXLAN_V6.into())]);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        // An address outside this node's IPv6 blocks: borrowed, or not Felix's; only info.
        let (_, mut o) = healthy_dual_stack();
        for a in o
            .addresses
            .iter_mut()
            .filter(|a| a.ifname == VXLAN_V6 && a.scope == "global")
        {
            a.address = "fd00:244::80/128".parse().expect("net");
        }
        let v = run_inferred(&o);
        assert_eq!(ids(&v), [(CheckId::TunnelAddressMismatch, VXLAN_V6.into())]);
        assert_eq!(v.findings[0].severity, Severity::Info);
    }

    #[test]
    fn unobservable_sources_skip_their_checks_instead_of_firing() {
        let (e, mut o) = healthy();
        // A bundle without `ip neigh`/`bridge fdb`: no entries, because none were captured.
        o.neighbours.clear();
        o.fdb.clear();
        for kind in [Source::Neighbours, Source::Fdb] {
            o.unavailable
                .push(Unavailable::new(kind, "ip neigh", "not in the bundle"));
        }
        for v in [run_inferred(&o), crate::verify::testutil::run(&e, &o)] {
            assert!(v.findings.is_empty(), "{:?}", v.findings);
            let skipped = v
                .skipped
                .iter()
                .find(|s| s.check == CheckId::VxlanNeighMissing)
                .expect("skipped");
            assert!(skipped.reason.contains("not in the bundle"), "{skipped:?}");
        }
    }

    #[test]
    fn felix_unhealthy_fires_only_on_a_not_ready_answer() {
        let (_, mut o) = healthy();
        let health = |status| crate::observed::felix_health::FelixHealth {
            endpoint: "127.0.0.1:9099".into(),
            status,
            detail: String::new(),
        };
        o.felix_health = Some(health(204));
        assert!(run_inferred(&o).findings.is_empty());
        o.felix_health = Some(health(503));
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::FelixUnhealthy, "felix".into())]
        );
        // Health reporting off (nothing listening): skipped with the reason, never a finding.
        o.felix_health = None;
        o.unavailable.push(Unavailable::new(
            Source::FelixHealth,
            "felix readiness",
            "connect 127.0.0.1:9099: refused",
        ));
        let v = run_inferred(&o);
        assert!(v.findings.is_empty());
        assert!(
            v.skipped
                .iter()
                .any(|s| s.check == CheckId::FelixUnhealthy && s.reason.contains("refused"))
        );
    }

    #[test]
    fn bgp_session_down_fires_for_peers_not_established() {
        let (_, mut o) = healthy();
        let peer = |ip: &str, state: &str, info: &str| crate::observed::bird::BgpPeer {
            name: format!("Mesh_{}", ip.replace('.', "_")),
            kind: "node-to-node mesh".into(),
            peer_ip: ip.into(),
            state: state.into(),
            since: "10:00:00".into(),
            info: info.into(),
            since_seconds: None,
        };
        o.bgp_peers = Some(vec![peer("10.99.0.12", "up", "Established")]);
        assert!(run_inferred(&o).findings.is_empty());
        o.bgp_peers = Some(vec![
            peer("10.99.0.12", "up", "Established"),
            peer("10.99.0.13", "start", "Active Socket: Connection refused"),
        ]);
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::BgpSessionDown, "10.99.0.13".into())]
        );
    }

    #[test]
    fn forwarding_off_fires_globally_and_per_workload() {
        let (e, mut o) = healthy();
        o.sysctls.ip_forward = Some(0);
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::SysctlForwardingOff, "net.ipv4.ip_forward".into())]
        );
        let (_, mut o) = healthy();
        let veth = e.workloads[0].iface.clone();
        o.sysctls.forwarding.insert(veth.clone(), 0);
        assert_eq!(
            ids(&crate::verify::testutil::run(&e, &o)),
            [(
                CheckId::SysctlForwardingOff,
                format!("net.ipv4.conf.{veth}.forwarding")
            )]
        );
    }

    #[test]
    fn conntrack_pressure_fires_above_the_threshold_only() {
        let (_, mut o) = healthy();
        o.sysctls.conntrack_max = Some(1000);
        o.sysctls.conntrack_count = Some(899);
        assert!(run_inferred(&o).findings.is_empty());
        o.sysctls.conntrack_count = Some(950);
        let v = run_inferred(&o);
        assert_eq!(
            ids(&v),
            [(CheckId::ConntrackPressure, "nf_conntrack".into())]
        );
        assert!(v.findings[0].actual.contains("95.0%"));
    }

    #[test]
    fn calico_ebpf_conntrack_pressure_fires_above_the_threshold_only() {
        let (_, mut o) = healthy();
        let mut ct = crate::observed::calico_ct::CalicoConntrack {
            map: "cali_v4_ct4".into(),
            max_entries: 512_000,
            ..Default::default()
        };
        ct.counts.total = 460_000;
        o.calico_conntrack = Some(ct.clone());
        assert!(run_inferred(&o).findings.is_empty());
        ct.counts.total = 470_000;
        o.calico_conntrack = Some(ct);
        let v = run_inferred(&o);
        assert_eq!(
            ids(&v),
            [(CheckId::ConntrackPressure, "cali_v4_ct4".into())]
        );
        assert!(v.findings[0].hint.contains("bpfMapSizeConntrack"));
    }

    /// Issue 13 point 4: a tunnel up with an MTU below a workload's is drift even when the
    /// input holds no routes; an unaddressed, unrouted tunl0 (the ipip module's) is not Calico's.
    #[test]
    fn a_tunnel_below_a_workload_fires_without_routes() {
        let (e, mut o) = healthy();
        o.routes.clear();
        o.unavailable.push(Unavailable::new(
            Source::Routes,
            "ip route",
            "not in the bundle",
        ));
        let veth = e.workloads[0].iface.clone();
        for l in o.links.iter_mut().filter(|l| l.name == veth) {
            l.mtu = 1500;
        }
        let v = run_inferred(&o);
        assert!(
            ids(&v).contains(&(CheckId::MtuWorkloadMismatch, veth.clone())),
            "{:?}",
            v.findings
        );
        // The same with a datastore whose underlay is unknown.
        let mut e2 = e.clone();
        e2.pod_mtu = None;
        assert!(
            ids(&crate::verify::testutil::run(&e2, &o))
                .contains(&(CheckId::MtuWorkloadMismatch, veth.clone()))
        );
        // No-encap node: vxlan.calico gone, tunl0 from the module (1480, no address).
        o.links.retain(|l| l.name != "vxlan.calico");
        o.addresses.retain(|a| a.ifname != "vxlan.calico");
        let mut tunl0 = o.links[1].clone();
        tunl0.name = "tunl0".into();
        tunl0.index = 40;
        tunl0.mtu = 1480;
        o.links.push(tunl0);
        let v = run_inferred(&o);
        assert!(
            !ids(&v)
                .iter()
                .any(|(c, _)| *c == CheckId::MtuWorkloadMismatch),
            "{:?}",
            v.findings
        );
        // ...but an addressed tunl0 is Calico's IPIP tunnel.
        o.addresses.push(crate::observed::Address {
            ifindex: 40,
            ifname: "tunl0".into(),
            address: "10.244.0.1/32".parse().expect("net"),
            scope: "global".into(),
        });
        assert!(ids(&run_inferred(&o)).contains(&(CheckId::MtuWorkloadMismatch, veth)));
    }

    #[test]
    fn inferred_faults() {
        let (_, mut o) = healthy();
        o.neighbours.clear();
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::VxlanNeighMissing, "10.244.1.0".into())]
        );

        let (_, mut o) = healthy();
        let mac = o.fdb[0].mac.clone();
        o.fdb.clear();
        assert_eq!(ids(&run_inferred(&o)), [(CheckId::VxlanFdbMissing, mac)]);

        let (_, mut o) = healthy();
        o.routes
            .retain(|r| r.destination.to_string() != "10.244.1.0/26");
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::RouteMissing, "via 10.244.1.0".into())]
        );

        let (_, mut o) = healthy();
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.dev = Some("eth0".into());
        r.gateway = Some("10.99.0.12".parse().expect("ip"));
        r.onlink = false;
        let got = ids(&run_inferred(&o));
        assert!(
            got.contains(&(CheckId::RouteWrongDevice, "10.244.1.0/26".into())),
            "{got:?}"
        );

        let (_, mut o) = healthy();
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.mtu = 1500);
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::MtuUnderlayTooSmall, "vxlan.calico".into())]
        );
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.mtu = 1400);
        let v = run_inferred(&o);
        // A lower tunnel MTU may be configured (info), but the pod above it is drift.
        assert_eq!(
            ids(&v),
            [
                (CheckId::MtuWorkloadMismatch, "calidd33ceb84a6".into()),
                (CheckId::MtuTunnelMismatch, "vxlan.calico".into())
            ]
        );
        assert_eq!(v.findings[1].severity, Severity::Info);

        let (_, mut o) = healthy();
        o.links
            .iter_mut()
            .filter(|l| l.name.starts_with("cali"))
            .for_each(|l| l.mtu = 1500);
        let got = run_inferred(&o);
        assert_eq!(got.findings.len(), 1);
        assert_eq!(got.findings[0].check, CheckId::MtuWorkloadMismatch);

        let (_, mut o) = healthy();
        let a = o
            .addresses
            .iter_mut()
            .find(|a| a.ifname == "vxlan.calico")
            .expect("addr");
        a.address = "10.244.200.1/32".parse().expect("net");
        let v = run_inferred(&o);
        assert_eq!(
            ids(&v),
            [(CheckId::TunnelAddressMismatch, "vxlan.calico".into())]
        );
        assert_eq!(v.findings[0].severity, Severity::Info);
        assert!(!v.has_drift(), "ambiguous without the datastore: info only");

        let (_, mut o) = healthy();
        o.links
            .iter_mut()
            .filter(|l| l.name == "vxlan.calico")
            .for_each(|l| l.admin_up = false);
        o.routes
            .retain(|r| r.dev.as_deref() != Some("vxlan.calico"));
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::TunnelDown, "vxlan.calico".into())]
        );
    }
}

/// Thousands of VTEPs, looked up through the indexes rather than scanned per route.
#[cfg(test)]
mod scale_tests {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::verify::{
        CheckId,
        testutil::{healthy, ids, run_inferred},
    };

    /// The healthy node with `n` more remote VTEPs, each with its route, ARP and FDB entry.
    fn with_vteps(n: u32) -> crate::observed::ObservedDataplane {
        let (_, mut o) = healthy();
        let route = o
            .routes
            .iter()
            .find(|r| r.dev.as_deref() == Some("vxlan.calico") && r.gateway.is_some())
            .cloned()
            .expect("a route through the tunnel");
        let (neigh, fdb) = (o.neighbours[0].clone(), o.fdb[0].clone());
        for i in 0..n {
            let tunnel = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 64);
            let mac = format!(
                "66:00:00:{:02x}:{:02x}:{:02x}",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            );
            let mut r = route.clone();
            r.destination = ipnet::IpNet::V4(ipnet::Ipv4Net::new(tunnel, 26).expect("net"));
            r.gateway = Some(IpAddr::V4(tunnel));
            o.routes.push(r);
            let mut nb = neigh.clone();
            nb.destination = IpAddr::V4(tunnel);
            nb.lladdr = Some(mac.clone());
            o.neighbours.push(nb);
            let mut f = fdb.clone();
            f.mac = mac;
            f.destination = Some(IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 98, 0, 0)) + i + 1,
            )));
            o.fdb.push(f);
        }
        o
    }

    #[test]
    fn thousands_of_healthy_vteps_are_quiet() {
        assert_eq!(ids(&run_inferred(&with_vteps(3_000))), []);
    }

    #[test]
    fn one_missing_fdb_entry_among_thousands_is_named() {
        let mut o = with_vteps(3_000);
        let gone = o.fdb.remove(1_500);
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::VxlanFdbMissing, gone.mac)]
        );
        let mut o = with_vteps(3_000);
        let gone = o.neighbours.remove(2_000);
        assert_eq!(
            ids(&run_inferred(&o)),
            [(CheckId::VxlanNeighMissing, gone.destination.to_string())]
        );
    }
}
