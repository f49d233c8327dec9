//! `agent run`: the always-on agent. One full read and verification at start; then netlink
//! notifications update the in-memory snapshot and re-verify (debounced), sources without
//! notifications are polled on their own timers, the datastore is followed, and everything
//! is re-read on a resync timer and at once after a netlink overrun. A finding is published
//! once it has persisted for the grace window and cleared as soon as the state is right.

mod calico_counters;
mod datastore;
mod ebpf;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::time::{Instant as TokioInstant, MissedTickBehavior};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::datastore::DatastoreFeed;
use crate::{
    analysis::{self, Analysis, DaemonInfo},
    desired::{expected::Expected, identity},
    observed::{
        self, ObservedDataplane, SourceGroup,
        netlink_events::{self, Change, NetlinkEvents, Notification},
    },
    pipeline::{DatastoreSource, now_ms},
    report::{
        http::{Shared, local_router, metrics_router},
        metrics::{KindLabels, Metrics, SourceLabels},
        otlp::Report,
        push::{PushConfig, Pusher},
    },
    verify::{self, CheckId, GraceTracker, History, HistoryPolicy, Policy},
};

/// Where the local API listens unless `--socket` says otherwise: the pod's writable emptyDir.
pub const DEFAULT_SOCKET: &str = "/run/calico-dataplane-agent/agent.sock";

/// How the daemon runs; every field is a flag of `agent run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub datastore: DatastoreSource,
    pub listen: SocketAddr,
    /// The local API's unix socket.
    pub socket: PathBuf,
    pub grace: Duration,
    pub conntrack_pressure: f64,
    pub no_ebpf: bool,
    pub flow_table_size: u32,
    /// Full re-read of everything.
    pub resync: Duration,
    /// iptables/nftables.
    pub poll_rules: Duration,
    /// Sysctls, conntrack, Calico's pinned maps.
    pub poll_kernel: Duration,
    /// Felix's health, BIRD, WireGuard; also when the eBPF counters are exported.
    pub poll_services: Duration,
    /// How often the datastore is checked for changes.
    pub poll_datastore: Duration,
    /// How long after the first notification of a burst to re-verify: the burst is one run,
    /// and a steady stream of notifications cannot postpone it.
    pub debounce: Duration,
    /// The netlink notification socket's receive buffer, bytes (kernel default when `None`).
    pub netlink_rx_buffer: Option<usize>,
    /// At most one Kubernetes Event per check in this time (with `--kube`); 0 sends them all.
    pub event_interval: Duration,
    /// Where reports are pushed (`--report-endpoint`), if anywhere.
    pub report: Option<PushConfig>,
}

/// Runs until `shutdown` is cancelled, then detaches everything and closes its sockets.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (shared, requests) = Shared::new(metrics.clone(), cfg.poll_services.min(cfg.resync));
    let tracker = TaskTracker::new();

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {} (--listen)", cfg.listen))?;
    let unix = bind_socket(&cfg.socket)?;
    let token = shutdown.clone();
    let app = metrics_router(shared.clone());
    tracker.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    let token = shutdown.clone();
    let app = local_router(shared.clone());
    tracker.spawn(async move {
        if let Err(e) = axum::serve(unix, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "local API server failed");
        }
    });
    tracing::info!(listen = %cfg.listen, socket = %cfg.socket.display(), node = %cfg.node_name, "agent running");

    let result = async {
        let mut daemon = Daemon::start(cfg.clone(), shared, metrics).await?;
        daemon.run(shutdown.clone(), requests).await;
        anyhow::Ok(())
    }
    .await;
    // Dropping the daemon detached the eBPF programs; now the servers.
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(3), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("servers did not stop within 3 s");
    }
    let _ = std::fs::remove_file(&cfg.socket);
    result
}

/// Binds the local API socket, mode 0600 (it answers with the node's whole dataplane). A
/// socket left behind by a killed agent is replaced; any other file there is an error.
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket (--socket)",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for --socket", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the local API socket {} (--socket)", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

