//! The read API (JSON): the nodes and their latest reports, the current findings, a node's
//! stored reports and metric points; `/metrics` and `/healthz`.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{
    App, now_ms, rfc3339,
    store::{self, FindingRow, Gap, NodeRow, PointRow, SeverityCounts, StoreError},
};

const DEFAULT_REPORTS: u64 = 1000;
const MAX_REPORTS: u64 = 100_000;

fn store_failed(e: &StoreError) -> Response {
    tracing::warn!(error = %crate::observed::error_chain(e), "reading the store");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "reading the store failed: {}",
            crate::observed::error_chain(e)
        ),
    )
        .into_response()
}

/// One node in `/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    /// The stream of the latest report (a node whose spool was lost starts a new one).
    pub stream: String,
    pub latest_sequence: u64,
    /// When the latest report was generated (the node's clock), RFC 3339 and ms.
    pub generated_at: String,
    pub generated_at_ms: u64,
    /// When the latest report arrived (the collector's clock).
    pub received_at: String,
    pub received_at_ms: u64,
    /// Seconds since the latest report arrived.
    pub age_seconds: u64,
    /// No report for longer than --stale-after.
    pub stale: bool,
    pub agent_version: String,
    pub mode: String,
    /// `clean`, `drift` or `unverified`.
    pub verdict: String,
    pub findings: Counts,
    /// Sequence numbers never received, per stream: `[from, to]` inclusive.
    pub gaps: Vec<GapView>,
    /// Reports missing in all the gaps.
    pub missing: u64,
    /// Reports stored now (retention deletes old ones).
    pub reports_stored: u64,
    /// Reports received since the node was first seen (retries not counted).
    pub reports_received: u64,
    /// Retries of reports already stored.
    pub duplicates: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub critical: u64,
    pub warning: u64,
    pub info: u64,
    pub other: u64,
    pub total: u64,
}

