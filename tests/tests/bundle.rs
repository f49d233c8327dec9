//! A bundle captured from a namespace and read back offline is the same `ObservedDataplane`
//! that the live reader sees there: the lab's Calico node, and a namespace holding the link
//! kinds, route types, rules and neighbour states the lab does not have.

use std::path::{Path, PathBuf};

use agent::observed::{ObservedDataplane, bundle};
use integration_tests::{LabGuard, NetnsGuard, in_netns, observe, unique};
use xtask::{lab::spec::VXLAN_DEV, sh};

/// A directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = Path::new("/tmp").join(unique(tag));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Captures `netns` into `dir`, then reads `dir` back.
fn capture_and_read(netns: &str, dir: &Path) -> bundle::Bundle {
    let target = dir.to_path_buf();
    let written = in_netns(netns, move |rt| {
        rt.block_on(bundle::capture(&target, "node-a"))
    })
    .unwrap_or_else(|e| panic!("capture: {e}"));
    assert!(
        written
            .iter()
            .any(|p| p.ends_with("ip-d-route-show-table-all.txt")),
        "{written:?}"
    );
    bundle::read_dir(dir).unwrap_or_else(|e| panic!("read_dir: {e}"))
}

/// Clears what a text dump cannot carry or what moves between two reads a moment apart:
/// identity and time, NOARP/NONE neighbours (`ip neigh` hides them), the state of dynamic
/// neighbours (REACHABLE turns STALE on its own), counters, and eBPF pins (not text).
fn live_only(u: &agent::observed::Unavailable) -> bool {
    u.kind.live_service()
}

fn normalise(mut obs: ObservedDataplane) -> ObservedDataplane {
    obs.node_name.clear();
    obs.captured_at = 0;
    obs.calico_bpf_pins.clear();
    // The conntrack breakdown and Felix's readiness are live-only probes.
    obs.conntrack = None;
    obs.felix_health = None;
    obs.bgp_peers = None;
    obs.bgp6_peers = None;
    obs.unavailable.retain(|u| !live_only(u));
    obs.links.sort_by_key(|l| l.index);
    obs.addresses.sort_by_key(|a| (a.ifindex, a.address));
    obs.routes
        .sort_by_key(|r| (r.table, r.destination, r.kind, r.oif, r.metric, r.gateway));
    obs.neighbours
        .retain(|n| !matches!(n.state.as_str(), "NOARP" | "NONE"));
    for n in &mut obs.neighbours {
        if n.state != "PERMANENT" {
            n.state = "dynamic".into();
        }
    }
    obs.neighbours.sort_by_key(|n| (n.ifindex, n.destination));
    obs.fdb.sort_by(|a, b| {
        (a.ifindex, &a.mac, a.destination).cmp(&(b.ifindex, &b.mac, b.destination))
    });
    obs.rules.sort_by_key(|r| (r.family, r.priority, r.table));
    obs.sysctls.conntrack_count = None;
    for dump in &mut obs.iptables {
        for table in &mut dump.tables {
            for c in &mut table.chains {
                (c.packets, c.bytes) = (None, None);
            }
            for r in &mut table.rules {
                (r.packets, r.bytes) = (None, None);
            }
        }
    }
    obs.iptables.sort_by_key(|d| (d.family, d.backend));
    if let Some(nft) = obs.nft.as_mut() {
        for r in &mut nft.rules {
            (r.packets, r.bytes) = (None, None);
        }
    }
    obs
}

/// Every source is in the bundle, every line was understood, and nothing was left over.
fn assert_clean(b: &bundle::Bundle) {
    assert!(b.notes.is_empty(), "notes: {:#?}", b.notes);
    let missing: Vec<_> = b
        .observed
        .unavailable
        .iter()
        .filter(|u| !live_only(u))
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
    assert!(b.datastore_files.is_empty());
}

#[test]
fn lab_node_bundle_equals_the_live_read() {
    let lab = LabGuard::up("bndl");
    let node = &lab.0.spec.nodes[0];
    let dir = TempDir::new("bndl-dir");
    let offline = capture_and_read(&node.netns, &dir.0);
    let live = observe(&node.netns, &node.name);
    assert_clean(&offline);
    assert!(
        live.unavailable.iter().all(live_only),
        "{:?}",
        live.unavailable
    );

    // What the checks depend on, spelled out, before the whole comparison.
    let vx = offline.observed.link(VXLAN_DEV).expect("vxlan.calico");
    assert_eq!(Some(vx), live.link(VXLAN_DEV));
    let info = vx.vxlan.as_ref().expect("vxlan details");
    assert_eq!(info.local, Some(node.ip));
    assert_eq!(info.parent_name.as_deref(), Some("eth0"));
    assert_eq!(info.parent_index, live.link("eth0").map(|l| l.index));
    assert!(
        offline
            .observed
            .iptables
            .iter()
            .flat_map(|d| &d.tables)
            .flat_map(|t| &t.rules)
            .all(|r| r.packets.is_some()),
        "iptables-save -c counters are read"
    );
    assert_eq!(offline.observed.routes.len(), live.routes.len());
    assert!(
        offline
            .observed
            .routes
            .iter()
            .all(|r| live.routes.contains(r))
    );

    assert_eq!(normalise(offline.observed), normalise(live));
    let path = dir.0.clone();
    drop(dir);
    assert!(!path.exists(), "the bundle directory is removed");
}

