//! The agent's only writes to Kubernetes: Events on this node's Node object and the Node
//! condition `CalicoDataplaneDrift`.
//!
//! * Events (`events.k8s.io/v1`, through kube's [`Recorder`]): a `Warning` with reason
//!   `DataplaneDrift` when a finding (check ID + subject) appears, a `Normal` with reason
//!   `DataplaneDriftCleared` when it goes away. The Node is cluster-scoped, so the events live in
//!   namespace `default`, and the reference carries `uid = <node name>` as kubelet's do, which is
//!   what makes them show up in `kubectl describe node`. At most one event per check ID per
//!   [`ReporterOptions::event_interval`]; the next event sent for that check says how many were
//!   held back.
//! * The condition, patched on `nodes/<node>/status` as a strategic merge patch (conditions merge
//!   by `type`): `True`/`DriftDetected` with the failing check IDs and their counts, or
//!   `False`/`NoDrift`. Patched on the first update and whenever the status or the set of check IDs
//!   changes. `lastTransitionTime` moves only when the status changes: before the first patch the
//!   Node is read once, so an agent restart keeps the time the drift really began.
//!
//! Only `critical` and `warning` findings count. `info` findings (ambiguous states) never produce
//! events or a `True` condition: they must not page anyone.
//!
//! Events are best effort: a failed create is not re-sent (the condition carries the state and is
//! retried until a patch succeeds). A failed event create never stops the condition patch.
//!
//! RBAC: `create` on `events` in `events.k8s.io` (namespace `default`), `patch` on `nodes/status`,
//! `get` on `nodes`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::core::v1::{Node, NodeCondition, ObjectReference},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::verify::{CheckId, Finding, Severity};

/// The Node condition type the agent owns.
pub const CONDITION_TYPE: &str = "CalicoDataplaneDrift";
/// `reportingController` of our events and field manager of our status patches.
pub const REPORTING_CONTROLLER: &str = "calico-dataplane-agent";
/// Reason of the `Warning` event sent when a finding appears.
pub const REASON_DRIFT: &str = "DataplaneDrift";
/// Reason of the `Normal` event sent when a finding goes away.
pub const REASON_CLEARED: &str = "DataplaneDriftCleared";
/// Condition reasons.
pub const CONDITION_REASON_DRIFT: &str = "DriftDetected";
pub const CONDITION_REASON_OK: &str = "NoDrift";
/// Condition message when nothing counts.
pub const NO_DRIFT_MESSAGE: &str = "the dataplane matches what Felix programs";
/// The event's `action` (required by events.k8s.io/v1): what the agent did when it noticed.
const ACTION: &str = "VerifyDataplane";
/// The API server's limit on an event's note (bytes).
const NOTE_LIMIT: usize = 1024;
/// The API server's limit on `reportingInstance` (bytes).
const INSTANCE_LIMIT: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReporterOptions {
    /// At most one event per check ID per this interval; `0` disables the limit.
    pub event_interval: Duration,
    /// The events' `reportingInstance`: the pod name, or the node name when empty.
    pub reporting_instance: String,
}

