//! The report the agent pushes (`calico-dpagent.report/v1`) and its OTLP/HTTP form: each report
//! is one log record whose body is the report's JSON and whose attributes carry node, mode,
//! check IDs and sequence; the flow and drop counters are OTLP cumulative sums. The agent
//! encodes with these functions and `agent collector` decodes with them, so both sides agree by
//! construction; any OpenTelemetry Collector accepts the same requests unchanged.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use serde::{Deserialize, Serialize};

pub use crate::verify::Verdict;
use crate::verify::{Finding, Skipped, Verification};

/// The report's schema; the collector refuses other versions of it.
pub const SCHEMA: &str = "calico-dpagent.report/v1";
/// `service.name` of every request the agent sends.
pub const SERVICE_NAME: &str = "calico-dataplane-agent";
/// The log record's `event_name` (OTLP 1.5+): what kind of record this is.
pub const EVENT_NAME: &str = "calico_dpagent.report";

/// Log record attribute keys.
pub mod attr {
    pub const SCHEMA: &str = "calico_dpagent.schema";
    pub const NODE: &str = "k8s.node.name";
    pub const MODE: &str = "calico_dpagent.mode";
    pub const CHECKS: &str = "calico_dpagent.checks";
    pub const SEQUENCE: &str = "calico_dpagent.sequence";
    pub const STREAM: &str = "calico_dpagent.stream";
    pub const VERDICT: &str = "calico_dpagent.verdict";
    pub const HOST: &str = "host.name";
    pub const SERVICE_NAME: &str = "service.name";
    pub const SERVICE_VERSION: &str = "service.version";
}

/// One report: what the node's verification found, and its counters, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub node: String,
    pub agent_version: String,
    /// The spool's identity: a node whose spool was lost (a new pod without the host path, a
    /// wiped disk) starts a new stream at sequence 1, and the collector keeps streams apart.
    pub stream: String,
    /// 1, 2, 3… within the stream, with no gap unless a report was dropped.
    pub sequence: u64,
    pub generated_at_ms: u64,
    /// The detected dataplane modes, `+`-joined (`VXLAN`, `VXLAN+WireGuard`), or `none`.
    pub mode: String,
    /// As `agent check` judges it: clean, drift, incomplete (a check needs input the agent was
    /// not given, e.g. no datastore) or unverifiable (state that exists could not be read).
    pub verdict: Verdict,
    pub findings: Vec<ReportFinding>,
    /// Checks that did not run, and why.
    #[serde(default)]
    pub not_run: Vec<NotRun>,
    #[serde(default)]
    pub counters: CounterSummary,
}

/// A finding as it travels: check and severity as strings, so a collector older than the agent
/// still stores check IDs it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFinding {
    pub check: String,
    pub severity: String,
    pub subject: String,
    #[serde(default)]
    pub expected: String,
    #[serde(default)]
    pub actual: String,
    #[serde(default)]
    pub hint: String,
    /// Seconds since the epoch when it was first seen.
    #[serde(default)]
    pub since: u64,
}

