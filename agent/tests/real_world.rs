//! Issue 13 point 7: node dumps users pasted in public Calico issue threads, each kept as
//! pasted in `tests/bundles/real-world/<name>/` with a README citing the thread and the
//! outcome expected from its resolution. `agent check --bundle` (text and `--json`) must give
//! that verdict and exactly those findings: zero false drift on real input, and the drift the
//! threads found where the pasted state shows it.

mod support;

use std::{path::Path, process::Command};

/// A finding as (check, subject).
type Expected = &'static [(&'static str, &'static str)];

/// (bundle, verdict, exit code, findings).
const CORPUS: &[(&str, &str, i32, Expected)] = &[
    ("calico-4254-crosssubnet-all-vxlan", "incomplete", 0, &[]),
    ("felix-2953-vxlan-routes-via-ens5", "incomplete", 0, &[]),
    (
        "calico-5595-borrowed-vxlan-tunnel-address",
        "incomplete",
        0,
        &[],
    ),
    (
        "calico-4606-wireguard-mtu-not-adjusted",
        "drift",
        1,
        &[("mtu.workload.mismatch", "cali56e6e319386")],
    ),
    (
        "calico-4468-vxlan-calico-down",
        "drift",
        1,
        &[("tunnel.down", "vxlan.calico")],
    ),
    (
        "calicoctl-716-ipip-pool-routes-via-gateway",
        "incomplete",
        0,
        &[],
    ),
    ("calicoctl-772-bird-routes-via-eth0", "incomplete", 0, &[]),
    (
        "calicoctl-1377-master-cannot-ping-pods",
        "incomplete",
        0,
        &[],
    ),
    (
        "calico-8953-ipip-large-packets-dropped",
        "incomplete",
        0,
        &[],
    ),
    ("calico-1761-bird-routes-unreachable", "incomplete", 0, &[]),
    (
        "calicoctl-1866-tunl0-same-address-on-two-nodes",
        "incomplete",
        0,
        &[],
    ),
    (
        "calico-10901-vxlan-bound-to-default-route-nic",
        "incomplete",
        0,
        &[],
    ),
    ("calico-5171-vxlan-nodes-behind-nat", "incomplete", 0, &[]),
    (
        "calico-2612-static-ip-in-another-nodes-block",
        "incomplete",
        0,
        &[],
    ),
    (
        "calico-2549-ipv6-blackhole-of-shared-block",
        "incomplete",
        0,
        &[],
    ),
    (
        "calico-3246-blackhole-of-a-block-lent-to-another-node",
        "incomplete",
        0,
        &[],
    ),
];

fn run(dir: &Path, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
    cmd.arg("check").arg("--bundle").arg(dir);
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .env_remove("AGENT_NODE_NAME")
        .env_remove("NODENAME")
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bundles/real-world")
}

#[test]
fn every_bundle_is_in_the_table_and_cites_its_thread() {
    let mut on_disk: Vec<String> = std::fs::read_dir(root())
        .expect("corpus")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CORPUS.iter().map(|(n, ..)| (*n).to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
    assert!(listed.len() >= 15, "at least 15 real-world bundles");
    for name in &listed {
        let readme = std::fs::read_to_string(root().join(name).join("README.md"))
            .unwrap_or_else(|e| panic!("{name}/README.md: {e}"));
        assert!(
            readme.contains("Thread: https://github.com/projectcalico/"),
            "{name}: cite the thread"
        );
        assert!(
            readme.contains("Expected outcome"),
            "{name}: the expected outcome"
        );
    }
}

#[test]
fn each_real_world_bundle_gives_the_expected_verdict_and_findings() {
    let mut failures = Vec::new();
    for (name, verdict, code, want) in CORPUS {
        let dir = root().join(name);
        let (text_code, text, err) = run(&dir, false);
        if text_code != *code || err.contains("panicked") {
            failures.push(format!(
                "{name}: exit {text_code} (want {code}): {text}{err}"
            ));
            continue;
        }
        for (check, subject) in *want {
            if !text.contains(check) || !text.contains(subject) {
                failures.push(format!("{name}: text lacks {check} {subject}:\n{text}"));
            }
        }
        let (json_code, json, err) = run(&dir, true);
        let v: serde_json::Value = match serde_json::from_str(&json) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: --json: {e}: {json}{err}"));
                continue;
            }
        };
        let got = support::json_findings(&v);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(c, s)| ((*c).to_string(), (*s).to_string()))
            .collect();
        if json_code != *code || v["verdict"] != *verdict || got != want {
            failures.push(format!(
                "{name}: --json exit {json_code}, verdict {}, findings {got:?}; want exit {code}, {verdict}, {want:?}",
                v["verdict"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
