//! Calico eBPF mode against real maps: each test mounts a fresh bpffs in its own mount (and
//! network) namespace, creates Felix's maps there with Calico's exact layouts through
//! `bpftool`, fills them, and runs the agent binary pointed at it (`AGENT_CALICO_BPF_DIR`).
//! The namespace dies with the test's shell, taking the mount and every map with it: the
//! host's `/sys/fs/bpf` is never touched. Needs root and bpftool.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The lab's datastore: node-a (10.99.0.11) owns 10.244.0.0/26, node-b (10.99.0.12)
/// 10.244.1.0/26, one VXLAN pool.
const LAB: &str = include_str!("../src/verify/testdata/datastore-lab.yaml");
const GLOBALS: &str = "tc/globals";

/// A scratch directory removed on drop (the bpffs mounted on it lives only in the test's
/// namespace, so the directory is empty out here).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("calico-bpf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bpffs")).expect("scratch dir");
        Self(dir)
    }

    fn datastore(&self, bpf_enabled: bool) -> PathBuf {
        self.datastore_from(LAB, "spec: {logSeverityScreen: Info}", bpf_enabled)
    }

    /// `base` with `bpfEnabled` added to its FelixConfiguration spec, `spec`.
    fn datastore_from(&self, base: &str, spec: &str, bpf_enabled: bool) -> PathBuf {
        let path = self.0.join("datastore.yaml");
        let yaml = base.replace(
            spec,
            &format!(
                "{}, bpfEnabled: {bpf_enabled}}}",
                spec.trim_end_matches('}')
            ),
        );
        assert_ne!(yaml, base, "the lab datastore changed shape");
        std::fs::write(&path, yaml).expect("write datastore");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `bpftool map create` for a map pinned under the globals directory.
fn create(name: &str, kind: &str, key: usize, value: usize, entries: u32, flags: u32) -> String {
    format!(
        "bpftool map create \"$G/{name}\" type {kind} key {key} value {value} entries {entries} \
         name {name} flags {flags}\n"
    )
}

fn update(name: &str, key: &[u8], value: &[u8]) -> String {
    format!(
        "bpftool map update pinned \"$G/{name}\" key hex {} value hex {}\n",
        hex(key),
        hex(value)
    )
}

/// A route map entry as Felix writes it: `u32 prefixlen` LE + address, `u32 flags` LE + next
/// hop (or ifindex).
fn route(addr: [u8; 4], len: u32, flags: u32, word: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
    let mut k = len.to_le_bytes().to_vec();
    k.extend(addr);
    let mut v = flags.to_le_bytes().to_vec();
    v.extend(word);
    (k, v)
}

const REMOTE_BLOCK_FLAGS: u32 = 0x1 | 0x4 | 0x40 | 0x400; // in-pool, workload, tunneled, vxlan

/// Felix's route map with its healthy entries for node-a, less `skip_block`.
fn routes_map(value_len: usize, skip_block: bool) -> String {
    let mut s = create("cali_v4_routes", "lpm_trie", 8, value_len, 262_144, 1);
    if value_len != 8 {
        return s;
    }
    let mut entries = vec![
        // node-b's host, and a local pod on ifindex 1.
        route([10, 99, 0, 12], 32, 0x10, [10, 99, 0, 12]),
        route([10, 244, 0, 1], 32, 0x1 | 0x4 | 0x8, 1u32.to_le_bytes()),
    ];
    if !skip_block {
        entries.push(route(
            [10, 244, 1, 0],
            26,
            REMOTE_BLOCK_FLAGS,
            [10, 99, 0, 12],
        ));
    }
    for (k, v) in entries {
        s.push_str(&update("cali_v4_routes", &k, &v));
    }
    s
}

/// Felix's v6 counters map (27 counters) with lo's TC ingress counting 10 packets,
/// 3 dropped by policy and 1 with an unknown route (per CPU; bpftool writes every CPU).
fn counters_map(value_len: usize) -> String {
    let mut s = create("cali_counters6", "percpu_hash", 8, value_len, 20_000, 0);
    if value_len == 216 {
        let mut v = vec![0u8; 216];
        v[0..8].copy_from_slice(&10u64.to_le_bytes());
        v[4 * 8..5 * 8].copy_from_slice(&3u64.to_le_bytes());
        v[12 * 8..13 * 8].copy_from_slice(&1u64.to_le_bytes());
        let mut k = 1u32.to_le_bytes().to_vec();
        k.extend(0u32.to_le_bytes());
        s.push_str(&update("cali_counters6", &k, &v));
    }
    s
}

/// Runs `maps` (bpftool commands, `$G` the globals directory) then `agent` inside a fresh
/// mount and network namespace with a bpffs of its own; returns the agent's stdout.
fn in_bpffs(scratch: &Scratch, maps: &str, agent: &str) -> String {
    let root = scratch.0.join("bpffs");
    let script = format!(
        "set -e\nmount -t bpf bpf \"$R\"\nG=\"$R/{GLOBALS}\"\nmkdir -p \"$G\"\n{maps}\
         ip link set lo up\nexport AGENT_CALICO_BPF_DIR=\"$G\"\n{agent}\n"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "sh", "-c"])
        .arg(&script)
        .env("R", &root)
        .env("AGENT", env!("CARGO_BIN_EXE_agent"))
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stdout.is_empty(),
        "script failed ({}): {}\n{script}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `agent diag --json` against the datastore, read in the namespace.
fn diag(scratch: &Scratch, maps: &str, bpf_enabled: bool) -> serde_json::Value {
    diag_with(scratch, maps, &scratch.datastore(bpf_enabled))
}

fn diag_with(scratch: &Scratch, maps: &str, ds: &Path) -> serde_json::Value {
    let out = in_bpffs(
        scratch,
        maps,
        &format!(
            "\"$AGENT\" diag --json --no-daemon --no-ebpf --drops-seconds 0 --node-name node-a \
             --datastore {} || true",
            ds.display()
        ),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The findings of the eBPF checks, as (check, subject, severity).
fn bpf_findings(v: &serde_json::Value) -> Vec<(String, String, String)> {
    v["verification"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            let c = f["check"].as_str().unwrap_or_default();
            c.starts_with("bpf.") || c == "dataplane.mode.mismatch"
        })
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("check"), s("subject"), s("severity"))
        })
        .collect()
}

