//! Dual stack: every IPv6 check fires with the IPv4 check ID and an IPv6 subject, stays quiet
//! on a healthy dual-stack node, and an IPv4-only cluster expects nothing of IPv6.

use super::CheckId;
use super::testutil::{healthy, healthy_dual_stack, ids, route_mut, run};
use crate::{
    desired::{Datastore, expected::compute, files::load_text},
    observed::RouteType,
};

#[test]
fn healthy_dual_stack_node_is_quiet() {
    let (e, o) = healthy_dual_stack();
    assert!(e.vxlan_v6.is_some());
    assert_eq!(e.vxlan_v6.as_ref().and_then(|t| t.mtu), Some(1430));
    assert_eq!(e.pod_mtu, Some(1430));
    assert_eq!(ids(&run(&e, &o)), Vec::<(CheckId, String)>::new());
}

#[test]
fn expects_the_ipv6_routes_vtep_and_workload() {
    let (e, _) = healthy_dual_stack();
    let routes: Vec<String> = e
        .routes
        .iter()
        .filter(|r| r.destination.addr().is_ipv6())
        .map(|r| format!("{} {:?}", r.destination, r.target))
        .collect();
    assert_eq!(
        routes,
        [
            "fd00:244::/122 Blackhole",
            "fd00:244::40/122 Device { device: \"vxlan-v6.calico\", gateway: Some(fd00:244::40) }",
        ]
    );
    let v6_vteps: Vec<_> = e.vteps.iter().filter(|v| v.tunnel_ip.is_ipv6()).collect();
    assert_eq!(v6_vteps.len(), 1);
    assert_eq!(v6_vteps[0].node_ip.to_string(), "fd00:99::12");
    assert_eq!(v6_vteps[0].mac, calico_conventions::vtep_mac_v6("node-b"));
    assert!(
        e.workloads
            .iter()
            .any(|w| w.ip.to_string() == "fd00:244::1")
    );
}

#[test]
fn missing_v6_block_route() {
    let (e, mut o) = healthy_dual_stack();
    o.routes
        .retain(|r| r.destination.to_string() != "fd00:244::40/122");
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RouteMissing, "fd00:244::40/122".into())]
    );
}

#[test]
fn wrong_v6_next_hop() {
    let (e, mut o) = healthy_dual_stack();
    route_mut(&mut o, "fd00:244::40/122").gateway = Some("fd00:244::49".parse().expect("ip"));
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RouteWrongNexthop, "fd00:244::40/122".into())]
    );
}

#[test]
fn missing_v6_blackhole() {
    let (e, mut o) = healthy_dual_stack();
    o.routes
        .retain(|r| !(r.kind == RouteType::Blackhole && r.destination.addr().is_ipv6()));
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RouteBlackholeMissing, "fd00:244::/122".into())]
    );
}

#[test]
fn missing_v6_workload_route() {
    let (e, mut o) = healthy_dual_stack();
    o.routes
        .retain(|r| r.destination.to_string() != "fd00:244::1/128");
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RouteWorkloadMissing, "fd00:244::1".into())]
    );
}

#[test]
fn stale_v6_route_on_the_v6_tunnel_is_unexpected() {
    let (e, mut o) = healthy_dual_stack();
    let mut stale = route_mut(&mut o, "fd00:244::40/122").clone();
    stale.destination = "fd00:244::1c0/122".parse().expect("net");
    o.routes.push(stale);
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RouteUnexpected, "fd00:244::1c0/122".into())]
    );
}

#[test]
fn v6_tunnel_with_the_wrong_mtu() {
    let (e, mut o) = healthy_dual_stack();
    for l in o.links.iter_mut().filter(|l| l.name == "vxlan-v6.calico") {
        l.mtu = 1450;
    }
    let v = run(&e, &o);
    assert_eq!(
        ids(&v),
        [(CheckId::MtuTunnelMismatch, "vxlan-v6.calico".into())]
    );
    assert!(
        v.findings[0].expected.contains("minus 70"),
        "{:?}",
        v.findings[0]
    );
}