impl Default for ReporterOptions {
    fn default() -> Self {
        Self {
            event_interval: Duration::from_secs(60),
            reporting_instance: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeStatusError {
    #[error("creating the {reason} event ({check}) for node {node} failed")]
    EventCreate {
        node: String,
        reason: &'static str,
        check: CheckId,
        #[source]
        source: kube::Error,
    },
    #[error("patching the {CONDITION_TYPE} condition in node {node}'s status failed")]
    StatusPatch {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// What one [`NodeStatusReporter::update`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateSummary {
    pub events_sent: usize,
    pub events_suppressed: usize,
    pub condition_patched: bool,
}

/// Publishes this node's drift to Kubernetes. Keep one per node for the agent's lifetime: it
/// remembers which findings were announced, the rate limits and the last condition patched.
pub struct NodeStatusReporter {
    client: Client,
    node: String,
    reporter: Reporter,
    events: EventPlanner,
    condition: ConditionState,
}

impl NodeStatusReporter {
    pub fn new(client: Client, node: impl Into<String>, opts: ReporterOptions) -> Self {
        let node = node.into();
        let instance = if opts.reporting_instance.is_empty() {
            &node
        } else {
            &opts.reporting_instance
        };
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance: Some(truncate(instance, INSTANCE_LIMIT)),
        };
        Self {
            client,
            reporter,
            events: EventPlanner::new(opts.event_interval),
            condition: ConditionState::default(),
            node,
        }
    }

    /// Called after every verification with the findings confirmed after the grace window.
    pub async fn update(
        &mut self,
        findings: &[Finding],
        now: SystemTime,
    ) -> Result<UpdateSummary, KubeStatusError> {
        let mut summary = UpdateSummary::default();
        let mut first_error: Option<KubeStatusError> = None;
        let mut fail = |e: KubeStatusError| {
            if let Some(first) = &first_error {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), first = %first, "Kubernetes status write failed.");
            } else {
                first_error = Some(e);
            }
        };

        let plan = self.events.plan(findings, now);
        summary.events_suppressed = plan.suppressed;
        let node_ref = node_reference(&self.node);
        for planned in plan.events {
            // A fresh recorder per event: the recorder's cache would turn a second event with the
            // same type, reason and action into a series PATCH of the first one, keeping the first
            // one's note (another subject's details) and needing `patch` on events.
            let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
            let event = Event {
                type_: planned.type_,
                reason: planned.reason.into(),
                note: Some(planned.note),
                action: ACTION.into(),
                secondary: None,
            };
            match recorder.publish(&event, &node_ref).await {
                Ok(()) => summary.events_sent += 1,
                Err(source) => {
                    self.events.undelivered(planned.check, planned.held_back);
                    fail(KubeStatusError::EventCreate {
                        node: self.node.clone(),
                        reason: planned.reason,
                        check: planned.check,
                        source,
                    });
                }
            }
        }

        let desired = DesiredCondition::from_findings(findings);
        if self.condition.needs_patch(&desired) {
            match self.patch_condition(&desired, now).await {
                Ok(()) => summary.condition_patched = true,
                Err(e) => fail(e),
            }
        }

        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    async fn patch_condition(
        &mut self,
        desired: &DesiredCondition,
        now: SystemTime,
    ) -> Result<(), KubeStatusError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        if !self.condition.read_existing {
            match nodes.get(&self.node).await {
                Ok(node) => {
                    self.condition.observe(&node);
                    self.condition.read_existing = true;
                }
                // The server answered (e.g. no `get` on nodes): don't ask again, use `now`.
                Err(e @ kube::Error::Api(_)) => {
                    tracing::debug!(node = %self.node, error = %e, "Cannot read the Node's current {CONDITION_TYPE} condition; its lastTransitionTime restarts now.");
                    self.condition.read_existing = true;
                }
                Err(e) => {
                    tracing::debug!(node = %self.node, error = %e, "Reading the Node before the first condition patch failed.");
                }
            }
        }
        let now = timestamp(now);
        let transition = self.condition.transition_time(desired.drift, now);
        let body = desired.patch_body(now, transition);
        let params = PatchParams {
            field_manager: Some(REPORTING_CONTROLLER.into()),
            ..PatchParams::default()
        };
        nodes
            .patch_status(&self.node, &params, &Patch::Strategic(&body))
            .await
            .map_err(|source| KubeStatusError::StatusPatch {
                node: self.node.clone(),
                source,
            })?;
        self.condition.patched(desired, transition);
        Ok(())
    }
}

/// The Node as kubelet references it in its events (`uid` = the node's name: the second of the
/// two lookups `kubectl describe node` makes).
fn node_reference(node: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        uid: Some(node.into()),
        ..ObjectReference::default()
    }
}

/// Whether a finding may raise an event or a `True` condition.
fn counts(f: &Finding) -> bool {
    matches!(f.severity, Severity::Critical | Severity::Warning)
}