fn not_run<'a>(v: &'a serde_json::Value, check: &str) -> Option<&'a serde_json::Value> {
    v["verification"]["skipped"]
        .as_array()?
        .iter()
        .find(|s| s["check"] == check)
}

fn possible_cpus() -> u64 {
    // "0-1", "0", "0-3,5": aya reads the same file for the per-CPU value count.
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("cpus");
    text.trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().expect("cpu") - a.parse::<u64>().expect("cpu") + 1,
            None => 1,
        })
        .sum()
}

fn lab_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn a_healthy_ebpf_node_reads_clean_with_its_maps_and_counters_in_diag() {
    let _l = lab_lock();
    let s = Scratch::new("healthy");
    // And a conntrack map (v4 layout) with one UDP entry: its fill is in the summary too.
    let mut ct_key = 17u32.to_le_bytes().to_vec();
    ct_key.extend([10, 244, 0, 1, 10, 244, 1, 1, 0x35, 0, 0x35, 0]);
    let maps = routes_map(8, false)
        + &counters_map(216)
        + &create("cali_v4_ct4", "lru_hash", 16, 88, 512_000, 0)
        + &update("cali_v4_ct4", &ct_key, &[0u8; 88]);
    let v = diag(&s, &maps, true);
    assert_eq!(bpf_findings(&v), [], "{:#}", v["verification"]);
    assert!(not_run(&v, "bpf.route.missing").is_none());
    let modes = v["diag"]["modes"].to_string();
    assert!(modes.contains("calico-ebpf"), "{modes}");
    let b = &v["diag"]["calico_bpf"];
    let map = |name: &str| {
        b["maps"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {b}"))
    };
    let routes = map("cali_v4_routes");
    assert_eq!(
        (
            &routes["kind"],
            &routes["key_size"],
            &routes["value_size"],
            &routes["entries"]
        ),
        (&"LpmTrie".into(), &8.into(), &8.into(), &3.into()),
        "{routes}"
    );
    let counters = map("cali_counters6");
    assert_eq!(
        (
            &counters["version"],
            &counters["value_size"],
            &counters["entries"]
        ),
        (&6.into(), &216.into(), &1.into())
    );
    let ct = map("cali_v4_ct4");
    assert_eq!(
        (
            &ct["version"],
            &ct["kind"],
            &ct["entries"],
            &ct["max_entries"]
        ),
        (&4.into(), &"LruHash".into(), &1.into(), &512_000.into())
    );
    assert_eq!(b["route_kinds"]["remote workload"], 1, "{b}");
    assert_eq!(b["routes_shown"][0]["destination"], "10.244.1.0/26");
    let cpus = possible_cpus();
    let count = |reason: &str| {
        b["counters"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["reason"] == reason))
            .map(|c| (c["hook"].clone(), c["packets"].as_u64()))
    };
    assert_eq!(
        count("dropped_by_policy"),
        Some(("ingress".into(), Some(3 * cpus))),
        "{b}"
    );
    assert_eq!(count("dropped_unknown_route").and_then(|c| c.1), Some(cpus));
    assert_eq!(count("total_packets").and_then(|c| c.1), Some(10 * cpus));
}