#[test]
fn v6_tunnel_missing_and_down() {
    let (e, mut o) = healthy_dual_stack();
    let mut down = o.clone();
    for l in down
        .links
        .iter_mut()
        .filter(|l| l.name == "vxlan-v6.calico")
    {
        l.admin_up = false;
        l.oper_state = "down".into();
    }
    down.neighbours.retain(|n| n.dev != "vxlan-v6.calico");
    down.routes
        .retain(|r| r.dev.as_deref() != Some("vxlan-v6.calico"));
    assert_eq!(
        ids(&run(&e, &down)),
        [(CheckId::TunnelDown, "vxlan-v6.calico".into())]
    );
    o.links.retain(|l| l.name != "vxlan-v6.calico");
    o.routes
        .retain(|r| r.dev.as_deref() != Some("vxlan-v6.calico"));
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::TunnelMissing, "vxlan-v6.calico".into())]
    );
}

#[test]
fn v6_tunnel_without_its_address() {
    let (e, mut o) = healthy_dual_stack();
    o.addresses
        .retain(|a| a.address.to_string() != "fd00:244::/128");
    let v = run(&e, &o);
    assert_eq!(
        ids(&v),
        [(CheckId::TunnelAddressMismatch, "vxlan-v6.calico".into())]
    );
    assert_eq!(v.findings[0].actual, "no IPv6 address");
    assert!(v.findings[0].expected.starts_with("fd00:244::/128"));
}

#[test]
fn missing_v6_vtep_neighbour_and_fdb() {
    let (e, mut o) = healthy_dual_stack();
    let mut no_neigh = o.clone();
    no_neigh.neighbours.retain(|n| n.dev != "vxlan-v6.calico");
    let v = run(&e, &no_neigh);
    assert_eq!(
        ids(&v),
        [(CheckId::VxlanNeighMissing, "fd00:244::40".into())]
    );
    assert_eq!(v.findings[0].actual, "no NDP entry");
    o.fdb.retain(|f| f.dev != "vxlan-v6.calico");
    assert_eq!(
        ids(&run(&e, &o)),
        [(
            CheckId::VxlanFdbMissing,
            calico_conventions::vtep_mac_v6("node-b")
        )]
    );
}

#[test]
fn v6_vtep_with_the_wrong_mac() {
    let (e, mut o) = healthy_dual_stack();
    for l in o.links.iter_mut().filter(|l| l.name == "vxlan-v6.calico") {
        l.mac = Some(calico_conventions::vtep_mac("node-a"));
    }
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::VxlanMacMismatch, "vxlan-v6.calico".into())]
    );
}

#[test]
fn unhooked_ip6tables_chains() {
    let (e, mut o) = healthy_dual_stack();
    let dump = o
        .iptables
        .iter_mut()
        .find(|d| d.family == 6)
        .expect("ip6tables dump");
    let text = super::testutil::ip6tables_hooks().replace(
        "-A INPUT -m comment --comment \"cali:test\" -j cali-INPUT\n",
        "",
    );
    *dump =
        crate::observed::iptables::parse(&text, Some(crate::observed::iptables::Backend::Nft), 6);
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RulesFelixMissing, "ip6 filter INPUT".into())]
    );
}

/// The IPv4 fixture with the dual-stack node's IPv6 state left over: a cluster without IPv6
/// pools expects none of it, so nothing is reported.
#[test]
fn ipv4_only_cluster_judges_no_ipv6() {
    let (e, _) = healthy();
    let (_, mut o) = healthy_dual_stack();
    for l in o.links.iter_mut().filter(|l| l.name.starts_with("cali")) {
        l.mtu = 1450;
    }
    assert!(e.vxlan_v6.is_none() && !e.ipv6_expected());
    // Broken IPv6 state is not judged either.
    o.routes
        .retain(|r| r.kind != RouteType::Blackhole || r.destination.addr().is_ipv4());
    o.fdb.retain(|f| f.dev != "vxlan-v6.calico");
    // The smaller IPv6 tunnel MTU still bounds what pods may send.
    let findings = ids(&run(&e, &o));
    assert!(
        findings
            .iter()
            .all(|(c, _)| *c == CheckId::MtuWorkloadMismatch),
        "{findings:?}"
    );
}

#[test]
fn ipv6_support_false_expects_no_ipv6() {
    let yaml = include_str!("testdata/datastore-lab-dual-stack.yaml")
        .replace("ipv6Support: true", "ipv6Support: false");
    let mut ds = Datastore::default();
    load_text(&mut ds, "ds.yaml", &yaml).expect("datastore");
    let e = compute(&ds, Some("node-a"), &Default::default()).expect("expected");
    assert!(e.vxlan_v6.is_none());
    assert!(!e.ipv6_expected());
    assert!(e.workloads.iter().all(|w| w.ip.is_ipv4()));
    assert!(e.vteps.iter().all(|v| v.tunnel_ip.is_ipv4()));
}