fn ip(ns: &str, args: &str) {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend(args.split_whitespace());
    sh::run(&argv).unwrap_or_else(|e| panic!("ip {args}: {e:#}"));
}

fn bridge(ns: &str, args: &str) {
    let mut argv = vec!["ip", "netns", "exec", ns, "bridge"];
    argv.extend(args.split_whitespace());
    sh::run(&argv).unwrap_or_else(|e| panic!("bridge {args}: {e:#}"));
}

#[test]
fn every_shape_the_parsers_know_reads_back_like_netlink() {
    let ns = unique("bshape");
    let _guard = NetnsGuard::new(&[&ns]);
    for cmd in [
        "link set lo up",
        "link add br0 type bridge",
        "link add v0 type veth peer name v1",
        "link set v0 master br0",
        "link set br0 up",
        "link set v0 up",
        "link add e0 type veth peer name e1",
        "link set e0 mtu 1400 up",
        "link set e1 up",
        "link add vx1 type vxlan external dstport 4789",
        "link add vx2 type vxlan id 7 local 192.0.2.10 dev e0 dstport 4790",
        "tuntap add mode tun name tn0",
        "addr add 192.0.2.10/24 dev e0",
        "addr add 2001:db8::10/64 dev e0 nodad",
        "addr add 10.9.9.1 peer 10.9.9.2/32 dev e1",
        "route add 198.51.100.0/26 via 192.0.2.1 dev e0 onlink proto 80 metric 7 mtu lock 1380",
        "route add blackhole 203.0.113.0/26 proto 80",
        "route add unreachable 203.0.113.64/26",
        "route add prohibit 203.0.113.128/26 table 100",
        "route add throw 10.2.0.0/26 table 1",
        "route add 10.1.0.0/16 dev e0 table 1000 proto bird src 192.0.2.10",
        "route add 10.3.0.0/16 proto static nexthop via 192.0.2.1 dev e0 weight 1 nexthop via 192.0.2.2 dev e0 weight 2",
        "route add 10.4.0.0/16 dev e1 scope link proto keepalived",
        "route add 10.5.0.0/16 dev e0 table default proto 186",
        "-6 route add 2001:db8:1::/64 via 2001:db8::1 dev e0 metric 1024",
        "-6 route add default via 2001:db8::1 dev e0 proto ra",
        "rule add not from all fwmark 0x200000/0x200000 lookup 1 priority 99",
        "rule add from 10.0.0.0/8 to 10.1.0.0/16 iif e0 oif e1 lookup 100 priority 100",
        "rule add fwmark 0x1 lookup main priority 101",
        "rule add from 192.0.2.10 goto 32766 priority 102",
        "rule add to 203.0.113.0/24 blackhole priority 103",
        "rule add fwmark 0x0/0xff lookup 7 priority 107",
        "rule add nop priority 108",
        "-6 rule add from 2001:db8::/32 lookup 200 priority 50",
        "neigh add 192.0.2.3 dev e0 lladdr 02:00:00:00:00:03 nud permanent",
        "neigh add 192.0.2.7 dev e0 lladdr 02:00:00:00:00:07 nud stale",
        "neigh add 192.0.2.8 dev e0 nud failed",
        "neigh add 2001:db8::1 dev e0 lladdr 02:00:00:00:00:01 router nud reachable",
    ] {
        ip(&ns, cmd);
    }
    bridge(&ns, "fdb add 02:00:00:00:00:aa dev v0 master static");
    bridge(&ns, "fdb add 02:00:00:00:00:bb dev v0 master");
    bridge(
        &ns,
        "fdb add 02:00:00:00:00:cc dev vx1 dst 192.0.2.50 vni 42 port 4790 self permanent",
    );
    bridge(
        &ns,
        "fdb append 00:00:00:00:00:00 dev vx2 dst 192.0.2.51 self permanent",
    );

    let dir = TempDir::new("bshape-dir");
    let offline = capture_and_read(&ns, &dir.0);
    let live = observe(&ns, "");
    assert_clean(&offline);

    let vx2 = offline.observed.link("vx2").expect("vx2");
    let info = vx2.vxlan.as_ref().expect("vxlan details");
    assert_eq!((info.vni, info.port), (Some(7), Some(4790)));
    assert_eq!(
        info.parent_index,
        offline.observed.link("e0").map(|l| l.index)
    );
    let v0 = offline.observed.link("v0").expect("v0");
    assert_eq!(v0.controller, offline.observed.link("br0").map(|l| l.index));
    assert_eq!(v0.link_index, offline.observed.link("v1").map(|l| l.index));
    let multipath = offline
        .observed
        .routes
        .iter()
        .find(|r| r.destination.to_string() == "10.3.0.0/16")
        .expect("multipath route");
    assert_eq!((multipath.gateway, multipath.dev.as_deref()), (None, None));

    assert_eq!(normalise(offline.observed), normalise(live));
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let dir = TempDir::new("bmissing");
    let err = bundle::read_dir(&dir.0).expect_err("missing directory");
    assert!(
        err.to_string().contains(&dir.0.display().to_string()),
        "{err}"
    );
}