/// The counting findings, one per (check, subject); the most severe wins a duplicate.
fn counting(findings: &[Finding]) -> BTreeMap<(CheckId, String), &Finding> {
    let mut out: BTreeMap<(CheckId, String), &Finding> = BTreeMap::new();
    for f in findings.iter().filter(|f| counts(f)) {
        out.entry(f.key())
            .and_modify(|kept| {
                if f.severity < kept.severity {
                    *kept = f;
                }
            })
            .or_insert(f);
    }
    out
}

fn timestamp(t: SystemTime) -> Timestamp {
    // Out of range only for times past the year 9999 or before -9999: never a real clock.
    Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// RFC 3339 to the second, as the API server writes times.
fn rfc3339(t: SystemTime) -> String {
    let ts = timestamp(t);
    Timestamp::from_second(ts.as_second())
        .unwrap_or(ts)
        .to_string()
}

/// At most `limit` bytes, cut on a character boundary, with `…` when cut.
fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    const MARK: &str = "…";
    if limit < MARK.len() {
        return String::new();
    }
    let mut end = limit - MARK.len();
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

/// The note of a `DataplaneDrift` event.
fn drift_note(f: &Finding) -> String {
    let severity = match f.severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    let mut note = format!(
        "{} on {} ({severity}): expected {}; actual {}.",
        f.check, f.subject, f.expected, f.actual
    );
    if !f.hint.is_empty() {
        note.push_str(" Hint: ");
        note.push_str(&f.hint);
    }
    note
}

/// The note of a `DataplaneDriftCleared` event, from the finding as it was last seen.
fn cleared_note(f: &Finding) -> String {
    format!(
        "{} on {} cleared: the dataplane matches what Felix programs again (was: expected {}; actual {}).",
        f.check, f.subject, f.expected, f.actual
    )
}

/// `body` cut so that `body + suffix` fits the note limit; the suffix is never cut.
fn compose_note(body: &str, suffix: &str) -> String {
    let mut note = truncate(body, NOTE_LIMIT.saturating_sub(suffix.len()));
    note.push_str(suffix);
    truncate(&note, NOTE_LIMIT)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedEvent {
    check: CheckId,
    type_: EventType,
    reason: &'static str,
    note: String,
    /// The held-back changes this event reports, and since when: handed back if it fails.
    held_back: Option<(usize, SystemTime)>,
}

#[derive(Debug, Default)]
struct EventPlan {
    events: Vec<PlannedEvent>,
    suppressed: usize,
}

/// Per check ID: when an event was last attempted and what was held back since.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Limit {
    last_sent: Option<SystemTime>,
    suppressed: usize,
    suppressed_since: Option<SystemTime>,
}

/// Which findings were announced, and the per-check rate limit. Pure: no I/O.
#[derive(Debug)]
struct EventPlanner {
    interval: Duration,
    active: BTreeMap<(CheckId, String), Finding>,
    limits: BTreeMap<CheckId, Limit>,
}

impl EventPlanner {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            active: BTreeMap::new(),
            limits: BTreeMap::new(),
        }
    }

    /// The events to send for the change from the last call to `findings`, rate limited. An
    /// attempt uses up the check's interval whether or not the create then succeeds.
    fn plan(&mut self, findings: &[Finding], now: SystemTime) -> EventPlan {
        let current = counting(findings);
        let mut appeared: Vec<&Finding> = current
            .iter()
            .filter(|(k, _)| !self.active.contains_key(*k))
            .map(|(_, f)| *f)
            .collect();
        // Most severe first, so a burst sends the critical one.
        appeared.sort_by(|a, b| {
            (a.severity, a.check.as_str(), &a.subject).cmp(&(
                b.severity,
                b.check.as_str(),
                &b.subject,
            ))
        });
        let mut cleared: Vec<Finding> = self
            .active
            .iter()
            .filter(|(k, _)| !current.contains_key(*k))
            .map(|(_, f)| f.clone())
            .collect();
        cleared.sort_by(|a, b| (a.check.as_str(), &a.subject).cmp(&(b.check.as_str(), &b.subject)));

        let mut plan = EventPlan::default();
        let changes = appeared
            .iter()
            .map(|f| (*f, EventType::Warning, REASON_DRIFT, drift_note(f)))
            .chain(
                cleared
                    .iter()
                    .map(|f| (f, EventType::Normal, REASON_CLEARED, cleared_note(f))),
            );
        for (f, type_, reason, body) in changes {
            match self.admit(f.check, now) {
                Some(held_back) => plan.events.push(PlannedEvent {
                    check: f.check,
                    type_,
                    reason,
                    note: compose_note(&body, &self.held_back_note(f.check, held_back)),
                    held_back,
                }),
                None => plan.suppressed += 1,
            }
        }
        self.active = current.into_iter().map(|(k, f)| (k, f.clone())).collect();
        plan
    }

    /// `Some(what was held back for this check so far)` when an event for `check` may go now
    /// (the count is handed to that event), else `None`, counting it as held back.
    fn admit(&mut self, check: CheckId, now: SystemTime) -> Option<Option<(usize, SystemTime)>> {
        let interval = self.interval;
        let limit = self.limits.entry(check).or_default();
        let within = limit.last_sent.is_some_and(|last| {
            // A clock that went backwards does not hold events back.
            now.duration_since(last).is_ok_and(|d| d < interval)
        });
        if within {
            limit.suppressed += 1;
            limit.suppressed_since.get_or_insert(now);
            return None;
        }
        limit.last_sent = Some(now);
        let held = std::mem::take(&mut limit.suppressed);
        Some(
            limit
                .suppressed_since
                .take()
                .filter(|_| held > 0)
                .map(|since| (held, since)),
        )
    }

    /// The note's ending for the changes an event reports as held back.
    fn held_back_note(&self, check: CheckId, held_back: Option<(usize, SystemTime)>) -> String {
        match held_back {
            None => String::new(),
            Some((n, since)) => format!(
                " (and {n} more {check} change{} since {}, not sent: at most one event per check every {:?})",
                if n == 1 { "" } else { "s" },
                rfc3339(since),
                self.interval
            ),
        }
    }

    /// The event was not created: what it reported as held back is still to be reported.
    fn undelivered(&mut self, check: CheckId, held_back: Option<(usize, SystemTime)>) {
        let Some((n, since)) = held_back else {
            return;
        };
        let limit = self.limits.entry(check).or_default();
        limit.suppressed += n;
        limit.suppressed_since = Some(limit.suppressed_since.map_or(since, |s| s.min(since)));
    }
}

