//! One analysis of a node: the observed dataplane summarised for an operator, and verified
//! against the datastore when there is one (else against what the node itself implies).

use serde::{Deserialize, Serialize};

use crate::{
    desired::{
        Datastore,
        expected::{self, Expected, HostFacts},
        identity,
    },
    diag::{self, Diag},
    observed::ObservedDataplane,
    verify::{self, Policy, SeverityCounts, Skipped, Verdict, Verification},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    pub diag: Diag,
    /// `None` when there is no Calico dataplane to verify.
    pub verification: Option<Verification>,
    /// What an offline input was read as, and what could not be used.
    pub input_notes: Vec<String>,
    /// Drops and MTU signals sampled while the analysis ran (live `diag` only; never sent by
    /// the daemon, so never read back).
    #[serde(skip_deserializing)]
    pub traffic: Option<TrafficSample>,
    /// Why there is no traffic sample, when one was asked for.
    pub traffic_unavailable: Option<String>,
    /// Set when the analysis came from the running daemon (`agent run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonInfo>,
    /// The dataplane holds another Node's addresses or VTEP MAC than the one named: the
    /// findings are judged against the wrong node, and the verdict is unverifiable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<identity::IdentityMismatch>,
    /// The bundle directory analysed instead of a live node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

impl Analysis {
    /// With nothing verified (no Calico and no datastore) the node is unverifiable, never
    /// clean.
    pub fn verdict(&self) -> Verdict {
        if self.identity.is_some() {
            return Verdict::Unverifiable;
        }
        self.verification
            .as_ref()
            .map_or(Verdict::Unverifiable, Verification::verdict)
    }

    /// The analysis as `--json` and the local API print it: the verdict, the findings per
    /// severity and what did not run on top, then every field of the analysis.
    pub fn judged(&self) -> Judged<'_> {
        let v = self.verification.as_ref();
        Judged {
            verdict: self.verdict(),
            counts: v.map(Verification::counts).unwrap_or_default(),
            not_run: v.map_or(&[], |v| v.skipped.as_slice()),
            analysis: self,
        }
    }
}

/// [`Analysis::judged`]: computed when printed, so it can never disagree with the findings.
#[derive(Debug, Serialize)]
pub struct Judged<'a> {
    pub verdict: Verdict,
    pub counts: SeverityCounts,
    pub not_run: &'a [Skipped],
    #[serde(flatten)]
    pub analysis: &'a Analysis,
}

/// What the daemon adds to an analysis: how fresh it is and what only time can tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Milliseconds since the epoch of the verification this analysis is.
    pub verified_at_ms: u64,
    pub grace_seconds: f64,
    /// Findings seen but still inside the grace window.
    pub pending: usize,
    pub netlink_events: u64,
    pub resyncs: u64,
    pub overruns: u64,
    /// State changes per BGP session in the flap window (BIRD protocol name → count).
    pub bgp_flaps: std::collections::BTreeMap<String, u32>,
    /// The observe-only eBPF programs: attached to N interfaces, or why not.
    pub ebpf: String,
    /// Reports to the central endpoint, when pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::push::PushStatus>,
}

/// What the observe-only programs saw during `diag`'s sample window.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficSample {
    pub seconds: u64,
    pub drops: Vec<crate::flows::report::DropRow>,
    pub tcp_retransmits: u64,
    /// Interfaces and directions with DF packets above the MTU or ICMP frag-needed seen.
    pub mtu_signals: Vec<crate::flows::report::IfaceRow>,
    /// The flows whose packets were dropped, most drops first.
    pub dropped_flows: Vec<crate::flows::report::FlowRow>,
    /// What the MTU signals say about the mtu.* findings (filled in by [`correlate_mtu`]).
    pub mtu_correlation: Vec<String>,
    pub notes: Vec<String>,
}

/// The kernel's drop reason for a packet above the egress MTU that may not be fragmented.
const PKT_TOO_BIG: &str = "PKT_TOO_BIG";

