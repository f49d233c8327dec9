//! The real eBPF programs, loaded into the kernel and attached through TCX (or clsact on
//! older kernels) to a veth in a test namespace: counters and the flow table must equal the
//! packets sent, per-CPU slots must add up, and nothing of ours may stay loaded afterwards.

use agent::{
    flows::{Counts, Direction, IfaceClass, Probe, ProbeOptions, targets},
    observed,
};
use integration_tests::{NetnsGuard, in_netns, ip, sysctl, unique};
use xtask::sh;

const PINGS: u64 = 25;
/// An ICMP echo of 56 data bytes: 8 ICMP + 20 IPv4 + 14 Ethernet (TC sees the L2 header).
const ECHO_FRAME: u64 = 56 + 8 + 20 + 14;

fn tcx_kernel() -> bool {
    let release = sh::run(&["uname", "-r"]).expect("uname");
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 6)
}

/// Two namespaces joined by a veth, with static neighbours and IPv6 off, so that the only
/// packets on the wire are the ones the test sends.
fn quiet_pair() -> (NetnsGuard, String, String) {
    let (a, b) = (unique("ebpfa"), unique("ebpfb"));
    let guard = NetnsGuard::new(&[&a, &b]);
    ip(
        &a,
        &[
            "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ],
    );
    for (ns, dev, addr, peer, peer_mac, mac) in [
        (
            &a,
            "va",
            "192.0.2.1/24",
            "192.0.2.2",
            "02:00:00:00:00:0b",
            "02:00:00:00:00:0a",
        ),
        (
            &b,
            "vb",
            "192.0.2.2/24",
            "192.0.2.1",
            "02:00:00:00:00:0a",
            "02:00:00:00:00:0b",
        ),
    ] {
        sysctl(ns, &format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
        ip(ns, &["link", "set", dev, "address", mac, "up"]);
        ip(ns, &["addr", "add", addr, "dev", dev]);
        ip(
            ns,
            &[
                "neigh",
                "replace",
                peer,
                "dev",
                dev,
                "lladdr",
                peer_mac,
                "nud",
                "permanent",
            ],
        );
    }
    (guard, a, b)
}

/// Pings from namespace `ns`, pinned to `cpu` so that the veth delivers on that CPU.
fn ping_on_cpu(ns: &str, cpu: u32, count: u64) {
    let status = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "taskset",
            "-c",
            &cpu.to_string(),
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.01",
            "192.0.2.2",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("ping");
    assert!(status.success(), "ping across the veth failed");
}

#[test]
fn counters_flows_and_per_cpu_sums_equal_packets_sent_then_detach() {
    let (_guard, a, b) = quiet_pair();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (counts, per_cpu, flows, listing) = in_netns(&b, move |rt| {
        let obs = rt.block_on(observed::read_live("b"));
        let target = targets::select(&obs, Some("vb"))
            .pop()
            .expect("vb is a target");
        let mut probe = Probe::load(ProbeOptions {
            drops: false,
            ..ProbeOptions::default()
        })
        .expect("load eBPF object");
        probe.attach(&target).expect("attach to vb");
        let listing = sh::run(&["bpftool", "link", "show"]).expect("bpftool link")
            + &sh::run(&["bpftool", "prog", "show"]).expect("bpftool prog");
        // Split the traffic over the CPUs: veth delivers on the sender's CPU.
        let per = PINGS / cpus as u64;
        for cpu in 0..cpus as u32 {
            let n = if cpu == 0 {
                PINGS - per * (cpus as u64 - 1)
            } else {
                per
            };
            ping_on_cpu(&a, cpu, n);
        }
        let per_cpu = probe
            .counts_per_cpu(target.ifindex, Direction::Ingress)
            .expect("per-CPU");
        let ids = probe.program_ids();
        (
            probe.counts().expect("counters"),
            per_cpu,
            (probe.flows().expect("flows"), target.ifindex, ids),
            listing,
        )
        // probe dropped here: both links detach.
    });
    let (flows, ifindex, ids) = flows;
    assert!(
        listing.contains("dp_tc_ingress") && listing.contains("dp_tc_egress"),
        "{listing}"
    );
    // On TCX kernels each program is held by a bpf_link naming its program id (this probe's
    // only: another test may hold a probe with links of its own).
    let links = listing
        .lines()
        .filter(|l| {
            ids.iter()
                .any(|id| l.trim_end().ends_with(&format!("prog {id}")))
        })
        .count();
    assert!(links == 2 || !tcx_kernel(), "{listing}");

    let expect = Counts {
        packets: PINGS,
        bytes: PINGS * ECHO_FRAME,
        ..Counts::default()
    };
    assert_eq!(
        counts.get(&(ifindex, Direction::Ingress)),
        Some(&expect),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&(ifindex, Direction::Egress)),
        Some(&expect),
        "{counts:?}"
    );
    assert_eq!(per_cpu.iter().map(|c| c.packets).sum::<u64>(), PINGS);
    if cpus > 1 {
        assert!(
            per_cpu.iter().filter(|c| c.packets > 0).count() > 1,
            "traffic on one CPU only: {per_cpu:?}"
        );
    }
    let echo = flows
        .iter()
        .find(|f| f.proto == 1 && f.sport == 8 && f.src.to_string() == "192.0.2.1")
        .expect("echo flow");
    let reply = flows
        .iter()
        .find(|f| f.proto == 1 && f.sport == 0 && f.src.to_string() == "192.0.2.2")
        .expect("reply flow");
    assert_eq!(
        (echo.packets, echo.bytes, reply.packets),
        (PINGS, PINGS * ECHO_FRAME, PINGS)
    );
    assert!(
        echo.first_ns > 0 && echo.last_ns >= echo.first_ns,
        "{echo:?}"
    );
    assert_eq!(flows.len(), 2, "{flows:?}");

    // Dropping the probe closed the last references: none of its programs is left loaded
    // (other tests hold probes of their own, so compare program ids). The kernel frees a
    // program an RCU grace period after its last reference goes.
    assert!(
        ids.iter().all(|id| listing
            .lines()
            .any(|l| l.starts_with(&format!("{id}: ")) && l.contains(" name dp_"))),
        "{ids:?} not all our programs in {listing}"
    );
    let mut still: Vec<String> = ids.iter().map(ToString::to_string).collect();
    for _ in 0..30 {
        let after = sh::run(&["bpftool", "prog", "show"]).expect("bpftool prog");
        still.retain(|id| after.lines().any(|l| l.starts_with(&format!("{id}:"))));
        if still.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        still.is_empty(),
        "programs {still:?} still loaded after drop"
    );
}

/// Kernel memory charged to this test's flow table (the only `FLOWS` map of 64 entries).
fn flow_table_memlock() -> u64 {
    let out = sh::run(&["bpftool", "-j", "map", "show"]).expect("bpftool map show");
    let maps: serde_json::Value = serde_json::from_str(&out).expect("bpftool JSON");
    maps.as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "FLOWS" && m["max_entries"] == 64)
        .and_then(|m| m["bytes_memlock"].as_u64())
        .expect("the 64-entry FLOWS map and its memlock")
}