impl From<&Finding> for ReportFinding {
    fn from(f: &Finding) -> Self {
        Self {
            check: f.check.as_str().into(),
            severity: super::metrics::severity_label(f.severity).into(),
            subject: f.subject.clone(),
            expected: f.expected.clone(),
            actual: f.actual.clone(),
            hint: f.hint.clone(),
            since: f.since,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotRun {
    pub check: String,
    pub reason: String,
    /// `not-applicable`, `not-in-input` or `could-not-observe`.
    #[serde(default)]
    pub kind: String,
    /// What it needed, in a few words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub missing: String,
}

impl From<&Skipped> for NotRun {
    fn from(s: &Skipped) -> Self {
        Self {
            check: s.check.as_str().into(),
            reason: s.reason.clone(),
            kind: s.kind.as_str().into(),
            missing: s.missing.clone(),
        }
    }
}

/// The agent's counters since it started (cumulative), as in `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSummary {
    /// When counting started (the agent's start), ms since the epoch.
    #[serde(default)]
    pub since_ms: u64,
    /// Dropped packets per kernel drop reason.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    /// Packets and bytes per interface class and direction.
    #[serde(default)]
    pub interfaces: Vec<InterfaceCounts>,
    #[serde(default)]
    pub tcp_retransmits: u64,
    #[serde(default)]
    pub conntrack_entries: Option<u64>,
    #[serde(default)]
    pub conntrack_max: Option<u64>,
    /// Calico eBPF mode: packets its programs counted, per reason, hook and interface class.
    /// Felix's map holds totals per interface from the interface's creation: the first export
    /// after the agent starts carries what was counted before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calico_bpf: Vec<CalicoBpfCount>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoBpfCount {
    pub reason: String,
    pub hook: String,
    pub iface_class: String,
    pub packets: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounts {
    pub iface_class: String,
    pub direction: String,
    pub packets: u64,
    pub bytes: u64,
}

impl CounterSummary {
    /// Adds what Calico's programs counted for one reason, hook and interface class.
    pub fn add_calico_bpf(&mut self, reason: &str, hook: &str, iface_class: &str, packets: u64) {
        match self
            .calico_bpf
            .iter_mut()
            .find(|c| c.reason == reason && c.hook == hook && c.iface_class == iface_class)
        {
            Some(c) => c.packets += packets,
            None => self.calico_bpf.push(CalicoBpfCount {
                reason: reason.into(),
                hook: hook.into(),
                iface_class: iface_class.into(),
                packets,
            }),
        }
    }

    /// Adds what one interface class and direction gained.
    pub fn add_interface(&mut self, iface_class: &str, direction: &str, packets: u64, bytes: u64) {
        match self
            .interfaces
            .iter_mut()
            .find(|i| i.iface_class == iface_class && i.direction == direction)
        {
            Some(i) => {
                i.packets += packets;
                i.bytes += bytes;
            }
            None => self.interfaces.push(InterfaceCounts {
                iface_class: iface_class.into(),
                direction: direction.into(),
                packets,
                bytes,
            }),
        }
    }
}

impl Report {
    /// A report of `verification` (none: nothing to verify). The sequence and stream
    /// are the spool's to assign.
    pub fn new(
        node: &str,
        modes: &[String],
        verification: Option<&Verification>,
        counters: CounterSummary,
        now_ms: u64,
    ) -> Self {
        let verdict = verification.map_or(Verdict::Unverifiable, Verification::verdict);
        Self {
            schema: SCHEMA.into(),
            node: node.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            stream: String::new(),
            sequence: 0,
            generated_at_ms: now_ms,
            mode: if modes.is_empty() {
                "none".into()
            } else {
                modes.join("+")
            },
            verdict,
            findings: verification
                .map(|v| v.findings.iter().map(ReportFinding::from).collect())
                .unwrap_or_default(),
            not_run: verification
                .map(|v| v.skipped.iter().map(NotRun::from).collect())
                .unwrap_or_default(),
            counters,
        }
    }

    /// A VXLAN node's report of `findings` (drift when there are any, else clean), as
    /// sequence `sequence` of `stream`: what tests and benchmarks send a collector.
    pub fn example(
        node: &str,
        stream: &str,
        sequence: u64,
        generated_at_ms: u64,
        findings: Vec<ReportFinding>,
        counters: CounterSummary,
    ) -> Self {
        Self {
            schema: SCHEMA.into(),
            node: node.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            stream: stream.into(),
            sequence,
            generated_at_ms,
            mode: "VXLAN".into(),
            verdict: if findings.is_empty() {
                Verdict::Clean
            } else {
                Verdict::Drift
            },
            findings,
            not_run: Vec::new(),
            counters,
        }
    }

    /// The distinct check IDs of the findings, in order of first appearance.
    pub fn checks(&self) -> Vec<&str> {
        let mut seen = Vec::new();
        for f in &self.findings {
            if !seen.contains(&f.check.as_str()) {
                seen.push(f.check.as_str());
            }
        }
        seen
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// The resource every request describes: this agent on this node.
pub fn resource(node: &str, host: &str) -> Resource {
    Resource {
        attributes: vec![
            string(attr::SERVICE_NAME, SERVICE_NAME),
            string(attr::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
            string(attr::NODE, node),
            string(attr::HOST, host),
        ],
        ..Resource::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SERVICE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..InstrumentationScope::default()
    }
}

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// The log record of one report. `body` is the report's JSON exactly as spooled.
pub fn log_record(report: &Report, body: &str) -> LogRecord {
    let drift = report.verdict == Verdict::Drift;
    LogRecord {
        time_unix_nano: ms_to_ns(report.generated_at_ms),
        observed_time_unix_nano: ms_to_ns(report.generated_at_ms),
        severity_number: if drift {
            SeverityNumber::Warn as i32
        } else {
            SeverityNumber::Info as i32
        },
        severity_text: if drift { "WARN" } else { "INFO" }.into(),
        event_name: EVENT_NAME.into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(body.into())),
        }),
        attributes: vec![
            string(attr::SCHEMA, &report.schema),
            string(attr::NODE, &report.node),
            string(attr::MODE, &report.mode),
            string(attr::VERDICT, report.verdict.as_str()),
            kv(
                attr::CHECKS,
                Value::ArrayValue(ArrayValue {
                    values: report
                        .checks()
                        .into_iter()
                        .map(|c| AnyValue {
                            value: Some(Value::StringValue(c.into())),
                        })
                        .collect(),
                }),
            ),
            string(attr::STREAM, &report.stream),
            kv(
                attr::SEQUENCE,
                Value::IntValue(i64::try_from(report.sequence).unwrap_or(i64::MAX)),
            ),
        ],
        ..LogRecord::default()
    }
}

/// One request carrying `reports` (in sequence order), each with its spooled JSON body.
pub fn logs_request(resource: &Resource, reports: &[(Report, String)]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: reports.iter().map(|(r, b)| log_record(r, b)).collect(),
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

fn point(attrs: Vec<KeyValue>, start_ns: u64, now_ns: u64, v: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(v).unwrap_or(i64::MAX),
        )),
        ..NumberDataPoint::default()
    }
}

fn sum(name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Metric::default()
    }
}