#[test]
fn a_remote_block_without_its_entry_is_missing_and_one_to_another_node_a_wrong_next_hop() {
    let _l = lab_lock();
    let s = Scratch::new("missing");
    let v = diag(&s, &(routes_map(8, true) + &counters_map(216)), true);
    assert_eq!(
        bpf_findings(&v),
        [(
            "bpf.route.missing".into(),
            "10.244.1.0/26".into(),
            "critical".into()
        )]
    );
    // The entry there, pointing at another node.
    let (k, val) = route([10, 244, 1, 0], 26, REMOTE_BLOCK_FLAGS, [10, 99, 0, 13]);
    let v = diag(
        &s,
        &(routes_map(8, true) + &update("cali_v4_routes", &k, &val)),
        true,
    );
    assert_eq!(
        bpf_findings(&v),
        [(
            "bpf.route.wrong-nexthop".into(),
            "10.244.1.0/26".into(),
            "critical".into()
        )]
    );
}

/// The dual-stack lab: node-b (fd00:99::12) owns fd00:244::40/122.
const LAB_DUAL_STACK: &str = include_str!("../src/verify/testdata/datastore-lab-dual-stack.yaml");

/// Felix's IPv6 route map (`map6.go`: 20-byte keys and values) with node-b's block, its next
/// hop `next_hop`, or without it.
fn routes_map_v6(next_hop: Option<&str>) -> String {
    let mut s = create("cali_v6_routes", "lpm_trie", 20, 20, 262_144, 1);
    if let Some(hop) = next_hop {
        let addr = |a: &str| a.parse::<std::net::Ipv6Addr>().expect("ip").octets();
        let mut k = 122u32.to_le_bytes().to_vec();
        k.extend(addr("fd00:244::40"));
        let mut v = REMOTE_BLOCK_FLAGS.to_le_bytes().to_vec();
        v.extend(addr(hop));
        s.push_str(&update("cali_v6_routes", &k, &v));
    }
    s
}

#[test]
fn ipv6_blocks_are_judged_in_the_ipv6_route_map() {
    let _l = lab_lock();
    let s = Scratch::new("v6");
    let ds = s.datastore_from(
        LAB_DUAL_STACK,
        "spec: {logSeverityScreen: Info, ipv6Support: true}",
        true,
    );
    let healthy = routes_map(8, false) + &routes_map_v6(Some("fd00:99::12"));
    let v = diag_with(&s, &healthy, &ds);
    assert_eq!(bpf_findings(&v), [], "{:#}", v["verification"]);
    assert!(not_run(&v, "bpf.route.missing").is_none());
    let b = &v["diag"]["calico_bpf"];
    let v6 = b["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "cali_v6_routes"))
        .unwrap_or_else(|| panic!("cali_v6_routes in {b}"));
    assert_eq!(
        (&v6["key_size"], &v6["value_size"], &v6["entries"]),
        (&20.into(), &20.into(), &1.into()),
        "{v6}"
    );
    assert_eq!(b["route_kinds"]["remote workload"], 2, "{b}");
    let shown = b["routes_shown"].to_string();
    assert!(shown.contains("\"next_hop\":\"fd00:99::12\""), "{shown}");
    let v = diag_with(&s, &(routes_map(8, false) + &routes_map_v6(None)), &ds);
    assert_eq!(
        bpf_findings(&v),
        [(
            "bpf.route.missing".into(),
            "fd00:244::40/122".into(),
            "critical".into()
        )]
    );
    let v = diag_with(
        &s,
        &(routes_map(8, false) + &routes_map_v6(Some("fd00:99::13"))),
        &ds,
    );
    assert_eq!(
        bpf_findings(&v),
        [(
            "bpf.route.wrong-nexthop".into(),
            "fd00:244::40/122".into(),
            "critical".into()
        )]
    );
    // No IPv6 map pinned: Felix's eBPF dataplane is IPv4-only here, not a finding.
    let v = diag_with(&s, &routes_map(8, false), &ds);
    assert_eq!(bpf_findings(&v), []);
    let skipped = not_run(&v, "bpf.route.missing").expect("IPv6 not applicable");
    assert!(
        skipped["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cali_v6_routes")),
        "{skipped}"
    );
}