#[test]
fn the_flow_table_stays_bounded_under_a_flood_of_unique_flows() {
    let (_guard, a, b) = quiet_pair();
    let (flows, counts) = in_netns(&b, move |rt| {
        let obs = rt.block_on(observed::read_live("b"));
        let target = targets::select(&obs, Some("vb")).pop().expect("vb");
        let mut probe = Probe::load(ProbeOptions {
            flow_table_size: 64,
            drops: false,
            ..ProbeOptions::default()
        })
        .expect("load");
        probe.attach(&target).expect("attach");
        let before = flow_table_memlock();
        // 600 UDP datagrams from fresh ephemeral ports (bash opens a new socket per
        // redirect): ten times the table's capacity in distinct flows.
        let script =
            "for i in $(seq 600); do echo x > /dev/udp/192.0.2.2/9; done 2>/dev/null; true";
        let _ = sh::run(&["ip", "netns", "exec", &a, "bash", "-c", script]);
        // The LRU table is preallocated: the flood evicts, it does not grow.
        assert_eq!(flow_table_memlock(), before);
        (
            probe.flows().expect("flows"),
            probe.counts().expect("counts"),
        )
    });
    let udp: Vec<_> = flows.iter().filter(|f| f.proto == 17).collect();
    assert!(!udp.is_empty(), "no UDP flows seen: {flows:?} {counts:?}");
    // The per-CPU LRU holds at most its capacity per CPU, plus the last flow per direction
    // that each CPU's cache of the interface holds.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        flows.len() <= (64 + 2) * cpus,
        "{} flows in a table of 64",
        flows.len()
    );
}

