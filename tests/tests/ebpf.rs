//! The real eBPF classifier, loaded into the kernel and attached through TCX (or clsact on
//! older kernels) to a veth in a test namespace: counters must equal the packets sent, and
//! nothing of ours may stay attached once the probe is gone.

use agent::flows::{Counts, Direction, IfaceCounterProbe};
use integration_tests::{NetnsGuard, in_netns, unique};
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

fn ip(ns: &str, args: &[&str]) {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    sh::run(&argv).unwrap_or_else(|e| panic!("{e:#}"));
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
        sh::run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
        ])
        .expect("disable ipv6");
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

#[test]
fn counters_equal_packets_sent_and_detach_on_drop() {
    let (_guard, a, b) = quiet_pair();
    let (counts, ifindex, attached_listing) = in_netns(&b, move |_| {
        let mut probe = IfaceCounterProbe::load().expect("load eBPF object");
        probe.attach("vb").expect("attach to vb");
        // bpftool of this Debian release predates TCX in `net show`; links and their programs
        // are listed either way.
        let listing = sh::run(&["bpftool", "link", "show"]).expect("bpftool link")
            + &sh::run(&["bpftool", "prog", "show"]).expect("bpftool prog");
        let status = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &a,
                "ping",
                "-q",
                "-c",
                &PINGS.to_string(),
                "-i",
                "0.01",
                "192.0.2.2",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("ping");
        assert!(status.success(), "ping across the veth failed");
        // /sys shows the mounting namespace's devices, so ask netlink through ip instead.
        let link = sh::run(&["ip", "-o", "link", "show", "vb"]).expect("ip link");
        let ifindex: u32 = link
            .split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .expect("ifindex");
        (probe.counts().expect("read counters"), ifindex, listing)
        // probe dropped here: both links detach.
    });
    assert!(
        attached_listing.contains("dp_tc_ingress") && attached_listing.contains("dp_tc_egress"),
        "{attached_listing}"
    );
    // On TCX kernels each program is held by a bpf_link naming its program id.
    let ours: Vec<&str> = attached_listing
        .lines()
        .filter(|l| l.contains("name dp_tc_"))
        .filter_map(|l| l.split(':').next())
        .collect();
    let links = attached_listing
        .lines()
        .filter(|l| {
            ours.iter()
                .any(|id| l.trim_end().ends_with(&format!("prog {id}")))
        })
        .count();
    assert!(links == 2 || !tcx_kernel(), "{attached_listing}");
    let expect = Counts {
        packets: PINGS,
        bytes: PINGS * ECHO_FRAME,
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

    // Dropping the probe closed the last references: no link and no program of ours is left.
    let after = sh::run(&["bpftool", "prog", "show"]).expect("bpftool prog");
    assert!(
        !after.contains("dp_tc_"),
        "programs still loaded after drop: {after}"
    );
}
