//! What the Kubernetes watchers keep of one resource: each object pruned to what the agent
//! reads and parsed once, when its event arrives. A snapshot then only gathers parsed objects,
//! and every agent of a 5,000-node cluster holds its datastore as the agent's own types rather
//! than as the API server's JSON (BENCHMARKS.md, "The Kubernetes datastore").

use std::{
    collections::BTreeMap,
    hash::{BuildHasher as _, Hasher as _},
    sync::Arc,
};

use kube::{
    api::{ApiResource, DynamicObject},
    runtime::watcher,
};

use super::{Datastore, files::DatastoreError, kube::load_objects};

/// One object as the agent keeps it.
#[derive(Debug)]
struct Parsed {
    /// Of the pruned object: an event that leaves it as it was is no change.
    hash: u64,
    /// What it adds to the datastore, or why it could not be read.
    data: Result<Datastore, Arc<DatastoreError>>,
}

/// The objects of one resource by name, as the last list and the events since left them.
/// Shared: a relist takes each unchanged object over as it is, rather than holding a second
/// parsed copy of the resource until it is complete.
#[derive(Debug, Default)]
pub struct Watched {
    objects: BTreeMap<String, Arc<Parsed>>,
    /// A (re)list in progress: its objects replace the others when it is complete.
    relist: Option<BTreeMap<String, Arc<Parsed>>>,
    listed: bool,
}

impl Watched {
    /// Applies a watch event (already pruned); `true` when it changed what is kept. A relist
    /// counts once, when it is complete.
    pub fn apply(&mut self, ar: &ApiResource, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                let (name, hash) = (name_of(&o), hash_of(&o));
                let parsed = match self.objects.get(&name) {
                    Some(kept) if kept.hash == hash => Arc::clone(kept),
                    _ => Arc::new(parse(ar, &o, hash)),
                };
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, parsed);
                false
            }
            watcher::Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.listed = true;
                true
            }
            watcher::Event::Apply(o) => {
                let (name, hash) = (name_of(&o), hash_of(&o));
                // Most events (a kubelet's status, a resourceVersion) leave it as it was.
                if self
                    .objects
                    .get(&name)
                    .is_some_and(|kept| kept.hash == hash)
                {
                    return false;
                }
                self.objects.insert(name, Arc::new(parse(ar, &o, hash)));
                true
            }
            watcher::Event::Delete(o) => self.objects.remove(&name_of(&o)).is_some(),
        }
    }

    /// Whether the first list is complete.
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// Adds every object, in name order, to `ds`; the first that could not be read is the
    /// error, as in a file.
    pub fn gather(&self, ds: &mut Datastore) -> Result<(), Arc<DatastoreError>> {
        for parsed in self.objects.values() {
            ds.absorb(parsed.data.as_ref().map_err(Arc::clone)?);
        }
        Ok(())
    }
}

fn name_of(o: &DynamicObject) -> String {
    o.metadata.name.clone().unwrap_or_default()
}

/// Of the pruned object as JSON.
fn hash_of(o: &DynamicObject) -> u64 {
    let mut hasher = foldhash::fast::FixedState::default().build_hasher();
    hasher.write(&serde_json::to_vec(o).unwrap_or_default());
    hasher.finish()
}

fn parse(ar: &ApiResource, o: &DynamicObject, hash: u64) -> Parsed {
    let mut ds = Datastore::default();
    let data = load_objects(&mut ds, ar, [o])
        .map(|()| {
            ds.shrink_to_fit();
            ds
        })
        .map_err(Arc::new);
    Parsed { hash, data }
}