/// Reads the MTU signals against the mtu.* findings: a finding with signals is costing packets
/// now; a finding without them has not yet (no large DF traffic in the window); signals
/// without a finding point past this node (the node's MTUs agree with Calico's).
pub fn correlate_mtu(v: Option<&Verification>, t: &TrafficSample) -> Vec<String> {
    let findings: Vec<String> = v
        .map(|v| {
            v.findings
                .iter()
                .filter(|f| f.check.as_str().starts_with("mtu."))
                .map(|f| format!("{} {}", f.check.as_str(), f.subject))
                .collect()
        })
        .unwrap_or_default();
    let mut signals: Vec<String> = t
        .mtu_signals
        .iter()
        .map(|i| {
            let mut what = Vec::new();
            if i.counts.df_oversize > 0 {
                what.push(format!("{} DF packets above the MTU", i.counts.df_oversize));
            }
            if i.counts.icmp_frag_needed > 0 {
                what.push(format!("{} ICMP frag-needed", i.counts.icmp_frag_needed));
            }
            let dir = if i.direction == crate::flows::Direction::Egress {
                "out"
            } else {
                "in"
            };
            format!("{} on {} ({dir})", what.join(" and "), i.iface)
        })
        .collect();
    if let Some(d) = t.drops.iter().find(|d| d.reason == PKT_TOO_BIG) {
        signals.push(format!("{} drops {PKT_TOO_BIG}", d.count));
    }
    match (findings.is_empty(), signals.is_empty()) {
        (true, true) => Vec::new(),
        (false, false) => vec![format!(
            "confirmed: {} is costing packets now: {}",
            findings.join(", "),
            signals.join("; ")
        )],
        (false, true) => vec![format!(
            "{} has not cost packets in the last {} s (no DF traffic above the MTU seen); large transfers will hit it",
            findings.join(", "),
            t.seconds
        )],
        (true, false) => vec![format!(
            "MTU signals without an mtu finding: {}; this node's MTUs agree with Calico's, so look past the node: the underlay path MTU (`ping -M do -s <size> <peer node>`) or a middlebox",
            signals.join("; ")
        )],
    }
}

/// How many dropped flows `diag` lists.
const DROPPED_FLOWS: usize = 5;

/// The observe-only programs attached for `diag`'s traffic sample. The counting window is
/// opened by [`TrafficProbe::sample`], after the attach has settled and after the analysis
/// has run, and closed before anything is detached: the agent's own work (its netlink dumps,
/// `iptables-nft-save` closing a netlink socket with replies queued, the probe of Felix's
/// health port) is never inside it.
pub struct TrafficProbe {
    session: crate::flows::Session,
    node: String,
}

impl TrafficProbe {
    /// Loads the programs and attaches them to the node's Calico interfaces.
    pub async fn attach(node: &str) -> Result<Self, crate::flows::FlowsError> {
        let opts = crate::flows::ProbeOptions {
            flow_table_size: 16384,
            ..crate::flows::ProbeOptions::default()
        };
        let mut session = crate::flows::Session::start(opts, None)?;
        match crate::observed::read_interfaces().await {
            Ok(obs) => session.refresh(&obs),
            Err(e) => session.notes.push(format!(
                "interfaces not attached (drops counted per reason only): {}",
                crate::observed::error_chain(&e)
            )),
        }
        Ok(Self {
            session,
            node: node.to_string(),
        })
    }

    /// Waits until the drop counters have not moved for `quiet`, at most `max`. The kernel
    /// purges a closed netlink socket's queue (`iptables-nft-save` exits with replies unread:
    /// QUEUE_PURGE) after RCU grace periods, not at close: within 200 ms in the lab, later on
    /// a busy machine. A window opened after that holds none of the agent's own.
    pub async fn settle(&self, quiet: std::time::Duration, max: std::time::Duration) {
        let total = || {
            self.session
                .probe
                .drops()
                .map(|d| d.values().sum::<u64>())
                .ok()
        };
        let start = std::time::Instant::now();
        let (mut last, mut since) = (total(), start);
        // Without the drop counters there is nothing to settle.
        while last.is_some() && since.elapsed() < quiet && start.elapsed() < max {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            let now = total();
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            }
        }
    }

    /// Counts for `seconds` from now and returns what happened in that window only; the
    /// programs are detached when this returns.
    pub async fn sample(self, seconds: u64) -> Result<TrafficSample, crate::flows::FlowsError> {
        let before = self.session.report(&self.node, 0, usize::MAX)?;
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        let after = self.session.report(&self.node, seconds, usize::MAX)?;
        drop(self);
        Ok(window(&before, after, seconds))
    }
}

