//! The observe-only programs for the daemon's whole life: attached to new interfaces as they
//! appear, their log records drained into tracing, their counters turned into metrics.

use std::collections::{HashMap, HashSet};

use crate::{
    flows::{self, Counts, Direction, ProbeOptions, Session},
    observed::{self, ObservedDataplane},
    report::{
        metrics::{Delta, DropLabels, Metrics, direction_label},
        otlp::CounterSummary,
    },
};

pub(super) struct Ebpf {
    session: Option<Session>,
    /// Why there is no session (disabled, or the load failed).
    unavailable: String,
    log_drain: Option<tokio::task::JoinHandle<()>>,
    /// The kernel's totals at the last export, per (ifindex, direction) and drop reason.
    exported_counts: HashMap<(u32, Direction), Counts>,
    exported_drops: HashMap<u32, u64>,
    retransmits: Delta,
    run_ns: Delta,
    /// Everything exported so far: the counters of the pushed reports.
    totals: CounterSummary,
}

impl Ebpf {
    /// Loads the programs; a failure degrades to "flows unavailable", never an error.
    pub(super) fn start(disabled: bool, flow_table_size: u32, metrics: &Metrics) -> Self {
        let mut e = Self {
            session: None,
            unavailable: "disabled by --no-ebpf".into(),
            log_drain: None,
            exported_counts: HashMap::new(),
            exported_drops: HashMap::new(),
            retransmits: Delta::default(),
            run_ns: Delta::default(),
            totals: CounterSummary {
                since_ms: crate::pipeline::now_ms(),
                ..CounterSummary::default()
            },
        };
        if !disabled {
            let opts = ProbeOptions {
                flow_table_size,
                ..ProbeOptions::default()
            };
            match Session::start(opts, None) {
                Ok(mut s) => {
                    e.log_drain = s
                        .probe
                        .take_logger()
                        .map(|l| tokio::spawn(flows::drain_logs(l)));
                    e.session = Some(s);
                }
                Err(err) => {
                    let why = observed::error_chain(&err);
                    tracing::warn!(error = %why, "flows unavailable");
                    e.unavailable = format!("flows unavailable: {why}");
                }
            }
        }
        metrics.ebpf_attached.set(i64::from(e.session.is_some()));
        e
    }

    /// Attaches to interfaces that appeared, releases those that went.
    pub(super) fn refresh(&mut self, obs: &ObservedDataplane, metrics: &Metrics) {
        if let Some(s) = self.session.as_mut() {
            s.refresh(obs);
            metrics
                .ebpf_interfaces
                .set(i64::try_from(s.targets.len()).unwrap_or(i64::MAX));
        }
    }

    /// For the local API: attached where, or why not.
    pub(super) fn describe(&self) -> String {
        match &self.session {
            Some(s) => format!("attached to {} interface(s)", s.targets.len()),
            None => self.unavailable.clone(),
        }
    }

    /// Adds what the kernel's counters gained since the last export to the metrics.
    pub(super) fn export(&mut self, metrics: &Metrics) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut totals = Vec::new();
        for (t, retired) in std::mem::take(&mut s.retired) {
            for (dir, c) in retired.counts {
                totals.push((t.ifindex, t.class, dir, c));
            }
        }
        match s.probe.counts() {
            Ok(counts) => {
                for ((ifindex, dir), c) in counts {
                    if let Some(t) = s.targets.iter().find(|t| t.ifindex == ifindex) {
                        totals.push((ifindex, t.class, dir, c));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %observed::error_chain(&e), "reading the eBPF counters")
            }
        }
        for (ifindex, class, dir, c) in totals {
            let last = self
                .exported_counts
                .insert((ifindex, dir), c)
                .unwrap_or_default();
            let delta = Counts {
                packets: c.packets.saturating_sub(last.packets),
                bytes: c.bytes.saturating_sub(last.bytes),
                ..Counts::default()
            };
            metrics.add_iface(class, dir, &delta);
            self.totals.add_interface(
                class.name(),
                direction_label(dir),
                delta.packets,
                delta.bytes,
            );
        }
        // Released interfaces are gone for good: forget them (pod churn must not grow this).
        let live: HashSet<u32> = s.targets.iter().map(|t| t.ifindex).collect();
        self.exported_counts.retain(|(i, _), _| live.contains(i));
        if let Ok(rows) = s.drop_rows() {
            for row in rows {
                let last = self.exported_drops.insert(row.code, row.count).unwrap_or(0);
                let delta = row.count.saturating_sub(last);
                *self.totals.drops.entry(row.reason.clone()).or_default() += delta;
                metrics
                    .drops
                    .get_or_create(&DropLabels {
                        assessment: flows::reasons::classify(&row.reason)
                            .0
                            .metric_label()
                            .into(),
                        reason: row.reason,
                    })
                    .inc_by(delta);
            }
        }
        if let Ok(r) = s.probe.retransmits() {
            let delta = self.retransmits.advance(r);
            self.totals.tcp_retransmits += delta;
            metrics.tcp_retransmits.inc_by(delta);
        }
        metrics
            .ebpf_run_ns
            .inc_by(self.run_ns.advance(s.probe.run_time_ns()));
    }

    /// The counters since start, for reports.
    pub(super) fn totals(&self) -> &CounterSummary {
        &self.totals
    }

    /// The same, for counters exported elsewhere (Felix's own) to join the reports.
    pub(super) fn totals_mut(&mut self) -> &mut CounterSummary {
        &mut self.totals
    }

    /// Detaches everything (dropping the session does).
    pub(super) fn stop(&mut self, metrics: &Metrics) {
        if let Some(t) = self.log_drain.take() {
            t.abort();
        }
        self.session = None;
        metrics.ebpf_attached.set(0);
    }
}
