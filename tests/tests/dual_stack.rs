//! The dual-stack lab (xtask lab --dual-stack) verified against its own datastore: pods
//! reach each other over vxlan-v6.calico, the node is clean, each IPv6 fault yields exactly
//! its finding (the IPv4 check ID, an IPv6 subject), and repair clears it.

use agent::{
    analysis,
    desired::{Datastore, files},
    observed::ObservedDataplane,
    verify::{CheckId, Policy, Verification, verify},
};
use integration_tests::{LabGuard, in_netns, observe, unique};
use xtask::lab::Fault;

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn datastore(lab: &LabGuard) -> (TempDir, Datastore) {
    let dir = TempDir(std::env::temp_dir().join(unique("ds6")));
    lab.0.write_datastore(&dir.0).expect("write datastore");
    let ds = files::load_dir(&dir.0).expect("lab datastore loads");
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    (dir, ds)
}

fn check(lab: &LabGuard, ds: &Datastore) -> (ObservedDataplane, Verification) {
    let node = &lab.0.spec.nodes[0];
    let obs = observe(&node.netns, &node.name);
    let expected = analysis::expected_for(&obs, Some(ds)).expect("expected state");
    let v = verify(expected.as_ref(), &obs, &Policy::default());
    (obs, v)
}

/// Captures node-a into a bundle (`ip -6 -d route`, `ip neigh`, `bridge fdb`,
/// `ip6tables-nft-save`, …) and verifies what reads back.
fn check_bundle(lab: &LabGuard, ds: &Datastore) -> Verification {
    let node = &lab.0.spec.nodes[0];
    let dir = TempDir(std::env::temp_dir().join(unique("bndl6")));
    let target = dir.0.clone();
    in_netns(&node.netns, move |rt| {
        rt.block_on(agent::observed::bundle::capture(&target, "node-a"))
    })
    .unwrap_or_else(|e| panic!("capture: {e}"));
    let b = agent::observed::bundle::read_dir(&dir.0).unwrap_or_else(|e| panic!("read: {e}"));
    assert!(b.notes.is_empty(), "bundle notes: {:#?}", b.notes);
    let expected = analysis::expected_for(&b.observed, Some(ds)).expect("expected state");
    verify(expected.as_ref(), &b.observed, &Policy::default())
}

fn ids(v: &Verification) -> Vec<(CheckId, String)> {
    v.findings
        .iter()
        .map(|f| (f.check, f.subject.clone()))
        .collect()
}

/// Injects each fault on node-a, expects exactly its finding from `judge`, repairs, and
/// expects a clean node again.
fn each_fault(
    lab: &LabGuard,
    cases: Vec<(Fault, CheckId, String)>,
    judge: impl Fn(&LabGuard) -> Verification,
) {
    for (fault, id, subject) in cases {
        lab.0.fault("node-a", fault).expect("inject fault");
        let v = judge(lab);
        assert_eq!(ids(&v), [(id, subject)], "{fault:?}: {:#?}", v.findings);
        lab.0.repair().expect("repair");
        let v = judge(lab);
        assert!(
            v.findings.is_empty(),
            "after repairing {fault:?}: {:#?}",
            v.findings
        );
    }
}

