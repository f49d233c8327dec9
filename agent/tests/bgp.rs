//! The BGP lab: a real BIRD 1.6 per node namespace with calico-node's config (node-to-node
//! mesh, no-encap pool, block routes `proto bird`, local blocks as BIRD's static blackholes),
//! pods pinging across. `agent check` on node-a, pointed at its BIRD's control socket, is clean
//! when healthy and names the session (and BIRD's error) for each injected fault; `agent run`
//! counts flaps and reports `bgp.session.flapping`.
//!
//! The first test's lab is dual stack: each node also runs Debian's `bird6` with the IPv6 mesh
//! over the nodes' IPv6 addresses, learning the IPv6 /122 blocks. The daemon's flap test runs
//! on an IPv4-only lab (no bird6 anywhere, as an IPv4-only BGP cluster) and on a dual-stack one,
//! where both families' sessions flap.

mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use support::{Daemon, LabGuard, serial};
use xtask::lab::{Fault, LabMode, bird};

/// `agent <args>` in node-a's namespace with its BIRD socket (and its bird6 socket, which
/// exists in the dual-stack lab only); (exit code, stdout).
fn agent(lab: &LabGuard, socket: &Path, args: &[&str]) -> (i32, String) {
    agent_with(lab, socket, &bird::socket6(&lab.0.spec.nodes[0]), args)
}