/// What happened between two reports of the same session.
fn window(
    before: &crate::flows::report::FlowsReport,
    after: crate::flows::report::FlowsReport,
    seconds: u64,
) -> TrafficSample {
    let mut drops: Vec<_> = after
        .drops
        .into_iter()
        .filter_map(|mut row| {
            if let Some(old) = before.drops.iter().find(|r| r.code == row.code) {
                for (class, n) in &mut row.by_class {
                    *n = n.saturating_sub(old.by_class.get(class).copied().unwrap_or(0));
                }
                row.by_class.retain(|_, n| *n > 0);
                row.count = row.count.saturating_sub(old.count);
            }
            (row.count > 0).then_some(row)
        })
        .collect();
    drops.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    let mtu_signals = after
        .interfaces
        .into_iter()
        .map(|mut i| {
            if let Some(old) = before
                .interfaces
                .iter()
                .find(|o| o.iface == i.iface && o.direction == i.direction)
            {
                i.counts.packets = i.counts.packets.saturating_sub(old.counts.packets);
                i.counts.bytes = i.counts.bytes.saturating_sub(old.counts.bytes);
                i.counts.df_oversize = i.counts.df_oversize.saturating_sub(old.counts.df_oversize);
                i.counts.icmp_frag_needed = i
                    .counts
                    .icmp_frag_needed
                    .saturating_sub(old.counts.icmp_frag_needed);
            }
            i
        })
        .filter(|i| i.counts.df_oversize > 0 || i.counts.icmp_frag_needed > 0)
        .collect();
    let same_flow = |a: &crate::flows::Flow, b: &crate::flows::Flow| {
        (a.src, a.dst, a.sport, a.dport, a.proto, a.ifindex)
            == (b.src, b.dst, b.sport, b.dport, b.proto, b.ifindex)
    };
    let mut dropped_flows: Vec<crate::flows::report::FlowRow> = after
        .flows
        .into_iter()
        .map(|mut f| {
            if let Some(old) = before.flows.iter().find(|o| same_flow(&o.flow, &f.flow)) {
                f.flow.drops = f.flow.drops.saturating_sub(old.flow.drops);
                f.flow.packets = f.flow.packets.saturating_sub(old.flow.packets);
                f.flow.bytes = f.flow.bytes.saturating_sub(old.flow.bytes);
            }
            f
        })
        .filter(|f| f.flow.drops > 0)
        .collect();
    dropped_flows.sort_by_key(|f| std::cmp::Reverse(f.flow.drops));
    dropped_flows.truncate(DROPPED_FLOWS);
    TrafficSample {
        seconds,
        drops,
        tcp_retransmits: after.tcp_retransmits.saturating_sub(before.tcp_retransmits),
        mtu_signals,
        dropped_flows,
        mtu_correlation: Vec::new(),
        notes: after.notes,
    }
}

/// The host facts Felix itself reads from the kernel (MTU detection).
pub fn host_facts(obs: &ObservedDataplane) -> HostFacts {
    HostFacts {
        links: obs
            .links
            .iter()
            .map(|l| (l.name.clone(), l.mtu, l.is_up()))
            .collect(),
    }
}

/// Computes the expected dataplane for the observed node, if a datastore is given.
pub fn expected_for(
    obs: &ObservedDataplane,
    ds: Option<&Datastore>,
) -> Result<Option<Expected>, expected::ExpectedError> {
    let Some(ds) = ds else {
        return Ok(None);
    };
    // A bundle that does not say which node it is from is analysed as no node at all.
    let node = Some(obs.node_name.as_str()).filter(|n| *n != expected::UNKNOWN_NODE);
    match expected::compute(ds, node, &host_facts(obs)) {
        Err(expected::ExpectedError::UnknownNode { name, known, .. }) => {
            Err(expected::ExpectedError::UnknownNode {
                looks_like: identity::check(ds, &name, obs).map(|m| m.looks_like),
                name,
                known,
            })
        }
        other => other.map(Some),
    }
}

