//! Policy-only Calico on the AWS VPC CNI, in the VPC CNI lab (`xtask::lab::vpc_cni`): a healthy
//! node passes traffic and verifies clean, with Calico's routing checks listed as not
//! applicable; each injected fault is reported under its own check ID and subject; `agent diag`
//! shows the mode and each pod's plumbing. Needs root (network namespaces).

mod support;

use std::process::Command;

use serde_json::Value;
use xtask::lab::vpc_cni::{INTERNET_HOST, NODE_NAME, VPC_HOST, VpcFault, VpcLab};

struct Down(VpcLab);

impl Drop for Down {
    fn drop(&mut self) {
        self.0.down();
    }
}

/// `agent <args>` inside the lab node's namespace, never asking a running daemon.
fn agent(lab: &VpcLab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.node.netns])
        .arg(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .args(["--node-name", NODE_NAME, "--no-daemon"])
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_json(lab: &VpcLab, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["check", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = agent(lab, &args);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, v)
}

/// A fault, the (check, subject) it must give, and a ping (from pod, to) it must break.
type Case = (VpcFault, &'static str, String, Option<Lost>);
type Lost = (&'static str, std::net::Ipv4Addr);

/// Calico routing checks: not applicable on this node.
const NOT_APPLICABLE: &[&str] = &[
    "route.missing",
    "route.blackhole.missing",
    "route.workload.missing",
    "tunnel.missing",
    "tunnel.down",
    "vxlan.fdb.missing",
    "vxlan.neigh.missing",
    "mtu.workload.mismatch",
    "nat-outgoing.missing",
];

#[test]
fn vpc_cni_node_verifies_clean_and_reports_each_fault() {
    let lab = Down(VpcLab::new(&format!(
        "cdpt-vpc{}",
        std::process::id() % 10000
    )));
    let lab = &lab.0;
    lab.up().expect("VPC CNI lab up");
    lab.check_connectivity()
        .expect("pods reach each other, the VPC and the internet");
    let ds_dir = std::env::temp_dir().join(format!("{}-ds", lab.node.netns));
    lab.write_datastore(&ds_dir).expect("datastore");
    let ds = ds_dir.to_string_lossy().into_owned();

    // Healthy, with and without the datastore: zero findings; Calico routing not run.
    for extra in [&[][..], &["--datastore", &ds][..]] {
        let (code, v) = check_json(lab, extra);
        assert_eq!(code, 0, "{extra:?}: {:#}", v["verification"]);
        assert!(
            support::json_findings(&v).is_empty(),
            "{:?}",
            support::json_findings(&v)
        );
        let skipped = v["verification"]["skipped"].as_array().expect("skipped");
        for id in NOT_APPLICABLE {
            assert!(
                skipped.iter().any(|s| s["check"] == *id
                    && s["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("not applicable"))),
                "{id} not listed as not applicable: {skipped:#?}"
            );
        }
        for id in [
            "vpccni.route.missing",
            "vpccni.rule.missing",
            "vpccni.snat.missing",
            "rules.dispatch.missing",
            "rules.felix.missing",
        ] {
            assert!(
                !skipped.iter().any(|s| s["check"] == id),
                "{id} did not run: {skipped:#?}"
            );
        }
    }

    // diag: the mode with its evidence, and the VPC CNI's per-pod plumbing.
    let (code, out, err) = agent(lab, &["diag", "--no-ebpf"]);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        &format!("node {NODE_NAME}  mode: policy-only"),
        "AWS VPC CNI plumbs the pods: 4 eni… veth(s), 4 `512: to <pod> lookup main` and 2 `1536: from <pod>` rule(s), nat AWS-SNAT-CHAIN-0 in iptables-nft",
        "Felix's cali-FORWARD dispatches -i eni+",
        "AWS VPC CNI (it routes the pods; Felix enforces policy on eni+)",
        "primary ENI eth0 10.0.1.10/24 (main table)  rp_filter 2",
        "table 2: default via 10.0.2.1 dev eth1 table 2",
        "SNAT: AWS-SNAT-CHAIN-0 in iptables-nft (2 rule(s), hooked) to 10.0.1.10",
        "connmark: AWS-CONNMARK-CHAIN-0",
    ] {
        // Human output wraps at 80 columns: compare the words.
        let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat(&out).contains(&flat(want)),
            "missing {want:?} in:\n{out}"
        );
    }
    let redis = lab.pod("redis").expect("redis");
    let nginx = lab.pod("nginx").expect("nginx");
    assert!(
        out.lines().any(|l| l.contains(&format!("{}  ", redis.ip))
            && l.contains(&format!("dev {}", redis.veth))
            && l.contains("512: yes")
            && l.contains("1536: table 2")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(&format!("dev {}", nginx.veth))
                && l.contains("1536: - (primary ENI)")),
        "{out}"
    );
    let (_, json, _) = agent(lab, &["diag", "--no-ebpf", "--json"]);
    let d: Value = serde_json::from_str(&json).expect("diag JSON");
    assert_eq!(d["diag"]["modes"], serde_json::json!(["policy-only"]));
    assert_eq!(
        d["diag"]["vpc_cni"]["pods"].as_array().map(Vec::len),
        Some(4)
    );

    // Each fault: its check ID and subject, nothing else; where it costs traffic, the traffic
    // the VPC CNI's object carries is lost.
    let client = lab.pod("client").expect("client");
    let cases: &[Case] = &[
        (
            VpcFault::RouteDelete,
            "vpccni.route.missing",
            redis.veth.clone(),
            Some(("client", redis.ip)),
        ),
        (
            VpcFault::ToRuleDelete,
            "vpccni.rule.missing",
            format!("to {}", redis.ip),
            // A pod on the same secondary ENI: its 1536 rule sends it out of the node.
            Some(("server", redis.ip)),
        ),
        (
            VpcFault::FromRuleDelete,
            "vpccni.rule.missing",
            format!("from {}", redis.ip),
            // Out of the primary ENI with a source it does not own: the VPC drops it.
            Some(("redis", VPC_HOST)),
        ),
        (
            VpcFault::TableFlush,
            "vpccni.table.missing",
            "table 2".into(),
            Some(("redis", VPC_HOST)),
        ),
        (
            VpcFault::RpFilterStrict,
            "vpccni.rp-filter.strict",
            "eth0".into(),
            // De-SNATed replies for a secondary-ENI pod arrive on eth0: martians.
            Some(("redis", INTERNET_HOST)),
        ),
        (
            VpcFault::SnatJumpDelete,
            "vpccni.snat.missing",
            "nat POSTROUTING".into(),
            Some(("nginx", INTERNET_HOST)),
        ),
        (
            VpcFault::DispatchDelete,
            "rules.dispatch.missing",
            client.veth.clone(),
            Some(("client", VPC_HOST)),
        ),
    ];
    for (fault, check, subject, lost) in cases {
        lab.fault(*fault)
            .unwrap_or_else(|e| panic!("{fault:?}: {e:#}"));
        let (code, v) = check_json(lab, &[]);
        assert_eq!(code, 1, "{fault:?}: {:#}", v["verification"]);
        assert_eq!(
            support::json_findings(&v),
            [(check.to_string(), subject.clone())],
            "{fault:?}"
        );
        assert_eq!(
            v["verification"]["findings"][0]["severity"], "warning",
            "{fault:?}"
        );
        if let Some((from, to)) = lost {
            assert!(
                !lab.ping(from, *to).expect("ping"),
                "{fault:?}: {from} still reaches {to}"
            );
        }
        lab.repair().expect("repair");
    }
    let (code, v) = check_json(lab, &["--datastore", &ds]);
    assert_eq!(code, 0, "after repair: {:?}", support::json_findings(&v));
    lab.check_connectivity().expect("repaired");
    let _ = std::fs::remove_dir_all(&ds_dir);
}