/// [`agent`] with `socket6` as bird6's control socket.
fn agent_with(lab: &LabGuard, socket: &Path, socket6: &Path, args: &[&str]) -> (i32, String) {
    let node = &lab.0.spec.nodes[0];
    let out = Command::new("ip")
        .args(["netns", "exec", &node.netns, env!("CARGO_BIN_EXE_agent")])
        .args(args)
        .args(["--node-name", &node.name])
        .env("AGENT_BIRD_SOCKET", socket)
        .env("AGENT_BIRD6_SOCKET", socket6)
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

struct Check {
    code: i32,
    json: serde_json::Value,
}

impl Check {
    fn findings(&self) -> BTreeSet<(String, String)> {
        self.json["verification"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["check"].as_str().unwrap_or_default().to_string(),
                    f["subject"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn finding(&self, check: &str) -> serde_json::Value {
        self.json["verification"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["check"] == check)
            .cloned()
            .unwrap_or_else(|| panic!("no {check} in {:#}", self.json["verification"]))
    }
}

fn check(lab: &LabGuard, ds: &Path, socket: &Path) -> Check {
    check_with(lab, ds, socket, &bird::socket6(&lab.0.spec.nodes[0]))
}

fn check_with(lab: &LabGuard, ds: &Path, socket: &Path, socket6: &Path) -> Check {
    let (code, out) = agent_with(
        lab,
        socket,
        socket6,
        &[
            "check",
            "--datastore",
            ds.to_str().expect("utf-8"),
            "--grace",
            "0",
            "--json",
            "--no-daemon",
        ],
    );
    let json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    Check { code, json }
}

/// `agent diag` (`--json` with `json`) of node-a against the datastore; (exit code, stdout).
fn diag(lab: &LabGuard, ds: &Path, socket: &Path, json: bool) -> (i32, String) {
    let ds = ds.to_str().expect("utf-8");
    let mut args = vec!["diag", "--datastore", ds, "--no-ebpf", "--no-daemon"];
    if json {
        args.push("--json");
    }
    agent(lab, socket, &args)
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(c, s)| ((*c).to_string(), (*s).to_string()))
        .collect()
}

/// Re-checks until the findings are exactly `want` (BIRD needs seconds to react).
fn wait_for(lab: &LabGuard, ds: &Path, socket: &Path, want: &[(&str, &str)], what: &str) -> Check {
    wait_until(lab, ds, socket, want, what, |_| true)
}

/// [`wait_for`], also until `settled` holds (a session's error arrives after it went down).
fn wait_until(
    lab: &LabGuard,
    ds: &Path,
    socket: &Path,
    want: &[(&str, &str)],
    what: &str,
    settled: impl Fn(&Check) -> bool,
) -> Check {
    let want = set(want);
    let start = Instant::now();
    loop {
        let c = check(lab, ds, socket);
        if c.findings() == want && settled(&c) {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{what}: wanted {want:?}, got {:#}",
            c.json["verification"]["findings"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn bgp_lab_is_clean_and_each_fault_names_its_session() {
    let _serial = serial();
    // Dual stack: bird6 beside bird on each node. The IPv4 assertions are those of an
    // IPv4-only lab: bird6's healthy IPv6 mesh adds nothing to them.
    let lab = LabGuard::up_dual_stack("bgp", LabMode::Bgp);
    lab.0
        .check_connectivity()
        .expect("pods ping across over BGP routes");
    let ds = lab.datastore();
    let node_a = &lab.0.spec.nodes[0];
    let node_b = &lab.0.spec.nodes[1];
    let sock = bird::socket(node_a);

    // Healthy: BIRD's routes and blackhole are what the datastore implies, nothing else.
    let routes = xtask::sh::run(&["ip", "-n", &node_a.netns, "route"]).expect("ip route");
    assert!(
        routes.contains("10.244.1.0/26 via 10.99.0.12 dev eth0 proto bird metric 1024"),
        "{routes}"
    );
    assert!(
        routes.contains("blackhole 10.244.0.0/26 proto bird"),
        "{routes}"
    );
    let c = wait_for(&lab, &ds, &sock, &[], "healthy BGP lab");
    assert_eq!(c.code, 0);
    let skipped: Vec<&str> = c.json["verification"]["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["check"].as_str())
        .collect();
    for id in [
        "bgp.session.down",
        "bgp.session.missing",
        "bgp.session.unexpected",
    ] {
        assert!(!skipped.contains(&id), "{id} did not run: {skipped:?}");
    }
    let (code, text) = diag(&lab, &ds, &sock, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("BGP SESSIONS (calico-node's BIRD: 1 of 1 Established)"),
        "{text}"
    );
    assert!(text.contains("Mesh_10_99_0_12"), "{text}");

    // The seed incident: the wrong AS. Never establishes; BIRD's error is named.
    lab.0.fault(&node_a.name, Fault::BgpWrongAs).expect("fault");
    let c = wait_until(
        &lab,
        &ds,
        &sock,
        &[
            ("bgp.session.down", "10.99.0.12"),
            ("route.missing", "10.244.1.0/26"),
        ],
        "wrong AS",
        |c| {
            c.finding("bgp.session.down")["actual"]
                .to_string()
                .contains("Bad peer AS")
        },
    );
    assert_eq!(c.code, 1);
    let down = c.finding("bgp.session.down");
    let actual = down["actual"].as_str().unwrap_or_default();
    assert!(actual.contains("Bad peer AS"), "{down:#}");
    eprintln!("wrong AS on node-a: {actual}");
    assert!(
        down["expected"]
            .as_str()
            .unwrap_or_default()
            .contains("Mesh_10_99_0_12 (node-to-node mesh with node-b"),
        "{down:#}"
    );
    let route = c.finding("route.missing");
    assert!(
        route["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("Mesh_10_99_0_12 is down"),
        "{route:#}"
    );
    lab.0.repair().expect("repair");
    wait_for(&lab, &ds, &sock, &[], "after repairing the AS");

    // A peer stops advertising its block: the route is missing, named by its session.
    lab.0
        .fault(&node_b.name, Fault::BgpWithdraw)
        .expect("fault");
    let c = wait_for(
        &lab,
        &ds,
        &sock,
        &[("route.missing", "10.244.1.0/26")],
        "block withdrawn by node-b",
    );
    let route = c.finding("route.missing");
    assert!(
        route["expected"]
            .as_str()
            .unwrap_or_default()
            .contains("via 10.99.0.12 dev eth0 proto bird (block of node-b, learned over BGP from Mesh_10_99_0_12 (10.99.0.12))"),
        "{route:#}"
    );
    assert!(
        route["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("Mesh_10_99_0_12 is Established, so node-b does not advertise it"),
        "{route:#}"
    );
    let pod_b = lab.0.spec.nodes[1].pods[0].ip;
    assert!(
        !lab.0.ping("pod-a1", pod_b).expect("ping"),
        "reached a withdrawn block"
    );
    lab.0.repair().expect("repair");
    wait_for(&lab, &ds, &sock, &[], "after re-advertising");

    // A session the mesh implies is not configured.
    lab.0
        .fault(&node_a.name, Fault::BgpSessionDelete)
        .expect("fault");
    wait_for(
        &lab,
        &ds,
        &sock,
        &[
            ("bgp.session.missing", "10.99.0.12"),
            ("route.missing", "10.244.1.0/26"),
        ],
        "mesh session missing",
    );
    lab.0.repair().expect("repair");

    // A session nothing in the datastore implies (down, but reported as unexpected).
    lab.0
        .fault(&node_a.name, Fault::BgpSessionExtra)
        .expect("fault");
    let c = wait_for(
        &lab,
        &ds,
        &sock,
        &[("bgp.session.unexpected", "10.99.0.99")],
        "extra session",
    );
    assert_eq!(c.finding("bgp.session.unexpected")["severity"], "warning");
    lab.0.repair().expect("repair");
    let c = wait_for(&lab, &ds, &sock, &[], "repaired");
    assert_eq!(c.code, 0);
    lab.0.check_connectivity().expect("pods ping again");

    // No BIRD socket: the session checks are not run, naming it; never drift.
    let c = check(&lab, &ds, Path::new("/nonexistent/bird.ctl"));
    assert!(c.findings().is_empty(), "{:#}", c.json["verification"]);
    let skipped = c.json["verification"]["skipped"].to_string();
    assert!(skipped.contains("bgp.session.down"), "{skipped}");
    assert!(skipped.contains("/nonexistent/bird.ctl"), "{skipped}");

    // Last, as its faults are not repaired (the lab goes): bird6's side.
    ipv6_sessions_are_bird6s(&lab, &ds);
}

/// The dual-stack lab's IPv6 side: bird6's mesh Established and its /122 learned `proto bird`
/// (clean, listed in diag), then each IPv6 fault named by bird6's session, and bird6 silent.
/// Each fault replaces the last without a repair (re-establishing costs seconds): the lab is
/// left faulty.
fn ipv6_sessions_are_bird6s(lab: &LabGuard, ds: &Path) {
    let node_a = &lab.0.spec.nodes[0];
    let sock = bird::socket(node_a);
    let routes = xtask::sh::run(&["ip", "-n", &node_a.netns, "-6", "route"]).expect("ip route");
    assert!(
        routes.contains("fd00:244::40/122 via fd00:99::12 dev eth0 proto bird metric 1024"),
        "{routes}"
    );
    // The kernel prints an IPv6 blackhole with `dev lo`.
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("blackhole fd00:244::/122 ") && l.contains(" proto bird ")),
        "{routes}"
    );
    let pod_b = lab.0.pod("pod-b1").expect("pod").ip6.expect("ipv6");
    assert!(
        lab.0.ping("pod-a1", pod_b).expect("ping"),
        "pods over bird6's routes"
    );

    // Healthy (already judged clean with the IPv4 side): the IPv6 sessions in diag.
    let (code, text) = diag(lab, ds, &sock, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("BGP SESSIONS, IPv6 (calico-node's bird6: 1 of 1 Established)"),
        "{text}"
    );
    assert!(
        text.contains("Mesh_fd00_99__12       fd00:99::12"),
        "{text}"
    );
    let (_, json) = diag(lab, ds, &sock, true);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let v6 = &v["diag"]["bgp6_sessions"][0];
    assert_eq!(
        (
            v6["name"].as_str(),
            v6["peer_ip"].as_str(),
            v6["state"].as_str()
        ),
        (Some("Mesh_fd00_99__12"), Some("fd00:99::12"), Some("up")),
        "{v6:#}"
    );
    assert!(
        v6["info"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Established"),
        "{v6:#}"
    );

    // bird6's config lacks the IPv6 mesh.
    lab.0
        .fault(&node_a.name, Fault::Bgp6SessionDelete)
        .expect("fault");
    let c = wait_for(
        lab,
        ds,
        &sock,
        &[
            ("bgp.session.missing", "fd00:99::12"),
            ("route.missing", "fd00:244::40/122"),
        ],
        "bird6's mesh session missing",
    );
    assert!(
        c.finding("bgp.session.missing")["expected"]
            .as_str()
            .unwrap_or_default()
            .contains("bird6 protocol Mesh_fd00_99__12"),
        "{:#}",
        c.json["verification"]
    );

    // The mesh back, but with the wrong peer AS: bird6's session is down, and its block is
    // still not learned.
    lab.0
        .fault(&node_a.name, Fault::Bgp6WrongAs)
        .expect("fault");
    let c = wait_until(
        lab,
        ds,
        &sock,
        &[
            ("bgp.session.down", "fd00:99::12"),
            ("route.missing", "fd00:244::40/122"),
        ],
        "bird6 with the wrong AS",
        |c| {
            c.finding("bgp.session.down")["actual"]
                .to_string()
                .contains("Bad peer AS")
        },
    );
    assert_eq!(c.code, 1);
    let down = c.finding("bgp.session.down");
    eprintln!("wrong AS on node-a's bird6: {}", down["actual"]);
    assert!(
        down["expected"]
            .as_str()
            .unwrap_or_default()
            .contains("Mesh_fd00_99__12 (node-to-node mesh with node-b"),
        "{down:#}"
    );
    assert!(
        down["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("birdcl -s /var/run/calico/bird6.ctl"),
        "{down:#}"
    );
    let route = c.finding("route.missing");
    assert!(
        route["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("Mesh_fd00_99__12 is down"),
        "{route:#}"
    );

    // No bird6 answering while IPv6 sessions are due: the session checks are not observable,
    // naming the socket, never a finding; the unlearned block is still missing.
    let c = check_with(lab, ds, &sock, Path::new("/nonexistent/bird6.ctl"));
    assert_eq!(
        c.findings(),
        set(&[("route.missing", "fd00:244::40/122")]),
        "{:#}",
        c.json["verification"]
    );
    let route = c.finding("route.missing");
    assert!(
        route["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("bird6's sessions could not be read here"),
        "{route:#}"
    );
    let skipped: Vec<&serde_json::Value> = c.json["verification"]["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["check"] == "bgp.session.down")
        .collect();
    assert!(
        skipped.iter().any(|s| {
            let reason = s["reason"].as_str().unwrap_or_default();
            reason.contains("IPv6 sessions (1 due) not observable")
                && reason.contains("/nonexistent/bird6.ctl")
        }),
        "{skipped:#?}"
    );
}

#[test]
fn the_daemon_counts_flaps_and_reports_a_flapping_session() {
    flapping(false);
}

#[test]
fn the_daemon_counts_flaps_and_reports_a_flapping_session_in_each_family() {
    flapping(true);
}

/// node-b resets its mesh sessions three times (both families' in the dual-stack lab); the
/// daemon on node-a reports each session flapping and `agent diag` shows its flap count.
fn flapping(dual_stack: bool) {
    let _serial = serial();
    let lab = if dual_stack {
        LabGuard::up_dual_stack("bgpf", LabMode::Bgp)
    } else {
        LabGuard::up_mode("bgpd", LabMode::Bgp)
    };
    let node_a = &lab.0.spec.nodes[0];
    let node_b = &lab.0.spec.nodes[1];
    let (sock, sock6) = (bird::socket(node_a), bird::socket6(node_a));
    let ds = lab.datastore();
    // The IPv4-only lab has no bird6 at all, as an IPv4-only cluster: its socket is not set.
    let mut env = vec![("AGENT_BIRD_SOCKET", sock.to_str().expect("utf-8"))];
    if dual_stack {
        env.push(("AGENT_BIRD6_SOCKET", sock6.to_str().expect("utf-8")));
    }
    let d = Daemon::spawn(
        &lab,
        "0",
        &[
            "--datastore",
            ds.to_str().expect("utf-8"),
            "--no-ebpf",
            "--poll-services",
            "0.3",
        ],
        &env,
        ds.clone(),
    );
    d.wait_findings(Duration::from_secs(20), "healthy", BTreeSet::is_empty);
    for _ in 0..3 {
        lab.0.fault(&node_b.name, Fault::BgpFlap).expect("flap");
        bird::wait_converged(&lab.0.spec, Duration::from_secs(30)).expect("re-established");
    }
    let sessions: &[(&str, &str)] = if dual_stack {
        &[
            ("Mesh_10_99_0_12", "10.99.0.12"),
            ("Mesh_fd00_99__12", "fd00:99::12"),
        ]
    } else {
        &[("Mesh_10_99_0_12", "10.99.0.12")]
    };
    d.wait_findings(Duration::from_secs(20), "flapping", |f| {
        sessions
            .iter()
            .all(|(_, peer)| f.contains(&("bgp.session.flapping".to_string(), (*peer).to_string())))
    });
    let (code, body) = d.try_get_local("/v1/analysis").expect("analysis");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["daemon"]["bgp_flaps"].as_object().map(|o| o.len()),
        Some(sessions.len()),
        "{}",
        v["daemon"]
    );
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("diag")
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .expect("agent diag");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BGP SESSIONS"), "{text}");
    // The daemon may see a session's last transitions between the two requests, so each
    // is read on its own rather than compared with the other.
    for (session, _) in sessions {
        let flaps = v["daemon"]["bgp_flaps"][session].as_u64().unwrap_or(0);
        assert!(flaps >= 3, "{session}: {}", v["daemon"]);
        let shown = text
            .lines()
            .filter(|l| l.contains(session))
            .find_map(|l| l.split_once(" flap(s) in the window"))
            .and_then(|(before, _)| before.rsplit(' ').next()?.parse::<u64>().ok());
        assert!(shown.is_some_and(|n| n >= 3), "{session}: {text}");
    }
}
