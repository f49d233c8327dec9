//! The `agent` binary on a node without Calico, with and without privileges. Needs root to
//! create the network namespace; runs the binary inside it with `ip netns exec`.

mod support;

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
    agent(
        &ns.0,
        unprivileged,
        &["diag", "--node-name", "plain-host"],
        extra,
    )
}

fn agent(netns: &str, unprivileged: bool, args: &[&str], extra: &[&str]) -> (i32, String, String) {
    support::run_agent(Some(netns), unprivileged, &[args, extra].concat())
}

#[test]
fn plain_host_says_no_calico_and_exits_zero() {
    let _serial = support::serial();
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
    assert_eq!(v["diag"]["calico_found"], false);
    assert_eq!(v["diag"]["node"], "plain-host");
    assert!(v["verification"].is_null());
}

#[test]
fn unprivileged_run_names_the_missing_capability() {
    let _serial = support::serial();
    let ns = Netns::new("unpriv");
    let (code, out, err) = diag(&ns, true, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.contains("no Calico dataplane found"), "{out}");
    assert!(out.contains("running without CAP_NET_ADMIN"), "{out}");
    assert!(out.contains("not observable: iptables-nft-save"), "{out}");
}

#[test]
fn check_exit_codes() {
    let _serial = support::serial();
    let ns = Netns::new("chk");
    let (code, _, err) = agent(&ns.0, false, &["check", "--node-name", "plain-host"], &[]);
    assert_eq!(code, 2, "no Calico: could not verify");
    assert!(err.contains("no Calico dataplane found"), "{err}");

    let lab = xtask::lab::Lab::new(&format!("cdpt-cli{}", std::process::id() % 10000));
    struct Down<'a>(&'a xtask::lab::Lab);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            self.0.down();
        }
    }
    lab.up().expect("lab up");
    let _down = Down(&lab);
    let dir = std::env::temp_dir().join(format!("cdpt-cli-ds{}", std::process::id()));
    lab.write_datastore(&dir).expect("datastore");
    let ds = dir.to_string_lossy().into_owned();
    let node = &lab.spec.nodes[0];
    let check = |extra: &[&str]| {
        agent(
            &node.netns,
            false,
            &["check", "--node-name", "node-a", "--datastore", &ds],
            extra,
        )
    };

    let (code, out, err) = check(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("FINDINGS (0; against the datastore)"), "{out}");

    lab.fault("node-a", xtask::lab::Fault::RouteDelete)
        .expect("fault");
    let (code, out, _) = check(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("CRIT  route.missing  10.244.1.0/26"), "{out}");
    let (code, json, _) = check(&["--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["verification"]["findings"][0]["check"], "route.missing");
    assert_eq!(v["verification"]["with_datastore"], true);

    // The same fault, captured as a bundle and analysed offline, outside the namespace.
    let bundle_dir = dir.join("bundle");
    let b = bundle_dir.to_string_lossy().into_owned();
    let (code, out, err) = agent(
        &node.netns,
        false,
        &["diag", "--node-name", "node-a", "--bundle-out", &b],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let offline = |extra: &[&str]| -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_agent"))
            .args(["check", "--bundle", &b])
            .args(extra)
            .output()
            .expect("run agent");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = offline(&["--datastore", &ds]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("CRIT  route.missing  10.244.1.0/26"), "{out}");
    assert!(
        out.contains("summary: node node-a"),
        "the bundle's hostname is not the node: {out}"
    );
    // Calico YAML inside the bundle is its datastore.
    std::fs::copy(dir.join("lab.yaml"), bundle_dir.join("calico.yaml")).expect("copy yaml");
    let (code, out, _) = offline(&["--node-name", "node-a"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("against the datastore"), "{out}");
    lab.repair().expect("repair");

    std::fs::write(dir.join("broken.yaml"), "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: bad}\nspec: {cidr: nonsense}\n").expect("write");
    let (code, _, err) = check(&[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.yaml: IPPool bad: field spec.cidr"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flows_detach_on_exit_and_on_sigterm() {
    let _serial = support::serial();
    let ns = Netns::new("fl");
    assert!(
        Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success())
    );
    let (code, json, err) = agent(
        &ns.0,
        false,
        &["flows", "--seconds", "1", "--iface", "lo", "--json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    assert_eq!(v["window_seconds"], 1);
    assert!(
        support::ours_loaded().is_empty(),
        "left loaded after exit: {:?}",
        support::ours_loaded()
    );

    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_agent"),
            "flows",
            "--watch",
            "--seconds",
            "1",
            "--iface",
            "lo",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_loaded("nothing attached while running");
    // Past the load, its SIGTERM handler is in place a moment later.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = i32::try_from(child.id()).expect("pid");
    // `ip netns exec` execs the agent: the pid is the agent's.
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    );
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("INTERFACES"));
    assert!(
        support::ours_loaded().is_empty(),
        "left loaded after SIGTERM: {:?}",
        support::ours_loaded()
    );

    // A failed start (no such interface) leaves nothing behind either.
    let (code, _, err) = agent(&ns.0, false, &["flows", "--iface", "nope0"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no interface nope0"), "{err}");
    assert!(
        support::ours_loaded().is_empty(),
        "left loaded after a failed start: {:?}",
        support::ours_loaded()
    );

    let (code, out, _) = agent(&ns.0, false, &["flows", "--no-ebpf"], &[]);
    assert_eq!(
        (code, out.trim()),
        (0, "flows unavailable: eBPF disabled by --no-ebpf")
    );
}

/// Waits until the agent's programs are loaded (their load is slow on a busy machine).
fn wait_loaded(what: &str) {
    let start = std::time::Instant::now();
    while support::loaded_now().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?}");
}

/// A workload veth created while `agent flows` runs is attached on its link event, before
/// traffic starts half a second later (a once-a-second re-scan would miss it most times):
/// every one of its pings is counted.
#[test]
fn flows_attach_to_a_new_workload_veth_on_its_link_event() {
    let _serial = support::serial();
    let (node, pod) = (Netns::new("evn"), Netns::new("evp"));
    for ns in [&node.0, &pod.0] {
        for key in ["all", "default"] {
            let ok = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw"])
                .arg(format!("net.ipv6.conf.{key}.disable_ipv6=1"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "sysctl in {ns}");
        }
    }
    let child = Command::new("ip")
        .args(["netns", "exec", &node.0, env!("CARGO_BIN_EXE_agent")])
        .args(["flows", "--seconds", "8", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent flows");
    // Loaded, with nothing to attach to yet.
    wait_loaded("agent flows never loaded its programs");
    let (n, p) = (node.0.as_str(), pod.0.as_str());
    ip(&[
        "-n",
        n,
        "link",
        "add",
        "cali0123456789a",
        "address",
        "ee:ee:ee:ee:ee:ee",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        "02:00:00:00:00:02",
        "netns",
        p,
    ]);
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        "10.0.0.1/24",
        "dev",
        "cali0123456789a",
    ]);
    ip(&["-n", p, "addr", "add", "10.0.0.2/24", "dev", "eth0"]);
    ip(&[
        "-n",
        n,
        "neigh",
        "replace",
        "10.0.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "cali0123456789a",
        "nud",
        "permanent",
    ]);
    ip(&[
        "-n",
        p,
        "neigh",
        "replace",
        "10.0.0.1",
        "lladdr",
        "ee:ee:ee:ee:ee:ee",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    ip(&["-n", p, "link", "set", "eth0", "up"]);
    ip(&["-n", n, "link", "set", "cali0123456789a", "up"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pinged = Command::new("ip")
        .args([
            "netns", "exec", n, "ping", "-q", "-c", "10", "-i", "0.05", "10.0.0.2",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(pinged, "ping across the new veth");
    let out = child.wait_with_output().expect("agent flows");
    assert!(out.status.success(), "{:?}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let egress = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["iface"] == "cali0123456789a" && i["direction"] == "egress")
        .unwrap_or_else(|| panic!("new veth not counted: {v}"));
    assert_eq!(egress["packets"], 10, "{v}");
    assert_eq!(egress["class"], "workload");
}
