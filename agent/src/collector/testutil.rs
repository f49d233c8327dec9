//! Reports, requests and scratch directories for the collector's tests.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use super::store::{Batch, IncomingReport};
use crate::report::otlp::{self, CounterSummary, Report, ReportFinding};

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "collector-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn finding(check: &str, subject: &str) -> ReportFinding {
    ReportFinding {
        check: check.into(),
        severity: "critical".into(),
        subject: subject.into(),
        expected: "10.244.1.0/26 via 10.244.1.0 dev vxlan.calico onlink".into(),
        actual: "no route".into(),
        hint: "ip route show 10.244.1.0/26".into(),
        since: 1_700_000_000,
    }
}

/// A report of `node`, sequence `seq` in `stream`, generated at `seq` seconds past a fixed
/// moment, with `findings`.
pub fn report(node: &str, stream: &str, seq: u64, findings: Vec<ReportFinding>) -> Report {
    let mut counters = CounterSummary {
        since_ms: 1_700_000_000_000,
        tcp_retransmits: 12,
        ..CounterSummary::default()
    };
    counters.drops.insert("NO_SOCKET".into(), 3);
    Report::example(
        node,
        stream,
        seq,
        1_700_000_000_000 + seq * 1000,
        findings,
        counters,
    )
}

pub fn incoming(r: Report) -> IncomingReport {
    let body = serde_json::to_string(&r).expect("json");
    IncomingReport { report: r, body }
}

pub fn batch(reports: Vec<Report>) -> Batch {
    Batch {
        received_at_ms: super::now_ms(),
        reports: reports.into_iter().map(incoming).collect(),
        points: Vec::new(),
    }
}

/// The request the agent sends for `reports` (all of one node).
pub fn logs_request(reports: &[Report]) -> ExportLogsServiceRequest {
    let node = reports.first().map_or("node", |r| r.node.as_str());
    let pairs: Vec<(Report, String)> = reports
        .iter()
        .map(|r| (r.clone(), serde_json::to_string(r).expect("json")))
        .collect();
    otlp::logs_request(&otlp::resource(node, node), &pairs)
}
