//! The datastore from the Kubernetes API: one read-only watcher (with reflector store and
//! backoff) per resource, so a long-running agent keeps an up-to-date copy and a one-shot
//! command waits for the first full list.
//!
//! Calico's resources are read as the KDD CRDs (`crd.projectcalico.org/v1`) unless only the
//! native `projectcalico.org/v3` CRDs exist (`libcalico-go/lib/backend/k8s/discovery.go`).
//! Objects go through the same parser as YAML files, so both sources agree field for field;
//! each is parsed once, when its event arrives (`watched.rs`).

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, PartialObjectMeta, TypeMeta},
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event, watcher},
    },
};
use tokio::task::JoinHandle;

use super::{
    Datastore, files,
    watched::{Watched, prune},
};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// kube's own message repeats its cause and quotes paths twice: this one says once where
    /// a configuration was looked for.
    #[error("no Kubernetes client configuration: {0}")]
    Config(String),
    #[error("Kubernetes API discovery failed")]
    Discovery(#[source] kube::Error),
    #[error("timed out after {0:?} waiting for the first list of {1}")]
    Timeout(Duration, String),
    #[error("the watcher of {0} stopped before its first list")]
    Stopped(String),
    #[error(transparent)]
    Object(Arc<files::DatastoreError>),
}

/// Which API group holds Calico's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalicoGroup {
    /// `crd.projectcalico.org/v1`: the KDD CRDs every Calico version has.
    CrdV1,
    /// `projectcalico.org/v3` served by native CRDs (v3.32+ without the v1 CRDs).
    V3,
}

impl CalicoGroup {
    fn api_version(self) -> (&'static str, &'static str) {
        match self {
            Self::CrdV1 => ("crd.projectcalico.org", "v1"),
            Self::V3 => ("projectcalico.org", "v3"),
        }
    }
}

/// Calico's choice: v1 CRDs when they exist, else v3.
pub async fn discover_group(client: &Client) -> Result<CalicoGroup, KubeError> {
    let groups = client
        .list_api_groups()
        .await
        .map_err(KubeError::Discovery)?;
    let has = |name: &str| groups.groups.iter().any(|g| g.name == name);
    Ok(
        if !has("crd.projectcalico.org") && has("projectcalico.org") {
            CalicoGroup::V3
        } else {
            CalicoGroup::CrdV1
        },
    )
}

/// What the agent watches: Calico's resources in `group`, and Kubernetes Nodes.
pub fn resources(group: CalicoGroup) -> Vec<ApiResource> {
    let (g, v) = group.api_version();
    let calico = |kind: &str, plural: &str| ApiResource {
        group: g.into(),
        version: v.into(),
        api_version: format!("{g}/{v}"),
        kind: kind.into(),
        plural: plural.into(),
    };
    vec![
        calico("IPPool", "ippools"),
        calico("IPAMBlock", "ipamblocks"),
        calico("BlockAffinity", "blockaffinities"),
        calico("FelixConfiguration", "felixconfigurations"),
        // What BIRD peers with: the AS, the node-to-node mesh and explicit peerings.
        calico("BGPConfiguration", "bgpconfigurations"),
        calico("BGPPeer", "bgppeers"),
        // In KDD the Calico Node is the Kubernetes Node and its projectcalico.org annotations.
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Node".into(),
            plural: "nodes".into(),
        },
    ]
}

/// One watched resource: what its watcher keeps, and whether its first list is in.
struct Resource {
    ar: ApiResource,
    kept: Arc<Mutex<Watched>>,
    listed: tokio::sync::watch::Receiver<bool>,
}

/// Watchers keeping each resource's objects parsed. Dropping it stops them.
pub struct KubeDatastore {
    resources: Vec<Resource>,
    tasks: Vec<JoinHandle<()>>,
    /// Bumped on every watch event that changes what the agent reads: a changed value means a
    /// new snapshot is worth taking.
    generation: Arc<AtomicU64>,
}

impl KubeDatastore {
    /// Starts one watcher per resource. Errors (API down, RBAC) are logged and retried with
    /// backoff; they never end the watch.
    pub fn start(client: &Client, group: CalicoGroup) -> Self {
        let mut all = Vec::new();
        let mut tasks = Vec::new();
        let generation = Arc::new(AtomicU64::new(0));
        for ar in resources(group) {
            let generation = generation.clone();
            let kept = Arc::new(Mutex::new(Watched::default()));
            let (listed_tx, listed) = tokio::sync::watch::channel(false);
            all.push(Resource {
                ar: ar.clone(),
                kept: kept.clone(),
                listed,
            });
            let stream = events(client, &ar);
            tasks.push(tokio::spawn(async move {
                let mut events = std::pin::pin!(stream);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(ev) => {
                            let (changed, complete) = {
                                let mut k = kept.lock().unwrap_or_else(PoisonError::into_inner);
                                (k.apply(&ar, ev), k.listed())
                            };
                            // Kept before announced: a snapshot taken for this generation
                            // holds the change.
                            if changed {
                                generation.fetch_add(1, Ordering::Release);
                            }
                            if complete && !*listed_tx.borrow() {
                                listed_tx.send_replace(true);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(kind = %ar.kind, error = %e, "Watch of Calico datastore failed; retrying with backoff.")
                        }
                    }
                }
            }));
        }
        Self {
            resources: all,
            tasks,
            generation,
        }
    }

    /// Changes with every watch event that changes what the agent reads.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits until every resource has been listed once.
    pub async fn ready(&self, timeout: Duration) -> Result<(), KubeError> {
        for r in &self.resources {
            let mut listed = r.listed.clone();
            match tokio::time::timeout(timeout, listed.wait_for(|l| *l)).await {
                Err(_) => return Err(KubeError::Timeout(timeout, r.ar.plural.clone())),
                Ok(Err(_)) => return Err(KubeError::Stopped(r.ar.plural.clone())),
                Ok(Ok(_)) => {}
            }
        }
        Ok(())
    }

    /// The datastore as the watchers keep it now.
    pub fn snapshot(&self) -> Result<Datastore, KubeError> {
        let mut ds = Datastore::default();
        for r in &self.resources {
            r.kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .gather(&mut ds)
                .map_err(KubeError::Object)?;
        }
        // Kept until the next change: without the room its Vecs doubled into.
        ds.shrink_to_fit();
        Ok(ds)
    }
}

