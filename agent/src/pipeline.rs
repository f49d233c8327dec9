//! One analysis from the operator's inputs: which datastore, which node, live or a bundle, and
//! the grace re-check. `agent diag`/`check` run it once; the daemon keeps its parts running.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    analysis::{self, Analysis},
    desired::{Datastore, expected::UNKNOWN_NODE, files, identity::identify, kube},
    node,
    observed::{self, bundle},
    verify::{GraceTracker, Policy},
};

/// Where the expected state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreSource {
    /// None: the mode is inferred from the node, and datastore checks are listed as not run.
    None,
    /// A directory of Calico YAML.
    Dir(PathBuf),
    /// The Kubernetes API (in-cluster service account or KUBECONFIG), read-only.
    Kube,
}

/// What one analysis reads and how it judges.
#[derive(Debug, Clone)]
pub struct Input {
    pub node_name: Option<String>,
    pub datastore: DatastoreSource,
    pub grace: Duration,
    pub conntrack_pressure: f64,
    /// A captured bundle to analyse instead of the live node.
    pub bundle: Option<PathBuf>,
}

impl Input {
    pub fn node(&self) -> String {
        node::resolve_name(self.node_name.as_deref())
    }
}

/// How long `--kube` waits for the first list of every resource.
pub const KUBE_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the datastore once; `in_bundle` is the Calico YAML found in a bundle, used when no
/// other source is given.
pub async fn load_datastore(
    source: &DatastoreSource,
    in_bundle: &[PathBuf],
) -> anyhow::Result<Option<Datastore>> {
    let started = std::time::Instant::now();
    let ds = match source {
        DatastoreSource::Kube => {
            let client = kube::client().await?;
            kube::read_once(&client, KUBE_LIST_TIMEOUT)
                .await
                .context("reading the Calico datastore from the Kubernetes API")?
        }
        // Parsed on a blocking thread, so that the kernel can be read meanwhile: at thousands
        // of nodes each takes tens of milliseconds.
        DatastoreSource::Dir(dir) => {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || files::load_dir(&d))
                .await
                .context("the datastore reader")?
                .with_context(|| format!("datastore {}", dir.display()))?
        }
        DatastoreSource::None if !in_bundle.is_empty() => {
            let f = in_bundle.to_vec();
            tokio::task::spawn_blocking(move || files::load_files(&f))
                .await
                .context("the datastore reader")?
                .context("Calico YAML in the bundle")?
        }
        DatastoreSource::None => return Ok(None),
    };
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis(),
        nodes = ds.nodes.len(),
        blocks = ds.blocks.len(),
        "datastore loaded"
    );
    for w in &ds.warnings {
        tracing::warn!("{w}");
    }
    if ds.is_empty() {
        let what = match source {
            DatastoreSource::Dir(dir) => format!("datastore {}", dir.display()),
            DatastoreSource::Kube => "the Kubernetes API".into(),
            DatastoreSource::None => "the Calico YAML in the bundle".into(),
        };
        anyhow::bail!(
            "{what} holds no Calico objects (IPPools, IPAMBlocks, Nodes, FelixConfigurations)"
        );
    }
    Ok(Some(ds))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One analysis of the live node (or of `input.bundle`). With a grace window, anything that
/// looked wrong is looked at again once the window has passed, and only what persisted is
/// reported.
pub async fn analyse(input: &Input) -> anyhow::Result<Analysis> {
    if let Some(dir) = &input.bundle {
        return analyse_bundle(input, dir).await;
    }
    let name = input.node();
    let (ds, obs) = tokio::join!(
        load_datastore(&input.datastore, &[]),
        observed::read_live(&name)
    );
    let ds = ds?;
    let mut tracker = GraceTracker::default();
    let first = live_pass(&ds, obs, input, &mut tracker)?;
    if input.grace.is_zero() || tracker.pending() == 0 {
        return Ok(first);
    }
    tokio::time::sleep(input.grace).await;
    live_pass(&ds, observed::read_live(&name).await, input, &mut tracker)
}

/// A captured bundle is a single moment: no grace window applies. The bundle's hostname file
/// is the node's identity unless the operator names one.
async fn analyse_bundle(input: &Input, dir: &Path) -> anyhow::Result<Analysis> {
    let b = bundle::read_dir(dir)?;
    let not_dumps = [
        bundle::Format::Hostname.name(),
        bundle::Format::CalicoResources.name(),
        bundle::Format::CaptureErrors.name(),
    ];
    if b.recognised
        .iter()
        .all(|(_, f)| not_dumps.contains(&f.as_str()))
    {
        // Nothing to analyse is not "no Calico on this node": say what was read instead.
        anyhow::bail!(
            "bundle {} holds no command output this agent recognises ({}); expected files \
             of `ip -d route show table all`, `ip -d link show`, `ip neigh`, `bridge fdb`, \
             `iptables-save` or `nft list ruleset` output (`agent diag --bundle-out DIR` \
             writes them)",
            dir.display(),
            if b.notes.is_empty() {
                "the directory is empty".to_string()
            } else {
                b.notes.join("; ")
            }
        );
    }
    let mut obs = b.observed;
    let ds = load_datastore(&input.datastore, &b.datastore_files).await?;
    let mut notes = Vec::new();
    obs.node_name = bundle_node(input, &obs, ds.as_ref(), &mut notes);
    let expected = analysis::expected_for(&obs, ds.as_ref())?;
    let mut a = analysis::analyse(
        &obs,
        expected.as_ref(),
        &Policy {
            now: obs.captured_at,
            conntrack_pressure: input.conntrack_pressure,
        },
    );
    analysis::check_identity(&mut a, &obs, ds.as_ref());
    a.input_notes = b
        .recognised
        .iter()
        .map(|(p, f)| format!("read {} as {f}", p.display()))
        .chain(b.notes)
        .chain(notes)
        .collect();
    a.bundle = Some(dir.display().to_string());
    Ok(a)
}