fn gauge(name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: description.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Metric::default()
    }
}

/// The report's counters as OTLP metrics: cumulative sums since the agent started (so a lost
/// request loses resolution, never counts), gauges for conntrack and current findings. Every
/// attribute is bounded: drop reasons, interface classes, directions, check IDs, severities.
pub fn metrics_request(resource: &Resource, report: &Report) -> ExportMetricsServiceRequest {
    let c = &report.counters;
    let (start, now) = (ms_to_ns(c.since_ms), ms_to_ns(report.generated_at_ms));
    let mut metrics = vec![
        sum(
            "calico_dpagent.drops",
            "{packet}",
            "Packets the kernel dropped, per drop reason",
            c.drops
                .iter()
                .map(|(reason, n)| point(vec![string("reason", reason)], start, now, *n))
                .collect(),
        ),
        sum(
            "calico_dpagent.iface.packets",
            "{packet}",
            "Packets on Calico's interfaces, per interface class and direction",
            c.interfaces
                .iter()
                .map(|i| point(iface_attrs(i), start, now, i.packets))
                .collect(),
        ),
        sum(
            "calico_dpagent.iface.bytes",
            "By",
            "Bytes on Calico's interfaces, per interface class and direction",
            c.interfaces
                .iter()
                .map(|i| point(iface_attrs(i), start, now, i.bytes))
                .collect(),
        ),
        sum(
            "calico_dpagent.calico_bpf.packets",
            "{packet}",
            "Packets Calico's eBPF programs counted, per reason, hook and interface class",
            c.calico_bpf
                .iter()
                .map(|b| {
                    point(
                        vec![
                            string("reason", &b.reason),
                            string("hook", &b.hook),
                            string("iface_class", &b.iface_class),
                        ],
                        start,
                        now,
                        b.packets,
                    )
                })
                .collect(),
        ),
        sum(
            "calico_dpagent.tcp.retransmits",
            "{segment}",
            "TCP retransmissions seen by the agent's tracepoint",
            vec![point(Vec::new(), start, now, c.tcp_retransmits)],
        ),
    ];
    let mut per_check: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for f in &report.findings {
        *per_check.entry((&f.check, &f.severity)).or_default() += 1;
    }
    metrics.push(gauge(
        "calico_dpagent.findings",
        "{finding}",
        "Current findings per check and severity",
        per_check
            .into_iter()
            .map(|((check, severity), n)| {
                point(
                    vec![string("check", check), string("severity", severity)],
                    0,
                    now,
                    n,
                )
            })
            .collect(),
    ));
    for (name, v) in [
        ("calico_dpagent.conntrack.entries", c.conntrack_entries),
        ("calico_dpagent.conntrack.max", c.conntrack_max),
    ] {
        if let Some(v) = v {
            metrics.push(gauge(
                name,
                "{entry}",
                "The conntrack table",
                vec![point(Vec::new(), 0, now, v)],
            ));
        }
    }
    metrics.retain(|m| match &m.data {
        Some(Data::Sum(s)) => !s.data_points.is_empty(),
        Some(Data::Gauge(g)) => !g.data_points.is_empty(),
        _ => true,
    });
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

fn iface_attrs(i: &InterfaceCounts) -> Vec<KeyValue> {
    vec![
        string("iface_class", &i.iface_class),
        string("direction", &i.direction),
    ]
}

/// Why a log record that claims to be a report cannot be one.
#[derive(Debug, thiserror::Error)]
pub enum ReportDecodeError {
    #[error("unknown report schema {0:?} (this collector reads {SCHEMA})")]
    UnknownSchema(String),
    #[error("the log record's body is not a string holding the report's JSON")]
    BodyNotString,
    #[error("the report's JSON is invalid")]
    Json(#[source] serde_json::Error),
    #[error("the report says node {body:?} but its record says {attribute:?}")]
    NodeMismatch { body: String, attribute: String },
}

/// The string value of a record's attribute.
pub fn attribute<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The report a log record carries; `Ok(None)` for a record that is not one of ours (no schema
/// attribute: some other application's log).
pub fn report_from_record(record: &LogRecord) -> Result<Option<Report>, ReportDecodeError> {
    let Some(schema) = attribute(&record.attributes, attr::SCHEMA) else {
        return Ok(None);
    };
    if schema != SCHEMA {
        return Err(ReportDecodeError::UnknownSchema(schema.into()));
    }
    let Some(Value::StringValue(body)) = record.body.as_ref().and_then(|b| b.value.as_ref()) else {
        return Err(ReportDecodeError::BodyNotString);
    };
    let report: Report = serde_json::from_str(body).map_err(ReportDecodeError::Json)?;
    if report.schema != SCHEMA {
        return Err(ReportDecodeError::UnknownSchema(report.schema));
    }
    if let Some(node) = attribute(&record.attributes, attr::NODE)
        && node != report.node
    {
        return Err(ReportDecodeError::NodeMismatch {
            body: report.node,
            attribute: node.into(),
        });
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::verify::{CheckId, Severity};

    fn sample() -> Report {
        let v = Verification {
            findings: vec![
                Finding::new(CheckId::RouteMissing, Severity::Critical, "10.244.1.0/26")
                    .expected("via vxlan.calico")
                    .actual("absent"),
            ],
            skipped: Vec::new(),
            with_datastore: true,
            notes: Vec::new(),
        };
        let mut r = Report::new(
            "node-a",
            &["VXLAN".into()],
            Some(&v),
            CounterSummary::default(),
            1_700_000_000_000,
        );
        r.stream = "abc".into();
        r.sequence = 7;
        r
    }

    #[test]
    fn a_report_survives_protobuf_and_the_record_carries_its_attributes() {
        let r = sample();
        let body = serde_json::to_string(&r).expect("json");
        let req = logs_request(&resource("node-a", "host-a"), &[(r.clone(), body)]);
        let bytes = req.encode_to_vec();
        let back = ExportLogsServiceRequest::decode(bytes.as_slice()).expect("decode");
        let rec = &back.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(report_from_record(rec).expect("ours"), Some(r));
        assert_eq!(attribute(&rec.attributes, attr::MODE), Some("VXLAN"));
        assert_eq!(attribute(&rec.attributes, attr::VERDICT), Some("drift"));
        assert_eq!(rec.severity_number, SeverityNumber::Warn as i32);
    }

    #[test]
    fn records_of_other_schemas_and_applications_are_told_apart() {
        let r = sample();
        let mut rec = log_record(&r, &serde_json::to_string(&r).expect("json"));
        rec.attributes[0] = string(attr::SCHEMA, "calico-dpagent.report/v9");
        assert!(matches!(
            report_from_record(&rec),
            Err(ReportDecodeError::UnknownSchema(s)) if s.ends_with("v9")
        ));
        rec.attributes.remove(0);
        assert_eq!(report_from_record(&rec).expect("not ours"), None);
    }

    #[test]
    fn counters_become_cumulative_sums_and_empty_series_are_left_out() {
        let mut r = sample();
        r.counters.drops.insert("NO_SOCKET".into(), 3);
        let req = metrics_request(&resource("node-a", "host-a"), &r);
        let names: Vec<&str> = req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "calico_dpagent.drops",
                "calico_dpagent.tcp.retransmits",
                "calico_dpagent.findings"
            ]
        );
    }
}