/// The watch of one resource, each object pruned as it arrives. A Kubernetes Node is watched
/// as metadata only (`PartialObjectMetadata`): the agent reads nothing but its labels and
/// `projectcalico.org/*` annotations, and the kubelet's status and the Node's spec are most of
/// its bytes, which the API server then never sends: every agent of a cluster receives every
/// Node's updates.
fn events(
    client: &Client,
    ar: &ApiResource,
) -> BoxStream<'static, watcher::Result<Event<DynamicObject>>> {
    let config = watcher::Config::default().any_semantic();
    if !(ar.group.is_empty() && ar.kind == "Node") {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        return watcher(api, config)
            .default_backoff()
            .modify(|o| prune(o, false))
            .boxed();
    }
    let types = TypeMeta {
        api_version: ar.api_version.clone(),
        kind: ar.kind.clone(),
    };
    // `Api<PartialObjectMeta<_>>` asks for metadata only.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), ar);
    watcher(api, config)
        .default_backoff()
        .map_ok(move |event| {
            // The API server types each item as meta.k8s.io's PartialObjectMetadata.
            let node = |meta: PartialObjectMeta<DynamicObject>| {
                let mut o = DynamicObject {
                    types: Some(types.clone()),
                    metadata: meta.metadata,
                    data: serde_json::Value::Null,
                };
                prune(&mut o, true);
                o
            };
            match event {
                Event::Init => Event::Init,
                Event::InitApply(m) => Event::InitApply(node(m)),
                Event::InitDone => Event::InitDone,
                Event::Apply(m) => Event::Apply(node(m)),
                Event::Delete(m) => Event::Delete(node(m)),
            }
        })
        .boxed()
}

impl Drop for KubeDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Loads `objects` of resource `ar` into `ds` through the YAML files' parser.
pub fn load_objects<'a>(
    ds: &mut Datastore,
    ar: &ApiResource,
    objects: impl IntoIterator<Item = &'a DynamicObject>,
) -> Result<(), files::DatastoreError> {
    let source = format!("kube {}", ar.api_version);
    for obj in objects {
        let mut value = serde_json::to_value(obj).unwrap_or_default();
        // List items of built-in kinds come without apiVersion/kind.
        if let Some(map) = value.as_object_mut() {
            map.entry("apiVersion")
                .or_insert_with(|| ar.api_version.clone().into());
            map.entry("kind").or_insert_with(|| ar.kind.clone().into());
        }
        files::load_object(ds, &source, &value)?;
    }
    Ok(())
}

/// One-shot read for `agent check --kube`: start the watchers, wait for their first lists,
/// take a snapshot.
pub async fn read_once(client: &Client, timeout: Duration) -> Result<Datastore, KubeError> {
    let group = discover_group(client).await?;
    let kds = KubeDatastore::start(client, group);
    kds.ready(timeout).await?;
    kds.snapshot()
}

/// A client from the in-cluster service account or KUBECONFIG.
pub async fn client() -> Result<Client, KubeError> {
    Client::try_default()
        .await
        .map_err(|e| KubeError::Config(where_config_was_looked_for(&e)))
}

/// Where kube looked for a configuration, and why each place gave none.
fn where_config_was_looked_for(e: &kube::Error) -> String {
    let in_cluster = match std::env::var_os("KUBERNETES_SERVICE_HOST") {
        None => "not in a pod (KUBERNETES_SERVICE_HOST is unset)".to_string(),
        Some(_) => "the pod's service account could not be used".to_string(),
    };
    let kubeconfig = match std::env::var_os("KUBECONFIG") {
        Some(p) => format!("KUBECONFIG={}", p.to_string_lossy()),
        None => std::env::var_os("HOME").map_or_else(
            || "no KUBECONFIG and no HOME".to_string(),
            |h| format!("no KUBECONFIG, and {}/.kube/config", h.to_string_lossy()),
        ),
    };
    let detail = crate::observed::error_chain(e);
    let reason = if detail.contains("No such file") {
        "does not exist".to_string()
    } else {
        format!(
            "could not be used ({})",
            detail.replace("'\"", "'").replace("\"'", "'")
        )
    };
    format!("{in_cluster}; {kubeconfig} {reason}")
}