#[test]
fn syn_retransmissions_and_their_netfilter_drops_are_counted_per_class_and_flow() {
    let ns = unique("rtx");
    let _guard = NetnsGuard::new(&[&ns]);
    ip(&ns, &["link", "set", "lo", "up"]);
    sh::run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "iptables-nft",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-j",
        "DROP",
    ])
    .expect("DROP rule");
    let ns2 = ns.clone();
    let (drops, flows, retransmits, unavailable, unattributed) = in_netns(&ns, move |rt| {
        let obs = rt.block_on(observed::read_live("rtx"));
        let lo = targets::select(&obs, Some("lo")).pop().expect("lo");
        let mut probe = Probe::load(ProbeOptions::default()).expect("load");
        probe.attach(&lo).expect("attach to lo");
        // The SYN is dropped and retransmitted after 1 s and 3 s (each one dropped too).
        let _ = sh::run(&[
            "ip",
            "netns",
            "exec",
            &ns2,
            "timeout",
            "3.5",
            "bash",
            "-c",
            "</dev/tcp/127.0.0.1/9",
        ]);
        (
            probe.drops().expect("drops"),
            probe.flows().expect("flows"),
            probe.retransmits().expect("retransmits"),
            probe.drops_unavailable.clone(),
            probe.drops_unattributed.clone(),
        )
    });
    assert_eq!((unavailable, unattributed), (None, None));
    let names = agent::flows::btf::drop_reasons().expect("drop reason names from BTF");
    let netfilter = names
        .iter()
        .find(|(_, n)| n.as_str() == "NETFILTER_DROP")
        .map(|(code, _)| *code)
        .expect("NETFILTER_DROP");
    // The drops happened on lo in the test's namespace, which the probe registered as an
    // "other" interface; other tests' traffic may add host drops, never these.
    // (3 or 4 SYNs: newer kernels retransmit the first SYNs at linear 1 s intervals.)
    let on_lo = drops
        .get(&(IfaceClass::Other, netfilter))
        .copied()
        .unwrap_or(0);
    assert!((3..=4).contains(&on_lo), "{drops:?}");
    assert!(retransmits >= 2);
    // The dropped SYNs' flow carries the drops and their reason.
    let syn = flows
        .iter()
        .find(|f| f.proto == 6 && f.dport == 9)
        .expect("SYN flow");
    assert_eq!(
        (syn.drops, syn.last_drop_reason, syn.tcp_flags & 0x02),
        (on_lo, Some(netfilter), 0x02),
        "{syn:?}"
    );
    // Nothing else in the namespace was dropped.
    assert!(
        flows.iter().filter(|f| f.dport != 9).all(|f| f.drops == 0),
        "{flows:?}"
    );
}

