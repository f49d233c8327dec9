//! A healthy VXLAN node (the lab's node-a) as Expected + Observed, for check unit tests:
//! each test breaks one thing and asserts exactly which findings appear.

use std::net::IpAddr;

use super::{CheckId, Policy, Verification, verify};
use crate::{
    desired::{
        Datastore,
        expected::{Expected, HostFacts, compute, vtep_mac, workload_iface},
        files::load_text,
    },
    observed::{
        Address, FdbEntry, Link, Neighbour, ObservedDataplane, Route, RouteType, VxlanInfo,
        iptables::{self, Backend},
    },
};

fn link(index: u32, name: &str, kind: Option<&str>, mtu: u32, mac: &str) -> Link {
    Link {
        index,
        name: name.into(),
        kind: kind.map(str::to_string),
        mtu,
        admin_up: true,
        oper_state: "up".into(),
        mac: Some(mac.into()),
        link_index: None,
        controller: None,
        vxlan: None,
    }
}

fn route(
    dst: &str,
    kind: RouteType,
    proto: u8,
    scope: u8,
    gw: Option<&str>,
    dev: Option<&str>,
) -> Route {
    Route {
        table: 254,
        destination: dst.parse().expect("net"),
        kind,
        protocol: proto,
        scope,
        gateway: gw.map(|g| g.parse().expect("ip")),
        oif: None,
        dev: dev.map(str::to_string),
        onlink: gw.is_some() && dev == Some("vxlan.calico"),
        metric: 0,
        mtu: None,
        prefsrc: None,
    }
}

pub(crate) fn healthy() -> (Expected, ObservedDataplane) {
    let mut ds = Datastore::default();
    load_text(
        &mut ds,
        "datastore-lab.yaml",
        include_str!("testdata/datastore-lab.yaml"),
    )
    .expect("lab datastore");
    let veth = workload_iface("default", "pod-a1");
    let mut vx = link(3, "vxlan.calico", Some("vxlan"), 1450, &vtep_mac("node-a"));
    vx.vxlan = Some(VxlanInfo {
        vni: Some(4096),
        local: Some("10.99.0.11".parse().expect("ip")),
        port: Some(4789),
        parent_index: Some(2),
        parent_name: Some("eth0".into()),
        learning: false,
        external: false,
    });
    vx.oper_state = "unknown".into();
    let links = vec![
        link(1, "lo", None, 65536, "00:00:00:00:00:00"),
        link(2, "eth0", Some("veth"), 1500, "02:00:00:00:00:11"),
        vx,
        link(4, &veth, Some("veth"), 1450, "ee:ee:ee:ee:ee:ee"),
    ];
    let facts = HostFacts {
        links: links
            .iter()
            .map(|l| (l.name.clone(), l.mtu, l.is_up()))
            .collect(),
    };
    let expected = compute(&ds, Some("node-a"), &facts).expect("expected");
    let mut pod = route(
        "10.244.0.1/32",
        RouteType::Unicast,
        3,
        253,
        None,
        Some(&veth),
    );
    pod.metric = 1024;
    let mut remote = route(
        "10.244.1.0/26",
        RouteType::Unicast,
        3,
        0,
        Some("10.244.1.0"),
        Some("vxlan.calico"),
    );
    remote.mtu = Some(1450);
    let obs = ObservedDataplane {
        node_name: "node-a".into(),
        addresses: vec![
            Address {
                ifindex: 2,
                ifname: "eth0".into(),
                address: "10.99.0.11/24".parse().expect("net"),
                scope: "global".into(),
            },
            Address {
                ifindex: 3,
                ifname: "vxlan.calico".into(),
                address: "10.244.0.0/32".parse().expect("net"),
                scope: "global".into(),
            },
        ],
        routes: vec![
            route(
                "0.0.0.0/0",
                RouteType::Unicast,
                3,
                0,
                Some("10.99.0.1"),
                Some("eth0"),
            ),
            route(
                "10.99.0.0/24",
                RouteType::Unicast,
                2,
                253,
                None,
                Some("eth0"),
            ),
            route("10.244.0.0/26", RouteType::Blackhole, 80, 0, None, None),
            remote,
            pod,
        ],
        neighbours: vec![Neighbour {
            ifindex: 3,
            dev: "vxlan.calico".into(),
            destination: "10.244.1.0".parse().expect("ip"),
            lladdr: Some(vtep_mac("node-b")),
            state: "PERMANENT".into(),
        }],
        fdb: vec![FdbEntry {
            ifindex: 3,
            dev: "vxlan.calico".into(),
            mac: vtep_mac("node-b"),
            destination: Some(IpAddr::V4("10.99.0.12".parse().expect("ip"))),
            vni: None,
            port: None,
            controller: None,
            self_entry: true,
            state: "PERMANENT".into(),
        }],
        iptables: vec![iptables::parse(
            include_str!("testdata/iptables-nft-save-node-a.txt"),
            Some(Backend::Nft),
            4,
        )],
        links,
        ..Default::default()
    };
    let mut obs = obs;
    obs.sysctls.ip_forward = Some(1);
    obs.sysctls.forwarding.insert(veth.clone(), 1);
    obs.sysctls.proxy_arp.insert(veth, 1);
    (expected, obs)
}

/// The lab's pool alone, as an operator pastes `calicoctl get ippool -o yaml`.
pub(crate) const LAB_POOL: &str = "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, vxlanMode: Always, ipipMode: Never, natOutgoing: true, blockSize: 26}
";

/// What is expected of `node` from a partial datastore, against the healthy node's links.
pub(crate) fn expected_from(yaml: &str, node: Option<&str>) -> Expected {
    let mut ds = Datastore::default();
    load_text(&mut ds, "partial.yaml", yaml).expect("partial datastore");
    let (_, o) = healthy();
    compute(&ds, node, &crate::analysis::host_facts(&o)).expect("expected")
}

pub(crate) fn run(e: &Expected, o: &ObservedDataplane) -> Verification {
    verify(Some(e), o, &Policy::default())
}

pub(crate) fn run_inferred(o: &ObservedDataplane) -> Verification {
    verify(None, o, &Policy::default())
}

/// The observed route to `dst` (a CIDR as it prints), to break it.
pub(crate) fn route_mut<'a>(
    o: &'a mut ObservedDataplane,
    dst: &str,
) -> &'a mut crate::observed::Route {
    o.routes
        .iter_mut()
        .find(|r| r.destination.to_string() == dst)
        .unwrap_or_else(|| panic!("no route to {dst}"))
}

/// (check, subject) of every finding, in report order.
pub(crate) fn ids(v: &Verification) -> Vec<(CheckId, String)> {
    v.findings
        .iter()
        .map(|f| (f.check, f.subject.clone()))
        .collect()
}
