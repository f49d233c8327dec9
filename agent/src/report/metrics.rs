//! `/metrics`: the daemon's Prometheus metrics (DESIGN.md §5), prefix `calico_dpagent_`.
//!
//! Every label is bounded: check IDs and severities (a fixed list), results, interface classes
//! and directions, kernel drop reasons (an enum of the running kernel), Calico's eBPF counter
//! names and hooks (fixed lists), source kinds and resync causes. Never an IP, pod, port, interface name or peer.

use std::{collections::BTreeMap, sync::atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    flows::{Counts, Direction, IfaceClass},
    verify::{CheckId, Severity, Verification},
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub check: String,
    pub severity: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
    /// `pass`, `fail` or `skipped`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IfaceLabels {
    pub iface_class: String,
    pub direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: String,
    /// `expected` (a healthy node's background) or `worth_a_look`: the alert counts only these.
    pub assessment: String,
}

/// Felix's eBPF counters: the reason is a `cali_counters` index's name (a fixed list), the
/// hook `ingress`, `egress` or `xdp`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CalicoBpfLabels {
    pub reason: String,
    pub hook: String,
    pub iface_class: String,
}

/// `ipv4` or `ipv6`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamilyLabels {
    pub family: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `logs` (the reports) or `metrics` (their counters).
    pub signal: String,
    /// `ok`, `unreachable`, `timeout`, `throttled`, `server_error`, `unauthorized`,
    /// `rejected` or `token_unreadable`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// The daemon's metrics. Built once at start; cheap to update from the verification loop.
pub struct Metrics {
    registry: Registry,
    pub findings: Family<FindingLabels, Gauge>,
    pub checks: Family<CheckLabels, Counter>,
    pub verify_duration: Histogram,
    pub drift_detection: Histogram,
    pub iface_packets: Family<IfaceLabels, Counter>,
    pub iface_bytes: Family<IfaceLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    pub calico_bpf_packets: Family<CalicoBpfLabels, Counter>,
    pub calico_bpf_routes: Family<IpFamilyLabels, Gauge>,
    pub tcp_retransmits: Counter,
    pub conntrack_entries: Gauge,
    pub conntrack_max: Gauge,
    pub ebpf_run_ns: Counter,
    pub ebpf_attached: Gauge,
    pub ebpf_interfaces: Gauge,
    pub netlink_events: Family<KindLabels, Counter>,
    pub netlink_overruns: Counter,
    pub resyncs: Family<KindLabels, Counter>,
    pub source_errors: Family<SourceLabels, Counter>,
    pub bgp_flapping_sessions: Gauge,
    pub resident_memory: Gauge,
    pub ready: Gauge,
    pub k8s_writes: Family<KindLabels, Counter>,
    pub report_push: Family<PushLabels, Counter>,
    /// Reports given up: `spool_full` (oldest dropped), `rejected` by the endpoint,
    /// `unreadable` on disk, `spool_error`.
    pub report_dropped: Family<ReasonLabels, Counter>,
    pub spool_bytes: Gauge,
}

