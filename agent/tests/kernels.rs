//! The agent on kernels other than the host's: Debian's 6.1 and 6.12 cloud kernels, booted
//! under QEMU by `tests/qemu/run.sh` (see its README). 6.1 has no TCX, so the TC programs
//! attach as clsact filters there; it also has real IPIP (`tunl0`) and kernel WireGuard, which
//! the host kernel lacks. Each guest script prints its results between marker lines.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

const KERNEL: &str = "6.1";

/// The console output of `guest` run on `KERNEL` with a stripped copy of this build's agent.
fn boot(guest: &str) -> String {
    boot_on(KERNEL, guest)
}

fn boot_on(kernel: &str, guest: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // Debug info would make the initramfs ten times larger.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-{kernel}-{guest}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let agent = dir.join("agent");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&agent)
        .arg(env!("CARGO_BIN_EXE_agent"))
        .status()
        .expect("strip (binutils)");
    assert!(status.success(), "strip failed");
    let out = Command::new(root.join("tests/qemu/run.sh"))
        .arg(kernel)
        .arg(root.join("tests/qemu/guest").join(guest))
        .arg(&agent)
        .output()
        .expect("tests/qemu/run.sh");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{guest} on {kernel} exited {:?}\n--- console ---\n{console}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    console
}

/// The lines between `NAME-BEGIN` and `NAME-END`.
fn block(console: &str, name: &str) -> String {
    console
        .lines()
        .skip_while(|l| l.trim() != format!("{name}-BEGIN"))
        .skip(1)
        .take_while(|l| l.trim() != format!("{name}-END"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn json(console: &str, name: &str) -> Value {
    let text = block(console, name);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{console}"))
}

/// (packets, bytes) of `iface` in `dir` from an `agent flows --json` report.
fn counted(flows: &Value, iface: &str, dir: &str) -> (u64, u64, String) {
    let row = flows["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["iface"] == iface && i["direction"] == dir)
        .unwrap_or_else(|| panic!("no {iface} {dir} in {flows}"));
    (
        row["packets"].as_u64().unwrap_or(0),
        row["bytes"].as_u64().unwrap_or(0),
        row["class"].as_str().unwrap_or_default().to_string(),
    )
}

/// Packets of the ICMP flow `src` → `dst` with type `icmp_type` on `iface`.
fn icmp_packets(flows: &Value, iface: &str, src: &str, dst: &str, icmp_type: u64) -> u64 {
    flows["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["iface"] == iface
                && f["proto"] == 1
                && f["src"] == src
                && f["dst"] == dst
                && f["sport"] == icmp_type
        })
        .filter_map(|f| f["packets"].as_u64())
        .sum()
}

fn assert_clean_exit(console: &str) {
    assert!(console.contains("AGENT-EXIT=0"), "{console}");
    assert!(console.contains("TC-AFTER-LEFTOVER=0"), "{console}");
}

/// Five pings across a workload veth, attached with `attach` on `kernel`.
fn workload_veth_counts_exactly(kernel: &str, attach: &str) {
    let console = boot_on(kernel, "workload.sh");
    assert!(console.contains(&format!("KERNEL={kernel}.")), "{console}");
    let flows = json(&console, "FLOWS-JSON");
    assert_eq!(flows["attach"], attach, "{flows}");
    // Five 98-byte echo frames out of the host side, five replies in.
    for dir in ["ingress", "egress"] {
        assert_eq!(
            counted(&flows, "cali1234567890a", dir),
            (5, 490, "workload".into()),
            "{dir}: {flows}"
        );
    }
    assert_eq!(
        icmp_packets(&flows, "cali1234567890a", "10.0.0.1", "10.0.0.2", 8),
        5
    );
    assert_eq!(
        icmp_packets(&flows, "cali1234567890a", "10.0.0.2", "10.0.0.1", 0),
        5
    );
    assert_clean_exit(&console);
}

#[test]
fn clsact_attach_counts_exactly_and_detaches_on_6_1() {
    workload_veth_counts_exactly("6.1", "clsact");
}

#[test]
fn tcx_attach_counts_exactly_and_detaches_on_6_12() {
    workload_veth_counts_exactly("6.12", "tcx");
}

#[test]
fn ipip_tunl0_is_counted_as_a_bare_ip_tunnel_on_6_1() {
    let console = boot("ipip.sh");
    let flows = json(&console, "FLOWS-JSON");
    // tunl0 carries bare IPv4 (84-byte echoes, no Ethernet header); the underlay carries
    // them inside IPv4 protocol 4 with Ethernet (14 + 20 + 84).
    for dir in ["ingress", "egress"] {
        assert_eq!(
            counted(&flows, "tunl0", dir),
            (5, 420, "tunnel".into()),
            "{flows}"
        );
        assert_eq!(counted(&flows, "eth0", dir).2, "underlay");
    }
    assert_eq!(
        icmp_packets(&flows, "tunl0", "10.244.0.1", "10.244.1.1", 8),
        5
    );
    assert_clean_exit(&console);
}

#[test]
fn kernel_wireguard_is_counted_and_verified_on_6_1() {
    let console = boot("wireguard.sh");
    let flows = json(&console, "FLOWS-JSON");
    for dir in ["ingress", "egress"] {
        assert_eq!(
            counted(&flows, "wireguard.cali", dir),
            (5, 420, "tunnel".into()),
            "{flows}"
        );
    }
    assert_clean_exit(&console);
    // diag over the kernel's own WireGuard device: the mode is recognised, the peer read,
    // and a healthy node yields no finding.
    let diag = json(&console, "DIAG-JSON");
    assert!(
        diag["diag"]["modes"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "wireguard")),
        "{diag}"
    );
    assert_eq!(
        diag["verification"]["findings"].as_array().map(Vec::len),
        Some(0),
        "{diag}"
    );
    assert!(console.contains("DIAG-EXIT=0"), "{console}");
}

/// (check, subject) of every finding in the guest's `PHASE-<phase>` analysis.
fn findings(console: &str, phase: &str) -> Vec<(String, String)> {
    let a = json(console, &format!("PHASE-{phase}"));
    let mut f: Vec<(String, String)> = a["verification"]["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("{phase}: no findings array in {a}"))
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap_or_default().to_string(),
                f["subject"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    f.sort();
    f
}

/// Issue 14: a Felix-shaped dual-stack kernel WireGuard node pair (`wireguard.cali` and
/// `wg-v6.cali`) passes traffic in both families, verifies clean against its datastore (peers
/// read over generic netlink), and each fault injected into either device is reported with the
/// right check and subject.
fn felix_shaped_wireguard_on(kernel: &str) {
    let console = boot_on(kernel, "wireguard_felix.sh");
    assert!(console.contains(&format!("KERNEL={kernel}.")), "{console}");
    assert!(console.contains("PING-RC=0"), "{console}");
    assert!(console.contains("PING6-RC=0"), "{console}");
    let healthy = json(&console, "PHASE-healthy");
    assert_eq!(findings(&console, "healthy"), [], "{healthy}");
    let skipped: Vec<&str> = healthy["verification"]["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["check"].as_str())
        .filter(|c| c.starts_with("wireguard.") && *c != "wireguard.peer.stale-handshake")
        .collect();
    assert_eq!(skipped, Vec::<&str>::new(), "{healthy}");
    let devices = healthy["diag"]["wireguard"]
        .as_array()
        .unwrap_or_else(|| panic!("no diag.wireguard in {healthy}"));
    let endpoint_of = |dev: &str| {
        let d = devices
            .iter()
            .find(|d| d["name"] == dev)
            .unwrap_or_else(|| panic!("{dev} not in diag.wireguard: {healthy}"));
        // Its own family's rule only.
        assert_eq!(d["rules"].as_array().map(Vec::len), Some(1), "{healthy}");
        let peer = &d["peer_details"][0];
        assert_eq!(peer["node"], "node-b", "{healthy}");
        assert!(peer["handshake_age_secs"].is_u64(), "{healthy}");
        peer["endpoint"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(endpoint_of("wireguard.cali"), "192.168.50.2:51820");
    assert_eq!(endpoint_of("wg-v6.cali"), "[fd00:50::2]:51821");
    let text = block(&console, "DIAG-TEXT");
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for line in [
        "node-b 192.168.50.2:51820 2 allowed IP(s) handshake",
        "node-b [fd00:50::2]:51821 2 allowed IP(s) handshake",
    ] {
        assert!(flat.contains(line), "{line} not in\n{text}");
    }
    let s = |c: &str, subject: &str| vec![(c.to_string(), subject.to_string())];
    for (suffix, dev, peer, rule, route) in [
        (
            "",
            "wireguard.cali",
            "node-b",
            "ip rule 99",
            "10.244.1.0/26",
        ),
        (
            "-v6",
            "wg-v6.cali",
            "node-b (wg-v6.cali)",
            "ip -6 rule 99",
            "fd00:244::40/122",
        ),
    ] {
        for (phase, want) in [
            ("peer-missing", s("wireguard.peer.missing", peer)),
            ("allowed-ips", s("wireguard.allowed-ips.mismatch", peer)),
            ("rule-missing", s("wireguard.rule.missing", rule)),
            // The kernel also flushes the routes through a device that loses its last IPv4
            // address: the address is the one cause reported, not each withdrawn route.
            ("address-missing", s("tunnel.address.mismatch", dev)),
            ("mtu", s("mtu.tunnel.mismatch", dev)),
            ("listen-port", s("wireguard.listen-port.mismatch", dev)),
            ("route-missing", s("wireguard.route.missing", route)),
        ] {
            let phase = format!("{phase}{suffix}");
            assert_eq!(findings(&console, &phase), want, "{phase}");
        }
    }
    assert_eq!(findings(&console, "repaired"), [], "repaired");
    assert!(console.contains("PING-AFTER-RC=0"), "{console}");
    assert!(console.contains("PING6-AFTER-RC=0"), "{console}");
}

#[test]
fn felix_shaped_kernel_wireguard_is_verified_with_faults_on_6_1() {
    felix_shaped_wireguard_on("6.1");
}

#[test]
fn felix_shaped_kernel_wireguard_is_verified_with_faults_on_6_12() {
    felix_shaped_wireguard_on("6.12");
}
