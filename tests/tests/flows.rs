//! Flow and drop accounting in the lab: pings between pods on different nodes appear exactly
//! in the flow table at every hop of node-a; a DROP rule shows up under the kernel's
//! NETFILTER_DROP reason; a pod sending DF packets above the tunnel MTU is an MTU signal.

use agent::{
    flows::{Direction, ProbeOptions, Session, report::FlowsReport},
    observed,
};
use integration_tests::{LabGuard, in_netns};
use xtask::{lab::Fault, sh};

const PINGS: u64 = 20;

/// Runs `traffic` while node-a's probe is attached, and returns node-a's report.
fn with_probe(lab: &LabGuard, traffic: impl FnOnce() + Send + 'static) -> FlowsReport {
    let node = lab.0.spec.nodes[0].clone();
    in_netns(&node.netns, move |rt| {
        let mut session = Session::start(ProbeOptions::default(), None).expect("load eBPF");
        session.refresh(&rt.block_on(observed::read_live(&node.name)));
        let attached: Vec<&str> = session.targets.iter().map(|t| t.name.as_str()).collect();
        assert!(
            attached.contains(&"vxlan.calico") && attached.contains(&"eth0"),
            "{attached:?}"
        );
        traffic();
        session.report(&node.name, 0, 1000).expect("report")
    })
}

fn pod_ping(lab: &LabGuard, args: &[&str]) -> bool {
    let pod = &lab.0.spec.nodes[0].pods[0];
    let to = lab.0.spec.nodes[1].pods[0].ip.to_string();
    let mut argv = vec!["ip", "netns", "exec", pod.netns.as_str(), "ping", "-q"];
    argv.extend_from_slice(args);
    argv.push(&to);
    sh::ok(&argv)
}

fn packets(
    r: &FlowsReport,
    iface: &str,
    proto: u8,
    src: &str,
    dst: &str,
    sport: Option<u16>,
) -> u64 {
    r.flows
        .iter()
        .filter(|f| {
            f.iface == iface
                && f.flow.proto == proto
                && f.flow.src.to_string() == src
                && f.flow.dst.to_string() == dst
        })
        .filter(|f| sport.is_none_or(|p| f.flow.sport == p))
        .map(|f| f.flow.packets)
        .sum()
}

#[test]
fn pod_to_pod_pings_are_counted_exactly_at_every_hop() {
    let lab = LabGuard::up("fl");
    let (a1, b1) = (
        lab.0.spec.nodes[0].pods[0].clone(),
        lab.0.spec.nodes[1].pods[0].clone(),
    );
    // Resolve the pods' gateways first, so that only the pings themselves are counted.
    assert!(pod_ping(&lab, &["-c", "1", "-W", "2"]));
    let (pod_ns, to) = (a1.netns.clone(), b1.ip.to_string());
    let r = with_probe(&lab, move || {
        let ok = sh::ok(&[
            "ip",
            "netns",
            "exec",
            &pod_ns,
            "ping",
            "-q",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.01",
            &to,
        ]);
        assert!(ok, "pings across the tunnel");
    });
    let (a, b) = (a1.ip.to_string(), b1.ip.to_string());
    // Echo requests: in from the pod's veth, out through the tunnel; replies the other way.
    assert_eq!(packets(&r, &a1.veth, 1, &a, &b, Some(8)), PINGS, "{r:#?}");
    assert_eq!(packets(&r, "vxlan.calico", 1, &a, &b, Some(8)), PINGS);
    assert_eq!(packets(&r, "vxlan.calico", 1, &b, &a, Some(0)), PINGS);
    assert_eq!(packets(&r, &a1.veth, 1, &b, &a, Some(0)), PINGS);
    // Encapsulated on the underlay: UDP to port 4789 between the nodes, both ways.
    let vxlan_out: u64 = r
        .flows
        .iter()
        .filter(|f| {
            f.iface == "eth0"
                && f.flow.proto == 17
                && f.flow.dport == 4789
                && f.flow.src.to_string() == "10.99.0.11"
        })
        .map(|f| f.flow.packets)
        .sum();
    assert_eq!(vxlan_out, PINGS);
    let tunnel_in = r
        .interfaces
        .iter()
        .find(|i| i.iface == "vxlan.calico" && i.direction == Direction::Ingress)
        .expect("counters");
    assert!(tunnel_in.counts.packets >= PINGS, "{tunnel_in:?}");
}

