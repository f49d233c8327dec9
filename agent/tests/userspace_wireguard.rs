//! The agent against a userspace WireGuard (boringtun, `cargo xtask setup` installs it) on the
//! host: two namespaces shaped like Felix's WireGuard nodes, the device read over its UAPI
//! socket, healthy and with faults (DESIGN.md §8). Needs root.
//!
//! The UAPI sockets live in the host's shared `/var/run/wireguard/`: device names carry this
//! process's id, and only the sockets of the boringtun processes started here go away (with
//! them). Namespaces are this test's own, deleted on drop with everything in them.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::sh;

const UAPI_DIR: &str = "/var/run/wireguard";

/// One node: a namespace, its boringtun process and the TUN device it made.
struct Node {
    netns: String,
    dev: String,
    boringtun: Option<Child>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        Path::new(UAPI_DIR).join(format!("{}.sock", self.dev))
    }

    fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.netns];
        argv.extend_from_slice(args);
        sh::run(&argv).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "netns", "exec", &self.netns];
        argv.extend_from_slice(args);
        sh::run(&argv).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn wg(&self, args: &[&str]) {
        let mut argv = vec!["wg", "set", &self.dev];
        argv.extend_from_slice(args);
        self.exec(&argv);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.boringtun.take() {
            // SIGTERM lets boringtun remove its socket; a kill is the fallback.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Ours by name (this process's id) and left only if boringtun died without cleaning up.
        let _ = std::fs::remove_file(self.socket());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The test's files (keys, boringtun's logs, the datastore), removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two nodes joined by a veth pair, each with boringtun's device configured as Felix would.
/// Fields drop in order: the nodes (processes, namespaces), then the files.
struct Pair {
    a: Node,
    b: Node,
    pub_a: String,
    pub_b: String,
    dir: TempDir,
}

fn start(tag: &str) -> Node {
    let id = std::process::id() % 100_000;
    let node = Node {
        netns: format!("cdpt-uwg{tag}{id}"),
        dev: format!("wg-u{tag}{id}"),
        boringtun: None,
    };
    sh::run(&["ip", "netns", "add", &node.netns]).unwrap_or_else(|e| panic!("{e:#}"));
    node
}

fn spawn_boringtun(node: &mut Node, dir: &Path) {
    let log = std::fs::File::create(dir.join(format!("{}.log", node.dev))).expect("log file");
    // umask 077: the socket and anything boringtun writes are root's alone.
    let child = Command::new("sh")
        .args([
            "-c",
            "umask 077; exec ip netns exec \"$0\" boringtun-cli \"$1\" --foreground \
             --disable-drop-privileges --threads 1",
            &node.netns,
            &node.dev,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("boringtun-cli (cargo xtask setup installs it)");
    node.boringtun = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.socket().exists() {
        assert!(
            Instant::now() < deadline,
            "boringtun made no socket {}",
            node.socket().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn key_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = sh::run(&["wg", "genkey"]).expect("wg genkey");
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .expect("key file");
    f.write_all(private.as_bytes()).expect("write key");
    let public = sh::run_with_input(&["wg", "pubkey"], Some(&private)).expect("wg pubkey");
    (path, public.trim().to_string())
}

/// node IPs 192.168.77.1/.2, blocks 10.246.0.0/26 and 10.246.1.0/26, tunnel addresses .1.
fn pair() -> Pair {
    assert!(
        sh::on_path("boringtun-cli"),
        "boringtun-cli is missing: run `cargo xtask setup`"
    );
    let dir = TempDir(std::env::temp_dir().join(format!("cdpt-uwg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let mut a = start("a");
    let mut b = start("b");
    spawn_boringtun(&mut a, &dir.0);
    spawn_boringtun(&mut b, &dir.0);
    let (key_a, pub_a) = key_file(&dir.0, "a.key");
    let (key_b, pub_b) = key_file(&dir.0, "b.key");
    let p = Pair {
        a,
        b,
        pub_a,
        pub_b,
        dir,
    };
    p.a.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &p.b.netns,
    ]);
    for (n, ip, peer_ip, key, own, peer_block, peer_tun, peer_pub) in [
        (
            &p.a,
            "192.168.77.1",
            "192.168.77.2",
            &key_a,
            "10.246.0",
            "10.246.1.0/26",
            "10.246.1.1",
            &p.pub_b,
        ),
        (
            &p.b,
            "192.168.77.2",
            "192.168.77.1",
            &key_b,
            "10.246.1",
            "10.246.0.0/26",
            "10.246.0.1",
            &p.pub_a,
        ),
    ] {
        n.ip(&["link", "set", "lo", "up"]);
        n.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        n.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        n.ip(&["link", "set", "eth0", "up"]);
        n.wg(&[
            "private-key",
            key.to_str().expect("utf-8"),
            "listen-port",
            "51820",
            "fwmark",
            "0x200000",
        ]);
        n.wg(&[
            "peer",
            peer_pub,
            "allowed-ips",
            &format!("{peer_block},{peer_tun}/32"),
            "endpoint",
            &format!("{peer_ip}:51820"),
        ]);
        n.ip(&["link", "set", &n.dev, "mtu", "1440", "up"]);
        n.ip(&["addr", "add", &format!("{own}.1/32"), "dev", &n.dev]);
        for dst in [peer_block.to_string(), format!("{peer_tun}/32")] {
            n.ip(&[
                "route", "add", &dst, "dev", &n.dev, "scope", "link", "table", "1",
            ]);
        }
        n.ip(&[
            "route",
            "add",
            "throw",
            &format!("{own}.0/26"),
            "table",
            "1",
        ]);
        n.ip(&[
            "rule",
            "add",
            "not",
            "fwmark",
            "0x200000/0x200000",
            "lookup",
            "1",
            "priority",
            "99",
        ]);
        n.ip(&[
            "route", "add", peer_block, "via", peer_ip, "dev", "eth0", "proto", "bird",
        ]);
        n.ip(&[
            "route",
            "add",
            "blackhole",
            &format!("{own}.0/26"),
            "proto",
            "bird",
        ]);
    }
    p
}

fn datastore(p: &Pair) -> PathBuf {
    let dir = p.dir.0.join("ds");
    std::fs::create_dir_all(&dir).expect("ds dir");
    let yaml = format!(
        "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: pool}}
spec: {{cidr: 10.246.0.0/16, vxlanMode: Never, ipipMode: Never, blockSize: 26}}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {{name: default}}
spec: {{wireguardEnabled: true, wireguardInterfaceName: {dev}}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {{name: node-a}}
spec: {{bgp: {{ipv4Address: 192.168.77.1/24}}, wireguard: {{interfaceIPv4Address: 10.246.0.1}}}}
status: {{wireguardPublicKey: {pub_a}}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {{name: node-b}}
spec: {{bgp: {{ipv4Address: 192.168.77.2/24}}, wireguard: {{interfaceIPv4Address: 10.246.1.1}}}}
status: {{wireguardPublicKey: {pub_b}}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {{name: 10-246-0-0-26}}
spec: {{cidr: 10.246.0.0/26, affinity: 'host:node-a', allocations: [], attributes: []}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {{name: 10-246-1-0-26}}
spec: {{cidr: 10.246.1.0/26, affinity: 'host:node-b', allocations: [], attributes: []}}
",
        dev = p.a.dev,
        pub_a = p.pub_a,
        pub_b = p.pub_b,
    );
    std::fs::write(dir.join("calico.yaml"), yaml).expect("datastore");
    dir
}

/// `agent diag --json` in node-a's namespace.
fn diag(p: &Pair, ds: &Path) -> Value {
    let out = p.a.exec(&[
        env!("CARGO_BIN_EXE_agent"),
        "diag",
        "--json",
        "--no-ebpf",
        "--no-daemon",
        "--datastore",
        ds.to_str().expect("utf-8"),
        "--node-name",
        "node-a",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// (check, subject) of each finding, less Felix's absent chains: the host has iptables and
/// nft, and these namespaces, not being Felix's, have no `cali-` chains in them.
fn findings(a: &Value) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = a["verification"]["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {a}"))
        .iter()
        .filter(|f| f["check"] != "rules.felix.missing")
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

#[test]
fn userspace_wireguard_is_read_over_uapi_and_verified_with_faults() {
    let p = pair();
    let ds = datastore(&p);
    // Traffic through boringtun, which also makes the first handshake.
    p.a.exec(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "5",
        "-I",
        "10.246.0.1",
        "10.246.1.1",
    ]);

    let healthy = diag(&p, &ds);
    assert_eq!(findings(&healthy), [], "{healthy}");
    let unread: Vec<&Value> = healthy["diag"]["unavailable"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["kind"] == "wireguard")
        .collect();
    assert!(unread.is_empty(), "{unread:?}");
    let dev = &healthy["diag"]["wireguard"][0];
    assert_eq!(dev["name"], p.a.dev.as_str(), "{healthy}");
    assert_eq!(dev["listen_port"], 51820);
    assert_eq!(dev["fwmark"], "0x200000");
    let peer = &dev["peer_details"][0];
    assert_eq!(peer["node"], "node-b", "{healthy}");
    assert_eq!(peer["endpoint"], "192.168.77.2:51820");
    assert_eq!(peer["allowed_ips"], 2);
    assert!(peer["handshake_age_secs"].is_u64(), "{healthy}");
    assert!(
        !healthy.to_string().contains("private"),
        "a private key field in {healthy}"
    );

    let s = |c: &str, subject: &str| vec![(c.to_string(), subject.to_string())];
    p.a.wg(&["peer", &p.pub_b, "remove"]);
    assert_eq!(
        findings(&diag(&p, &ds)),
        s("wireguard.peer.missing", "node-b")
    );
    p.a.wg(&[
        "peer",
        &p.pub_b,
        "allowed-ips",
        "10.246.1.1/32,10.246.9.0/26",
        "endpoint",
        "192.168.77.2:51820",
    ]);
    assert_eq!(
        findings(&diag(&p, &ds)),
        s("wireguard.allowed-ips.mismatch", "node-b")
    );
    // boringtun 0.7 refuses `replace_allowed_ips` on an existing peer: re-add it instead.
    p.a.wg(&["peer", &p.pub_b, "remove"]);
    p.a.wg(&[
        "peer",
        &p.pub_b,
        "allowed-ips",
        "10.246.1.0/26,10.246.1.1/32",
        "endpoint",
        "192.168.77.2:51820",
    ]);
    p.a.ip(&["link", "set", &p.a.dev, "mtu", "1400"]);
    assert_eq!(findings(&diag(&p, &ds)), s("mtu.tunnel.mismatch", &p.a.dev));
    p.a.ip(&["link", "set", &p.a.dev, "mtu", "1440"]);
    p.a.wg(&["fwmark", "0"]);
    assert_eq!(
        findings(&diag(&p, &ds)),
        s("wireguard.fwmark.mismatch", &p.a.dev)
    );
    p.a.wg(&["fwmark", "0x200000"]);
    assert_eq!(findings(&diag(&p, &ds)), []);
    p.a.exec(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "5",
        "-I",
        "10.246.0.1",
        "10.246.1.1",
    ]);
}

/// A device named as configured that is neither a kernel WireGuard device nor has a UAPI
/// socket: its peers and settings are not observable (saying why), never reported missing.
#[test]
fn an_unreadable_device_is_not_observable_rather_than_drift() {
    let id = std::process::id() % 100_000;
    let node = Node {
        netns: format!("cdpt-uwgx{id}"),
        dev: format!("wireguard.{id}"),
        boringtun: None,
    };
    sh::run(&["ip", "netns", "add", &node.netns]).unwrap_or_else(|e| panic!("{e:#}"));
    // A TUN device, as a userspace implementation makes, with no process or socket behind it.
    node.ip(&["tuntap", "add", "mode", "tun", "name", &node.dev]);
    node.ip(&["link", "set", &node.dev, "up"]);
    let dir = TempDir(std::env::temp_dir().join(format!("cdpt-uwgx-{id}")));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    std::fs::write(
        dir.0.join("calico.yaml"),
        format!(
            "apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {{name: default}}
spec: {{wireguardEnabled: true, wireguardInterfaceName: {dev}}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {{name: node-a}}
spec: {{bgp: {{ipv4Address: 192.168.78.1/24}}}}
status: {{wireguardPublicKey: KA}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {{name: node-b}}
spec: {{bgp: {{ipv4Address: 192.168.78.2/24}}}}
status: {{wireguardPublicKey: KB}}
",
            dev = node.dev
        ),
    )
    .expect("datastore");
    // `check` exits non-zero here (drift, unverifiable): only its JSON matters.
    let out = Command::new("ip")
        .args(["netns", "exec", &node.netns, env!("CARGO_BIN_EXE_agent")])
        .args(["check", "--json", "--no-daemon", "--node-name", "node-a"])
        .arg("--datastore")
        .arg(&dir.0)
        .output()
        .expect("agent check");
    let out = String::from_utf8_lossy(&out.stdout);
    let a: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let device_checks = [
        "wireguard.peer.missing",
        "wireguard.allowed-ips.mismatch",
        "wireguard.peer.endpoint.mismatch",
        "wireguard.peer.unexpected",
        "wireguard.listen-port.mismatch",
        "wireguard.fwmark.mismatch",
    ];
    let reported: Vec<&Value> = a["verification"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| device_checks.iter().any(|c| f["check"] == *c))
        .collect();
    assert!(reported.is_empty(), "{reported:?}");
    for c in device_checks {
        let s = a["verification"]["skipped"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["check"] == c)
            .unwrap_or_else(|| panic!("{c} not listed as not run: {a}"));
        assert_eq!(s["kind"], "could-not-observe", "{c}: {s}");
        assert!(
            s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no UAPI socket")),
            "{c}: {s}"
        );
    }
}
