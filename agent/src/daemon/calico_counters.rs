//! Felix's own eBPF counters (`cali_counters<N>`) as metrics: what its programs dropped and
//! why, per hook and interface class. The map holds totals per interface; the metrics are
//! counters, so each export adds what every (interface, hook, reason) gained since the last.

use std::collections::HashMap;

use crate::{
    observed::{ObservedDataplane, calico_bpf::Hook},
    report::{
        metrics::{CalicoBpfLabels, IpFamilyLabels, Metrics},
        otlp::CounterSummary,
    },
};

#[derive(Default)]
pub(super) struct CalicoCounters {
    /// The map's totals at the last export. Empty at start, so the first export carries
    /// everything Felix counted so far: Prometheus sees a counter that starts high, which
    /// `rate()` handles as any first sample.
    exported: HashMap<(u32, Hook, String), u64>,
}

impl CalicoCounters {
    pub(super) fn export(
        &mut self,
        obs: &ObservedDataplane,
        metrics: &Metrics,
        totals: &mut CounterSummary,
    ) {
        let bpf = obs.calico_bpf.as_ref();
        for (family, routes) in [
            ("ipv4", bpf.and_then(|b| b.routes.as_ref())),
            ("ipv6", bpf.and_then(|b| b.routes_v6.as_ref())),
        ] {
            let labels = IpFamilyLabels {
                family: family.into(),
            };
            // A family whose map Felix did not pin has no series, rather than a false zero.
            match routes {
                Some(r) => {
                    metrics
                        .calico_bpf_routes
                        .get_or_create(&labels)
                        .set(i64::try_from(r.len()).unwrap_or(i64::MAX));
                }
                None => {
                    metrics.calico_bpf_routes.remove(&labels);
                }
            }
        }
        let Some(map) = obs.calico_bpf.as_ref().and_then(|b| b.counters.as_ref()) else {
            return;
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::{
        Link,
        calico_bpf::{CalicoBpf, CounterMap, IfaceCounters},
    };

    fn node(dropped: u64) -> ObservedDataplane {
        let link = |index: u32, name: &str| Link {
            index,
            name: name.into(),
            kind: None,
            mtu: 1450,
            admin_up: true,
            oper_state: "up".into(),
            mac: None,
            link_index: None,
            controller: None,
            vxlan: None,
        };
        ObservedDataplane {
            links: vec![link(1, "lo"), link(7, "cali1a2b3c4d5e6")],
            calico_bpf: Some(CalicoBpf {
                counters: Some(CounterMap {
                    map: "cali_counters6".into(),
                    interfaces: vec![IfaceCounters {
                        ifindex: 7,
                        hook: Hook::Ingress,
                        counts: vec![("dropped_by_policy".into(), dropped)],
                    }],
                }),
                ..CalicoBpf::default()
            }),
            ..ObservedDataplane::default()
        }
    }

    #[test]
    fn gains_become_counter_increments_per_reason_hook_and_class() {
        let m = Metrics::new();
        let mut totals = CounterSummary::default();
        let mut c = CalicoCounters::default();
        let series = |m: &Metrics| {
            let text = m.encode().expect("encode");
            text.lines()
                .find(|l| l.starts_with("calico_dpagent_calico_bpf_packets_total{"))
                .map(str::to_string)
        };
        c.export(&node(5), &m, &mut totals);
        assert_eq!(
            series(&m).as_deref(),
            Some(
                "calico_dpagent_calico_bpf_packets_total{reason=\"dropped_by_policy\",\
                 hook=\"ingress\",iface_class=\"workload\"} 5"
            )
        );
        c.export(&node(8), &m, &mut totals);
        assert!(series(&m).is_some_and(|l| l.ends_with(" 8")));
        // The interface's entry recreated from zero (a new pod on the ifindex): counted anew.
        c.export(&node(2), &m, &mut totals);
        assert!(series(&m).is_some_and(|l| l.ends_with(" 10")));
        assert_eq!(totals.calico_bpf.len(), 1);
        assert_eq!(
            (
                totals.calico_bpf[0].iface_class.as_str(),
                totals.calico_bpf[0].packets
            ),
            ("workload", 10)
        );
    }

    #[test]
    fn route_entries_are_a_gauge_per_family_whose_map_is_pinned() {
        let m = Metrics::new();
        let mut c = CalicoCounters::default();
        let entry = |cidr: &str| crate::observed::calico_bpf::BpfRoute {
            destination: cidr.parse().expect("cidr"),
            flags: 0,
            next_hop: None,
            ifindex: None,
        };
        // A metric family's series come in no fixed order.
        let routes = |m: &Metrics| {
            let text = m.encode().expect("encode");
            let mut series: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("calico_dpagent_calico_bpf_routes{"))
                .map(str::to_string)
                .collect();
            series.sort();
            series
        };
        let mut obs = node(0);
        if let Some(b) = obs.calico_bpf.as_mut() {
            b.routes = Some(vec![entry("10.244.1.0/26"), entry("10.244.2.0/26")]);
            b.routes_v6 = Some(vec![entry("fd00:244::40/122")]);
        }
        c.export(&obs, &m, &mut CounterSummary::default());
        assert_eq!(
            routes(&m),
            [
                "calico_dpagent_calico_bpf_routes{family=\"ipv4\"} 2",
                "calico_dpagent_calico_bpf_routes{family=\"ipv6\"} 1"
            ]
        );
        // Felix left eBPF for IPv6 and unpinned its map: no IPv6 series, not a zero.
        if let Some(b) = obs.calico_bpf.as_mut() {
            b.routes_v6 = None;
        }
        c.export(&obs, &m, &mut CounterSummary::default());
        assert_eq!(
            routes(&m),
            ["calico_dpagent_calico_bpf_routes{family=\"ipv4\"} 2"]
        );
    }
}
