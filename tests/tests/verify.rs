//! The lab verified against its own datastore: clean when healthy, exactly one expected
//! finding per injected fault, clean again after repair; no false drift from pod churn or
//! state Felix does not own.

use agent::{
    analysis,
    desired::{Datastore, files},
    observed::ObservedDataplane,
    verify::{CheckId, Policy, Verification, verify},
};
use integration_tests::{LabGuard, observe, unique};
use xtask::{
    lab::{Fault, spec::vtep_mac},
    sh,
};

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("ds"));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn datastore(lab: &LabGuard, extra: Option<&str>) -> (TempDir, Datastore) {
    let dir = TempDir::new();
    lab.0.write_datastore(&dir.0).expect("write datastore");
    if let Some(y) = extra {
        std::fs::write(dir.0.join("extra.yaml"), y).expect("write extra");
    }
    let ds = files::load_dir(&dir.0).expect("lab datastore loads");
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);
    (dir, ds)
}

fn check(lab: &LabGuard, ds: Option<&Datastore>) -> (ObservedDataplane, Verification) {
    let node = &lab.0.spec.nodes[0];
    let obs = observe(&node.netns, &node.name);
    let expected = analysis::expected_for(&obs, ds).expect("expected state");
    let v = verify(expected.as_ref(), &obs, &Policy::default());
    (obs, v)
}

fn ids(v: &Verification) -> Vec<(CheckId, String)> {
    v.findings
        .iter()
        .map(|f| (f.check, f.subject.clone()))
        .collect()
}

fn assert_clean(v: &Verification, when: &str) {
    assert!(
        v.findings.is_empty(),
        "{when}: expected no findings, got {:#?}",
        v.findings
    );
}

#[test]
fn every_fault_yields_exactly_its_finding_and_clears_after_repair() {
    let lab = LabGuard::up("vf");
    let (_dir, ds) = datastore(&lab, None);
    let (_, v) = check(&lab, Some(&ds));
    assert!(v.with_datastore);
    assert_clean(&v, "healthy lab");

    let node_b = &lab.0.spec.nodes[1];
    let pod_veth = lab.0.spec.nodes[0].pods[0].veth.clone();
    let cases: Vec<(Fault, CheckId, String)> = vec![
        (
            Fault::RouteDelete,
            CheckId::RouteMissing,
            "10.244.1.0/26".into(),
        ),
        (
            Fault::RouteUnderlay,
            CheckId::RouteWrongDevice,
            "10.244.1.0/26".into(),
        ),
        (
            Fault::BlackholeDelete,
            CheckId::RouteBlackholeMissing,
            "10.244.0.0/26".into(),
        ),
        (
            Fault::TunnelMtu,
            CheckId::MtuTunnelMismatch,
            "vxlan.calico".into(),
        ),
        (Fault::PodMtu, CheckId::MtuWorkloadMismatch, pod_veth),
        (
            Fault::FdbFlush,
            CheckId::VxlanFdbMissing,
            node_b.vtep_mac.clone(),
        ),
        (
            Fault::ArpDelete,
            CheckId::VxlanNeighMissing,
            node_b.tunnel_ip.to_string(),
        ),
        (
            Fault::TunnelDown,
            CheckId::TunnelDown,
            "vxlan.calico".into(),
        ),
        (
            Fault::TunnelAddress,
            CheckId::TunnelAddressMismatch,
            "vxlan.calico".into(),
        ),
        (
            Fault::FailsafeDelete,
            CheckId::FailsafeMissing,
            "filter cali-failsafe-in tcp:22".into(),
        ),
        (
            Fault::InputJumpDelete,
            CheckId::RulesFelixMissing,
            "filter INPUT".into(),
        ),
    ];
    for (fault, id, subject) in cases {
        lab.0.fault("node-a", fault).expect("inject fault");
        let (_, v) = check(&lab, Some(&ds));
        assert_eq!(
            ids(&v),
            [(id, subject.clone())],
            "{fault:?}: {:#?}",
            v.findings
        );
        let f = &v.findings[0];
        assert!(
            !f.expected.is_empty() && !f.actual.is_empty() && !f.hint.is_empty(),
            "{f:?}"
        );
        lab.0.repair().expect("repair");
        let (_, v) = check(&lab, Some(&ds));
        assert_clean(&v, &format!("after repairing {fault:?}"));
    }
}

#[test]
fn a_node_in_the_datastore_that_was_never_programmed() {
    let lab = LabGuard::up("vn");
    let (_dir, ds) = datastore(&lab, Some(&lab.0.spec.unprogrammed_node_yaml()));
    let (_, v) = check(&lab, Some(&ds));
    assert_eq!(
        ids(&v),
        [
            (CheckId::RouteMissing, "10.244.2.0/26".into()),
            (CheckId::VxlanFdbMissing, vtep_mac("node-c")),
            (CheckId::VxlanNeighMissing, "10.244.2.0".into()),
        ]
    );
}

