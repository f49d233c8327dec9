//! What `agent run` spends after one netlink event at real cluster sizes: the verification
//! that follows it (the operator's view is built only when the local API is asked), on a node
//! whose kernel holds the real VXLAN state for 1,000 and 5,000 remote nodes (a route, an ARP
//! entry and an FDB entry each, built in a network namespace of our own), against reading the
//! same routes from the kernel in the same run. Prints a Markdown table for BENCHMARKS.md.
//! Needs root; `cargo xtask bench` runs it.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use agent::{
    analysis,
    desired::{Datastore, files},
    observed::{self, netlink::Netlink},
    verify::{self, Policy},
};

const SIZES: [u32; 2] = [1000, 5000];
/// Runs per measure; the median is reported.
const RUNS: usize = 41;
const POOL: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 0);

fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(UNDERLAY) + i + 1)
}

fn block(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POOL) + i * 64)
}

fn name(i: u32) -> String {
    format!("bench-{i}")
}

/// The datastore: the pool, every node and its block, as the Kubernetes API returns them (JSON
/// objects; `check_scale.rs` reads whole YAML and JSON files of this size).
fn datastore(nodes: u32) -> anyhow::Result<Datastore> {
    let mut ds = Datastore::default();
    let pool = serde_json::json!({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {"blockSize": 26, "cidr": format!("{POOL}/9"), "ipipMode": "Never",
                 "natOutgoing": false, "nodeSelector": "all()", "vxlanMode": "Always"}
    });
    files::load_object(&mut ds, "bench", &pool)?;
    for i in 0..=nodes {
        let (n, ip, b) = (name(i), node_ip(i), block(i));
        let node = serde_json::json!({
            "apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": n},
            "spec": {"addresses": [{"address": format!("{ip}/16"), "type": "CalicoNodeIP"}],
                     "bgp": {"ipv4Address": format!("{ip}/16")},
                     "ipv4VXLANTunnelAddr": b.to_string()}
        });
        let ipam = serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMBlock",
            "metadata": {"name": format!("b{i}")},
            "spec": {"affinity": format!("host:{n}"), "allocations": [0],
                     "attributes": [{"handle_id": format!("vxlan-tunnel-addr-{n}"),
                                     "secondary": {"node": n, "type": "vxlanTunnelAddress"}}],
                     "cidr": format!("{b}/26"), "deleted": false, "strictAffinity": false,
                     "unallocated": []}
        });
        files::load_object(&mut ds, "bench", &node)?;
        files::load_object(&mut ds, "bench", &ipam)?;
    }
    Ok(ds)
}

fn run(argv: &[&str]) -> anyhow::Result<()> {
    xtask::sh::run(argv).map(drop)
}

/// Node 0's kernel state, as Felix programs it, in namespace `ns`.
fn program(ns: &str, nodes: u32) -> anyhow::Result<()> {
    let local = node_ip(0).to_string();
    let mut batch = format!(
        "link add eth0 type veth peer name eth1\nlink set eth0 up\nlink set eth1 up\naddr add {local}/16 dev eth0\n\
         link add vxlan.calico type vxlan id 4096 dstport 4789 local {local} dev eth0 nolearning\n\
         link set vxlan.calico mtu 1450 address {mac} up\naddr add {b0}/32 dev vxlan.calico\n\
         route add blackhole {b0}/26 proto 80\n",
        mac = calico_conventions::vtep_mac(&name(0)),
        b0 = block(0)
    );
    for i in 1..=nodes {
        let mac = calico_conventions::vtep_mac(&name(i));
        let _ = write!(
            batch,
            "neigh add {t} lladdr {mac} dev vxlan.calico nud permanent\n\
             route add {t}/26 via {t} dev vxlan.calico onlink\n",
            t = block(i)
        );
    }
    let file = std::env::temp_dir().join(format!("{ns}.batch"));
    std::fs::write(&file, batch)?;
    let result = run(&["ip", "-n", ns, "-batch", &file.to_string_lossy()]);
    let mut fdb = String::new();
    for i in 1..=nodes {
        let _ = writeln!(
            fdb,
            "fdb add {} dev vxlan.calico dst {} self permanent",
            calico_conventions::vtep_mac(&name(i)),
            node_ip(i)
        );
    }
    std::fs::write(&file, fdb)?;
    let result = result.and_then(|()| {
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "bridge",
            "-batch",
            &file.to_string_lossy(),
        ])
    });
    let _ = std::fs::remove_file(&file);
    result?;
    xtask::lab::sysctl(ns, "net.ipv4.ip_forward", "1")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

struct Row {
    nodes: u32,
    routes: usize,
    findings: Vec<String>,
    verify: Duration,
    diag: Duration,
    dump: Duration,
}

fn measure(nodes: u32) -> anyhow::Result<Row> {
    let ns = format!("cdpb-rv{}", std::process::id() % 10000);
    run(&["ip", "netns", "add", &ns])?;
    let result = (|| {
        program(&ns, nodes)?;
        let ds = datastore(nodes)?;
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || -> anyhow::Result<Row> {
            let fd = std::fs::File::open(&path)?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let obs = rt.block_on(observed::read_live(&name(0)));
            let expected = analysis::expected_for(&obs, Some(&ds))?;
            let policy = Policy::default();
            let findings = verify::verify(expected.as_ref(), &obs, &policy).findings;
            let nl = rt.block_on(async { Netlink::open() })?;
            let dump = time(|| {
                let _ = rt.block_on(nl.routes(&obs.links));
            });
            Ok(Row {
                nodes,
                routes: obs.routes.len(),
                findings: findings.iter().map(|f| f.check.to_string()).collect(),
                diag: time(|| {
                    let _ = agent::diag::build(&obs);
                }),
                verify: time(|| {
                    let _ = verify::verify(expected.as_ref(), &obs, &policy);
                }),
                dump,
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
    })();
    let _ = run(&["ip", "netns", "del", &ns]);
    result
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let mut md = String::from(
        "| remote nodes | routes in the kernel | findings | verification after an event (ms) | route dump over netlink, same state (ms) | verification / dump | operator view, per local API request (ms) |\n|---|---|---|---|---|---|---|\n",
    );
    for n in SIZES {
        let r = measure(n)?;
        let _ = writeln!(
            md,
            "| {} | {} | {} | **{}** | {} | {:.2} | {} |",
            r.nodes,
            r.routes,
            r.findings.join(", "),
            ms(r.verify),
            ms(r.dump),
            r.verify.as_secs_f64() / r.dump.as_secs_f64(),
            ms(r.diag)
        );
    }
    print!("{md}");
    Ok(())
}
