//! The node's real kernel state, read into one [`ObservedDataplane`] snapshot.

pub mod bird;
pub mod bundle;
pub mod calico_bpf;
pub mod calico_ct;
pub mod caps;
pub mod conntrack;
pub mod exec;
pub mod felix_health;
pub mod iptables;
pub mod model;
pub mod netlink;
pub mod netlink_events;
pub mod nft;
pub mod sysctl;
pub mod vpc_cni;
pub mod wireguard;

pub use model::*;

use self::netlink::Netlink;

/// Groups of sources read together. Netlink state changes arrive as events; the others have
/// no events and are polled (`agent run` gives each group its own timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceGroup {
    /// Links, addresses, routes, neighbours, FDB, rules.
    Netlink,
    /// iptables (both backends) and nftables: external commands, the costliest read.
    Rules,
    /// Sysctls, the conntrack table and Calico's pinned eBPF maps.
    Kernel,
    /// Felix's health endpoint, BIRD and WireGuard.
    Services,
}

impl SourceGroup {
    pub const ALL: [SourceGroup; 4] = [Self::Netlink, Self::Rules, Self::Kernel, Self::Services];

    /// The kinds of state this group reads.
    pub fn kinds(self) -> &'static [Source] {
        use Source::*;
        match self {
            Self::Netlink => &[
                Links,
                LinkDetails,
                Addresses,
                Routes,
                Neighbours,
                Fdb,
                Rules,
            ],
            Self::Rules => &[Iptables, Ip6tables, Nftables],
            Self::Kernel => &[
                Sysctls,
                Conntrack,
                CalicoConntrack,
                CalicoBpfRoutes,
                CalicoBpfCounters,
            ],
            Self::Services => &[FelixHealth, Bgp, Bgp6, Wireguard],
        }
    }
}

/// Reads every source from the calling thread's network namespace. A source that fails is
/// listed in `unavailable` with the reason (and the missing capability, when that is the
/// cause); the rest of the snapshot is still returned.
pub async fn read_live(node_name: &str) -> ObservedDataplane {
    let mut obs = ObservedDataplane {
        node_name: node_name.to_string(),
        ..Default::default()
    };
    if let Some(set) = caps::effective() {
        for (cap, name) in [(caps::CAP_NET_ADMIN, "CAP_NET_ADMIN")] {
            if !caps::has(set, cap) {
                obs.missing_capabilities.push(name.to_string());
            }
        }
    }
    for group in SourceGroup::ALL {
        refresh(&mut obs, group).await;
    }
    obs
}

/// Reads one group of sources again into `obs`, replacing what it held and the group's
/// `unavailable` entries. Services come after netlink: WireGuard is read only when its
/// device exists.
pub async fn refresh(obs: &mut ObservedDataplane, group: SourceGroup) {
    obs.captured_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut unavailable = Vec::new();
    match group {
        SourceGroup::Netlink => match Netlink::open() {
            Ok(nl) => read_netlink(&nl, obs, &mut unavailable).await,
            Err(e) => {
                let reason = error_chain(&e);
                for kind in group.kinds() {
                    unavailable.push(Unavailable::new(*kind, "netlink", reason.clone()));
                }
            }
        },
        SourceGroup::Rules => {
            obs.iptables = iptables::read_all(&mut unavailable).await;
            obs.nft = match nft::read().await {
                Ok(rs) => Some(rs),
                Err(e) if e.not_installed() => None,
                Err(e) => {
                    unavailable.push(Unavailable::new(Source::Nftables, "nft", error_chain(&e)));
                    None
                }
            };
        }
        SourceGroup::Kernel => {
            read_kernel(obs, &mut unavailable);
            felix_tc_programs(obs).await;
        }
        SourceGroup::Services => read_services(obs, &mut unavailable).await,
    }
    obs.unavailable.retain(|u| !group.kinds().contains(&u.kind));
    obs.unavailable.extend(unavailable);
}

fn read_kernel(obs: &mut ObservedDataplane, unavailable: &mut Vec<Unavailable>) {
    obs.sysctls = sysctl::read_live(unavailable);
    obs.conntrack = match conntrack::dump_counts() {
        Ok(c) => Some(c),
        Err(e) => {
            unavailable.push(Unavailable::new(
                Source::Conntrack,
                "conntrack dump",
                error_chain(&e),
            ));
            None
        }
    };
    // AGENT_CALICO_BPF_DIR points at the host's bpffs where it is mounted elsewhere.
    let pin_dir =
        std::env::var("AGENT_CALICO_BPF_DIR").unwrap_or_else(|_| CALICO_BPF_PIN_DIR.into());
    let pin_dir = std::path::Path::new(&pin_dir);
    obs.calico_bpf_pins = calico_bpf::pinned_names(pin_dir);
    obs.calico_bpf = calico_bpf::read(pin_dir, unavailable);
    obs.calico_conntrack = match calico_ct::read(pin_dir) {
        None => None,
        Some(Ok(ct)) => Some(ct),
        Some(Err(e)) => {
            unavailable.push(Unavailable::new(
                Source::CalicoConntrack,
                "calico conntrack map",
                error_chain(&e),
            ));
            None
        }
    };
    // The map summary's fill for the conntrack map comes from the read just made.
    if let (Some(bpf), Some(ct)) = (obs.calico_bpf.as_mut(), obs.calico_conntrack.as_ref()) {
        bpf.set_entries(&ct.map, ct.counts.total);
    }
}

