//! The `agent` binary on a node without Calico, with and without privileges. Needs root to
//! create the network namespace; runs the binary inside it with `ip netns exec`.

use std::process::Command;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("cdpt-{tag}{}", std::process::id() % 10000);
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} (tests need root)");
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn diag(ns: &Netns, unprivileged: bool, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]);
    if unprivileged {
        cmd.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]);
    }
    let out = cmd
        .arg(env!("CARGO_BIN_EXE_agent"))
        .args(["diag", "--node-name", "plain-host"])
        .args(extra)
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plain_host_says_no_calico_and_exits_zero() {
    let ns = Netns::new("plain");
    let (code, out, err) = diag(&ns, false, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("node plain-host: no Calico dataplane found on this node"),
        "{out}"
    );
    assert!(!out.contains("not observable"), "{out}");

    let (code, json, _) = diag(&ns, false, &["--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["calico_found"], false);
    assert_eq!(v["node"], "plain-host");
}

#[test]
fn unprivileged_run_names_the_missing_capability() {
    let ns = Netns::new("unpriv");
    let (code, out, err) = diag(&ns, true, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.contains("no Calico dataplane found"), "{out}");
    assert!(out.contains("running without CAP_NET_ADMIN"), "{out}");
    assert!(out.contains("not observable: iptables-nft-save"), "{out}");
}