#[test]
fn dual_stack_lab_passes_ipv6_traffic_and_each_ipv6_fault_is_named() {
    let lab = LabGuard::dual_stack("v6");
    lab.0
        .check_connectivity()
        .expect("pods reach each other over IPv4 and IPv6");
    let (_dir, ds) = datastore(&lab);
    let (obs, v) = check(&lab, &ds);
    assert!(
        obs.links.iter().any(|l| l.name == "vxlan-v6.calico"),
        "the live reader sees vxlan-v6.calico"
    );
    assert!(v.findings.is_empty(), "healthy: {:#?}", v.findings);
    // The IPv6 side was judged, not skipped: the expectation holds its routes and VTEP.
    let expected = analysis::expected_for(&obs, Some(&ds))
        .expect("expected")
        .expect("with a datastore");
    assert!(expected.vxlan_v6.is_some() && expected.ipv6_expected());

    let a = lab.0.spec.nodes[0].v6.clone().expect("node-a v6");
    let b = lab.0.spec.nodes[1].v6.clone().expect("node-b v6");
    let cases: Vec<(Fault, CheckId, String)> = vec![
        (
            Fault::V6RouteDelete,
            CheckId::RouteMissing,
            b.block.to_string(),
        ),
        (
            Fault::V6RouteNexthop,
            CheckId::RouteWrongNexthop,
            b.block.to_string(),
        ),
        (
            Fault::V6BlackholeDelete,
            CheckId::RouteBlackholeMissing,
            a.block.to_string(),
        ),
        (
            Fault::V6TunnelMtu,
            CheckId::MtuTunnelMismatch,
            "vxlan-v6.calico".into(),
        ),
        (
            Fault::V6NeighDelete,
            CheckId::VxlanNeighMissing,
            b.tunnel_ip.to_string(),
        ),
        (
            Fault::V6FdbDelete,
            CheckId::VxlanFdbMissing,
            b.vtep_mac.clone(),
        ),
        (
            Fault::V6TunnelAddressDelete,
            CheckId::TunnelAddressMismatch,
            "vxlan-v6.calico".into(),
        ),
        (
            Fault::V6InputJumpDelete,
            CheckId::RulesFelixMissing,
            "ip6 filter INPUT".into(),
        ),
    ];
    each_fault(&lab, cases, |lab| check(lab, &ds).1);
    lab.0
        .check_connectivity()
        .expect("traffic flows again after the repairs");
}

/// Without a datastore, vxlan-v6.calico's next hops, NDP and FDB entries and address are
/// inferred from the node as vxlan.calico's are: quiet when healthy, each fault named.
#[test]
fn without_a_datastore_ipv6_vxlan_is_inferred_like_ipv4() {
    let lab = LabGuard::dual_stack("v6i");
    let inferred = |lab: &LabGuard| {
        let node = &lab.0.spec.nodes[0];
        let obs = observe(&node.netns, &node.name);
        assert!(
            analysis::expected_for(&obs, None)
                .expect("expected")
                .is_none()
        );
        verify(None, &obs, &Policy::default())
    };
    let v = inferred(&lab);
    assert!(v.findings.is_empty(), "healthy: {:#?}", v.findings);
    let b = lab.0.spec.nodes[1].v6.clone().expect("node-b v6");
    let cases = vec![
        (
            Fault::V6NeighDelete,
            CheckId::VxlanNeighMissing,
            b.tunnel_ip.to_string(),
        ),
        (
            Fault::V6FdbDelete,
            CheckId::VxlanFdbMissing,
            b.vtep_mac.clone(),
        ),
        (
            Fault::V6RouteDelete,
            CheckId::RouteMissing,
            format!("via {}", b.tunnel_ip),
        ),
        (
            Fault::V6TunnelAddressDelete,
            CheckId::TunnelAddressMismatch,
            "vxlan-v6.calico".into(),
        ),
    ];
    each_fault(&lab, cases, inferred);
}

/// The same kernel state judged against an IPv4-only datastore: nothing of IPv6 is
/// expected, so nothing is reported, even with the IPv6 side broken.
#[test]
fn ipv4_only_datastore_judges_nothing_of_the_ipv6_side() {
    let lab = LabGuard::dual_stack("v4o");
    let (dir, _) = datastore(&lab);
    let file = dir.0.join("lab.yaml");
    let text = std::fs::read_to_string(&file).expect("read datastore");
    // Without the IPv6 pool there is nothing of IPv6 for Felix to program.
    let v4_only: Vec<&str> = text
        .split("\n---\n")
        .filter(|doc| !doc.contains("default-ipv6-ippool") && !doc.contains("cidr: 'fd00:"))
        .collect();
    std::fs::write(&file, v4_only.join("\n---\n")).expect("write datastore");
    let ds = files::load_dir(&dir.0).expect("datastore loads");
    lab.0
        .fault("node-a", Fault::V6RouteDelete)
        .expect("inject fault");
    lab.0
        .fault("node-a", Fault::V6InputJumpDelete)
        .expect("inject fault");
    let (_, v) = check(&lab, &ds);
    // The pods' MTU (the IPv6 tunnel's 1430) is below IPv4's: not a finding either.
    assert!(v.findings.is_empty(), "{:#?}", v.findings);
}

