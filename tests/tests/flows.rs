//! Flow and drop accounting in the lab: pings between pods on different nodes appear exactly
//! in the interface counters and the flow table at every hop of node-a; a DROP rule shows up
//! under the kernel's NETFILTER_DROP reason, on the workload class and on the dropped flow; a
//! pod sending DF packets above the tunnel MTU is an MTU signal, which `diag` correlates with
//! the mtu finding.

use agent::{
    flows::{Direction, IfaceClass, ProbeOptions, Session, report::FlowsReport},
    observed,
};
use integration_tests::{LabGuard, in_netns, sysctl};
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

/// Silences what the lab's namespaces (switch, nodes and pods) send on their own, so that
/// only the test's packets land in the exact counts: IPv6 (link-local, router solicitations,
/// MLD) is turned off, and IGMP reports for link-local groups (the switch's, which node-a
/// counts and drops) are not sent.
fn quiet(lab: &LabGuard) {
    for ns in lab.0.spec.all_netns() {
        sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "1");
        sysctl(&ns, "net.ipv4.igmp_link_local_mcast_reports", "0");
    }
}

/// Pings node-b's first pod from node-a's first pod.
fn pod_ping(lab: &LabGuard, args: &[&str]) -> bool {
    let to = lab.0.spec.nodes[1].pods[0].ip.to_string();
    ping(&lab.0.spec.nodes[0].pods[0].netns, &to, args)
}

/// `ping -q ARGS TO` in namespace `ns`; whether every reply came.
fn ping(ns: &str, to: &str, args: &[&str]) -> bool {
    let mut argv = vec!["ip", "netns", "exec", ns, "ping", "-q"];
    argv.extend_from_slice(args);
    argv.push(to);
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
    quiet(&lab);
    // Resolve the pods' gateways and the nodes' ARP first, so that only the pings themselves
    // are counted.
    assert!(pod_ping(&lab, &["-c", "1", "-W", "2"]));
    let (pod_ns, to) = (a1.netns.clone(), b1.ip.to_string());
    let r = with_probe(&lab, move || {
        let ok = ping(&pod_ns, &to, &["-c", &PINGS.to_string(), "-i", "0.01"]);
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
    // Every interface saw exactly the pings, nothing else: 98-byte frames (84 IPv4 + 14
    // Ethernet) on the veth and the tunnel; on the underlay each is wrapped in 50 bytes of
    // outer Ethernet, IPv4, UDP and VXLAN headers.
    let counted = |iface: &str, dir: Direction| {
        r.interfaces
            .iter()
            .find(|i| i.iface == iface && i.direction == dir)
            .map(|i| (i.counts.packets, i.counts.bytes))
    };
    for (iface, frame) in [(a1.veth.as_str(), 98), ("vxlan.calico", 98), ("eth0", 148)] {
        for dir in [Direction::Ingress, Direction::Egress] {
            assert_eq!(
                counted(iface, dir),
                Some((PINGS, PINGS * frame)),
                "{iface} {dir:?}: {:#?}\n{:#?}",
                r.interfaces,
                r.flows
            );
        }
    }
}

#[test]
fn a_drop_rule_is_counted_under_netfilter_drop() {
    let lab = LabGuard::up("fd");
    let node = lab.0.spec.nodes[0].clone();
    let (a1, b1) = (node.pods[0].clone(), lab.0.spec.nodes[1].pods[0].clone());
    quiet(&lab);
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
        let ok = ping(
            &pod_ns,
            &to,
            &["-c", &PINGS.to_string(), "-i", "0.01", "-W", "1"],
        );
        assert!(!ok, "the DROP rule lets pings through");
    });
    let nf = r
        .drops
        .iter()
        .find(|d| d.reason == "NETFILTER_DROP")
        .expect("NETFILTER_DROP counted");
    // Drops are counted node-wide: other traffic may add to it, never subtract. The FORWARD
    // chain drops the echo while it is on the pod's veth: the workload class.
    assert!(nf.count >= PINGS, "{:?}", r.drops);
    assert!(
        nf.by_class.get(&IfaceClass::Workload).copied().unwrap_or(0) >= PINGS,
        "{:?}",
        r.drops
    );
    // The dropped flow carries its drops and the reason.
    let echo = r
        .flows
        .iter()
        .find(|f| {
            f.iface == a1.veth && f.flow.proto == 1 && f.flow.sport == 8 && f.flow.dst == b1.ip
        })
        .expect("echo flow on the veth");
    assert_eq!(
        (echo.flow.drops, echo.drop_reason.as_deref()),
        (PINGS, Some("NETFILTER_DROP")),
        "{echo:?}"
    );
    // Dropped flows are listed first.
    assert_eq!(r.flows[0].flow.drops, PINGS);
    assert!(
        r.flows.iter().filter(|f| f.flow.drops > 0).count() == 1,
        "{:#?}",
        r.flows
    );
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
        let ok = ping(
            &pod_ns,
            &to,
            &["-M", "do", "-s", "1460", "-c", "3", "-i", "0.2", "-W", "1"],
        );
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

/// `diag`'s traffic sample on node-a while a pod sends DF packets above the tunnel MTU: the
/// mtu finding is confirmed by the signal. Without the fault, the same traffic (small
/// packets) gives neither finding nor correlation.
#[test]
fn diag_correlates_mtu_signals_with_the_mtu_finding() {
    let lab = LabGuard::up("fc");
    let node = lab.0.spec.nodes[0].clone();
    let a1 = node.pods[0].clone();
    assert!(pod_ping(&lab, &["-c", "1", "-W", "2"]));
    let to = lab.0.spec.nodes[1].pods[0].ip.to_string();
    let sample = |size: &'static str| {
        let (node, pod_ns, to) = (node.clone(), a1.netns.clone(), to.clone());
        in_netns(&node.netns, move |rt| {
            // Attached before the traffic starts, however long loading takes: only the first
            // oversize packet reaches the veth (its ICMP teaches the pod the path MTU).
            let probe = rt
                .block_on(agent::analysis::TrafficProbe::attach(&node.name))
                .expect("attach");
            let traffic = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                ping(
                    &pod_ns,
                    &to,
                    &["-M", "do", "-s", size, "-c", "2", "-i", "0.2", "-W", "1"],
                )
            });
            let mut t = rt.block_on(probe.sample(2)).expect("traffic sample");
            let _ = traffic.join();
            let obs = rt.block_on(observed::read_live(&node.name));
            let policy = agent::verify::Policy {
                now: 0,
                conntrack_pressure: agent::verify::DEFAULT_CONNTRACK_PRESSURE,
            };
            let a = agent::analysis::analyse(&obs, None, &policy);
            t.mtu_correlation = agent::analysis::correlate_mtu(a.verification.as_ref(), &t);
            t
        })
    };
    let healthy = sample("56");
    assert!(healthy.mtu_signals.is_empty(), "{healthy:#?}");
    assert!(healthy.mtu_correlation.is_empty(), "{healthy:#?}");

    lab.0
        .fault(&node.name, Fault::PodMtu)
        .expect("host side 1500");
    sh::run(&["ip", "-n", &a1.netns, "link", "set", "eth0", "mtu", "1500"]).expect("pod side 1500");
    let faulty = sample("1460");
    assert_eq!(faulty.mtu_correlation.len(), 1, "{faulty:#?}");
    let line = &faulty.mtu_correlation[0];
    assert!(
        line.starts_with("confirmed: mtu.workload.mismatch") && line.contains(&a1.veth),
        "{line}"
    );
}
