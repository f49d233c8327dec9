//! The collector's `/metrics`, prefix `calico_dpagent_collector_`. The cluster gauges are set
//! from the store at each scrape, so they are never out of date and a node or check that is gone
//! disappears from them.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::store::Summary;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `logs` or `metrics`.
    pub signal: String,
    /// `ok`, `partial`, `bad_request`, `unauthorized`, `forbidden`, `too_large`, `unsupported`,
    /// `unavailable`, `error`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub check: String,
    pub severity: String,
}

pub struct CollectorMetrics {
    registry: Registry,
    pub nodes_reporting: Gauge,
    pub nodes_stale: Gauge,
    pub nodes_with_drift: Family<CheckLabels, Gauge>,
    pub findings: Family<FindingLabels, Gauge>,
    pub report_gaps: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub reports_stored: Counter,
    pub ingest_duration: Histogram,
}

/// From a queued commit (sub-millisecond) to a slow disk's fsync under load.
const INGEST_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Check IDs and severities come from the network: a label keeps only what looks like one
/// (a reporter with a valid token still must not make label values of arbitrary text).
fn label(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    if ok { s.into() } else { "invalid".into() }
}

impl CollectorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("calico_dpagent_collector");
        let m = Self {
            nodes_reporting: Gauge::default(),
            nodes_stale: Gauge::default(),
            nodes_with_drift: Family::default(),
            findings: Family::default(),
            report_gaps: Gauge::default(),
            requests: Family::default(),
            reports_stored: Counter::default(),
            ingest_duration: Histogram::new(INGEST_BUCKETS),
            registry: Registry::default(),
        };
        registry.register(
            "nodes_reporting",
            "Nodes whose latest report is fresher than --stale-after",
            m.nodes_reporting.clone(),
        );
        registry.register(
            "nodes_stale",
            "Nodes whose latest report is older than --stale-after",
            m.nodes_stale.clone(),
        );
        registry.register(
            "nodes_with_drift",
            "Nodes whose latest report has a critical or warning finding of this check",
            m.nodes_with_drift.clone(),
        );
        registry.register(
            "findings",
            "Current findings across the cluster per check and severity",
            m.findings.clone(),
        );
        registry.register(
            "report_gaps",
            "Reports missing from the nodes' sequences (never received)",
            m.report_gaps.clone(),
        );
        registry.register(
            "requests",
            "OTLP export requests per signal and result",
            m.requests.clone(),
        );
        registry.register(
            "reports_stored",
            "Reports stored (retries of stored ones not counted)",
            m.reports_stored.clone(),
        );
        registry.register_with_unit(
            "ingest_duration",
            "From an export request's arrival to its answer (stored and fsync'd when 200)",
            Unit::Seconds,
            m.ingest_duration.clone(),
        );
        Self { registry, ..m }
    }

    pub fn request(&self, signal: &str, result: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                signal: signal.into(),
                result: result.into(),
            })
            .inc();
    }

    /// OpenMetrics text with the cluster gauges set from `s`.
    pub fn encode(&self, s: &Summary) -> Result<String, std::fmt::Error> {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.nodes_stale.set(gauge(s.stale));
        self.nodes_reporting
            .set(gauge(s.nodes.saturating_sub(s.stale)));
        self.report_gaps.set(gauge(s.missing_reports));
        self.nodes_with_drift.clear();
        for (check, n) in &s.drifting_per_check {
            self.nodes_with_drift
                .get_or_create(&CheckLabels {
                    check: label(check),
                })
                .inc_by(gauge(*n));
        }
        self.findings.clear();
        for (check, severity, n) in &s.findings {
            self.findings
                .get_or_create(&FindingLabels {
                    check: label(check),
                    severity: label(severity),
                })
                .inc_by(gauge(*n));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_gauges_follow_the_summary_and_labels_stay_bounded() {
        let m = CollectorMetrics::new();
        m.request("logs", "ok");
        m.reports_stored.inc_by(3);
        let s = Summary {
            nodes: 3,
            stale: 1,
            missing_reports: 2,
            drifting_per_check: vec![("route.missing".into(), 2)],
            findings: vec![
                ("route.missing".into(), "critical".into(), 2),
                ("<script>".into(), "critical".into(), 1),
            ],
        };
        let text = m.encode(&s).expect("encode");
        for line in [
            "calico_dpagent_collector_nodes_reporting 2",
            "calico_dpagent_collector_nodes_stale 1",
            "calico_dpagent_collector_report_gaps 2",
            "calico_dpagent_collector_nodes_with_drift{check=\"route.missing\"} 2",
            "calico_dpagent_collector_findings{check=\"route.missing\",severity=\"critical\"} 2",
            "calico_dpagent_collector_findings{check=\"invalid\",severity=\"critical\"} 1",
            "calico_dpagent_collector_requests_total{signal=\"logs\",result=\"ok\"} 1",
            "calico_dpagent_collector_reports_stored_total 3",
            "calico_dpagent_collector_ingest_duration_seconds_count 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A check that cleared is gone at the next scrape.
        let text = m.encode(&Summary::default()).expect("encode");
        assert!(!text.contains("route.missing"), "{text}");
    }
}
