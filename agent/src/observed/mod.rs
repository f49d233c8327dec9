//! The node's real kernel state, read into one [`ObservedDataplane`] snapshot.

pub mod bird;
pub mod bundle;
pub mod calico_ct;
pub mod caps;
pub mod conntrack;
pub mod exec;
pub mod felix_health;
pub mod iptables;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod sysctl;
pub mod wireguard;

pub use model::*;

use self::netlink::Netlink;

/// Reads every source from the calling thread's network namespace. A source that fails is
/// listed in `unavailable` with the reason (and the missing capability, when that is the
/// cause); the rest of the snapshot is still returned.
pub async fn read_live(node_name: &str) -> ObservedDataplane {
    let mut obs = ObservedDataplane {
        node_name: node_name.to_string(),
        captured_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Default::default()
    };
    if let Some(set) = caps::effective() {
        for (cap, name) in [(caps::CAP_NET_ADMIN, "CAP_NET_ADMIN")] {
            if !caps::has(set, cap) {
                obs.missing_capabilities.push(name.to_string());
            }
        }
    }
    let mut unavailable = Vec::new();
    match Netlink::open() {
        Ok(nl) => read_netlink(&nl, &mut obs, &mut unavailable).await,
        Err(e) => {
            let reason = error_chain(&e);
            for kind in [
                Source::Links,
                Source::LinkDetails,
                Source::Addresses,
                Source::Routes,
                Source::Neighbours,
                Source::Fdb,
                Source::Rules,
            ] {
                unavailable.push(Unavailable::new(kind, "netlink", reason.clone()));
            }
        }
    }
    obs.sysctls = sysctl::read_live(&mut unavailable);
    obs.iptables = iptables::read_all(&mut unavailable).await;
    match nft::read().await {
        Ok(rs) => obs.nft = Some(rs),
        Err(e) if e.not_installed() => {}
        Err(e) => unavailable.push(Unavailable::new(Source::Nftables, "nft", error_chain(&e))),
    }
    if obs.links.iter().any(|l| {
        l.kind.as_deref() == Some("wireguard")
            || l.name.starts_with("wireguard.")
            || l.name.starts_with("wg-")
    }) {
        obs.wireguard = wireguard::read(&mut unavailable).await;
    }
    // AGENT_FELIX_HEALTH points at a non-default HealthHost:HealthPort.
    let endpoint = std::env::var("AGENT_FELIX_HEALTH")
        .unwrap_or_else(|_| felix_health::DEFAULT_ENDPOINT.into());
    match felix_health::read(&endpoint).await {
        Ok(h) => obs.felix_health = Some(h),
        Err(e) => unavailable.push(Unavailable::new(
            Source::FelixHealth,
            "felix readiness",
            error_chain(&e),
        )),
    }
    // AGENT_BIRD_SOCKET points at a non-default BIRD control socket.
    match bird::read(std::env::var("AGENT_BIRD_SOCKET").ok().as_deref()).await {
        Ok(peers) => obs.bgp_peers = Some(peers),
        Err(e) => unavailable.push(Unavailable::new(
            Source::Bgp,
            "bird show protocols",
            error_chain(&e),
        )),
    }
    match conntrack::dump_counts() {
        Ok(c) => obs.conntrack = Some(c),
        Err(e) => unavailable.push(Unavailable::new(
            Source::Conntrack,
            "conntrack dump",
            error_chain(&e),
        )),
    }
    // AGENT_CALICO_BPF_DIR points at the host's bpffs where it is mounted elsewhere.
    let pin_dir =
        std::env::var("AGENT_CALICO_BPF_DIR").unwrap_or_else(|_| CALICO_BPF_PIN_DIR.into());
    let pin_dir = std::path::Path::new(&pin_dir);
    obs.calico_bpf_pins = calico_bpf_pins(pin_dir);
    match calico_ct::read(pin_dir) {
        None => {}
        Some(Ok(ct)) => obs.calico_conntrack = Some(ct),
        Some(Err(e)) => unavailable.push(Unavailable::new(
            Source::CalicoConntrack,
            "calico conntrack map",
            error_chain(&e),
        )),
    }
    obs.unavailable = unavailable;
    obs
}

/// Only the links and routes: what choosing the interfaces to attach to needs, cheap enough
/// to repeat every second.
pub async fn read_interfaces() -> Result<ObservedDataplane, netlink::NetlinkError> {
    let nl = Netlink::open()?;
    let links = nl.links().await?;
    let routes = nl.routes(&links).await?;
    Ok(ObservedDataplane {
        links,
        routes,
        ..Default::default()
    })
}

async fn read_netlink(
    nl: &Netlink,
    obs: &mut ObservedDataplane,
    unavailable: &mut Vec<Unavailable>,
) {
    let mut note = |kinds: &[Source], what: &str, e: &netlink::NetlinkError| {
        for kind in kinds {
            unavailable.push(Unavailable::new(
                *kind,
                format!("netlink {what}"),
                error_chain(e),
            ));
        }
    };
    match nl.links().await {
        Ok(l) => obs.links = l,
        Err(e) => note(&[Source::Links, Source::LinkDetails], "links", &e),
    }
    match nl.addresses(&obs.links).await {
        Ok(a) => obs.addresses = a,
        Err(e) => note(&[Source::Addresses], "addresses", &e),
    }
    match nl.routes(&obs.links).await {
        Ok(r) => obs.routes = r,
        Err(e) => note(&[Source::Routes], "routes", &e),
    }
    match nl.neighbours(&obs.links).await {
        Ok(n) => obs.neighbours = n,
        Err(e) => note(&[Source::Neighbours], "neighbours", &e),
    }
    match nl.fdb(&obs.links).await {
        Ok(f) => obs.fdb = f,
        Err(e) => note(&[Source::Fdb], "fdb", &e),
    }
    match nl.rules().await {
        Ok(r) => obs.rules = r,
        Err(e) => note(&[Source::Rules], "rules", &e),
    }
}

/// Where Felix pins its maps in eBPF mode (`felix/bpf/bpfdefs` `GlobalPinDir`).
pub const CALICO_BPF_PIN_DIR: &str = "/sys/fs/bpf/tc/globals";

fn calico_bpf_pins(dir: &std::path::Path) -> Vec<String> {
    let mut pins: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("cali_"))
        .collect();
    pins.sort();
    pins
}

/// An error with its sources, `a: b: c`, for one-line reports.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