#[test]
fn a_remote_node_without_an_ipv6_tunnel_address_is_a_note() {
    let yaml = include_str!("testdata/datastore-lab-dual-stack.yaml").replace(
        "    projectcalico.org/IPv6VXLANTunnelAddr: 'fd00:244::40'\n",
        "",
    );
    let mut ds = Datastore::default();
    load_text(&mut ds, "ds.yaml", &yaml).expect("datastore");
    let e = compute(&ds, Some("node-a"), &Default::default()).expect("expected");
    assert!(
        !e.routes
            .iter()
            .any(|r| r.destination.to_string() == "fd00:244::40/122")
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("node-b has no IPv6 VXLAN tunnel address")),
        "{:?}",
        e.notes
    );
    let (_, mut o) = healthy_dual_stack();
    o.routes
        .retain(|r| r.destination.to_string() != "fd00:244::40/122");
    o.neighbours.retain(|n| n.dev != "vxlan-v6.calico");
    o.fdb.retain(|f| f.dev != "vxlan-v6.calico");
    let e = compute(&ds, Some("node-a"), &crate::analysis::host_facts(&o)).expect("expected");
    assert_eq!(ids(&run(&e, &o)), Vec::<(CheckId, String)>::new());
}

/// nftables mode: Felix's `ip calico` as in the IPv4 tests, and the same chains in
/// `ip6 calico`.
fn nft_dual_stack() -> (
    crate::desired::expected::Expected,
    crate::observed::ObservedDataplane,
) {
    let (e, mut o) = healthy_dual_stack();
    o.iptables.clear();
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("testdata/nft-calico-failsafe.json")).expect("JSON");
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let v6 = items.into_iter().filter_map(|mut item| {
        for kind in ["table", "chain", "rule"] {
            if let Some(obj) = item.get_mut(kind) {
                obj["family"] = "ip6".into();
                return Some(item);
            }
        }
        None
    });
    if let Some(all) = v["nftables"].as_array_mut() {
        all.extend(v6.collect::<Vec<_>>());
    }
    o.nft = Some(crate::observed::nft::parse_json(&v.to_string()).expect("nft JSON"));
    (e, o)
}

#[test]
fn nft_mode_ip6_calico_hooks() {
    let (e, o) = nft_dual_stack();
    assert_eq!(ids(&run(&e, &o)), Vec::<(CheckId, String)>::new());
    let (e, mut o) = nft_dual_stack();
    if let Some(n) = o.nft.as_mut() {
        n.rules
            .retain(|r| !(r.family == "ip6" && r.chain == "filter-INPUT"));
    }
    assert_eq!(
        ids(&run(&e, &o)),
        [(CheckId::RulesFelixMissing, "ip6 calico filter-INPUT".into())]
    );
    // An IPv4-only cluster does not look at `ip6 calico`.
    let (e4, _) = healthy();
    assert!(run(&e4, &o).findings.is_empty());
}

/// This node without its IPv6 tunnel address: Felix has no local IPv6 VTEP, so neither the
/// device nor IPv6 block routes are expected (a note says why); its pods' /128s still are.
#[test]
fn this_node_without_an_ipv6_tunnel_address_expects_no_vxlan_v6() {
    let yaml = include_str!("testdata/datastore-lab-dual-stack.yaml")
        .replace("  ipv6VXLANTunnelAddr: 'fd00:244::'\n", "");
    let mut ds = Datastore::default();
    load_text(&mut ds, "ds.yaml", &yaml).expect("datastore");
    let (_, mut o) = healthy_dual_stack();
    o.links.retain(|l| l.name != "vxlan-v6.calico");
    o.routes.retain(|r| {
        r.destination.addr().is_ipv4()
            || (r.dev.as_deref() != Some("vxlan-v6.calico") && r.kind != RouteType::Blackhole)
    });
    let e = compute(&ds, Some("node-a"), &crate::analysis::host_facts(&o)).expect("expected");
    assert!(e.vxlan_v6.is_none());
    assert!(!e.routes.iter().any(|r| r.destination.addr().is_ipv6()));
    assert!(e.workloads.iter().any(|w| w.ip.is_ipv6()));
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("no IPv6 address or IPv6 VXLAN tunnel address")),
        "{:?}",
        e.notes
    );
    assert_eq!(ids(&run(&e, &o)), Vec::<(CheckId, String)>::new());
}