/// In Calico eBPF mode Felix's programs sit on the same TC hooks. Ours join at the head of the
/// TCX chain and hand every packet on: Felix's keep running, in their order, and stay when
/// ours detach. Our own empty program, attached first, stands in for Felix's.
#[test]
fn programs_already_on_the_hook_keep_their_place() {
    if !tcx_kernel() {
        eprintln!("skipped: no TCX on this kernel (the clsact path runs under QEMU)");
        return;
    }
    let (_guard, a, b) = quiet_pair();
    let (during, after, counts, ifindex) = in_netns(&b, move |rt| {
        let obs = rt.block_on(observed::read_live("b"));
        let target = targets::select(&obs, Some("vb")).pop().expect("vb");
        let chain = || {
            let (_, progs) = aya::programs::SchedClassifier::query_tcx(
                "vb",
                aya::programs::TcAttachType::Ingress,
            )
            .expect("query tcx");
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        let mut felix = Probe::load(ProbeOptions {
            drops: false,
            calibrate: true,
            ..ProbeOptions::default()
        })
        .expect("load the stand-in");
        felix.attach(&target).expect("attach the stand-in");
        let mut ours = Probe::load(ProbeOptions {
            drops: false,
            ..ProbeOptions::default()
        })
        .expect("load");
        ours.attach(&target).expect("attach");
        ping_on_cpu(&a, 0, PINGS);
        let during = chain();
        let counts = ours.counts().expect("counts");
        drop(ours);
        // The link goes with its last reference, which the kernel may drop a moment later.
        let mut after = chain();
        for _ in 0..30 {
            if after.len() < during.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            after = chain();
        }
        (during, after, counts, target.ifindex)
    });
    assert_eq!(during, ["dp_tc_ingress", "dp_tc_noop"]);
    assert_eq!(after, ["dp_tc_noop"]);
    assert_eq!(
        counts
            .get(&(ifindex, Direction::Ingress))
            .map(|c| c.packets),
        Some(PINGS)
    );
}

/// MTU signals must fire on what the MTU really drops and stay quiet otherwise: a bulk TCP
/// transfer moves GSO super-packets far longer than the MTU whose segments fit (quiet); IPv6
/// packets above the MTU and the ICMPv6 Packet Too Big a router answers them with are counted.
#[test]
fn mtu_signals_count_what_the_mtu_drops_and_not_gso_super_packets() {
    let (_guard, a, b) = quiet_pair();
    // IPv6 on the pair too, and b routes fd01::/64 into a veth of MTU 1280.
    for (ns, dev, addr, peer, peer_mac) in [
        (&a, "va", "fd00::1/64", "fd00::2", "02:00:00:00:00:0b"),
        (&b, "vb", "fd00::2/64", "fd00::1", "02:00:00:00:00:0a"),
    ] {
        sysctl(ns, &format!("net.ipv6.conf.{dev}.disable_ipv6"), "0");
        ip(ns, &["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        ip(
            ns,
            &[
                "-6",
                "neigh",
                "replace",
                peer,
                "dev",
                dev,
                "lladdr",
                peer_mac,
                "nud",
                "permanent",
            ],
        );
    }
    ip(&a, &["-6", "route", "add", "fd01::/64", "via", "fd00::2"]);
    sysctl(&b, "net.ipv6.conf.all.forwarding", "1");
    ip(
        &b,
        &[
            "link", "add", "d0", "mtu", "1280", "type", "veth", "peer", "name", "d1",
        ],
    );
    ip(&b, &["link", "set", "d1", "up"]);
    ip(&b, &["link", "set", "d0", "up"]);
    ip(&b, &["-6", "route", "add", "fd01::/64", "dev", "d0"]);
    let (a2, b2) = (a.clone(), b.clone());
    let (bulk, v6) = in_netns(&b, move |rt| {
        let obs = rt.block_on(observed::read_live("b"));
        let target = targets::select(&obs, Some("vb")).pop().expect("vb");
        let probe_with = |mtu: u32| {
            let mut p = Probe::load(ProbeOptions {
                drops: false,
                ..ProbeOptions::default()
            })
            .expect("load");
            let mut t = target.clone();
            t.mtu = mtu;
            p.attach(&t).expect("attach");
            p
        };
        // 4 MB of TCP at the device's own MTU.
        let probe = probe_with(1500);
        let mut server = std::process::Command::new("ip")
            .args(["netns", "exec", &b2, "iperf3", "-s", "-1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 -s");
        // Its start is slow on a busy machine: the client goes once the server listens.
        let start = std::time::Instant::now();
        while !sh::run(&["ip", "netns", "exec", &b2, "ss", "-Hltn", "sport = :5201"])
            .is_ok_and(|out| !out.trim().is_empty())
        {
            if start.elapsed() > std::time::Duration::from_secs(20) {
                let _ = server.kill();
                panic!("iperf3 -s never listened");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let sent = sh::run(&[
            "ip",
            "netns",
            "exec",
            &a2,
            "iperf3",
            "-c",
            "192.0.2.2",
            "-n",
            "4M",
        ]);
        if sent.is_err() {
            // A one-off server that never had its client would wait forever.
            let _ = server.kill();
        }
        let _ = server.wait();
        sent.expect("iperf3 -c");
        let bulk = probe.counts().expect("counts");
        drop(probe);
        // One 1448-byte IPv6 packet (above 1280) forwarded by b into d0: b answers Packet
        // Too Big through vb.
        let probe = probe_with(1280);
        let _ = sh::run(&[
            "ip", "netns", "exec", &a2, "ping", "-6", "-q", "-M", "do", "-s", "1400", "-c", "1",
            "-W", "1", "fd01::9",
        ]);
        (bulk, (probe.counts().expect("counts"), target.ifindex))
    });
    let (v6, ifindex) = v6;
    let bulk_in = bulk
        .get(&(ifindex, Direction::Ingress))
        .copied()
        .unwrap_or_default();
    assert!(
        bulk_in.bytes / bulk_in.packets.max(1) > 1500,
        "no GSO super-packets to judge: {bulk_in:?}"
    );
    assert_eq!(bulk_in.df_oversize, 0, "{bulk:?}");
    let get = |dir| v6.get(&(ifindex, dir)).copied().unwrap_or_default();
    assert_eq!(get(Direction::Ingress).df_oversize, 1, "{v6:?}");
    assert_eq!(get(Direction::Egress).icmp_frag_needed, 1, "{v6:?}");
}
