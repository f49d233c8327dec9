//! A healthy VXLAN node (the lab's node-a) as Expected + Observed, for check unit tests:
//! each test breaks one thing and asserts exactly which findings appear.

use std::net::IpAddr;

use calico_conventions::VXLAN_V6;

use super::{CheckId, Policy, Verification, verify};
use crate::{
    desired::{
        Datastore,
        expected::{Expected, HostFacts, compute, vtep_mac, vtep_mac_v6, workload_iface},
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

/// The lab's node-a with `--dual-stack`: the healthy IPv4 node plus `vxlan-v6.calico`, its
/// IPv6 block, remote block route, VTEP NDP/FDB entries, a pod's /128 and ip6tables hooks.
/// Pods carry the smallest tunnel MTU, the IPv6 one (1500 - 70).
pub(crate) fn healthy_dual_stack() -> (Expected, ObservedDataplane) {
    let (_, mut obs) = healthy();
    let mut ds = Datastore::default();
    load_text(
        &mut ds,
        "datastore-lab-dual-stack.yaml",
        include_str!("testdata/datastore-lab-dual-stack.yaml"),
    )
    .expect("dual-stack datastore");
    let veth = workload_iface("default", "pod-a1");
    for l in obs.links.iter_mut().filter(|l| l.name == veth) {
        l.mtu = 1430;
    }
    let mut vx6 = link(5, VXLAN_V6, Some("vxlan"), 1430, &vtep_mac_v6("node-a"));
    vx6.vxlan = Some(VxlanInfo {
        vni: Some(4096),
        // `ip -d link` shows `local6`, which the IPv4 field does not hold.
        local: None,
        port: Some(4789),
        parent_index: Some(2),
        parent_name: Some("eth0".into()),
        learning: false,
        external: false,
    });
    vx6.oper_state = "unknown".into();
    obs.links.push(vx6);
    let addr = |ifindex, ifname: &str, a: &str, scope: &str| Address {
        ifindex,
        ifname: ifname.into(),
        address: a.parse().expect("net"),
        scope: scope.into(),
    };
    obs.addresses.extend([
        addr(2, "eth0", "fd00:99::11/64", "global"),
        addr(5, VXLAN_V6, "fd00:244::/128", "global"),
        addr(5, VXLAN_V6, "fe80::64d4:d5ff:fe51:3d42/64", "link"),
    ]);
    let v6 = |r: Route| Route { metric: 1024, ..r };
    let mut remote = route(
        "fd00:244::40/122",
        RouteType::Unicast,
        3,
        0,
        Some("fd00:244::40"),
        Some(VXLAN_V6),
    );
    remote.onlink = true;
    remote.mtu = Some(1430);
    obs.routes.extend([
        v6(route(
            "fd00:99::/64",
            RouteType::Unicast,
            2,
            0,
            None,
            Some("eth0"),
        )),
        v6(route(
            "fe80::/64",
            RouteType::Unicast,
            2,
            0,
            None,
            Some(VXLAN_V6),
        )),
        v6(route(
            "fd00:244::/122",
            RouteType::Blackhole,
            80,
            0,
            None,
            None,
        )),
        v6(remote),
        v6(route(
            "fd00:244::1/128",
            RouteType::Unicast,
            3,
            0,
            None,
            Some(&veth),
        )),
    ]);
    obs.neighbours.push(Neighbour {
        ifindex: 5,
        dev: VXLAN_V6.into(),
        destination: "fd00:244::40".parse().expect("ip"),
        lladdr: Some(vtep_mac_v6("node-b")),
        state: "PERMANENT".into(),
    });
    obs.fdb.push(FdbEntry {
        ifindex: 5,
        dev: VXLAN_V6.into(),
        mac: vtep_mac_v6("node-b"),
        destination: Some("fd00:99::12".parse().expect("ip")),
        vni: None,
        port: None,
        controller: None,
        self_entry: true,
        state: "PERMANENT".into(),
    });
    obs.iptables
        .push(iptables::parse(&ip6tables_hooks(), Some(Backend::Nft), 6));
    let facts = HostFacts {
        links: obs
            .links
            .iter()
            .map(|l| (l.name.clone(), l.mtu, l.is_up()))
            .collect(),
    };
    let expected = compute(&ds, Some("node-a"), &facts).expect("expected");
    (expected, obs)
}

/// `ip6tables-save` of Felix's hooks into its (here empty) chains.
pub(crate) fn ip6tables_hooks() -> String {
    let mut out = String::new();
    for table in ["raw", "mangle", "filter", "nat"] {
        out.push_str(&format!("*{table}\n"));
        let hooks: Vec<_> = super::rules::HOOKS
            .iter()
            .filter(|(t, _, _)| *t == table)
            .collect();
        for (_, builtin, _) in &hooks {
            out.push_str(&format!(":{builtin} ACCEPT [0:0]\n"));
        }
        for (_, _, chain) in &hooks {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for (_, builtin, chain) in &hooks {
            out.push_str(&format!(
                "-A {builtin} -m comment --comment \"cali:test\" -j {chain}\n"
            ));
        }
        out.push_str("COMMIT\n");
    }
    out
}