/// Which node a bundle is from: `--node-name`; else the bundle's own hostname or nodename
/// file; else the one datastore Node its addresses, tunnel addresses, VTEP MAC or blocks
/// belong to; else unknown, and the checks that need to know are listed as not run. Never the
/// machine reading the bundle.
fn bundle_node(
    input: &Input,
    obs: &observed::ObservedDataplane,
    ds: Option<&Datastore>,
    notes: &mut Vec<String>,
) -> String {
    if let Some(n) = input.node_name.as_deref().filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    if !obs.node_name.is_empty() {
        return obs.node_name.clone();
    }
    if let Some(found) = ds.and_then(|ds| identify(ds, obs)) {
        notes.push(format!(
            "node: the bundle names none; its data belongs to {} ({})",
            found.node,
            found.evidence.join(", ")
        ));
        return found.node;
    }
    notes.push(
        "node: unknown (no --node-name, no hostname or nodename file, and no datastore Node \
         holds the bundle's addresses); checks that need to know which node are not run"
            .into(),
    );
    UNKNOWN_NODE.to_string()
}

fn live_pass(
    ds: &Option<Datastore>,
    obs: observed::ObservedDataplane,
    input: &Input,
    tracker: &mut GraceTracker,
) -> anyhow::Result<Analysis> {
    let expected = analysis::expected_for(&obs, ds.as_ref())?;
    let now_ms = now_ms();
    let policy = Policy {
        now: now_ms / 1000,
        conntrack_pressure: input.conntrack_pressure,
    };
    let mut a = analysis::analyse(&obs, expected.as_ref(), &policy);
    analysis::check_identity(&mut a, &obs, ds.as_ref());
    a.verification = a
        .verification
        .map(|v| tracker.confirm(v, now_ms, input.grace));
    Ok(a)
}

/// The kernel's deferred frees of the analysis' sockets are over once the drop counters have
/// been still this long (at most `SETTLE_MAX`) before the traffic sample's window opens.
const SETTLE_QUIET: Duration = Duration::from_millis(200);
const SETTLE_MAX: Duration = Duration::from_secs(2);

/// `diag` on the live node: the analysis, then the traffic sample. The programs are attached
/// first, so they have settled while the analysis runs; the counting window opens only once
/// the analysis is done, so none of the agent's own reads are counted as drops.
pub async fn diag_with_sample(input: &Input, sample_seconds: u64) -> anyhow::Result<Analysis> {
    let probe = attach(input, sample_seconds).await;
    let a = analyse(input).await?;
    if let Some(Ok(p)) = &probe {
        p.settle(SETTLE_QUIET, SETTLE_MAX).await;
    }
    Ok(with_sample(a, sample(probe, sample_seconds).await))
}

/// An analysis already made (by the daemon) with a traffic sample taken now.
pub async fn add_sample(
    a: Analysis,
    input: &Input,
    sample_seconds: u64,
) -> anyhow::Result<Analysis> {
    let probe = attach(input, sample_seconds).await;
    Ok(with_sample(a, sample(probe, sample_seconds).await))
}

type Probe = Option<Result<analysis::TrafficProbe, crate::flows::FlowsError>>;

async fn attach(input: &Input, seconds: u64) -> Probe {
    if seconds > 0 && input.bundle.is_none() {
        Some(analysis::TrafficProbe::attach(&input.node()).await)
    } else {
        None
    }
}

async fn sample(
    probe: Probe,
    seconds: u64,
) -> Option<Result<analysis::TrafficSample, crate::flows::FlowsError>> {
    match probe? {
        Ok(p) => Some(p.sample(seconds).await),
        Err(e) => Some(Err(e)),
    }
}

fn with_sample(
    mut a: Analysis,
    sample: Option<Result<analysis::TrafficSample, crate::flows::FlowsError>>,
) -> Analysis {
    match sample {
        Some(Ok(mut t)) => {
            t.mtu_correlation = analysis::correlate_mtu(a.verification.as_ref(), &t);
            a.traffic = Some(t);
        }
        Some(Err(e)) => a.traffic_unavailable = Some(observed::error_chain(&e)),
        None => {}
    }
    a
}