/// Verification takes microseconds on a small node and tens of milliseconds at thousands of
/// routes; detection is the grace window plus that.
const VERIFY_BUCKETS: [f64; 10] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];
const DETECTION_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 6.0, 10.0, 30.0, 60.0, 120.0];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("calico_dpagent");
        let m = Self {
            findings: Family::default(),
            checks: Family::default(),
            verify_duration: Histogram::new(VERIFY_BUCKETS),
            drift_detection: Histogram::new(DETECTION_BUCKETS),
            iface_packets: Family::default(),
            iface_bytes: Family::default(),
            drops: Family::default(),
            calico_bpf_packets: Family::default(),
            calico_bpf_routes: Family::default(),
            tcp_retransmits: Counter::default(),
            conntrack_entries: Gauge::default(),
            conntrack_max: Gauge::default(),
            ebpf_run_ns: Counter::default(),
            ebpf_attached: Gauge::default(),
            ebpf_interfaces: Gauge::default(),
            netlink_events: Family::default(),
            netlink_overruns: Counter::default(),
            resyncs: Family::default(),
            source_errors: Family::default(),
            bgp_flapping_sessions: Gauge::default(),
            resident_memory: Gauge::default(),
            ready: Gauge::default(),
            k8s_writes: Family::default(),
            report_push: Family::default(),
            report_dropped: Family::default(),
            spool_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "findings",
            "Current findings (after the grace window) per check and severity",
            m.findings.clone(),
        );
        registry.register(
            "checks",
            "Check evaluations per result (pass, fail, skipped)",
            m.checks.clone(),
        );
        registry.register_with_unit(
            "verify_duration",
            "Time to verify the observed dataplane against the expected one",
            Unit::Seconds,
            m.verify_duration.clone(),
        );
        registry.register_with_unit(
            "drift_detection",
            "Time from a finding's first observation to its report (grace window included)",
            Unit::Seconds,
            m.drift_detection.clone(),
        );
        registry.register(
            "iface_packets",
            "Packets seen by the observe-only TC programs per interface class and direction",
            m.iface_packets.clone(),
        );
        registry.register_with_unit(
            "iface",
            "Bytes seen by the observe-only TC programs per interface class and direction",
            Unit::Bytes,
            m.iface_bytes.clone(),
        );
        registry.register(
            "drops",
            "Packets the kernel freed as dropped, per kernel drop reason (skb:kfree_skb)",
            m.drops.clone(),
        );
        registry.register(
            "calico_bpf_packets",
            "Packets Calico's eBPF programs counted (cali_counters), per reason, hook and interface class",
            m.calico_bpf_packets.clone(),
        );
        registry.register(
            "calico_bpf_routes",
            "Entries in Calico's eBPF route map of each IP family (cali_v4_routes, cali_v6_routes)",
            m.calico_bpf_routes.clone(),
        );
        registry.register(
            "tcp_retransmits",
            "TCP retransmissions on the node (tcp:tcp_retransmit_skb)",
            m.tcp_retransmits.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Entries in the kernel's conntrack table",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_max",
            "Capacity of the kernel's conntrack table (net.netfilter.nf_conntrack_max)",
            m.conntrack_max.clone(),
        );
        registry.register(
            "ebpf_program_run_ns",
            "Kernel time spent in the agent's eBPF programs (needs kernel.bpf_stats_enabled=1)",
            m.ebpf_run_ns.clone(),
        );
        registry.register(
            "ebpf_attached",
            "1 when the observe-only eBPF programs are loaded, 0 when flows are unavailable",
            m.ebpf_attached.clone(),
        );
        registry.register(
            "ebpf_interfaces",
            "Interfaces the TC programs are attached to",
            m.ebpf_interfaces.clone(),
        );
        registry.register(
            "netlink_events",
            "Netlink notifications processed, by what they caused (applied, relist, ignored)",
            m.netlink_events.clone(),
        );
        registry.register(
            "netlink_overruns",
            "Netlink notification overruns (ENOBUFS); each forces a full resync",
            m.netlink_overruns.clone(),
        );
        registry.register(
            "resyncs",
            "Full re-reads of the node's state, by cause (timer, overrun, relist)",
            m.resyncs.clone(),
        );
        registry.register(
            "source_errors",
            "Reads of a kernel or service source that failed, per source kind",
            m.source_errors.clone(),
        );
        registry.register(
            "bgp_flapping_sessions",
            "BGP sessions with bgp.session.flapping",
            m.bgp_flapping_sessions.clone(),
        );
        registry.register_with_unit(
            "resident_memory",
            "Resident set size of the agent process",
            Unit::Bytes,
            m.resident_memory.clone(),
        );
        registry.register(
            "ready",
            "1 once the first verification is done and the netlink sources are readable",
            m.ready.clone(),
        );
        registry.register(
            "k8s_writes",
            "Kubernetes writes (events, node condition) by result",
            m.k8s_writes.clone(),
        );
        registry.register(
            "report_push",
            "Requests to the report endpoint per signal (logs, metrics) and result",
            m.report_push.clone(),
        );
        registry.register(
            "report_dropped",
            "Reports given up, per reason (spool_full: the oldest dropped from a full spool)",
            m.report_dropped.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of reports in the spool waiting for the endpoint",
            m.spool_bytes.clone(),
        );
        // Every series exists from the start, so rate() and absent() work before the first event.
        for (family, kinds) in [
            (&m.resyncs, &["timer", "overrun", "relist"][..]),
            (&m.netlink_events, &["message", "overrun"][..]),
            (&m.k8s_writes, &["ok", "error"][..]),
        ] {
            for kind in kinds {
                // Creating the series is the point; the guard is dropped at once.
                drop(family.get_or_create(&KindLabels {
                    kind: (*kind).into(),
                }));
            }
        }
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Sets the findings gauges to this verification (every check and severity is present, so
    /// a cleared finding reads 0 rather than vanishing) and counts each check's result.
    pub fn record_verification(&self, v: &Verification) {
        let mut current: BTreeMap<(CheckId, Severity), i64> = BTreeMap::new();
        for f in &v.findings {
            *current.entry((f.check, f.severity)).or_default() += 1;
        }
        for check in CheckId::ALL {
            for sev in [Severity::Critical, Severity::Warning, Severity::Info] {
                self.findings
                    .get_or_create(&FindingLabels {
                        check: check.as_str().into(),
                        severity: severity_label(sev).into(),
                    })
                    .set(current.get(&(*check, sev)).copied().unwrap_or(0));
            }
            let result = if v.skipped.iter().any(|s| s.check == *check) {
                "skipped"
            } else if v.findings.iter().any(|f| f.check == *check) {
                "fail"
            } else {
                "pass"
            };
            self.checks
                .get_or_create(&CheckLabels {
                    check: check.as_str().into(),
                    result: result.into(),
                })
                .inc();
        }
    }

    /// Adds interface counts (deltas since the last call) for one class and direction.
    pub fn add_iface(&self, class: IfaceClass, dir: Direction, delta: &Counts) {
        let labels = IfaceLabels {
            iface_class: class.name().into(),
            direction: direction_label(dir).into(),
        };
        self.iface_packets
            .get_or_create(&labels)
            .inc_by(delta.packets);
        self.iface_bytes.get_or_create(&labels).inc_by(delta.bytes);
    }
}