/// The condition the findings call for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DesiredCondition {
    drift: bool,
    /// Check ID → number of counting findings (distinct subjects).
    checks: BTreeMap<&'static str, usize>,
}

impl DesiredCondition {
    fn from_findings(findings: &[Finding]) -> Self {
        let mut checks = BTreeMap::new();
        for (check, _) in counting(findings).keys() {
            *checks.entry(check.as_str()).or_insert(0) += 1;
        }
        Self {
            drift: !checks.is_empty(),
            checks,
        }
    }

    fn status(&self) -> &'static str {
        if self.drift { "True" } else { "False" }
    }

    fn reason(&self) -> &'static str {
        if self.drift {
            CONDITION_REASON_DRIFT
        } else {
            CONDITION_REASON_OK
        }
    }

    /// `route.missing (2), vxlan.fdb.missing (1)`, or the no-drift sentence.
    fn message(&self) -> String {
        if !self.drift {
            return NO_DRIFT_MESSAGE.into();
        }
        self.checks
            .iter()
            .map(|(id, n)| format!("{id} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn id_set(&self) -> BTreeSet<&'static str> {
        self.checks.keys().copied().collect()
    }

    /// The strategic merge patch for `nodes/<node>/status`.
    fn patch_body(&self, now: Timestamp, transition: Timestamp) -> serde_json::Value {
        let condition = NodeCondition {
            type_: CONDITION_TYPE.into(),
            status: self.status().into(),
            reason: Some(self.reason().into()),
            message: Some(self.message()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(transition)),
        };
        serde_json::json!({ "status": { "conditions": [condition] } })
    }
}

/// What the Node's condition is known to be.
#[derive(Debug, Default)]
struct ConditionState {
    /// The status and check IDs of the last successful patch.
    patched: Option<(bool, BTreeSet<&'static str>)>,
    /// The status the Node carries and since when.
    since: Option<(bool, Timestamp)>,
    /// The Node was read before the first patch (or cannot be).
    read_existing: bool,
}

impl ConditionState {
    fn needs_patch(&self, desired: &DesiredCondition) -> bool {
        self.patched
            .as_ref()
            .is_none_or(|(drift, ids)| *drift != desired.drift || *ids != desired.id_set())
    }

    /// Takes the status and transition time of our condition from the Node as read.
    fn observe(&mut self, node: &Node) {
        let condition = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_TYPE));
        self.since = condition.and_then(|c| {
            let drift = match c.status.as_str() {
                "True" => true,
                "False" => false,
                _ => return None,
            };
            c.last_transition_time.as_ref().map(|t| (drift, t.0))
        });
    }

    fn transition_time(&self, drift: bool, now: Timestamp) -> Timestamp {
        match self.since {
            Some((was, at)) if was == drift => at,
            _ => now,
        }
    }

    fn patched(&mut self, desired: &DesiredCondition, transition: Timestamp) {
        self.patched = Some((desired.drift, desired.id_set()));
        self.since = Some((desired.drift, transition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000 + secs)
    }

    fn route(subject: &str) -> Finding {
        Finding::new(CheckId::RouteMissing, Severity::Critical, subject)
            .expected("10.244.3.64/26 via 10.99.0.12 dev vxlan.calico onlink")
            .actual("no route")
            .hint("ip route show 10.244.3.64/26")
    }

    fn fdb(subject: &str) -> Finding {
        Finding::new(CheckId::VxlanFdbMissing, Severity::Warning, subject)
    }

    fn info(subject: &str) -> Finding {
        Finding::new(CheckId::ConntrackPressure, Severity::Info, subject)
    }

    #[test]
    fn only_critical_and_warning_findings_count() {
        assert!(counts(&route("a")));
        assert!(counts(&fdb("b")));
        assert!(!counts(&info("c")));
        let desired = DesiredCondition::from_findings(&[info("conntrack")]);
        assert!(!desired.drift);
        assert_eq!(desired.status(), "False");
        assert_eq!(desired.message(), NO_DRIFT_MESSAGE);
        let mut planner = EventPlanner::new(Duration::from_secs(60));
        let plan = planner.plan(&[info("conntrack")], at(0));
        assert!(plan.events.is_empty());
        assert_eq!(plan.suppressed, 0);
    }

    #[test]
    fn condition_message_sorts_dedups_and_counts() {
        let findings = [
            fdb("66:aa:bb:cc:dd:01"),
            route("10.244.3.64/26"),
            route("10.244.5.0/26"),
            // The same key twice is one finding.
            route("10.244.5.0/26"),
            info("nf_conntrack"),
        ];
        let desired = DesiredCondition::from_findings(&findings);
        assert!(desired.drift);
        assert_eq!(desired.status(), "True");
        assert_eq!(desired.reason(), "DriftDetected");
        assert_eq!(
            desired.message(),
            "route.missing (2), vxlan.fdb.missing (1)"
        );
    }

    #[test]
    fn patch_body_is_one_condition_merged_by_type() {
        let desired = DesiredCondition::from_findings(&[route("10.244.3.64/26")]);
        let now = timestamp(at(30));
        let since = timestamp(at(0));
        assert_eq!(
            desired.patch_body(now, since),
            serde_json::json!({"status": {"conditions": [{
                "type": "CalicoDataplaneDrift",
                "status": "True",
                "reason": "DriftDetected",
                "message": "route.missing (1)",
                "lastHeartbeatTime": "2026-09-21T14:13:50Z",
                "lastTransitionTime": "2026-09-21T14:13:20Z",
            }]}})
        );
    }

    #[test]
    fn patches_on_first_update_and_on_status_or_id_changes_only() {
        let mut state = ConditionState::default();
        let one = DesiredCondition::from_findings(&[route("a")]);
        assert!(state.needs_patch(&one));
        state.patched(&one, timestamp(at(0)));
        // Another subject of the same check: same status, same IDs.
        let two = DesiredCondition::from_findings(&[route("a"), route("b")]);
        assert!(!state.needs_patch(&two));
        // A new check ID: patch, but the status (and so the transition time) stays.
        let more = DesiredCondition::from_findings(&[route("a"), fdb("m")]);
        assert!(state.needs_patch(&more));
        assert_eq!(
            state.transition_time(more.drift, timestamp(at(50))),
            timestamp(at(0))
        );
        state.patched(&more, timestamp(at(0)));
        let clear = DesiredCondition::from_findings(&[info("x")]);
        assert!(state.needs_patch(&clear));
        assert_eq!(
            state.transition_time(clear.drift, timestamp(at(90))),
            timestamp(at(90))
        );
    }

    #[test]
    fn an_existing_condition_keeps_its_transition_time() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "CalicoDataplaneDrift", "status": "False", "lastTransitionTime": "2026-02-02T00:00:00Z"},
            ]}
        }))
        .expect("node");
        let mut state = ConditionState::default();
        state.observe(&node);
        let then: Timestamp = "2026-02-02T00:00:00Z".parse().expect("time");
        let now = timestamp(at(0));
        assert_eq!(state.transition_time(false, now), then);
        assert_eq!(state.transition_time(true, now), now);
    }

    #[test]
    fn notes_name_check_subject_expected_and_actual_and_fit_the_limit() {
        let note = drift_note(&route("10.244.3.64/26"));
        assert_eq!(
            note,
            "route.missing on 10.244.3.64/26 (critical): expected 10.244.3.64/26 via 10.99.0.12 dev vxlan.calico onlink; actual no route. Hint: ip route show 10.244.3.64/26"
        );
        let cleared = cleared_note(&route("10.244.3.64/26"));
        assert!(
            cleared.starts_with("route.missing on 10.244.3.64/26 cleared:"),
            "{cleared}"
        );
        assert!(cleared.contains("actual no route"), "{cleared}");

        let long = route("x").actual("é".repeat(2000));
        let suffix = " (and 3 more route.missing changes since …)";
        let note = compose_note(&drift_note(&long), suffix);
        assert!(note.len() <= NOTE_LIMIT, "{}", note.len());
        assert!(
            note.ends_with(suffix),
            "the rate-limit suffix survives truncation"
        );
        assert!(note.contains("…"));
        assert_eq!(truncate("short", 1024), "short");
        assert_eq!(truncate("abcdef", 4), "a…");
    }

    #[test]
    fn appear_and_clear_produce_one_event_each() {
        let mut planner = EventPlanner::new(Duration::from_secs(60));
        let plan = planner.plan(&[route("10.244.3.64/26")], at(0));
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.events[0].type_, EventType::Warning);
        assert_eq!(plan.events[0].reason, "DataplaneDrift");
        // Same findings (other details changed): nothing new.
        let again = route("10.244.3.64/26").actual("via the wrong device");
        assert!(planner.plan(&[again], at(5)).events.is_empty());
        // Cleared after the interval: one Normal event naming what it was.
        let plan = planner.plan(&[], at(61));
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.events[0].type_, EventType::Normal);
        assert_eq!(plan.events[0].reason, "DataplaneDriftCleared");
        assert!(plan.events[0].note.contains("via the wrong device"));
        // Dropping to info severity is a clear too.
        let mut planner = EventPlanner::new(Duration::ZERO);
        planner.plan(&[route("s")], at(0));
        let demoted = Finding::new(CheckId::RouteMissing, Severity::Info, "s");
        let plan = planner.plan(&[demoted], at(1));
        assert_eq!(plan.events[0].reason, "DataplaneDriftCleared");
    }

    #[test]
    fn one_event_per_check_per_interval_and_the_next_one_says_how_many_were_held() {
        let mut planner = EventPlanner::new(Duration::from_secs(60));
        // Three subjects of one check at once, plus another check: one event per check.
        let plan = planner.plan(&[route("a"), route("b"), route("c"), fdb("m")], at(0));
        let sent: Vec<_> = plan.events.iter().map(|e| e.check).collect();
        assert_eq!(sent, [CheckId::RouteMissing, CheckId::VxlanFdbMissing]);
        assert!(
            plan.events[0].note.contains(" on a "),
            "{}",
            plan.events[0].note
        );
        assert!(
            !plan.events[0].note.contains("more"),
            "{}",
            plan.events[0].note
        );
        assert_eq!(plan.suppressed, 2);
        // Still within the interval: held back.
        let plan = planner.plan(&[route("a"), route("b"), fdb("m")], at(30));
        assert_eq!((plan.events.len(), plan.suppressed), (0, 1));
        // After the interval, the next route.missing event counts all three held back.
        let plan = planner.plan(&[route("a"), route("b"), route("d"), fdb("m")], at(61));
        assert_eq!((plan.events.len(), plan.suppressed), (1, 0));
        let note = &plan.events[0].note;
        assert!(note.contains(" on d "), "{note}");
        assert!(
            note.ends_with(
                " (and 3 more route.missing changes since 2026-09-21T14:13:20Z, not sent: at most one event per check every 60s)"
            ),
            "{note}"
        );
        let plan = planner.plan(
            &[route("a"), route("b"), route("d"), route("e"), fdb("m")],
            at(200),
        );
        assert!(
            !plan.events[0].note.contains("more"),
            "{}",
            plan.events[0].note
        );
    }

    #[test]
    fn a_failed_create_hands_its_held_back_count_to_the_next_event() {
        let mut planner = EventPlanner::new(Duration::from_secs(60));
        let plan = planner.plan(&[route("a"), route("b")], at(0));
        assert_eq!((plan.events.len(), plan.suppressed), (1, 1));
        let plan = planner.plan(&[route("a"), route("b"), route("c")], at(61));
        let failed = &plan.events[0];
        assert!(
            failed
                .note
                .contains("and 1 more route.missing change since 2026-09-21T14:13:20Z"),
            "{}",
            failed.note
        );
        planner.undelivered(failed.check, failed.held_back);
        let plan = planner.plan(&[route("a"), route("b"), route("c"), route("d")], at(122));
        let note = &plan.events[0].note;
        assert!(
            note.contains("and 1 more route.missing change since 2026-09-21T14:13:20Z"),
            "{note}"
        );
        // Delivered (no `undelivered`): nothing is held back any more.
        let plan = planner.plan(&[route("e")], at(183));
        assert!(
            !plan.events[0].note.contains("more"),
            "{}",
            plan.events[0].note
        );
    }

    #[test]
    fn zero_interval_and_a_clock_going_back_do_not_hold_events() {
        let mut planner = EventPlanner::new(Duration::ZERO);
        let plan = planner.plan(&[route("a"), route("b")], at(0));
        assert_eq!((plan.events.len(), plan.suppressed), (2, 0));
        let mut planner = EventPlanner::new(Duration::from_secs(60));
        planner.plan(&[route("a")], at(100));
        let plan = planner.plan(&[route("a"), route("b")], at(10));
        assert_eq!((plan.events.len(), plan.suppressed), (1, 0));
    }

    #[test]
    fn the_node_is_referenced_as_kubelet_does_and_the_instance_fits_the_limit() {
        assert_eq!(
            truncate(&"n".repeat(300), INSTANCE_LIMIT).len(),
            INSTANCE_LIMIT
        );
        let r = node_reference("node-a");
        assert_eq!(r.uid.as_deref(), Some("node-a"));
        assert_eq!(r.namespace, None);
    }
}