struct Daemon {
    cfg: Config,
    shared: Shared,
    metrics: Arc<Metrics>,
    obs: ObservedDataplane,
    datastore: DatastoreFeed,
    expected: Option<Expected>,
    /// Why the expected state could not be computed (node not in the datastore…).
    expected_error: Option<String>,
    grace: GraceTracker,
    /// BIRD and WireGuard over time: what one read cannot tell.
    history: History,
    history_policy: HistoryPolicy,
    ebpf: ebpf::Ebpf,
    /// Felix's own eBPF counters, exported as metrics in eBPF mode.
    calico_counters: calico_counters::CalicoCounters,
    started: Instant,
    events: u64,
    resyncs: u64,
    overruns: u64,
    /// The last verification, what it was made against, and the daemon's facts then.
    last: Option<(crate::verify::Verification, Vec<String>, DaemonInfo)>,
    /// Findings published last time, to time their detection.
    published: std::collections::HashSet<(crate::verify::CheckId, String)>,
    /// Confirmed findings for the task that writes Events and the Node condition (`--kube`).
    to_kube: Option<tokio::sync::watch::Sender<Vec<crate::verify::Finding>>>,
    /// Reports to the central endpoint (`--report-endpoint`).
    pusher: Option<Pusher>,
    /// The findings of the last report, to send a new one as soon as they change.
    reported: Option<Vec<(CheckId, String)>>,
    /// The dataplane holds another Node's identity than `--node-name` (last verification).
    identity: Option<identity::IdentityMismatch>,
}

/// Writes Events and the Node condition from the latest findings, off the verification loop
/// (the API server's latency never delays detection). Only the newest findings matter.
fn spawn_kube_status(
    client: ::kube::Client,
    node: String,
    event_interval: Duration,
    metrics: Arc<Metrics>,
) -> tokio::sync::watch::Sender<Vec<crate::verify::Finding>> {
    use crate::report::kube_status::{NodeStatusReporter, ReporterOptions};
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    let opts = ReporterOptions {
        // The chart sets POD_NAME from the downward API.
        reporting_instance: std::env::var("POD_NAME").unwrap_or_default(),
        event_interval,
    };
    let mut reporter = NodeStatusReporter::new(client, node, opts);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let findings = rx.borrow_and_update().clone();
            let result = match reporter
                .update(&findings, std::time::SystemTime::now())
                .await
            {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::warn!(error = %observed::error_chain(&e), "writing Events or the Node condition");
                    "error"
                }
            };
            metrics
                .k8s_writes
                .get_or_create(&KindLabels {
                    kind: result.into(),
                })
                .inc();
        }
    });
    tx
}

impl Daemon {
    async fn start(cfg: Config, shared: Shared, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let datastore = DatastoreFeed::open(&cfg.datastore).await?;
        let ebpf = ebpf::Ebpf::start(cfg.no_ebpf, cfg.flow_table_size, &metrics);
        let to_kube = match &cfg.datastore {
            DatastoreSource::Kube => Some(spawn_kube_status(
                crate::desired::kube::client().await?,
                cfg.node_name.clone(),
                cfg.event_interval,
                metrics.clone(),
            )),
            _ => None,
        };
        let pusher = cfg
            .report
            .clone()
            .map(|r| Pusher::start(r, &cfg.node_name, metrics.clone()))
            .transpose()
            .context("starting the report push")?;
        let mut d = Self {
            obs: ObservedDataplane::default(),
            datastore,
            expected: None,
            expected_error: None,
            grace: GraceTracker::default(),
            history: History::new(&HistoryPolicy::default()),
            history_policy: HistoryPolicy::default(),
            ebpf,
            calico_counters: Default::default(),
            started: Instant::now(),
            events: 0,
            resyncs: 0,
            overruns: 0,
            published: Default::default(),
            last: None,
            to_kube,
            pusher,
            reported: None,
            identity: None,
            cfg,
            shared,
            metrics,
        };
        d.full_read().await;
        d.recompute_expected();
        d.verify();
        Ok(d)
    }