/// A bundle of the dual-stack node is judged like the live read: clean, and an IPv6 fault
/// named the same way.
#[test]
fn dual_stack_bundle_is_judged_like_the_live_node() {
    let lab = LabGuard::dual_stack("b6");
    let (_dir, ds) = datastore(&lab);
    let v = check_bundle(&lab, &ds);
    assert!(v.findings.is_empty(), "healthy bundle: {:#?}", v.findings);
    let b = lab.0.spec.nodes[1].v6.clone().expect("node-b v6");
    let cases = vec![
        (
            Fault::V6NeighDelete,
            CheckId::VxlanNeighMissing,
            b.tunnel_ip.to_string(),
        ),
        (
            Fault::V6FdbDelete,
            CheckId::VxlanFdbMissing,
            b.vtep_mac.clone(),
        ),
        (
            Fault::V6RouteNexthop,
            CheckId::RouteWrongNexthop,
            b.block.to_string(),
        ),
        (
            Fault::V6InputJumpDelete,
            CheckId::RulesFelixMissing,
            "ip6 filter INPUT".into(),
        ),
    ];
    each_fault(&lab, cases, |lab| check_bundle(lab, &ds));
}

/// The IPv4 faults in the dual-stack lab: each still yields exactly its one IPv4 finding
/// (the IPv6 side adds nothing, e.g. the pods' smaller MTU under a lowered IPv4 tunnel MTU).
#[test]
fn ipv4_faults_in_the_dual_stack_lab_are_unchanged() {
    let lab = LabGuard::dual_stack("v4f");
    let (_dir, ds) = datastore(&lab);
    let b = &lab.0.spec.nodes[1];
    for fault in [
        Fault::RouteDelete,
        Fault::RouteUnderlay,
        Fault::BlackholeDelete,
        Fault::TunnelMtu,
        Fault::PodMtu,
        Fault::FdbFlush,
        Fault::ArpDelete,
        Fault::TunnelDown,
        Fault::TunnelAddress,
        Fault::FailsafeDelete,
        Fault::InputJumpDelete,
    ] {
        let (id, subject) = match fault {
            Fault::RouteDelete => (CheckId::RouteMissing, b.block.to_string()),
            Fault::RouteUnderlay => (CheckId::RouteWrongDevice, b.block.to_string()),
            Fault::BlackholeDelete => (
                CheckId::RouteBlackholeMissing,
                lab.0.spec.nodes[0].block.to_string(),
            ),
            Fault::TunnelMtu => (CheckId::MtuTunnelMismatch, "vxlan.calico".into()),
            Fault::PodMtu => (
                CheckId::MtuWorkloadMismatch,
                lab.0.spec.nodes[0].pods[0].veth.clone(),
            ),
            Fault::FdbFlush => (CheckId::VxlanFdbMissing, b.vtep_mac.clone()),
            Fault::ArpDelete => (CheckId::VxlanNeighMissing, b.tunnel_ip.to_string()),
            Fault::TunnelDown => (CheckId::TunnelDown, "vxlan.calico".into()),
            Fault::TunnelAddress => (CheckId::TunnelAddressMismatch, "vxlan.calico".into()),
            Fault::FailsafeDelete => (
                CheckId::FailsafeMissing,
                "filter cali-failsafe-in tcp:22".into(),
            ),
            Fault::InputJumpDelete => (CheckId::RulesFelixMissing, "filter INPUT".into()),
            other => panic!("{other:?} is not an IPv4 VXLAN fault"),
        };
        lab.0.fault("node-a", fault).expect("inject fault");
        let (_, v) = check(&lab, &ds);
        assert_eq!(ids(&v), [(id, subject)], "{fault:?}: {:#?}", v.findings);
        lab.0.repair().expect("repair");
        let (_, v) = check(&lab, &ds);
        assert!(v.findings.is_empty(), "after {fault:?}: {:#?}", v.findings);
    }
}