/// Drops what the agent never reads before it is kept. Every agent of a large cluster holds
/// every Node, and a Kubernetes Node is mostly the kubelet's status (images, conditions,
/// capacity) and managedFields: Calico's node data is in its `projectcalico.org/*` annotations
/// and the labels BGPPeer selectors match. The resourceVersion goes too, so that an update of
/// only what was dropped leaves the object as it was.
pub fn prune(o: &mut DynamicObject, k8s_node: bool) {
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
        super::super::kube::resources(super::super::kube::CalicoGroup::CrdV1)
            .into_iter()
            .find(|r| r.kind == "Node")
            .expect("Node resource")
    }

    fn calico_node(o: &DynamicObject) -> Vec<super::super::Node> {
        let mut v = serde_json::to_value(o).expect("json");
        v["apiVersion"] = "v1".into();
        v["kind"] = "Node".into();
        let mut ds = Datastore::default();
        super::super::files::load_object(&mut ds, "test", &v).expect("node");
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
    fn only_what_is_kept_counts_as_a_change() {
        let ar = nodes();
        let mut kept = Watched::default();
        let mut apply = |ev: watcher::Event<DynamicObject>| kept.apply(&ar, ev);
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
        // Another node, and a node gone; a node that was never there is no change.
        let mut other = moved;
        other.metadata.name = Some("ip-10-0-12-35.eu-west-1.compute.internal".into());
        assert!(apply(watcher::Event::Apply(pruned(other.clone()))));
        assert!(apply(watcher::Event::Delete(pruned(relabelled.clone()))));
        assert!(!apply(watcher::Event::Delete(pruned(relabelled))));
        let mut ds = Datastore::default();
        kept.gather(&mut ds).expect("gather");
        assert_eq!(ds.nodes, calico_node(&pruned(other)));
    }

    #[test]
    fn a_relist_replaces_what_was_kept_and_a_bad_object_is_the_error() {
        let ar = nodes();
        let mut kept = Watched::default();
        let named = |name: &str, tunnel: &str| {
            let mut o = kubelet_node();
            o.metadata.name = Some(name.into());
            o.annotations_mut().insert(
                "projectcalico.org/IPv4VXLANTunnelAddr".into(),
                tunnel.into(),
            );
            pruned(o)
        };
        for ev in [
            watcher::Event::Init,
            watcher::Event::InitApply(named("b", "192.168.77.64")),
            watcher::Event::InitApply(named("a", "192.168.77.0")),
            watcher::Event::InitDone,
        ] {
            kept.apply(&ar, ev);
        }
        assert!(kept.listed());
        let mut ds = Datastore::default();
        kept.gather(&mut ds).expect("gather");
        let names: Vec<&str> = ds.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "in name order");
        // The watch expired and the relist finds "b" gone and "c" unreadable: "a" and "c"
        // remain, and the snapshot names "c" as a file read would.
        let a_before = Arc::clone(&kept.objects["a"]);
        for ev in [
            watcher::Event::Init,
            watcher::Event::InitApply(named("a", "192.168.77.0")),
            watcher::Event::InitApply(named("c", "not-an-ip")),
        ] {
            assert!(!kept.apply(&ar, ev));
        }
        assert!(kept.apply(&ar, watcher::Event::InitDone));
        // "a" came back as it was: taken over, not parsed and held a second time.
        assert!(Arc::ptr_eq(&kept.objects["a"], &a_before));
        // A relist that moved "a" parses it anew.
        for ev in [
            watcher::Event::Init,
            watcher::Event::InitApply(named("a", "192.168.77.128")),
            watcher::Event::InitApply(named("c", "not-an-ip")),
            watcher::Event::InitDone,
        ] {
            kept.apply(&ar, ev);
        }
        assert!(!Arc::ptr_eq(&kept.objects["a"], &a_before));
        let moved = kept.objects["a"].data.as_ref().expect("a is readable");
        assert_eq!(
            moved.nodes[0].ipv4_vxlan_tunnel.map(|ip| ip.to_string()),
            Some("192.168.77.128".to_string())
        );
        let err = kept
            .gather(&mut Datastore::default())
            .expect_err("c is not readable");
        assert!(
            err.to_string()
                .contains("metadata.annotations[projectcalico.org/IPv4VXLANTunnelAddr]"),
            "{err}"
        );
    }
}