/// Says first when the dataplane carries another Node's identity than the one named: every
/// finding would then be judged against someone else's expected state.
pub fn check_identity(a: &mut Analysis, obs: &ObservedDataplane, ds: Option<&Datastore>) {
    if let Some(ds) = ds.filter(|_| obs.node_name != expected::UNKNOWN_NODE) {
        a.identity = identity::check(ds, &obs.node_name, obs);
    }
}

pub fn analyse(obs: &ObservedDataplane, expected: Option<&Expected>, policy: &Policy) -> Analysis {
    let mut d = diag::build(obs);
    if let Some(e) = expected {
        diag::name_wireguard_peers(&mut d, e);
    }
    // With a datastore, a node without any Calico state is exactly what must be reported.
    let verification =
        (d.calico_found || expected.is_some()).then(|| verify::verify(expected, obs, policy));
    Analysis {
        diag: d,
        verification,
        input_notes: Vec::new(),
        traffic: None,
        traffic_unavailable: None,
        daemon: None,
        identity: None,
        bundle: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        flows::{
            Counts, Direction, IfaceClass,
            report::{DropRow, IfaceRow},
        },
        verify::{CheckId, Finding, Severity},
    };

    fn sample(signals: Vec<IfaceRow>, drops: Vec<DropRow>) -> TrafficSample {
        TrafficSample {
            seconds: 1,
            drops,
            tcp_retransmits: 0,
            mtu_signals: signals,
            dropped_flows: Vec::new(),
            mtu_correlation: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn verification(checks: &[CheckId]) -> Verification {
        Verification {
            findings: checks
                .iter()
                .map(|c| Finding::new(*c, Severity::Warning, "cali1"))
                .collect(),
            skipped: Vec::new(),
            with_datastore: false,
            notes: Vec::new(),
        }
    }

    fn oversize_on_cali1() -> IfaceRow {
        IfaceRow {
            iface: "cali1".into(),
            class: IfaceClass::Workload,
            direction: Direction::Ingress,
            counts: Counts {
                packets: 10,
                bytes: 15000,
                df_oversize: 3,
                icmp_frag_needed: 0,
            },
        }
    }

    #[test]
    fn a_finding_with_signals_is_confirmed() {
        let v = verification(&[CheckId::MtuWorkloadMismatch]);
        let got = correlate_mtu(Some(&v), &sample(vec![oversize_on_cali1()], Vec::new()));
        assert_eq!(
            got,
            [
                "confirmed: mtu.workload.mismatch cali1 is costing packets now: 3 DF packets above the MTU on cali1 (in)"
            ]
        );
    }

    #[test]
    fn a_finding_without_signals_has_not_cost_packets_yet() {
        let v = verification(&[CheckId::MtuTunnelMismatch]);
        let got = correlate_mtu(Some(&v), &sample(Vec::new(), Vec::new()));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("mtu.tunnel.mismatch cali1 has not cost packets"),
            "{got:?}"
        );
    }

    #[test]
    fn signals_without_a_finding_point_past_the_node() {
        let too_big = DropRow {
            count: 2,
            by_class: BTreeMap::from([(IfaceClass::Tunnel, 2)]),
            ..DropRow::new(PKT_TOO_BIG.into(), 40)
        };
        let v = verification(&[CheckId::RouteMissing]);
        let got = correlate_mtu(Some(&v), &sample(Vec::new(), vec![too_big]));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("MTU signals without an mtu finding: 2 drops PKT_TOO_BIG"),
            "{got:?}"
        );
    }

    fn skipped(kind: verify::NotRun) -> Skipped {
        Skipped::new(CheckId::FelixUnhealthy, kind, "why")
    }

    #[test]
    fn the_verdict_separates_not_applicable_not_given_and_not_observed() {
        let (e, o) = crate::verify::testutil::healthy();
        let mut a = analyse(&o, Some(&e), &Policy::default());
        let v = a.verification.as_mut().expect("verified");
        v.skipped = vec![skipped(verify::NotRun::NotApplicable)];
        assert_eq!(a.verdict(), Verdict::Clean);
        let v = a.verification.as_mut().expect("verified");
        v.skipped.push(skipped(verify::NotRun::NotInInput));
        assert_eq!(a.verdict(), Verdict::Incomplete);
        let v = a.verification.as_mut().expect("verified");
        v.skipped.push(skipped(verify::NotRun::CouldNotObserve));
        assert_eq!(a.verdict(), Verdict::Unverifiable);
        // Drift is drift, whatever else could not run.
        let v = a.verification.as_mut().expect("verified");
        v.findings
            .push(Finding::new(CheckId::RouteMissing, Severity::Critical, "x"));
        assert_eq!(a.verdict(), Verdict::Drift);
        assert_eq!(a.verdict().exit_code(), 1);
        // ...unless it is judged against another node.
        a.identity = Some(crate::desired::identity::IdentityMismatch {
            named: "node-b".into(),
            looks_like: "node-a".into(),
            evidence: Vec::new(),
        });
        assert_eq!(a.verdict(), Verdict::Unverifiable);
        a.identity = None;
        a.verification = None;
        assert_eq!(a.verdict(), Verdict::Unverifiable);
        assert_eq!(a.verdict().exit_code(), 2);
    }

    #[test]
    fn the_json_carries_verdict_counts_and_not_run_on_top() {
        let (e, o) = crate::verify::testutil::healthy();
        let mut a = analyse(&o, Some(&e), &Policy::default());
        let v = a.verification.as_mut().expect("verified");
        v.skipped = vec![skipped(verify::NotRun::NotInInput)];
        v.findings.push(Finding::new(
            CheckId::TunnelAddressMismatch,
            Severity::Info,
            "x",
        ));
        let json = serde_json::to_value(a.judged()).expect("json");
        assert_eq!(json["verdict"], "incomplete");
        assert_eq!(
            json["counts"],
            serde_json::json!({"critical": 0, "warning": 0, "info": 1})
        );
        assert_eq!(json["not_run"][0]["kind"], "not-in-input");
        assert_eq!(json["not_run"][0]["reason"], "why");
        // The analysis' own fields are still there, unchanged.
        assert_eq!(
            json["verification"]["skipped"][0]["check"],
            "felix.unhealthy"
        );
        assert!(json["diag"]["node"].is_string());
    }

    fn report(drops: Vec<DropRow>, retransmits: u64) -> crate::flows::report::FlowsReport {
        crate::flows::report::FlowsReport {
            node: "node-a".into(),
            window_seconds: 0,
            attach: crate::flows::AttachMode::Tcx,
            interfaces: vec![oversize_on_cali1()],
            flows: Vec::new(),
            flows_total: 0,
            drops,
            tcp_retransmits: retransmits,
            notes: Vec::new(),
        }
    }

    fn drop_row(reason: &str, code: u32, host: u64) -> DropRow {
        DropRow {
            count: host,
            by_class: BTreeMap::from([(IfaceClass::Host, host)]),
            ..DropRow::new(reason.into(), code)
        }
    }

    #[test]
    fn the_sample_holds_only_what_happened_inside_its_window() {
        // Before the window: the analysis' own purge. During it: two other drops.
        let before = report(vec![drop_row("QUEUE_PURGE", 104, 10)], 3);
        let after = report(
            vec![
                drop_row("QUEUE_PURGE", 104, 10),
                drop_row("NOT_SPECIFIED", 2, 2),
            ],
            5,
        );
        let t = window(&before, after, 1);
        assert_eq!(t.drops, [drop_row("NOT_SPECIFIED", 2, 2)]);
        assert_eq!(t.tcp_retransmits, 2);
        // The interface's DF packets were all before the window: no MTU signal in it.
        assert!(t.mtu_signals.is_empty(), "{:?}", t.mtu_signals);
    }

    #[test]
    fn nothing_to_say_without_findings_or_signals() {
        let v = verification(&[CheckId::RouteMissing]);
        assert!(correlate_mtu(Some(&v), &sample(Vec::new(), Vec::new())).is_empty());
        assert!(correlate_mtu(None, &sample(Vec::new(), Vec::new())).is_empty());
    }
}
