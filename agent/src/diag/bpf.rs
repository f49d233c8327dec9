//! Calico eBPF mode in `agent diag`: the maps Felix pinned (with their versions and sizes),
//! the links it pinned for its programs, its route map by kind, and its counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    flows::targets::class_of,
    observed::{
        ObservedDataplane, Source,
        calico_bpf::{BpfRoute, PinnedMap, routes},
    },
};

/// Route entries listed before eliding the rest (other nodes' blocks first).
const ROUTES_SHOWN: usize = 12;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfSummary {
    pub maps: Vec<PinnedMap>,
    /// Felix's pinned TCX/netkit links (`tcx/eth0_ingress`).
    pub attached: Vec<String>,
    /// Route entries per kind (`remote workload`, `local workload`, `remote host`…) in both
    /// families' maps; `None` when no route map was read.
    pub route_kinds: Option<BTreeMap<String, usize>>,
    /// The first entries, remote workload blocks first.
    pub routes_shown: Vec<BpfRoute>,
    /// The counter map read, and its counts summed per reason, hook and interface class.
    pub counters_map: Option<String>,
    pub counters: Vec<CounterRow>,
    /// Maps pinned but not decoded, with why (`cali_v4_routes is … 12-byte values …`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_decoded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    pub reason: String,
    pub hook: String,
    pub iface_class: String,
    pub packets: u64,
}

/// The kind of entry, as `calico-node -bpf routes dump` would describe it.
pub fn route_kind(r: &BpfRoute) -> &'static str {
    let local = r.has(routes::LOCAL);
    if r.has(routes::BLACKHOLE_DROP | routes::BLACKHOLE_REJECT) {
        "blackhole"
    } else if r.has(routes::WORKLOAD) {
        if local {
            "local workload"
        } else {
            "remote workload"
        }
    } else if r.has(routes::HOST) {
        if local { "local host" } else { "remote host" }
    } else {
        "other"
    }
}

pub fn summary(obs: &ObservedDataplane) -> Option<BpfSummary> {
    let bpf = obs.calico_bpf.as_ref()?;
    // Both families' maps: IPv6 entries follow IPv4's in the listing.
    let all = || bpf.routes.iter().chain(&bpf.routes_v6).flatten();
    let route_kinds = (bpf.routes.is_some() || bpf.routes_v6.is_some()).then(|| {
        let mut kinds = BTreeMap::new();
        for r in all() {
            *kinds.entry(route_kind(r).to_string()).or_default() += 1;
        }
        kinds
    });
    let mut routes_shown: Vec<BpfRoute> = all().cloned().collect();
    routes_shown.sort_by_key(|r| (route_kind(r) != "remote workload", r.destination));
    routes_shown.truncate(ROUTES_SHOWN);
    let mut sums: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for iface in bpf.counters.iter().flat_map(|c| &c.interfaces) {
        let class = class_of(obs, iface.ifindex).name();
        for (reason, n) in &iface.counts {
            *sums
                .entry((reason.clone(), iface.hook.name().into(), class.into()))
                .or_default() += n;
        }
    }
    Some(BpfSummary {
        maps: bpf.maps.clone(),
        attached: bpf.attached.clone(),
        route_kinds,
        routes_shown,
        counters_map: bpf.counters.as_ref().map(|c| c.map.clone()),
        not_decoded: obs
            .unavailable
            .iter()
            .filter(|u| matches!(u.kind, Source::CalicoBpfRoutes | Source::CalicoBpfCounters))
            // The readers' reasons name the map.
            .map(|u| u.reason.clone())
            .collect(),
        counters: sums
            .into_iter()
            .map(|((reason, hook, iface_class), packets)| CounterRow {
                reason,
                hook,
                iface_class,
                packets,
            })
            .collect(),
    })
}
