//! Issue 13, points 1–4, on bundles: a partial datastore runs what it can and names what is
//! missing; a bundle's node is never the analysing machine; an MTU derived from an underlay
//! the bundle lacks is not a finding; Felix's exact shapes for borrowed tunnel addresses,
//! tunnel devices without their address, workloads above a tunnel's MTU without routes. Each
//! fires and stays quiet. No root needed: bundles only.

mod support;

use std::{path::PathBuf, process::Command};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(dir: &PathBuf, extra: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("check")
        .arg("--bundle")
        .arg(dir)
        .args(extra)
        .env_remove("AGENT_NODE_NAME")
        .env_remove("NODENAME")
        .output()
        .expect("run agent");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn json(dir: &PathBuf, extra: &[&str]) -> serde_json::Value {
    let mut args = extra.to_vec();
    args.push("--json");
    let o = check(dir, &args);
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", o.stdout, o.stderr))
}

fn not_run<'a>(v: &'a serde_json::Value, check: &str) -> Option<&'a serde_json::Value> {
    v["not_run"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["check"] == check))
}

/// A temporary bundle of the given files, removed on drop.
struct Bundle(PathBuf);

impl Bundle {
    fn new(tag: &str, files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("cdpt-partial-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
        Self(dir)
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const POOL: &str = "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, vxlanMode: Always, ipipMode: Never, natOutgoing: true, blockSize: 26}
";

const NODES: &str = "apiVersion: projectcalico.org/v3
kind: NodeList
items:
- apiVersion: projectcalico.org/v3
  kind: Node
  metadata: {name: node-a}
  spec: {bgp: {ipv4Address: 10.0.0.5/24}, ipv4VXLANTunnelAddr: 10.244.0.0}
- apiVersion: projectcalico.org/v3
  kind: Node
  metadata: {name: node-b}
  spec: {bgp: {ipv4Address: 10.0.0.6/24}, ipv4VXLANTunnelAddr: 10.244.1.0}
- apiVersion: projectcalico.org/v3
  kind: Node
  metadata: {name: node-c}
  spec: {bgp: {ipv4Address: 10.0.0.7/24}, ipv4VXLANTunnelAddr: 10.244.1.5}
";

const FELIX: &str = "apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {logSeverityScreen: Info}
";

/// node-a's routes as Felix programs them; node-c's tunnel address is borrowed from node-b's
/// block, so it is a device route (reference §1.5).
const ROUTES: &str = "$ ip route
default via 10.0.0.1 dev eth0 proto dhcp src 10.0.0.5 metric 100
10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.5
blackhole 10.244.0.0/26 proto 80
10.244.0.2 dev cali1234567890a scope link
10.244.1.0/26 via 10.244.1.0 dev vxlan.calico onlink
10.244.1.5 dev vxlan.calico scope link
";

const BLOCKS: &str = "apiVersion: crd.projectcalico.org/v1
kind: IPAMBlockList
items:
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata: {name: 10-244-0-0-26}
  spec:
    cidr: 10.244.0.0/26
    affinity: host:node-a
    allocations: [0]
    attributes:
    - {handle_id: vxlan-tunnel-addr-node-a, secondary: {node: node-a, type: vxlanTunnelAddress}}
- apiVersion: crd.projectcalico.org/v1
  kind: IPAMBlock
  metadata: {name: 10-244-1-0-26}
  spec:
    cidr: 10.244.1.0/26
    affinity: host:node-b
    allocations: [0, null, null, null, null, 1]
    attributes:
    - {handle_id: vxlan-tunnel-addr-node-b, secondary: {node: node-b, type: vxlanTunnelAddress}}
    - {handle_id: vxlan-tunnel-addr-node-c, secondary: {node: node-c, type: vxlanTunnelAddress}}
";

/// Point 1: only the pool. Routes into it are judged by its mode; nothing is called
/// unexpected; the checks that need more say which kinds; never exit 2 for a missing kind.
#[test]
fn a_pool_alone_judges_routes_by_the_mode() {
    let stale = format!("{ROUTES}10.244.7.0/26 via 10.244.7.0 dev vxlan.calico onlink\n");
    let b = Bundle::new("pool", &[("pool.yaml", POOL), ("routes.txt", &stale)]);
    let o = check(&b.0, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let v = json(&b.0, &[]);
    assert_eq!(v["verdict"], "incomplete");
    assert_eq!(support::json_findings(&v), []);
    let unexpected = not_run(&v, "route.unexpected").expect("listed");
    assert_eq!(unexpected["kind"], "not-in-input");
    assert_eq!(unexpected["missing"], "IPAMBlock, Node, the node's name");

    // A route into the VXLAN pool through the underlay: the mode says it is wrong.
    let wrong = format!("{ROUTES}10.244.2.0/26 via 10.0.0.7 dev eth0 proto 80 onlink\n");
    let b = Bundle::new("pool-wrong", &[("pool.yaml", POOL), ("routes.txt", &wrong)]);
    let o = check(&b.0, &[]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        support::json_findings(&json(&b.0, &[])),
        [(
            "route.wrong-device".to_string(),
            "10.244.2.0/26".to_string()
        )]
    );
}

/// Point 2: the bundle's node is its data's when it names none; the hostname file and
/// --node-name come first; with no match it is unknown, never the analysing machine.
#[test]
fn a_bundles_node_is_never_the_analysing_machine() {
    let b = Bundle::new(
        "ident",
        &[
            ("pool.yaml", POOL),
            ("nodes.yaml", NODES),
            ("routes.txt", ROUTES),
        ],
    );
    let v = json(&b.0, &[]);
    assert_eq!(v["diag"]["node"], "node-a");
    assert!(
        v["input_notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n
                .as_str()
                .is_some_and(|s| s.contains("its data belongs to node-a (node IP 10.0.0.5")))),
        "{v}"
    );
    assert_eq!(v["verdict"], "incomplete", "{v}");
    // --node-name wins (a wrong one is named as such by the identity check).
    let v = json(&b.0, &["--node-name", "node-b"]);
    assert_eq!(v["diag"]["node"], "node-b");
    assert_eq!(v["identity"]["looks_like"], "node-a");
    // The bundle's own nodename file comes before the data.
    std::fs::write(b.0.join("nodename"), "node-b\n").expect("write");
    assert_eq!(json(&b.0, &[])["diag"]["node"], "node-b");
    std::fs::remove_file(b.0.join("nodename")).expect("rm");

    // Nothing identifies it: unknown, node-specific checks not run, exit not 2.
    let stranger = ROUTES.replace("10.0.0.5", "10.0.0.99");
    let b = Bundle::new(
        "unknown",
        &[
            ("pool.yaml", POOL),
            ("nodes.yaml", NODES),
            ("routes.txt", &stranger),
        ],
    );
    let o = check(&b.0, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let v = json(&b.0, &[]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_eq!(v["diag"]["node"], "unknown node");
    assert_ne!(v["diag"]["node"], host.trim());
    let blackhole = not_run(&v, "route.blackhole.missing").expect("listed");
    assert_eq!(blackhole["missing"], "IPAMBlock, the node's name");
    assert!(
        blackhole["reason"]
            .as_str()
            .is_some_and(|r| r.contains("--node-name")),
        "{blackhole}"
    );
}

/// Point 3: without the underlay's link the tunnel MTU is not judged against the 1460
/// fallback; with it, a wrong MTU is a finding.
#[test]
fn an_underlay_mtu_the_bundle_lacks_is_not_a_finding() {
    let vxlan_only = "$ ip -d link show vxlan.calico
7: vxlan.calico: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN mode DEFAULT group default 
    link/ether 66:3a:3c:2a:5e:0f brd ff:ff:ff:ff:ff:ff promiscuity 0 minmtu 68 maxmtu 65535 
    vxlan id 4096 local 10.0.0.5 dev eth0 srcport 0 0 dstport 4789 nolearning ttl auto ageing 300 udpcsum noudp6zerocsumtx noudp6zerocsumrx addrgenmode eui64 numtxqueues 1 numrxqueues 1 gso_max_size 65536 gso_max_segs 65535 
";
    let files = [
        ("pool.yaml", POOL),
        ("nodes.yaml", NODES),
        ("felix.yaml", FELIX),
        ("hostname", "node-a\n"),
        ("links.txt", vxlan_only),
    ];
    let b = Bundle::new("mtu", &files);
    let v = json(&b.0, &[]);
    assert!(
        !support::json_findings(&v)
            .iter()
            .any(|(c, _)| c == "mtu.tunnel.mismatch"),
        "{v}"
    );
    let s = not_run(&v, "mtu.tunnel.mismatch").expect("listed");
    assert_eq!(s["missing"], "the underlay link");

    // The whole listing (lo, eth0 1500): 1450 expected, 1400 is drift.
    let full = format!(
        "$ ip -d link show\n1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DEFAULT group default qlen 1000\n    link/ether 02:00:00:00:00:05 brd ff:ff:ff:ff:ff:ff\n{}",
        vxlan_only
            .trim_start_matches("$ ip -d link show vxlan.calico\n")
            .replace("mtu 1450", "mtu 1400")
    );
    let b = Bundle::new(
        "mtu-full",
        &[files[0], files[1], files[2], files[3], ("links.txt", &full)],
    );
    let v = json(&b.0, &[]);
    assert!(
        support::json_findings(&v).contains(&(
            "mtu.tunnel.mismatch".to_string(),
            "vxlan.calico".to_string()
        )),
        "{v}"
    );
}

/// Point 4: a borrowed VTEP address routed as Felix does it is clean; routed via itself it is
/// the wrong next hop.
#[test]
fn a_borrowed_tunnel_address_in_felixs_shape_is_clean() {
    let files = [
        ("pool.yaml", POOL),
        ("nodes.yaml", NODES),
        ("blocks.yaml", BLOCKS),
        ("hostname", "node-a\n"),
    ];
    let b = Bundle::new(
        "borrowed",
        &[
            files[0],
            files[1],
            files[2],
            files[3],
            ("routes.txt", ROUTES),
        ],
    );
    let v = json(&b.0, &[]);
    let routes: Vec<_> = support::json_findings(&v)
        .into_iter()
        .filter(|(c, _)| c.starts_with("route."))
        .collect();
    assert_eq!(routes, [], "{v}");
    let via_itself = ROUTES.replace(
        "10.244.1.5 dev vxlan.calico scope link",
        "10.244.1.5 via 10.244.1.5 dev vxlan.calico onlink",
    );
    let b = Bundle::new(
        "borrowed-wrong",
        &[
            files[0],
            files[1],
            files[2],
            files[3],
            ("routes.txt", &via_itself),
        ],
    );
    let v = json(&b.0, &[]);
    assert!(
        support::json_findings(&v)
            .contains(&("route.wrong-nexthop".to_string(), "10.244.1.5".to_string())),
        "{v}"
    );
}

/// Point 4: a tunnel below a workload's MTU without any route in the input; a tunnel
/// without the address Felix always gives it.
#[test]
fn tunnel_devices_are_judged_without_routes() {
    let addr = |cali_mtu: u32, vxlan_inet: bool| {
        format!(
            "$ ip addr\n6: vxlan.calico: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1400 qdisc noqueue state UNKNOWN group default \n    link/ether 66:73:9e:f9:f6:53 brd ff:ff:ff:ff:ff:ff\n{}7: calia78822465be@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu {cali_mtu} qdisc noqueue state UP group default \n    link/ether ee:ee:ee:ee:ee:ee brd ff:ff:ff:ff:ff:ff link-netnsid 0\n",
            if vxlan_inet {
                "    inet 10.42.39.64/32 scope global vxlan.calico\n       valid_lft forever preferred_lft forever\n"
            } else {
                ""
            }
        )
    };
    let b = Bundle::new("tun-quiet", &[("ip-addr.txt", &addr(1400, true))]);
    let v = json(&b.0, &[]);
    assert_eq!(support::json_findings(&v), [], "{v}");
    let b = Bundle::new("tun-mtu", &[("ip-addr.txt", &addr(1450, true))]);
    assert_eq!(
        support::json_findings(&json(&b.0, &[])),
        [(
            "mtu.workload.mismatch".to_string(),
            "calia78822465be".to_string()
        )]
    );
    let b = Bundle::new("tun-addr", &[("ip-addr.txt", &addr(1400, false))]);
    assert_eq!(
        support::json_findings(&json(&b.0, &[])),
        [(
            "tunnel.address.mismatch".to_string(),
            "vxlan.calico".to_string()
        )]
    );
}
