//! The conntrack dump, in a namespace of our own holding entries made with the `conntrack` CLI:
//! exact totals, per protocol and per TCP state, agreement with `conntrack -L`, and a table
//! large enough that the dump spans many datagrams.

use std::collections::BTreeMap;

use agent::observed::conntrack::{ConntrackCounts, dump_counts};
use integration_tests::{NetnsGuard, in_netns, unique};
use xtask::sh;

/// Entries live this long (seconds): far longer than the test.
const TIMEOUT: &str = "600";

/// Loads entries into `ns`, one `conntrack` argument line each, in one `conntrack -R` run.
fn load(ns: &str, lines: &[String]) {
    let input = lines.join("\n") + "\n";
    sh::run_with_input(
        &["ip", "netns", "exec", ns, "conntrack", "-R", "-"],
        Some(&input),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn tcp(src: &str, dst: &str, sport: u16, state: &str) -> String {
    format!(
        "-I -p tcp -s {src} -d {dst} --sport {sport} --dport 80 --state {state} -t {TIMEOUT} -u SEEN_REPLY"
    )
}

fn udp(src: &str, dst: &str, sport: u16) -> String {
    format!("-I -p udp -s {src} -d {dst} --sport {sport} --dport 53 -t {TIMEOUT}")
}

fn dump_in(ns: &str) -> ConntrackCounts {
    in_netns(ns, |_| dump_counts()).unwrap_or_else(|e| panic!("dump in {ns}: {e:?}"))
}

fn map(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_string(), *v))
        .collect()
}

/// The same counts, from `conntrack -L` (every family; `tcp 6 599 ESTABLISHED src=…`).
fn counts_from_cli(ns: &str) -> ConntrackCounts {
    let out = sh::run(&["ip", "netns", "exec", ns, "conntrack", "-L"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut counts = ConntrackCounts {
        complete: true,
        ..Default::default()
    };
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let protocol = match fields[0] {
            p @ ("tcp" | "udp" | "icmp") => p,
            "icmpv6" => "icmp",
            _ => "other",
        };
        counts.total += 1;
        *counts.by_protocol.entry(protocol.to_string()).or_default() += 1;
        if protocol == "tcp" {
            *counts.tcp_states.entry(fields[3].to_string()).or_default() += 1;
        }
    }
    counts
}

#[test]
fn counts_every_protocol_and_tcp_state() {
    let ns = unique("ct");
    let _guard = NetnsGuard::new(&[&ns]);
    assert_eq!(
        dump_in(&ns),
        ConntrackCounts {
            complete: true,
            ..Default::default()
        },
        "a new namespace has an empty table"
    );

    let mut lines = Vec::new();
    for (sport, state) in [
        (1000, "ESTABLISHED"),
        (1001, "ESTABLISHED"),
        (1002, "ESTABLISHED"),
        (1003, "SYN_SENT"),
        (1004, "SYN_SENT"),
        (1005, "SYN_RECV"),
        (1006, "FIN_WAIT"),
        (1007, "CLOSE_WAIT"),
        (1008, "LAST_ACK"),
        (1009, "TIME_WAIT"),
        (1010, "TIME_WAIT"),
        (1011, "TIME_WAIT"),
        (1012, "CLOSE"),
    ] {
        lines.push(tcp("10.0.0.1", "10.0.0.2", sport, state));
    }
    lines.push(tcp("fd00::1", "fd00::2", 1000, "ESTABLISHED"));
    for sport in [2000, 2001, 2002] {
        lines.push(udp("10.0.0.1", "10.0.0.3", sport));
    }
    lines.push(udp("fd00::1", "fd00::3", 2000));
    for id in [7, 8] {
        lines.push(format!(
            "-I -p icmp -s 10.0.0.1 -d 10.0.0.4 --icmp-type 8 --icmp-code 0 --icmp-id {id} -t {TIMEOUT}"
        ));
    }
    lines.push(format!(
        "-I -p icmpv6 -s fd00::1 -d fd00::4 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 7 -t {TIMEOUT}"
    ));
    lines.push(format!(
        "-I -p udplite -s 10.0.0.1 -d 10.0.0.5 --sport 5 --dport 6 -t {TIMEOUT}"
    ));
    lines.push(format!(
        "-I -p gre -s 10.0.0.1 -d 10.0.0.6 --srckey 5 --dstkey 6 -t {TIMEOUT}"
    ));
    load(&ns, &lines);

    let counts = dump_in(&ns);
    assert_eq!(
        counts,
        ConntrackCounts {
            total: 23,
            by_protocol: map(&[("tcp", 14), ("udp", 4), ("icmp", 3), ("other", 2)]),
            tcp_states: map(&[
                ("ESTABLISHED", 4),
                ("SYN_SENT", 2),
                ("SYN_RECV", 1),
                ("FIN_WAIT", 1),
                ("CLOSE_WAIT", 1),
                ("LAST_ACK", 1),
                ("TIME_WAIT", 3),
                ("CLOSE", 1),
            ]),
            complete: true,
        }
    );
    assert_eq!(counts, counts_from_cli(&ns), "agrees with conntrack -L");
    // Another namespace's table is not ours: the host's (or any other) is not counted here.
    let other = unique("ct");
    let _other_guard = NetnsGuard::new(&[&other]);
    assert_eq!(dump_in(&other).total, 0);
}

#[test]
fn a_large_table_streams_across_many_datagrams() {
    // ~300 bytes an entry and at most 32 KiB a datagram: 5000 entries take about 50 datagrams.
    const ENTRIES: u16 = 5000;
    let ns = unique("ct");
    let _guard = NetnsGuard::new(&[&ns]);
    let lines: Vec<String> = (0..ENTRIES)
        .map(|i| udp("10.1.0.1", "10.1.0.2", 10_000 + i))
        .chain((0..ENTRIES).map(|i| tcp("10.1.0.1", "10.1.0.2", 10_000 + i, "TIME_WAIT")))
        .collect();
    load(&ns, &lines);
    let counts = dump_in(&ns);
    let n = u64::from(ENTRIES);
    assert_eq!(
        counts,
        ConntrackCounts {
            total: 2 * n,
            by_protocol: map(&[("tcp", n), ("udp", n)]),
            tcp_states: map(&[("TIME_WAIT", n)]),
            complete: true,
        }
    );
    assert_eq!(counts, counts_from_cli(&ns));
}