pub fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

pub fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// The process's resident set size, from `/proc/self/statm` (pages × page size).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A monotonically growing total read from elsewhere (the kernel's counters), turned into
/// counter increments.
#[derive(Debug, Default)]
pub struct Delta(AtomicU64);

impl Delta {
    /// The increase since the last call; a total that went backwards (maps reloaded) counts
    /// from zero.
    pub fn advance(&self, total: u64) -> u64 {
        let last = self.0.swap(total, std::sync::atomic::Ordering::Relaxed);
        if total >= last { total - last } else { total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{Finding, Skipped};

    #[test]
    fn findings_are_gauges_per_check_and_severity_and_clear_to_zero() {
        let m = Metrics::new();
        let v = Verification {
            findings: vec![
                Finding::new(CheckId::RouteMissing, Severity::Critical, "10.244.1.0/26"),
                Finding::new(CheckId::RouteMissing, Severity::Critical, "10.244.2.0/26"),
            ],
            skipped: vec![Skipped::new(
                CheckId::BgpSessionDown,
                crate::verify::NotRun::NotApplicable,
                "no BIRD",
            )],
            ..Default::default()
        };
        m.record_verification(&v);
        let text = m.encode().expect("encode");
        assert!(
            text.contains(
                "calico_dpagent_findings{check=\"route.missing\",severity=\"critical\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "calico_dpagent_checks_total{check=\"bgp.session.down\",result=\"skipped\"} 1"
        ));
        assert!(
            text.contains("calico_dpagent_checks_total{check=\"route.missing\",result=\"fail\"} 1")
        );
        m.record_verification(&Verification::default());
        let text = m.encode().expect("encode");
        assert!(
            text.contains(
                "calico_dpagent_findings{check=\"route.missing\",severity=\"critical\"} 0"
            )
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn deltas_follow_a_growing_total_and_survive_a_reset() {
        let d = Delta::default();
        assert_eq!(d.advance(10), 10);
        assert_eq!(d.advance(15), 5);
        assert_eq!(d.advance(3), 3);
    }
}
