//! Felix's own eBPF counters (`cali_counters<N>`) as metrics: what its programs dropped and
//! why, per hook and interface class. The map holds totals per interface; the metrics are
//! counters, so each export adds what every (interface, hook, reason) gained since the last.

use std::collections::HashMap;

use crate::{
    observed::{ObservedDataplane, calico_bpf::Hook},
    report::{
        metrics::{CalicoBpfLabels, Metrics},
        otlp::CounterSummary,
    },
};

#[derive(Default)]
pub(super) struct CalicoCounters {
    /// The map's totals at the last export.
    exported: HashMap<(u32, Hook, String), u64>,
}

impl CalicoCounters {
    pub(super) fn export(
        &mut self,
        obs: &ObservedDataplane,
        metrics: &Metrics,
        totals: &mut CounterSummary,
    ) {
        let Some(map) = obs.calico_bpf.as_ref().and_then(|b| b.counters.as_ref()) else {
            return;
        };
        if let Some(routes) = obs.calico_bpf.as_ref().and_then(|b| b.routes.as_ref()) {
            metrics
                .calico_bpf_routes
                .set(i64::try_from(routes.len()).unwrap_or(i64::MAX));
        }
        let mut seen = HashMap::new();
        for iface in &map.interfaces {
            let class = crate::flows::targets::class_of(obs, iface.ifindex);
            for (reason, total) in &iface.counts {
                let key = (iface.ifindex, iface.hook, reason.clone());
                let last = self.exported.get(&key).copied().unwrap_or(0);
                // Felix recreates an interface's entry at zero (a new pod on a reused ifindex).
                let delta = if *total >= last { total - last } else { *total };
                seen.insert(key, *total);
                if delta == 0 {
                    continue;
                }
                metrics
                    .calico_bpf_packets
                    .get_or_create(&CalicoBpfLabels {
                        reason: reason.clone(),
                        hook: iface.hook.name().into(),
                        iface_class: class.name().into(),
                    })
                    .inc_by(delta);
                totals.add_calico_bpf(reason, iface.hook.name(), class.name(), delta);
            }
        }
        // Interfaces Felix forgot are forgotten here too: pod churn must not grow this.
        self.exported = seen;
    }
}
