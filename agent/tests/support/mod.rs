//! Shared by the integration tests: a lab that cleans up after itself, the agent run in one of
//! its namespaces (once, or `agent run`), and plain HTTP to it.

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use xtask::lab::Lab;

/// How often a test daemon polls iptables and nft: faults there have no notification.
pub const POLL_RULES: Duration = Duration::from_millis(500);

/// Each test runs a daemon with eBPF programs, and the detach check reads the machine-wide
/// program list: one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the agent binary with `args` in `netns` (or here), as `nobody` without a single
/// capability when `unprivileged`: its exit code, stdout and stderr.
pub fn run_agent(netns: Option<&str>, unprivileged: bool, args: &[&str]) -> (i32, String, String) {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            c
        }
        None => Command::new("env"),
    };
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
        .args(args)
        .output()
        .expect("run agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (check, subject) of every finding in `agent … --json` output.
pub fn json_findings(v: &serde_json::Value) -> Vec<(String, String)> {
    v["verification"]["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["check"].as_str().unwrap_or_default().to_string(),
                        f["subject"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub struct LabGuard(pub Lab);

impl LabGuard {
    pub fn up(tag: &str) -> Self {
        Self::up_mode(tag, xtask::lab::LabMode::Vxlan)
    }

    pub fn up_mode(tag: &str, mode: xtask::lab::LabMode) -> Self {
        let lab = Lab::with_mode(&format!("cdpt-{tag}{}", std::process::id() % 10000), mode);
        lab.up().expect("lab up");
        Self(lab)
    }

    /// The lab in `mode` with an IPv6 side on every node (in the BGP lab: bird6 too).
    pub fn up_dual_stack(tag: &str, mode: xtask::lab::LabMode) -> Self {
        let lab =
            Lab::dual_stack_with_mode(&format!("cdpt-{tag}{}", std::process::id() % 10000), mode);
        lab.up().expect("lab up");
        Self(lab)
    }

    /// The first node's namespace.
    pub fn netns(&self) -> &str {
        &self.0.spec.nodes[0].netns
    }

    fn datastore_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-ds", self.netns()))
    }

    pub fn datastore(&self) -> PathBuf {
        let dir = self.datastore_dir();
        self.0.write_datastore(&dir).expect("datastore");
        dir
    }

    /// `agent ARGS --datastore DS --no-daemon` inside the first node: exit code, stdout and
    /// stderr.
    pub fn agent(&self, unprivileged: bool, args: &[&str]) -> (i32, String, String) {
        let ds = self.datastore();
        let ds = ds.to_str().expect("utf-8 path");
        run_agent(
            Some(self.netns()),
            unprivileged,
            &[args, &["--datastore", ds, "--no-daemon"]].concat(),
        )
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.0.down();
        let _ = std::fs::remove_dir_all(self.datastore_dir());
    }
}

/// `agent run` in a namespace; SIGTERMed (then killed) on drop.
pub struct Daemon {
    child: Child,
    pub netns: String,
    pub socket: PathBuf,
    /// Where `/metrics` listens inside the namespace (127.0.0.1).
    pub port: u16,
    /// The daemon's stderr (its log).
    log: PathBuf,
    /// The directory of Calico YAML it follows.
    pub datastore: PathBuf,
}

impl Daemon {
    /// With the lab's datastore as a directory.
    pub fn start(lab: &LabGuard, grace: &str, extra: &[&str]) -> Self {
        let ds = lab.datastore();
        let mut args = vec!["--datastore", ds.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Self::spawn(lab, grace, &args, &[], ds.clone())
    }

    pub fn spawn(
        lab: &LabGuard,
        grace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        ds: PathBuf,
    ) -> Self {
        let node = &lab.0.spec.nodes[0];
        let socket = std::env::temp_dir().join(format!("{}.sock", node.netns));
        let port = 19000 + u16::try_from(std::process::id() % 1000).unwrap_or(0);
        let log = std::env::temp_dir().join(format!("{}.log", node.netns));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.netns,
                env!("CARGO_BIN_EXE_agent"),
                "run",
            ])
            // The lab's first node, unless the test names another.
            .args(
                Some(["--node-name", node.name.as_str()])
                    .filter(|_| !extra.contains(&"--node-name"))
                    .into_iter()
                    .flatten(),
            )
            .args(["--grace", grace])
            .envs(env.iter().copied())
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--poll-rules", &POLL_RULES.as_secs_f64().to_string()])
            .args(["--log", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start agent run");
        let d = Self {
            child,
            netns: node.netns.clone(),
            socket,
            port,
            log,
            datastore: ds,
        };
        let start = Instant::now();
        while d
            .try_get_local("/readyz")
            .is_none_or(|(code, _)| code != 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent run did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    pub fn try_get_local(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        http_get(&mut s, path)
    }

    /// The findings the local API reports: (check ID, subject).
    pub fn findings(&self) -> BTreeSet<(String, String)> {
        self.try_findings()
            .unwrap_or_else(|e| panic!("local API: {e}"))
    }

    /// The findings, or why the local API did not give them (a daemon busy re-reading
    /// everything answers 503 after a while).
    fn try_findings(&self) -> Result<BTreeSet<(String, String)>, String> {
        let (code, body) = self.try_get_local("/v1/analysis").ok_or("no answer")?;
        if code != 200 {
            return Err(format!("{code}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v["verification"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["check"].as_str().unwrap_or_default().to_string(),
                    f["subject"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// The findings of `check` in `/metrics`, every severity: what the daemon published.
    /// `/metrics` has a task of its own, so this is read without waiting for the daemon's
    /// loop, as a scraper would.
    pub fn published(&self, check: &str) -> f64 {
        let text = self.metrics();
        ["critical", "warning", "info"]
            .iter()
            .map(|sev| {
                sample(
                    &text,
                    &format!("calico_dpagent_findings{{check=\"{check}\",severity=\"{sev}\"}}"),
                )
            })
            .sum()
    }

    /// `/metrics`, fetched from inside the node's namespace.
    pub fn metrics(&self) -> String {
        let (code, body) =
            get_in_netns(&self.netns, self.port, "/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        body
    }

    /// The value of one sample line (`name{labels}`) in `/metrics`, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics(), series)
    }

    /// Waits until `cond` holds on the findings; returns how long it took.
    pub fn wait_findings(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&BTreeSet<(String, String)>) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let f = self.try_findings();
            if f.as_ref().is_ok_and(&cond) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; findings now {f:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `agent check` (run outside the node's namespace: only the socket connects them) gets
    /// the daemon's analysis, with the finding's age. Outside the namespace a fresh read could
    /// not see the lab's state: the finding is the daemon's. The bound only catches a hang;
    /// on a loaded machine the debug binary's start alone can take hundreds of milliseconds.
    pub fn check_answers_from_the_daemon(&self, check: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&self.socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "local API socket mode {mode:o}");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("check")
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("agent check");
        let took = start.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(check), "{text}");
        assert!(text.contains("answered by `agent run`"), "{text}");
        assert!(text.contains("since:"), "{text}");
        assert!(took < Duration::from_secs(5), "agent check took {took:?}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit status and how long it took.
    pub fn stop(mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        // `ip netns exec` execs the agent: the child is the agent itself.
        sh(&format!("kill -TERM {}", self.child.id()));
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent run ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        if std::thread::panicking() {
            eprintln!(
                "agent run's log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn http_get(
    s: &mut (impl std::io::Read + std::io::Write),
    path: &str,
) -> Option<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{cmd}");
}

/// `GET path` from 127.0.0.1:`port` inside network namespace `netns` (a thread that entered
/// it: setns is per thread).
pub fn get_in_netns(netns: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let ns = format!("/var/run/netns/{netns}");
    let path = path.to_string();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        http_get(&mut s, &path)
    })
    .join()
    .ok()?
}

/// The lab's Calico datastore as the Kubernetes API server returns it (recorded list
/// responses: managedFields, resourceVersions, Node items without apiVersion/kind), by plural.
pub fn recorded(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "ippools" => include_str!("../kube-responses/ippools.json"),
        "ipamblocks" => include_str!("../kube-responses/ipamblocks.json"),
        "blockaffinities" => include_str!("../kube-responses/blockaffinities.json"),
        "felixconfigurations" => include_str!("../kube-responses/felixconfigurations.json"),
        "nodes" => include_str!("../kube-responses/nodes.json"),
        "bgpconfigurations" => include_str!("../kube-responses/bgpconfigurations.json"),
        "bgppeers" => include_str!("../kube-responses/bgppeers.json"),
        _ => return None,
    })
}

/// Serves `app` on loopback as a mock Kubernetes API server (there is none on this machine) and
/// returns the real kube client pointed at it, with the server's task.
pub async fn kube_client_for(app: axum::Router) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let config = kube::Config::new(format!("http://{addr}").parse().expect("url"));
    (kube::Client::try_from(config).expect("client"), task)
}

/// Our programs still loaded machine-wide (tests that load eBPF run one at a time). The kernel
/// frees a program an RCU grace period after its last fd is closed: wait up to 3 s for that.
pub fn ours_loaded() -> Vec<String> {
    for _ in 0..30 {
        if loaded_now().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    loaded_now()
}

/// Our programs loaded right now.
pub fn loaded_now() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("name dp_"))
        .map(str::to_string)
        .collect()
}