impl From<&SeverityCounts> for Counts {
    fn from(s: &SeverityCounts) -> Self {
        Self {
            critical: s.critical,
            warning: s.warning,
            info: s.info,
            other: s.other,
            total: s.total(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapView {
    pub stream: String,
    pub from: u64,
    pub to: u64,
}

impl From<&Gap> for GapView {
    fn from(g: &Gap) -> Self {
        Self {
            stream: g.stream.clone(),
            from: g.from,
            to: g.to,
        }
    }
}

pub fn node_view(n: &NodeRow, now_ms: u64, stale_after_ms: u64) -> NodeView {
    let age_ms = now_ms.saturating_sub(n.received_at_ms);
    NodeView {
        node: n.node.clone(),
        stream: n.stream.clone(),
        latest_sequence: n.sequence,
        generated_at: rfc3339(n.generated_at_ms),
        generated_at_ms: n.generated_at_ms,
        received_at: rfc3339(n.received_at_ms),
        received_at_ms: n.received_at_ms,
        age_seconds: age_ms / 1000,
        stale: age_ms > stale_after_ms,
        agent_version: n.agent_version.clone(),
        mode: n.mode.clone(),
        verdict: n.verdict.clone(),
        findings: Counts::from(&n.findings),
        gaps: n.gaps.iter().map(GapView::from).collect(),
        missing: n.missing(),
        reports_stored: n.stored,
        reports_received: n.received,
        duplicates: n.duplicates,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesView {
    pub stale_after_seconds: u64,
    pub nodes: Vec<NodeView>,
}

/// The nodes, with what the page and `/v1/nodes` show of them.
pub async fn load_nodes(app: &App) -> Result<NodesView, StoreError> {
    let rows = app.store.read(store::nodes).await?;
    let stale_ms = u64::try_from(app.stale_after.as_millis()).unwrap_or(u64::MAX);
    let now = now_ms();
    Ok(NodesView {
        stale_after_seconds: app.stale_after.as_secs(),
        nodes: rows.iter().map(|n| node_view(n, now, stale_ms)).collect(),
    })
}

pub async fn nodes(State(app): State<App>) -> Response {
    match load_nodes(&app).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_failed(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct FindingsQuery {
    check: Option<String>,
    node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingsView {
    pub findings: Vec<FindingRow>,
}

pub async fn findings(State(app): State<App>, Query(q): Query<FindingsQuery>) -> Response {
    let (check, node) = (
        q.check.filter(|s| !s.is_empty()),
        q.node.filter(|s| !s.is_empty()),
    );
    match app
        .store
        .read(move |c| store::findings(c, check.as_deref(), node.as_deref()))
        .await
    {
        Ok(findings) => Json(FindingsView { findings }).into_response(),
        Err(e) => store_failed(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct ReportsQuery {
    limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportView {
    pub received_order: u64,
    pub stream: String,
    pub sequence: u64,
    /// The row is the run `sequence..=last_sequence` of reports in one state.
    pub last_sequence: u64,
    pub generated_at: String,
    pub generated_at_ms: u64,
    pub received_at_ms: u64,
    pub last_received_at_ms: u64,
    pub verdict: String,
    pub findings: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportsView {
    pub node: String,
    pub reports: Vec<ReportView>,
}

pub async fn reports(
    State(app): State<App>,
    Path(node): Path<String>,
    Query(q): Query<ReportsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_REPORTS).clamp(1, MAX_REPORTS);
    let name = node.clone();
    match app
        .store
        .read(move |c| store::reports(c, &name, limit))
        .await
    {
        Ok(rows) => Json(ReportsView {
            node,
            reports: rows
                .into_iter()
                .map(|r| ReportView {
                    received_order: r.received_order,
                    stream: r.stream,
                    sequence: r.sequence,
                    last_sequence: r.last_sequence,
                    generated_at: rfc3339(r.generated_at_ms),
                    generated_at_ms: r.generated_at_ms,
                    received_at_ms: r.received_at_ms,
                    last_received_at_ms: r.last_received_at_ms,
                    verdict: r.verdict,
                    findings: r.findings,
                })
                .collect(),
        })
        .into_response(),
        Err(e) => store_failed(&e),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointsView {
    pub node: String,
    pub points: Vec<PointRow>,
}

pub async fn points(State(app): State<App>, Path(node): Path<String>) -> Response {
    let name = node.clone();
    match app.store.read(move |c| store::points(c, &name)).await {
        Ok(points) => Json(PointsView { node, points }).into_response(),
        Err(e) => store_failed(&e),
    }
}

pub async fn prometheus(State(app): State<App>) -> Response {
    let stale_ms = u64::try_from(app.stale_after.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms().saturating_sub(stale_ms);
    let summary = match app.store.read(move |c| store::summary(c, cutoff)).await {
        Ok(s) => s,
        Err(e) => return store_failed(&e),
    };
    match app.metrics.encode(&summary) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub async fn healthz(State(app): State<App>) -> Response {
    if app.store.writer_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the store's writer has stopped\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_stale_once_its_latest_report_is_older_than_the_limit() {
        let row = NodeRow {
            node: "node-a".into(),
            stream: "s1".into(),
            sequence: 7,
            generated_at_ms: 1_700_000_000_000,
            received_at_ms: 1_700_000_001_000,
            agent_version: "0.1.0".into(),
            mode: "VXLAN".into(),
            verdict: "drift".into(),
            received: 7,
            stored: 6,
            duplicates: 1,
            findings: SeverityCounts {
                critical: 1,
                info: 2,
                ..SeverityCounts::default()
            },
            gaps: vec![Gap {
                stream: "s1".into(),
                from: 3,
                to: 4,
            }],
        };
        let fresh = node_view(&row, 1_700_000_101_000, 180_000);
        assert_eq!((fresh.age_seconds, fresh.stale), (100, false));
        assert_eq!((fresh.missing, fresh.findings.total), (2, 3));
        assert_eq!(fresh.generated_at, "2023-11-14T22:13:20.000Z");
        let stale = node_view(&row, 1_700_000_182_000, 180_000);
        assert_eq!((stale.age_seconds, stale.stale), (181, true));
        // A collector clock behind the report's arrival is not a negative age.
        assert_eq!(node_view(&row, 0, 180_000).age_seconds, 0);
    }
}