#[test]
fn an_unknown_layout_is_not_observable_naming_the_sizes() {
    let _l = lab_lock();
    let s = Scratch::new("layout");
    // A route map with 12-byte values and a counter map of 25 counters under version 6.
    let v = diag(&s, &(routes_map(12, false) + &counters_map(200)), true);
    assert_eq!(bpf_findings(&v), [], "no finding from an undecoded map");
    let skipped = not_run(&v, "bpf.route.missing").expect("listed as not run");
    assert_eq!(skipped["kind"], "could-not-observe");
    let reason = skipped["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("8-byte keys and 12-byte values")
            && reason.contains("8-byte keys and 8-byte values"),
        "{reason}"
    );
    let unavailable = v["diag"]["unavailable"].to_string();
    assert!(
        unavailable.contains(
            "version 6 has 8-byte keys and 216-byte values (27 counters), found 8 and 200"
        ),
        "{unavailable}"
    );
    assert!(v["diag"]["calico_bpf"]["counters_map"].is_null());
    // diag's eBPF section says which maps it could not decode, and why.
    let not_decoded = v["diag"]["calico_bpf"]["not_decoded"].to_string();
    assert!(
        not_decoded.contains("cali_v4_routes is a LpmTrie map with 8-byte keys and 12-byte values")
            && not_decoded.contains("cali_counters6: version 6"),
        "{not_decoded}"
    );
}

#[test]
fn the_mode_mismatch_fires_both_ways_and_stays_quiet_when_they_agree() {
    let _l = lab_lock();
    let s = Scratch::new("mode");
    // Configured for eBPF, nothing of it on the node.
    let v = diag(&s, "", true);
    assert_eq!(
        bpf_findings(&v),
        [(
            "dataplane.mode.mismatch".into(),
            "bpfEnabled".into(),
            "critical".into()
        )]
    );
    // Configured off, maps left behind but no program attached: information only.
    let v = diag(&s, &routes_map(8, false), false);
    assert_eq!(
        bpf_findings(&v),
        [(
            "dataplane.mode.mismatch".into(),
            "bpfEnabled".into(),
            "info".into()
        )]
    );
    let skipped = not_run(&v, "bpf.route.missing").expect("not applicable");
    assert_eq!(skipped["kind"], "not-applicable");
    // Configured off, and Felix's eBPF devices up (it removes them when it leaves eBPF mode):
    // its programs are live, a warning.
    let veth = "ip link add bpfin.cali type veth peer name bpfout.cali\n";
    let v = diag(&s, &(routes_map(8, false) + veth), false);
    assert_eq!(
        bpf_findings(&v),
        [(
            "dataplane.mode.mismatch".into(),
            "bpfEnabled".into(),
            "warning".into()
        )]
    );
    // Configured off, and Felix's TC program attached through clsact (no link pin then):
    // found among the interfaces' filters, as Felix finds its own.
    let obj = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bpf/cali_tc_preamble.o");
    let clsact = format!(
        "ip link add v0 type veth peer name v1\ntc qdisc add dev v0 clsact\n\
         tc filter add dev v0 ingress bpf da obj {obj} sec cali_tc_preamble\n"
    );
    let v = diag(&s, &(routes_map(8, false) + &clsact), false);
    assert_eq!(
        bpf_findings(&v),
        [(
            "dataplane.mode.mismatch".into(),
            "bpfEnabled".into(),
            "warning".into()
        )]
    );
    assert_eq!(
        v["diag"]["calico_bpf"]["attached"],
        serde_json::json!(["tc/v0_ingress"])
    );
    // Configured on, and on.
    let v = diag(&s, &(routes_map(8, false) + &clsact), true);
    assert_eq!(bpf_findings(&v), []);
}