#[test]
fn a_drop_rule_is_counted_under_netfilter_drop() {
    let lab = LabGuard::up("fd");
    let node = lab.0.spec.nodes[0].clone();
    let (a1, b1) = (node.pods[0].clone(), lab.0.spec.nodes[1].pods[0].clone());
    assert!(pod_ping(&lab, &["-c", "1", "-W", "2"]));
    let rule = [
        "-s",
        &a1.ip.to_string(),
        "-d",
        &b1.ip.to_string(),
        "-p",
        "icmp",
        "-j",
        "DROP",
    ]
    .map(str::to_string);
    let mut insert = vec![
        "ip",
        "netns",
        "exec",
        &node.netns,
        "iptables-nft",
        "-I",
        "FORWARD",
        "1",
    ];
    insert.extend(rule.iter().map(String::as_str));
    sh::run(&insert).expect("insert DROP rule");
    let (pod_ns, to) = (a1.netns.clone(), b1.ip.to_string());
    let r = with_probe(&lab, move || {
        let ok = sh::ok(&[
            "ip",
            "netns",
            "exec",
            &pod_ns,
            "ping",
            "-q",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
            &to,
        ]);
        assert!(!ok, "the DROP rule lets pings through");
    });
    let nf = r
        .drops
        .iter()
        .find(|d| d.reason == "NETFILTER_DROP")
        .expect("NETFILTER_DROP counted");
    // Drops are counted node-wide: other traffic may add to it, never subtract.
    assert!(nf.count >= PINGS, "{:?}", r.drops);
    assert_eq!(
        packets(
            &r,
            &a1.veth,
            1,
            &a1.ip.to_string(),
            &b1.ip.to_string(),
            Some(8)
        ),
        PINGS
    );
    assert_eq!(
        packets(
            &r,
            "vxlan.calico",
            1,
            &a1.ip.to_string(),
            &b1.ip.to_string(),
            Some(8)
        ),
        0
    );
}

#[test]
fn df_packets_above_the_tunnel_mtu_are_an_mtu_signal() {
    let lab = LabGuard::up("fm");
    let node = lab.0.spec.nodes[0].clone();
    let a1 = node.pods[0].clone();
    assert!(pod_ping(&lab, &["-c", "1", "-W", "2"]));
    // A pod whose MTU (1500) exceeds the tunnel's (1450): its DF packets cannot be carried.
    lab.0
        .fault(&node.name, Fault::PodMtu)
        .expect("host side 1500");
    sh::run(&["ip", "-n", &a1.netns, "link", "set", "eth0", "mtu", "1500"]).expect("pod side 1500");
    let to = lab.0.spec.nodes[1].pods[0].ip.to_string();
    let pod_ns = a1.netns.clone();
    let r = with_probe(&lab, move || {
        let ok = sh::ok(&[
            "ip", "netns", "exec", &pod_ns, "ping", "-q", "-M", "do", "-s", "1460", "-c", "3",
            "-i", "0.2", "-W", "1", &to,
        ]);
        assert!(!ok, "1488-byte DF packets crossed a 1450 tunnel");
    });
    let veth_in = r
        .interfaces
        .iter()
        .find(|i| i.iface == a1.veth && i.direction == Direction::Ingress)
        .expect("veth in");
    // The first oversize packet is sent; the fragmentation-needed reply teaches the pod the
    // path MTU, and later ones fail locally (EMSGSIZE) without leaving the pod.
    assert_eq!(veth_in.counts.df_oversize, 1, "{veth_in:?}");
    let veth_out = r
        .interfaces
        .iter()
        .find(|i| i.iface == a1.veth && i.direction == Direction::Egress)
        .expect("veth out");
    assert!(
        veth_out.counts.icmp_frag_needed >= 1,
        "the node's fragmentation-needed reply: {veth_out:?}"
    );
    assert!(
        r.flows
            .iter()
            .any(|f| f.iface == a1.veth && f.flow.df_oversize),
        "flow not marked"
    );
}