    async fn run(
        &mut self,
        shutdown: CancellationToken,
        mut requests: tokio::sync::mpsc::Receiver<crate::report::http::AnalysisRequest>,
    ) {
        let mut events = match NetlinkEvents::subscribe(self.cfg.netlink_rx_buffer) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %observed::error_chain(&e), "no netlink notifications: changes are seen on the resync timer only");
                None
            }
        };
        // Changes between the first read and the subscription: read once more.
        self.full_read().await;
        let tick = |every: Duration| {
            let mut t = tokio::time::interval_at(TokioInstant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        };
        let mut resync = tick(self.cfg.resync);
        let mut rules = tick(self.cfg.poll_rules);
        let mut kernel = tick(self.cfg.poll_kernel);
        let mut services = tick(self.cfg.poll_services);
        let mut datastore = tick(self.cfg.poll_datastore);
        let mut report = tick(
            self.cfg
                .report
                .as_ref()
                .map_or(Duration::from_secs(3600), |r| r.interval),
        );
        // When to verify next (debounced notifications, a finding's grace window ending).
        let mut verify_at: Option<TokioInstant> = None;
        let mut relist = false;
        self.export_counters();
        self.verify();
        loop {
            self.shared.update(|p| p.heartbeat = Some(Instant::now()));
            if let Some(due) = self.grace.next_due(now_ms(), self.cfg.grace) {
                let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                let at = TokioInstant::now() + wait;
                verify_at = Some(verify_at.map_or(at, |v| v.min(at)));
            }
            let sleep_until = verify_at.unwrap_or_else(|| TokioInstant::now() + self.cfg.resync);
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(reply) = requests.recv() => {
                    let _ = reply.send(self.answer());
                }
                m = next_event(&mut events) => {
                    let Some(first) = m else {
                        tracing::warn!("netlink notifications ended: changes are seen on the resync timer only");
                        events = None;
                        continue;
                    };
                    let mut overrun = false;
                    let mut pending = Some(first);
                    while let Some(msg) = pending {
                        let change = netlink_events::apply(&mut self.obs, &msg);
                        match change {
                            Change::Overrun => overrun = true,
                            Change::Relist => relist = true,
                            Change::Applied | Change::Ignored => {}
                        }
                        self.count_event(change);
                        pending = events.as_mut().and_then(NetlinkEvents::try_next);
                    }
                    if overrun {
                        self.overruns += 1;
                        self.metrics.netlink_overruns.inc();
                        self.resync("overrun").await;
                        relist = false;
                        verify_at = Some(TokioInstant::now());
                    } else {
                        let at = TokioInstant::now() + self.cfg.debounce;
                        verify_at = Some(verify_at.map_or(at, |v| v.min(at)));
                    }
                }
                _ = resync.tick() => {
                    self.resync("timer").await;
                    relist = false;
                    verify_at = Some(TokioInstant::now());
                }
                _ = rules.tick() => {
                    self.refresh(SourceGroup::Rules).await;
                    verify_at = Some(TokioInstant::now());
                }
                _ = kernel.tick() => {
                    self.refresh(SourceGroup::Kernel).await;
                    self.export_counters();
                    verify_at = Some(TokioInstant::now());
                }
                _ = services.tick() => {
                    self.refresh(SourceGroup::Services).await;
                    self.history.observe(&self.obs, now_ms());
                    self.export_counters();
                    verify_at = Some(TokioInstant::now());
                }
                _ = report.tick(), if self.pusher.is_some() => self.report(),
                _ = datastore.tick() => {
                    if self.datastore.poll_changed() {
                        self.recompute_expected();
                        verify_at = Some(TokioInstant::now());
                    }
                }
                () = tokio::time::sleep_until(sleep_until), if verify_at.is_some() => {
                    verify_at = None;
                    if std::mem::take(&mut relist) {
                        self.metrics.resyncs.get_or_create(&KindLabels { kind: "relist".into() }).inc();
                        let facts = analysis::host_facts(&self.obs);
                        self.refresh(SourceGroup::Netlink).await;
                        self.attach_new_interfaces();
                        // Felix derives the tunnel MTUs from the links: follow an underlay
                        // MTU change at once rather than at the next resync.
                        if analysis::host_facts(&self.obs) != facts {
                            self.recompute_expected();
                        }
                    }
                    self.verify();
                }
            }
        }
        tracing::info!("shutting down: detaching eBPF programs");
        self.ebpf.stop(&self.metrics);
        if let Some(p) = self.pusher.take() {
            // Undelivered reports stay in the spool for the next start.
            p.stop();
        }
    }

    fn count_event(&mut self, change: Change) {
        self.events += 1;
        let kind = if change == Change::Overrun {
            "overrun"
        } else {
            "message"
        };
        self.metrics
            .netlink_events
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    async fn full_read(&mut self) {
        self.obs = observed::read_live(&self.cfg.node_name).await;
        self.history.observe(&self.obs, now_ms());
        self.count_source_errors(&SourceGroup::ALL);
        self.attach_new_interfaces();
    }

    async fn resync(&mut self, cause: &str) {
        self.resyncs += 1;
        self.metrics
            .resyncs
            .get_or_create(&KindLabels { kind: cause.into() })
            .inc();
        self.full_read().await;
        // MTU detection follows the links, so the expected state may move with them.
        self.recompute_expected();
    }

    async fn refresh(&mut self, group: SourceGroup) {
        observed::refresh(&mut self.obs, group).await;
        self.count_source_errors(&[group]);
    }

    /// Counts the reads that failed. A service nothing serves on this node (no BIRD or bird6
    /// on a VXLAN or IPv4-only node, Felix's health port off) is not a failure: it would
    /// count on every poll of every such node.
    fn count_source_errors(&self, groups: &[SourceGroup]) {
        for u in self.obs.unavailable.iter().filter(|u| {
            u.cause != observed::Cause::NotRunning
                && groups.iter().any(|g| g.kinds().contains(&u.kind))
        }) {
            let kind = serde_json::to_value(u.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            self.metrics
                .source_errors
                .get_or_create(&SourceLabels { source: kind })
                .inc();
        }
    }

    fn recompute_expected(&mut self) {
        match self.datastore.current() {
            Ok(None) => {
                self.expected = None;
                self.expected_error = None;
            }
            Ok(Some(ds)) => match analysis::expected_for(&self.obs, Some(ds)) {
                Ok(e) => {
                    self.expected = e;
                    self.expected_error = None;
                }
                Err(e) => {
                    tracing::warn!(error = %observed::error_chain(&e), "expected dataplane");
                    self.expected = None;
                    self.expected_error = Some(observed::error_chain(&e));
                }
            },
            Err(why) => {
                self.expected = None;
                self.expected_error = Some(why);
            }
        }
    }

    fn attach_new_interfaces(&mut self) {
        self.ebpf.refresh(&self.obs, &self.metrics);
    }

    /// The counters Prometheus reads between verifications: conntrack and the eBPF programs'.
    fn export_counters(&mut self) {
        let gauge = |v: Option<u64>| i64::try_from(v.unwrap_or(0)).unwrap_or(i64::MAX);
        self.metrics
            .conntrack_entries
            .set(gauge(self.obs.sysctls.conntrack_count));
        self.metrics
            .conntrack_max
            .set(gauge(self.obs.sysctls.conntrack_max));
        self.ebpf.export(&self.metrics);
        self.calico_counters
            .export(&self.obs, &self.metrics, self.ebpf.totals_mut());
    }

    fn verify(&mut self) {
        let t0 = Instant::now();
        let now = now_ms();
        let policy = Policy {
            now: now / 1000,
            conntrack_pressure: self.cfg.conntrack_pressure,
        };
        let mut v = verify::verify(self.expected.as_ref(), &self.obs, &policy);
        self.history.apply(&mut v, &self.history_policy, now);
        self.identity = self
            .datastore
            .current()
            .ok()
            .flatten()
            .and_then(|ds| identity::check(ds, &self.cfg.node_name, &self.obs));
        if let Some(m) = &self.identity {
            verify::identity::withhold_for(&mut v, m);
        }
        let v = self.grace.confirm(v, now, self.cfg.grace);
        let input_notes: Vec<String> = self
            .expected_error
            .iter()
            .map(|why| format!("not verified against the datastore: {why}"))
            .collect();
        self.metrics
            .verify_duration
            .observe(t0.elapsed().as_secs_f64());
        let mut published = std::collections::HashSet::new();
        self.metrics.record_verification(&v);
        for f in &v.findings {
            let key = f.key();
            if !self.published.contains(&key) {
                let first = self.grace.first_seen_ms(&key).unwrap_or(now);
                self.metrics
                    .drift_detection
                    .observe(now.saturating_sub(first) as f64 / 1000.0);
                tracing::warn!(check = %f.check, subject = %f.subject, expected = %f.expected, actual = %f.actual, "drift");
            }
            published.insert(key);
        }
        for gone in self.published.difference(&published) {
            tracing::info!(check = %gone.0, subject = %gone.1, "drift cleared");
        }
        self.published = published;
        if let Some(tx) = &self.to_kube {
            // The first verification is always written (the condition says "no drift" too);
            // after that only a changed set of findings is worth a write.
            let first = self.last.is_none();
            tx.send_if_modified(|cur| {
                let changed = first
                    || cur.len() != v.findings.len()
                    || cur.iter().zip(&v.findings).any(|(x, y)| x.key() != y.key());
                if changed {
                    cur.clone_from(&v.findings);
                }
                changed
            });
        }
        let flapping = v
            .findings
            .iter()
            .filter(|f| f.check == CheckId::BgpSessionFlapping)
            .count();
        self.metrics
            .bgp_flapping_sessions
            .set(i64::try_from(flapping).unwrap_or(i64::MAX));
        let info = DaemonInfo {
            uptime_seconds: self.started.elapsed().as_secs(),
            verified_at_ms: now,
            grace_seconds: self.cfg.grace.as_secs_f64(),
            pending: self.grace.pending().saturating_sub(v.findings.len()),
            netlink_events: self.events,
            resyncs: self.resyncs,
            overruns: self.overruns,
            bgp_flaps: self.history.flaps(&self.history_policy, now),
            ebpf: self.ebpf.describe(),
            report: None,
        };
        self.last = Some((v, input_notes, info));
        let keys: Vec<_> = self
            .last
            .iter()
            .flat_map(|l| &l.0.findings)
            .map(|f| f.key())
            .collect();
        if self.reported.as_ref() != Some(&keys) {
            self.report();
        }
        let mut not_ready = Vec::new();
        if let Some(u) = self
            .obs
            .unavailable
            .iter()
            .find(|u| u.kind == observed::Source::Routes)
        {
            not_ready.push(format!("routes not readable: {}", u.reason));
        }
        self.metrics.ready.set(i64::from(not_ready.is_empty()));
        self.shared.update(|p| {
            p.verified = true;
            p.not_ready = not_ready;
        });
    }

    /// Pushes a report of the last verification (on every change of findings, and on the
    /// report timer).
    fn report(&mut self) {
        let (Some(pusher), Some((v, _, _))) = (&self.pusher, &self.last) else {
            return;
        };
        let modes: Vec<String> = crate::diag::detect_modes(&self.obs)
            .0
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        // As for the local API: no Calico on the node and no datastore is "unverifiable".
        let verified = !modes.is_empty() || self.expected.is_some();
        let mut counters = self.ebpf.totals().clone();
        counters.conntrack_entries = self.obs.sysctls.conntrack_count;
        counters.conntrack_max = self.obs.sysctls.conntrack_max;
        let report = Report::new(
            &self.cfg.node_name,
            &modes,
            verified.then_some(v),
            counters,
            now_ms(),
        );
        self.reported = Some(v.findings.iter().map(|f| f.key()).collect());
        pusher.send(report);
    }

    /// The operator's view of the current state, built when the local API is asked.
    fn answer(&self) -> Analysis {
        let mut diag = crate::diag::build(&self.obs);
        if let Some(e) = &self.expected {
            crate::diag::name_wireguard_peers(&mut diag, e);
        }
        let (verification, input_notes, daemon) = match &self.last {
            Some((v, notes, info)) => (
                Some(v.clone()),
                notes.clone(),
                Some(DaemonInfo {
                    report: self.pusher.as_ref().map(Pusher::status),
                    ..info.clone()
                }),
            ),
            None => (None, Vec::new(), None),
        };
        Analysis {
            // As for one-shot runs: with no Calico on the node and no datastore, nothing to verify.
            verification: verification.filter(|_| diag.calico_found || self.expected.is_some()),
            diag,
            input_notes,
            traffic: None,
            traffic_unavailable: None,
            daemon,
            identity: self.identity.clone(),
            bundle: None,
        }
    }
}

async fn next_event(events: &mut Option<NetlinkEvents>) -> Option<Notification> {
    match events.as_mut() {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}