#[test]
fn felix_counters_reach_metrics_with_reason_names_and_bounded_labels() {
    let _l = lab_lock();
    let s = Scratch::new("metrics");
    let ds = s.datastore(true);
    let sock = s.0.join("agent.sock");
    let maps = routes_map(8, false) + &routes_map_v6(Some("fd00:99::12")) + &counters_map(216);
    // The daemon in the namespace, scraped once its first verification is in.
    let out = in_bpffs(
        &s,
        &maps,
        &format!(
            "\"$AGENT\" run --no-ebpf --listen 127.0.0.1:19647 --socket {sock} --grace 0 \
             --node-name node-a --datastore {ds} >/dev/null 2>&1 &\n\
             pid=$!\n\
             for i in $(seq 1 100); do\n\
               if curl -sf http://127.0.0.1:19647/metrics > {m}; then\n\
                 grep -q calico_bpf_packets_total {m} && break\n\
               fi\n\
               sleep 0.1\n\
             done\n\
             kill $pid; wait $pid || true\n\
             cat {m}",
            sock = sock.display(),
            ds = ds.display(),
            m = s.0.join("metrics.txt").display(),
        ),
    );
    let cpus = possible_cpus();
    // lo is the underlay-less host's own interface: class "host".
    for (reason, n) in [
        ("dropped_by_policy", 3 * cpus),
        ("dropped_unknown_route", cpus),
        ("total_packets", 10 * cpus),
    ] {
        let line = format!(
            "calico_dpagent_calico_bpf_packets_total{{reason=\"{reason}\",hook=\"ingress\",iface_class=\"host\"}} {n}"
        );
        assert!(out.contains(&line), "{line} not in:\n{out}");
    }
    for (family, n) in [("ipv4", 3), ("ipv6", 1)] {
        let line = format!("calico_dpagent_calico_bpf_routes{{family=\"{family}\"}} {n}");
        assert!(out.contains(&line), "{line} not in:\n{out}");
    }
    for l in out
        .lines()
        .filter(|l| l.starts_with("calico_dpagent_calico_bpf"))
    {
        let labels = l
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map_or("", |(ls, _)| ls);
        for kv in labels.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').expect("label");
            assert!(
                ["reason", "hook", "iface_class", "family"].contains(&k),
                "unexpected label {kv}"
            );
            let v = v.trim_matches('"');
            assert!(
                v.parse::<std::net::IpAddr>().is_err()
                    && !v.contains('/')
                    && !v.starts_with("cali"),
                "unbounded value {kv}"
            );
        }
    }
    assert!(
        Path::new(&s.0)
            .join("bpffs")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_none())
    );
}

#[test]
fn an_older_counter_version_decodes_with_its_own_size_and_the_newest_pinned_wins() {
    let _l = lab_lock();
    let s = Scratch::new("v3");
    // Calico v3.30's cali_counters3: 17 counters, the last conntrack_create_failed.
    let mut v = vec![0u8; 17 * 8];
    v[16 * 8..17 * 8].copy_from_slice(&2u64.to_le_bytes());
    let mut k = 1u32.to_le_bytes().to_vec();
    k.extend(1u32.to_le_bytes());
    let v3 = create("cali_counters3", "percpu_hash", 8, 17 * 8, 20_000, 0)
        + &update("cali_counters3", &k, &v);
    let d = diag(&s, &(routes_map(8, false) + &v3), true);
    let b = &d["diag"]["calico_bpf"];
    assert_eq!(b["counters_map"], "cali_counters3", "{b}");
    assert_eq!(
        b["counters"],
        serde_json::json!([{
            "reason": "conntrack_create_failed",
            "hook": "egress",
            "iface_class": "host",
            "packets": 2 * possible_cpus(),
        }])
    );
    // Left over from before an upgrade: the newest version is the running Felix's.
    let d = diag(&s, &(routes_map(8, false) + &v3 + &counters_map(216)), true);
    assert_eq!(d["diag"]["calico_bpf"]["counters_map"], "cali_counters6");
}