#[test]
fn healthy_node_with_churn_and_foreign_state_has_no_findings() {
    let lab = LabGuard::up("vq");
    let node = lab.0.spec.nodes[0].clone();
    let ns = node.netns.as_str();
    let ip = |args: &[&str]| {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        sh::run(&argv).unwrap_or_else(|e| panic!("{e:#}"));
    };
    // A pod the datastore knows but whose interface the CNI plugin has not created yet.
    let starting = "---\napiVersion: crd.projectcalico.org/v1\nkind: IPAMBlock\nmetadata: {name: 10-244-0-64-26}\nspec:\n  cidr: 10.244.0.64/26\n  affinity: host:node-a\n  allocations: [0]\n  attributes:\n  - {handle_id: k8s-pod-network.new, secondary: {namespace: default, pod: starting, node: node-a}}\n";
    ip(&[
        "route",
        "replace",
        "blackhole",
        "10.244.0.64/26",
        "proto",
        "80",
    ]);
    let (_dir, ds) = datastore(&lab, Some(starting));
    // A pod being deleted: its interface and route are gone, the datastore still lists it.
    let gone = &node.pods[1];
    ip(&["link", "del", &gone.veth]);
    // A pod the CNI plugin just wired up before IPAM shows up in our copy of the datastore.
    ip(&[
        "link",
        "add",
        "cali0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "tmp0",
    ]);
    ip(&["link", "set", "cali0123456789a", "mtu", "1450", "up"]);
    ip(&[
        "route",
        "add",
        "10.244.0.9",
        "dev",
        "cali0123456789a",
        "scope",
        "link",
    ]);
    // Routes and rules Felix does not own.
    ip(&[
        "route",
        "add",
        "192.168.77.0/24",
        "via",
        "10.99.0.1",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    ip(&[
        "route",
        "add",
        "172.16.0.0/16",
        "dev",
        "eth0",
        "table",
        "100",
    ]);
    ip(&["route", "add", "blackhole", "198.51.100.0/24"]);
    ip(&[
        "rule",
        "add",
        "from",
        "172.16.0.0/16",
        "lookup",
        "100",
        "priority",
        "500",
    ]);
    let ipt = |args: &[&str]| {
        let mut argv = vec!["ip", "netns", "exec", ns, "iptables-nft"];
        argv.extend_from_slice(args);
        sh::run(&argv).unwrap_or_else(|e| panic!("{e:#}"));
    };
    ipt(&["-N", "KUBE-SERVICES"]);
    ipt(&["-A", "INPUT", "-j", "KUBE-SERVICES"]);
    ipt(&["-t", "nat", "-N", "KUBE-POSTROUTING"]);
    ipt(&["-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING"]);
    sh::run(&["ip", "netns", "exec", ns, "nft", "add table inet other-tool; add chain inet other-tool input { type filter hook input priority 10; }"])
        .expect("nft");

    let (obs, v) = check(&lab, Some(&ds));
    assert_clean(&v, "healthy node with churn and foreign state");
    assert!(obs.routes.iter().any(|r| r.table == 100));
    let (_, v) = check(&lab, None);
    assert_clean(&v, "same node without datastore");
}

#[test]
fn without_datastore_inferred_checks_fire_and_the_rest_are_skipped() {
    let lab = LabGuard::up("vi");
    let (_, v) = check(&lab, None);
    assert!(!v.with_datastore);
    assert_clean(&v, "healthy lab, inferred");
    assert!(
        v.skipped
            .iter()
            .any(|s| s.check == CheckId::RouteBlackholeMissing)
    );

    let node_b = &lab.0.spec.nodes[1];
    let pods: Vec<String> = lab.0.spec.nodes[0]
        .pods
        .iter()
        .map(|p| p.veth.clone())
        .collect();
    let one = |id: CheckId, subject: &str| vec![(id, subject.to_string())];
    let cases: Vec<(Fault, Vec<(CheckId, String)>)> = vec![
        (
            Fault::RouteUnderlay,
            one(CheckId::RouteWrongDevice, "10.244.1.0/26"),
        ),
        (
            Fault::RouteDelete,
            one(CheckId::RouteMissing, &format!("via {}", node_b.tunnel_ip)),
        ),
        // Without the datastore a lower tunnel MTU may be configured (info), but pods above it
        // are drift either way.
        (
            Fault::TunnelMtu,
            vec![
                (CheckId::MtuWorkloadMismatch, pods[0].clone()),
                (CheckId::MtuWorkloadMismatch, pods[1].clone()),
                (CheckId::MtuTunnelMismatch, "vxlan.calico".into()),
            ],
        ),
        (Fault::PodMtu, one(CheckId::MtuWorkloadMismatch, &pods[0])),
        (
            Fault::FdbFlush,
            one(CheckId::VxlanFdbMissing, &node_b.vtep_mac),
        ),
        (
            Fault::ArpDelete,
            one(CheckId::VxlanNeighMissing, &node_b.tunnel_ip.to_string()),
        ),
        (Fault::TunnelDown, one(CheckId::TunnelDown, "vxlan.calico")),
        (
            Fault::TunnelAddress,
            one(CheckId::TunnelAddressMismatch, "vxlan.calico"),
        ),
        (
            Fault::InputJumpDelete,
            one(CheckId::RulesFelixMissing, "filter INPUT"),
        ),
    ];
    for (fault, expected) in cases {
        lab.0.fault("node-a", fault).expect("inject fault");
        let (_, v) = check(&lab, None);
        assert_eq!(ids(&v), expected, "{fault:?}: {:#?}", v.findings);
        lab.0.repair().expect("repair");
        let (_, v) = check(&lab, None);
        assert_clean(&v, &format!("after repairing {fault:?}, inferred"));
    }
}
