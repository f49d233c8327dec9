//! What our TC programs cost per packet, timed by the kernel itself (`BPF_PROG_TEST_RUN`,
//! a million runs each) against an empty program in the same run. Prints a Markdown table for
//! BENCHMARKS.md. Needs root (CAP_BPF + CAP_NET_ADMIN); `cargo xtask bench` runs it.

use std::net::Ipv4Addr;

use agent::flows::{IfaceClass, Probe, ProbeOptions, Target};
use agent_common::{PROG_TC_INGRESS, PROG_TC_NOOP};

const REPEAT: u32 = 1_000_000;
/// Best of this many rounds, so that one preempted round does not count. (The kernel reports
/// the average in whole nanoseconds.)
const ROUNDS: usize = 5;

/// An Ethernet + IPv4 + UDP frame of `len` bytes from 10.244.0.5:`sport` to 10.244.1.7:53.
fn udp(sport: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(42)];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p[14] = 0x45;
    let ip_len = (p.len() - 14) as u16;
    p[16..18].copy_from_slice(&ip_len.to_be_bytes());
    p[20] = 0x40; // DF
    p[22] = 64;
    p[23] = 17;
    p[26..30].copy_from_slice(&Ipv4Addr::new(10, 244, 0, 5).octets());
    p[30..34].copy_from_slice(&Ipv4Addr::new(10, 244, 1, 7).octets());
    p[34..36].copy_from_slice(&sport.to_be_bytes());
    p[36..38].copy_from_slice(&53u16.to_be_bytes());
    p
}

fn arp() -> Vec<u8> {
    let mut p = vec![0u8; 42];
    p[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    p
}

fn best_ns(probe: &Probe, prog: &'static str, packet: &[u8], ifindex: u32) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let d = probe.time_tc(prog, packet, ifindex, REPEAT)?;
        best = best.min(d.as_nanos() as f64);
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; there are no options.
    let mut probe = Probe::load(ProbeOptions {
        drops: false,
        ..ProbeOptions::default()
    })?;
    // The programs count for interfaces registered with them; the test runs use loopback's
    // index (the kernel resolves it for the run), registered as a workload with a 1450 MTU.
    let lo = Target {
        name: "lo".into(),
        ifindex: 1,
        mtu: 1450,
        l3: false,
        class: IfaceClass::Workload,
    };
    probe.register(&lo)?;
    let noop = best_ns(&probe, PROG_TC_NOOP, &udp(40000, 64), 1)?;
    let cases = [
        ("IPv4 UDP, flow already in the table", udp(40000, 64)),
        ("IPv4 UDP 1500 B, DF above the MTU", udp(40001, 1500)),
        ("ARP (counters only, no flow)", arp()),
    ];
    println!("| program, packet | ns per run | above the empty program |");
    println!("|---|---|---|");
    println!("| empty program (`dp_tc_noop`) | {noop:.0} | — |");
    let row = |what: &str, ns: f64| {
        println!("| `dp_tc_ingress`, {what} | {ns:.0} | {:.0} |", ns - noop);
    };
    for (what, packet) in cases {
        row(what, best_ns(&probe, PROG_TC_INGRESS, &packet, 1)?);
    }
    probe.release(1)?;
    row(
        "interface not registered (returns at once)",
        best_ns(&probe, PROG_TC_INGRESS, &udp(40000, 64), 1)?,
    );
    Ok(())
}