/// Felix attaching through TC (clsact) pins no links: where its maps are pinned but no link
/// pin says its programs are attached, the interfaces' filters are asked. Nodes without
/// Calico's maps are not scanned (no cost outside eBPF mode).
async fn felix_tc_programs(obs: &mut ObservedDataplane) {
    let Some(bpf) = obs.calico_bpf.as_ref().filter(|b| b.attached.is_empty()) else {
        return;
    };
    if bpf.maps.is_empty() {
        return;
    }
    let Ok(nl) = Netlink::open() else {
        return;
    };
    let found = nl.felix_tc_programs(&obs.links).await;
    if let Some(bpf) = obs.calico_bpf.as_mut() {
        bpf.attached = found;
    }
}

async fn read_services(obs: &mut ObservedDataplane, unavailable: &mut Vec<Unavailable>) {
    obs.wireguard = wireguard::read(&obs.links, unavailable).await;
    // AGENT_FELIX_HEALTH points at a non-default HealthHost:HealthPort.
    let endpoint = std::env::var("AGENT_FELIX_HEALTH")
        .unwrap_or_else(|_| felix_health::DEFAULT_ENDPOINT.into());
    obs.felix_health = match felix_health::read(&endpoint).await {
        Ok(h) => Some(h),
        Err(e) => {
            unavailable.push(
                Unavailable::new(Source::FelixHealth, "felix readiness", error_chain(&e))
                    .with_cause(cause(e.not_running())),
            );
            None
        }
    };
    // AGENT_BIRD_SOCKET / AGENT_BIRD6_SOCKET point at non-default BIRD control sockets. An
    // absent bird6 is only NotRunning: whether IPv6 sessions were due is verify's judgement.
    for (family, source) in [
        (bird::Family::V4, Source::Bgp),
        (bird::Family::V6, Source::Bgp6),
    ] {
        let socket = std::env::var(family.socket_env()).ok();
        let peers = match bird::read(family, socket.as_deref()).await {
            Ok(peers) => Some(peers),
            Err(e) => {
                unavailable.push(
                    Unavailable::new(
                        source,
                        format!("{} show protocols", family.daemon()),
                        error_chain(&e),
                    )
                    .with_cause(cause(e.not_running())),
                );
                None
            }
        };
        match family {
            bird::Family::V4 => obs.bgp_peers = peers,
            bird::Family::V6 => obs.bgp6_peers = peers,
        }
    }
}

fn cause(not_running: bool) -> Cause {
    if not_running {
        Cause::NotRunning
    } else {
        Cause::Unreadable
    }
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

/// An error with its sources, `a: b: c`, for one-line reports.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(inner) = src {
        parts.push(inner.to_string());
        src = inner.source();
    }
    join_chain(parts)
}

/// [`error_chain`] for an `anyhow` error (its contexts, then the error's sources).
pub fn anyhow_chain(e: &anyhow::Error) -> String {
    join_chain(e.chain().map(ToString::to_string).collect())
}

/// `a: b: c` on one line. Some errors repeat their source in their own message (aya's and
/// std's do): a part already said is not said twice, and a multi-line part (a tool's stderr)
/// is folded.
fn join_chain(parts: Vec<String>) -> String {
    let mut s = String::new();
    for p in parts {
        let p = p
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if p.is_empty() || s.contains(&p) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&p);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("map error: {0}")]
    struct Outer(#[source] Inner);

    /// Like aya's: its message already holds its source's.
    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `CLOCK`")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_chain_never_says_a_part_twice_and_stays_on_one_line() {
        let e = Outer(Inner(std::io::Error::other("Operation not permitted")));
        let s = error_chain(&e);
        assert_eq!(
            s,
            "map error: failed to create map `CLOCK`: Operation not permitted"
        );
        let e = anyhow::Error::new(std::io::Error::other("nft: denied\nnetlink: Error: cache"))
            .context("reading rules");
        assert_eq!(
            anyhow_chain(&e),
            "reading rules: nft: denied; netlink: Error: cache"
        );
    }
}
