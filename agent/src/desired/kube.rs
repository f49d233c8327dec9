//! The datastore from the Kubernetes API: one read-only watcher (with reflector store and
//! backoff) per resource, so a long-running agent keeps an up-to-date copy and a one-shot
//! command waits for the first full list.
//!
//! Calico's resources are read as the KDD CRDs (`crd.projectcalico.org/v1`) unless only the
//! native `projectcalico.org/v3` CRDs exist (`libcalico-go/lib/backend/k8s/discovery.go`).
//! Objects go through the same parser as YAML files, so both sources agree field for field.

use std::time::Duration;

use futures::StreamExt as _;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::task::JoinHandle;

use super::{Datastore, files};

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
    Object(#[from] files::DatastoreError),
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

fn resources(group: CalicoGroup) -> Vec<ApiResource> {
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

/// Watchers keeping a reflector store per resource. Dropping it stops them.
pub struct KubeDatastore {
    stores: Vec<(ApiResource, reflector::Store<DynamicObject>)>,
    tasks: Vec<JoinHandle<()>>,
    /// Bumped on every watch event that changes what the agent reads: a changed value means a
    /// new snapshot is worth taking.
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl KubeDatastore {
    /// Starts one watcher per resource. Errors (API down, RBAC) are logged and retried with
    /// backoff; they never end the watch.
    pub fn start(client: &Client, group: CalicoGroup) -> Self {
        let mut stores = Vec::new();
        let mut tasks = Vec::new();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        for ar in resources(group) {
            let generation = generation.clone();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let mut writer = reflector::store::Writer::new(ar.clone());
            let reader = writer.as_reader();
            stores.push((ar.clone(), reader.clone()));
            let kind = ar.kind.clone();
            let node = ar.group.is_empty() && ar.kind == "Node";
            let stream = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(move |o| prune(o, node));
            tasks.push(tokio::spawn(async move {
                let mut events = std::pin::pin!(stream);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(ev) => {
                            let changed = changes_content(&reader, &ar, &ev);
                            // Stored before announced: a snapshot taken for this generation
                            // holds the change.
                            writer.apply_watcher_event(&ev);
                            if changed {
                                generation.fetch_add(1, std::sync::atomic::Ordering::Release);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(kind = %kind, error = %e, "Watch of Calico datastore failed; retrying with backoff.")
                        }
                    }
                }
            }));
        }
        Self {
            stores,
            tasks,
            generation,
        }
    }

    /// Changes with every watch event that changes what the agent reads.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until every resource has been listed once.
    pub async fn ready(&self, timeout: Duration) -> Result<(), KubeError> {
        for (ar, store) in &self.stores {
            match tokio::time::timeout(timeout, store.wait_until_ready()).await {
                Err(_) => return Err(KubeError::Timeout(timeout, ar.plural.clone())),
                Ok(Err(_)) => return Err(KubeError::Stopped(ar.plural.clone())),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    /// The datastore as the stores hold it now.
    pub fn snapshot(&self) -> Result<Datastore, KubeError> {
        let mut ds = Datastore::default();
        for (ar, store) in &self.stores {
            let source = format!("kube {}", ar.api_version);
            let mut objects = store.state();
            objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            for obj in objects {
                let mut value = serde_json::to_value(obj.as_ref()).unwrap_or_default();
                // List items of built-in kinds come without apiVersion/kind.
                if let Some(map) = value.as_object_mut() {
                    map.entry("apiVersion")
                        .or_insert_with(|| ar.api_version.clone().into());
                    map.entry("kind").or_insert_with(|| ar.kind.clone().into());
                }
                files::load_object(&mut ds, &source, &value)?;
            }
        }
        Ok(ds)
    }
}

impl Drop for KubeDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Drops what the agent never reads before the store keeps it. Every agent of a large cluster
/// holds every Node, and a Kubernetes Node is mostly the kubelet's status (images, conditions,
/// capacity) and managedFields: Calico's node data is in its `projectcalico.org/*` annotations
/// and the labels BGPPeer selectors match. The resourceVersion goes too, so that an update of
/// only what was dropped leaves the stored object as it was.
fn prune(o: &mut DynamicObject, k8s_node: bool) {
    let meta = &mut o.metadata;
    meta.managed_fields = None;
    meta.resource_version = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        if k8s_node {
            a.retain(|k, _| k.starts_with("projectcalico.org/"));
        }
    }
    if k8s_node {
        o.data = serde_json::Value::Object(serde_json::Map::new());
    }
}

/// Whether `ev` changes what the store holds (pruned): a kubelet's status heartbeat on a Node
/// does not, and must not make every agent rebuild its expected state.
fn changes_content(
    store: &reflector::Store<DynamicObject>,
    ar: &ApiResource,
    ev: &watcher::Event<DynamicObject>,
) -> bool {
    match ev {
        watcher::Event::Apply(o) => store
            .get(&reflector::ObjectRef::from_obj_with(o, ar.clone()))
            .is_none_or(|old| *old != *o),
        watcher::Event::Delete(_) | watcher::Event::InitDone => true,
        // A relist is applied whole at its end.
        watcher::Event::Init | watcher::Event::InitApply(_) => false,
    }
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

#[cfg(test)]
mod tests {
    use kube::ResourceExt as _;

    use super::*;

    /// A Node as an EKS API server returns it: the kubelet's status and managedFields, and
    /// calico-node's annotations.
    fn kubelet_node() -> DynamicObject {
        serde_json::from_str(include_str!("testdata/kubelet-node.json")).expect("fixture")
    }

    fn pruned(mut o: DynamicObject) -> DynamicObject {
        prune(&mut o, true);
        o
    }

    fn nodes() -> ApiResource {
        resources(CalicoGroup::CrdV1)
            .into_iter()
            .find(|r| r.kind == "Node")
            .expect("Node resource")
    }

    fn calico_node(o: &DynamicObject) -> Vec<super::super::Node> {
        let mut v = serde_json::to_value(o).expect("json");
        v["apiVersion"] = "v1".into();
        v["kind"] = "Node".into();
        let mut ds = Datastore::default();
        files::load_object(&mut ds, "test", &v).expect("node");
        ds.nodes
    }

    #[test]
    fn a_kubelet_node_is_stored_with_only_what_calico_reads() {
        let full = kubelet_node();
        let kept = pruned(full.clone());
        let bytes = |o: &DynamicObject| serde_json::to_vec(o).map_or(0, |v| v.len());
        assert!(
            bytes(&kept) * 10 < bytes(&full),
            "{} of {} bytes kept",
            bytes(&kept),
            bytes(&full)
        );
        assert_eq!(kept.data, serde_json::json!({}));
        assert_eq!(kept.metadata.managed_fields, None);
        assert_eq!(kept.metadata.resource_version, None);
        let annotations: Vec<&str> = kept
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            annotations,
            [
                "projectcalico.org/IPv4Address",
                "projectcalico.org/IPv4VXLANTunnelAddr",
                "projectcalico.org/VXLANTunnelMACAddr"
            ]
        );
        assert_eq!(kept.metadata.labels, full.metadata.labels);
        // Calico's node reads the same from either.
        assert_eq!(calico_node(&kept), calico_node(&full));
        assert_eq!(
            calico_node(&kept)[0]
                .ipv4_vxlan_tunnel
                .map(|a| a.to_string())
                .as_deref(),
            Some("192.168.77.0")
        );
    }

    #[test]
    fn calico_resources_keep_their_spec() {
        let mut pool: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": {
                "name": "default-ipv4-ippool",
                "resourceVersion": "812",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    "example.com/owner": "platform"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]
            },
            "spec": {"cidr": "192.168.0.0/16", "vxlanMode": "Always", "natOutgoing": true}
        }))
        .expect("pool");
        let spec = pool.data.clone();
        prune(&mut pool, false);
        assert_eq!(pool.data, spec);
        assert_eq!(pool.metadata.managed_fields, None);
        assert_eq!(
            pool.metadata.annotations,
            Some([("example.com/owner".to_string(), "platform".to_string())].into())
        );
    }

    #[test]
    fn only_what_the_store_keeps_counts_as_a_change() {
        let ar = nodes();
        let mut writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let mut apply = |ev: watcher::Event<DynamicObject>| {
            let changed = changes_content(&store, &ar, &ev);
            writer.apply_watcher_event(&ev);
            changed
        };
        // The first list counts once, at its end.
        assert!(!apply(watcher::Event::Init));
        assert!(!apply(watcher::Event::InitApply(pruned(kubelet_node()))));
        assert!(apply(watcher::Event::InitDone));
        // The kubelet's heartbeat: a new resourceVersion and heartbeat time, nothing Calico reads.
        let mut beat = kubelet_node();
        beat.metadata.resource_version = Some("918273699".into());
        beat.data["status"]["conditions"][1]["lastHeartbeatTime"] = "2026-11-28T10:17:44Z".into();
        assert!(!apply(watcher::Event::Apply(pruned(beat))));
        // calico-node gives the node another tunnel address.
        let mut moved = kubelet_node();
        moved.annotations_mut().insert(
            "projectcalico.org/IPv4VXLANTunnelAddr".into(),
            "192.168.77.64".into(),
        );
        assert!(apply(watcher::Event::Apply(pruned(moved.clone()))));
        assert!(!apply(watcher::Event::Apply(pruned(moved.clone()))));
        // A label a BGPPeer's nodeSelector may match.
        let mut relabelled = moved.clone();
        relabelled.labels_mut().insert("rack".into(), "r2".into());
        assert!(apply(watcher::Event::Apply(pruned(relabelled.clone()))));
        // Another node, and a node gone.
        let mut other = moved;
        other.metadata.name = Some("ip-10-0-12-35.eu-west-1.compute.internal".into());
        assert!(apply(watcher::Event::Apply(pruned(other))));
        assert!(apply(watcher::Event::Delete(pruned(relabelled))));
    }
}
