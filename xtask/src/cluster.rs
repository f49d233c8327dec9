//! A synthetic Calico VXLAN cluster at real sizes (thousands of nodes), for benchmarks and
//! scale tests: its datastore as `kubectl get … -o yaml|json` and `calicoctl get … -o
//! yaml|json` print it (one file per command, Lists), and node 0's kernel state as Felix
//! programs it (a route, a permanent ARP entry and an FDB entry per remote VTEP), installed
//! in a network namespace with `ip -batch` and `bridge -batch`.
//!
//! Node `i` is `bench-<i>`, at 10.98.0.0/16 + i + 1, with the block 10.128.0.0 + 64·i /26;
//! its VXLAN tunnel address is the block's first address (ordinal 0), then `pods` pods.

use std::{fmt::Write as _, net::Ipv4Addr};

use serde_json::{Value, json};

const POOL: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 0);
/// Addresses per /26 block.
const BLOCK_SIZE: u32 = 64;
const CREATED: &str = "2026-11-20T09:12:44Z";

/// Which printer a datastore file imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Yaml => "yaml",
            Self::Json => "json",
        }
    }
}

/// `remote` nodes besides node 0 (the one whose kernel is programmed), each with `pods` pods.
#[derive(Debug, Clone, Copy)]
pub struct Cluster {
    pub remote: u32,
    pub pods: u32,
}

impl Cluster {
    pub fn new(remote: u32) -> Self {
        Self { remote, pods: 8 }
    }

    pub fn name(i: u32) -> String {
        format!("bench-{i}")
    }

    /// The node whose dataplane is verified.
    pub fn local() -> String {
        Self::name(0)
    }

    pub fn node_ip(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(UNDERLAY) + i + 1)
    }

    pub fn block(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(POOL) + i * BLOCK_SIZE)
    }

    fn all(&self) -> std::ops::RangeInclusive<u32> {
        0..=self.remote
    }

    /// The datastore as files `(name, text)`, one per command an operator would run:
    /// `kubectl get ippools,ipamblocks,blockaffinities -o <fmt>` (kubectl's `List`),
    /// `calicoctl get nodes -o <fmt>` (a `NodeList`) and `calicoctl get felixconfiguration
    /// default -o <fmt>`.
    pub fn datastore(&self, format: Format) -> Vec<(String, String)> {
        let kubectl = json!({
            "apiVersion": "v1",
            "items": std::iter::once(pool())
                .chain(self.all().map(|i| self.ipam_block(i)))
                .chain(self.all().map(affinity))
                .collect::<Vec<_>>(),
            "kind": "List",
            "metadata": {"resourceVersion": ""}
        });
        let nodes = json!({
            "kind": "NodeList",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"resourceVersion": "481516"},
            "items": self.all().map(calico_node).collect::<Vec<_>>()
        });
        let felix = json!({
            "kind": "FelixConfiguration",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "default", "resourceVersion": "1021",
                         "creationTimestamp": CREATED, "uid": uid(u32::MAX)},
            "spec": {"bpfEnabled": false, "logSeverityScreen": "Info",
                     "reportingInterval": "0s", "vxlanVNI": 4096}
        });
        let ext = format.extension();
        [
            ("kubectl-ipam", kubectl),
            ("calicoctl-nodes", nodes),
            ("calicoctl-felix", felix),
        ]
        .into_iter()
        .map(|(name, v)| {
            let text = match format {
                Format::Json => serde_json::to_string_pretty(&v).unwrap_or_default(),
                Format::Yaml => yaml(&v),
            };
            (format!("{name}.{ext}"), text)
        })
        .collect()
    }

    /// The cluster as the Kubernetes API serves it to a KDD watcher: `(plural, list JSON)` for
    /// each resource `agent run --kube` watches. Nodes are Kubernetes Nodes as the kubelet and
    /// calico-node leave them: Calico's annotations, and the kubelet's status (conditions,
    /// images, capacity) and managedFields, which are most of each object.
    pub fn kube_lists(&self) -> Vec<(&'static str, String)> {
        let list = |kind: &str, api: &str, items: Vec<Value>| {
            json!({"apiVersion": api, "kind": format!("{kind}List"),
                   "metadata": {"continue": "", "resourceVersion": "900001"}, "items": items})
            .to_string()
        };
        let calico = "crd.projectcalico.org/v1";
        let felix = json!({
            "apiVersion": calico, "kind": "FelixConfiguration",
            "metadata": {"name": "default", "resourceVersion": "1021", "uid": uid(u32::MAX)},
            "spec": {"bpfEnabled": false, "logSeverityScreen": "Info", "vxlanVNI": 4096}
        });
        vec![
            ("ippools", list("IPPool", calico, vec![pool()])),
            (
                "ipamblocks",
                list(
                    "IPAMBlock",
                    calico,
                    self.all().map(|i| self.ipam_block(i)).collect(),
                ),
            ),
            (
                "blockaffinities",
                list("BlockAffinity", calico, self.all().map(affinity).collect()),
            ),
            (
                "felixconfigurations",
                list("FelixConfiguration", calico, vec![felix]),
            ),
            (
                "bgpconfigurations",
                list("BGPConfiguration", calico, Vec::new()),
            ),
            ("bgppeers", list("BGPPeer", calico, Vec::new())),
            (
                "nodes",
                list("Node", "v1", self.all().map(kubelet_node).collect()),
            ),
        ]
    }

    /// One IPAM block as kubectl prints it: ordinal 0 is the tunnel address, then the pods.
    fn ipam_block(&self, i: u32) -> Value {
        let node = Self::name(i);
        let used = self.pods + 1;
        let allocations: Vec<Value> = (0..BLOCK_SIZE)
            .map(|o| if o < used { json!(o) } else { Value::Null })
            .collect();
        let mut attributes = vec![json!({
            "handle_id": format!("vxlan-tunnel-addr-{node}"),
            "secondary": {"node": node, "type": "vxlanTunnelAddress"}
        })];
        let mut sequence = serde_json::Map::new();
        for p in 1..used {
            attributes.push(json!({
                "handle_id": format!("k8s-pod-network.{:064x}", u64::from(i) << 8 | u64::from(p)),
                "secondary": {"namespace": "default", "node": node, "pod": format!("app-{i}-{p}"),
                              "timestamp": "2026-11-20 09:13:02.120411 +0000 UTC"}
            }));
            sequence.insert(p.to_string(), json!(1_700_000_000u64 + u64::from(p)));
        }
        let cidr = format!("{}/26", Self::block(i));
        json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPAMBlock",
            "metadata": {
                "annotations": {"projectcalico.org/metadata": "{\"creationTimestamp\":null}"},
                "creationTimestamp": CREATED,
                "generation": used,
                "name": cidr.replace(['.', '/'], "-"),
                "resourceVersion": (100_000 + i).to_string(),
                "uid": uid(i)
            },
            "spec": {
                "affinity": format!("host:{node}"),
                "affinityClaimTime": CREATED,
                "allocations": allocations,
                "attributes": attributes,
                "cidr": cidr,
                "deleted": false,
                "sequenceNumber": 1_700_000_000u64 + u64::from(used),
                "sequenceNumberForAllocation": sequence,
                "strictAffinity": false,
                "unallocated": (used..BLOCK_SIZE).collect::<Vec<_>>()
            }
        })
    }

    /// Node 0's kernel state for `ip -batch`: the underlay, vxlan.calico with its address and
    /// MAC, the local blackhole, and per remote node a permanent ARP entry and the block route.
    pub fn ip_batch(&self) -> String {
        let local = Self::node_ip(0);
        let mut batch = format!(
            "link add eth0 type veth peer name eth1\nlink set eth0 up\nlink set eth1 up\naddr add {local}/16 dev eth0\n\
             link add vxlan.calico type vxlan id 4096 dstport 4789 local {local} dev eth0 nolearning\n\
             link set vxlan.calico mtu 1450 address {mac} up\naddr add {b0}/32 dev vxlan.calico\n\
             route add blackhole {b0}/26 proto 80\n",
            mac = calico_conventions::vtep_mac(&Self::local()),
            b0 = Self::block(0)
        );
        for i in 1..=self.remote {
            let _ = write!(
                batch,
                "neigh add {t} lladdr {mac} dev vxlan.calico nud permanent\n\
                 route add {t}/26 via {t} dev vxlan.calico onlink\n",
                t = Self::block(i),
                mac = calico_conventions::vtep_mac(&Self::name(i)),
            );
        }
        batch
    }

    /// The FDB entry per remote VTEP, for `bridge -batch`.
    pub fn fdb_batch(&self) -> String {
        let mut fdb = String::new();
        for i in 1..=self.remote {
            let _ = writeln!(
                fdb,
                "fdb add {} dev vxlan.calico dst {} self permanent",
                calico_conventions::vtep_mac(&Self::name(i)),
                Self::node_ip(i)
            );
        }
        fdb
    }

    /// Installs node 0's state in the existing namespace `ns` (needs root).
    pub fn program(&self, ns: &str) -> anyhow::Result<()> {
        let file = std::env::temp_dir().join(format!("{ns}.batch"));
        std::fs::write(&file, self.ip_batch())?;
        let path = file.to_string_lossy().into_owned();
        let result = crate::sh::run(&["ip", "-n", ns, "-batch", &path]).and_then(|_| {
            std::fs::write(&file, self.fdb_batch())?;
            crate::sh::run(&["ip", "netns", "exec", ns, "bridge", "-batch", &path])
        });
        let _ = std::fs::remove_file(&file);
        result?;
        crate::lab::sysctl(ns, "net.ipv4.ip_forward", "1")
    }
}

fn uid(i: u32) -> String {
    format!("6f1c{i:04x}-9a3e-4b1d-8c2f-{i:012x}")
}

fn pool() -> Value {
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "IPPool",
        "metadata": {
            "annotations": {"projectcalico.org/metadata": "{\"creationTimestamp\":null}"},
            "creationTimestamp": CREATED, "generation": 1, "name": "default-ipv4-ippool",
            "resourceVersion": "1017", "uid": uid(u32::MAX - 1)
        },
        "spec": {"allowedUses": ["Workload", "Tunnel"], "blockSize": 26,
                 "cidr": format!("{POOL}/9"), "ipipMode": "Never", "natOutgoing": true,
                 "nodeSelector": "all()", "vxlanMode": "Always"}
    })
}

fn affinity(i: u32) -> Value {
    let node = Cluster::name(i);
    let cidr = format!("{}/26", Cluster::block(i));
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BlockAffinity",
        "metadata": {
            "annotations": {"projectcalico.org/metadata": "{\"creationTimestamp\":null}"},
            "creationTimestamp": CREATED, "generation": 2,
            "name": format!("{node}-{}", cidr.replace(['.', '/'], "-")),
            "resourceVersion": (200_000 + i).to_string(), "uid": uid(i)
        },
        "spec": {"cidr": cidr, "deleted": "false", "node": node, "state": "confirmed"}
    })
}

fn calico_node(i: u32) -> Value {
    let name = Cluster::name(i);
    let ip = format!("{}/16", Cluster::node_ip(i));
    json!({
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": name, "uid": uid(i), "resourceVersion": (300_000 + i).to_string(),
            "creationTimestamp": CREATED,
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux"}
        },
        "spec": {
            "addresses": [{"address": ip, "type": "CalicoNodeIP"},
                          {"address": Cluster::node_ip(i).to_string(), "type": "InternalIP"}],
            "bgp": {"ipv4Address": ip},
            "ipv4VXLANTunnelAddr": Cluster::block(i).to_string(),
            "vxlanTunnelMACAddr": calico_conventions::vtep_mac(&name),
            "orchRefs": [{"nodeName": name, "orchestrator": "k8s"}]
        },
        "status": {"podCIDRs": [format!("10.{}.{}.0/24", 200 + i / 65536, (i / 256) % 256)]}
    })
}

/// A Kubernetes Node as the API server lists it (no apiVersion or kind on list items): the
/// kubelet's labels, status and managedFields, and calico-node's annotations.
fn kubelet_node(i: u32) -> Value {
    let name = Cluster::name(i);
    let ip = Cluster::node_ip(i).to_string();
    let beat = |t: &str, status: &str, reason: &str| {
        json!({"type": t, "status": status, "reason": reason,
               "message": format!("kubelet reports {reason}"),
               "lastHeartbeatTime": "2026-11-28T10:12:44Z",
               "lastTransitionTime": CREATED})
    };
    let images: Vec<Value> = (0..20u64)
        .map(|k| {
            let repo = format!("registry.example.com/team-{}/service-{k}", k % 4);
            json!({"names": [format!("{repo}@sha256:{:064x}", k * 0x9e37_79b9 + u64::from(i)),
                             format!("{repo}:v1.{k}.{}", i % 7)],
                   "sizeBytes": 20_000_000 + k * 7_340_033})
        })
        .collect();
    let managed = |manager: &str, sub: Option<&str>, fields: Value| {
        let mut m = json!({"manager": manager, "operation": "Update", "apiVersion": "v1",
                           "time": CREATED, "fieldsType": "FieldsV1", "fieldsV1": fields});
        if let Some(s) = sub {
            m["subresource"] = s.into();
        }
        m
    };
    json!({
        "metadata": {
            "name": name, "uid": uid(i), "resourceVersion": (400_000 + i).to_string(),
            "creationTimestamp": CREATED,
            "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m6i.xlarge",
                       "topology.kubernetes.io/region": "eu-west-1",
                       "topology.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i as usize % 3])},
            "annotations": {
                "alpha.kubernetes.io/provided-node-ip": ip,
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "projectcalico.org/IPv4Address": format!("{ip}/16"),
                "projectcalico.org/IPv4VXLANTunnelAddr": Cluster::block(i).to_string(),
                "projectcalico.org/VXLANTunnelMACAddr": calico_conventions::vtep_mac(&name)
            },
            "managedFields": [
                managed("kubelet", None, json!({"f:metadata": {"f:annotations": {".": {},
                    "f:alpha.kubernetes.io/provided-node-ip": {},
                    "f:volumes.kubernetes.io/controller-managed-attach-detach": {}},
                    "f:labels": {".": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {},
                                 "f:kubernetes.io/os": {}}}})),
                managed("calico-node", Some("status"), json!({"f:metadata": {"f:annotations": {
                    "f:projectcalico.org/IPv4Address": {}, "f:projectcalico.org/IPv4VXLANTunnelAddr": {},
                    "f:projectcalico.org/VXLANTunnelMACAddr": {}}}})),
                managed("kubelet", Some("status"), json!({"f:status": {"f:allocatable": {"f:cpu": {},
                    "f:memory": {}}, "f:capacity": {"f:cpu": {}, "f:memory": {}},
                    "f:conditions": {"k:{\"type\":\"Ready\"}": {"f:lastHeartbeatTime": {}}},
                    "f:images": {}, "f:nodeInfo": {"f:bootID": {}}}}))
            ]
        },
        "spec": {"providerID": format!("aws:///eu-west-1a/i-{:017x}", u64::from(i) + 0x0a1b_2c3d)},
        "status": {
            "capacity": {"cpu": "4", "ephemeral-storage": "83873772Ki", "memory": "15896324Ki", "pods": "58"},
            "allocatable": {"cpu": "3920m", "ephemeral-storage": "76224326324", "memory": "14880516Ki", "pods": "58"},
            "conditions": [beat("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                           beat("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                           beat("PIDPressure", "False", "KubeletHasSufficientPID"),
                           beat("Ready", "True", "KubeletReady")],
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": format!("{:032x}", u64::from(i)), "bootID": uid(i),
                         "kernelVersion": "6.1.115-126.197.amzn2023.x86_64",
                         "osImage": "Amazon Linux 2023.6.20241121",
                         "containerRuntimeVersion": "containerd://1.7.23",
                         "kubeletVersion": "v1.31.4-eks-aeac579", "operatingSystem": "linux",
                         "architecture": "amd64"},
            "images": images
        }
    })
}

/// Whether a request's `Accept` asks for metadata only (`application/json;
/// as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`, as kube-rs sends for an
/// `Api<PartialObjectMeta<_>>`), as the API server reads it.
pub fn asks_for_metadata_only(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("as=PartialObjectMetadata"))
}

/// What the API server answers a client that asks for metadata only: a list's items, or a
/// watch event's object, reduced to their metadata and typed as `meta.k8s.io/v1`
/// `PartialObjectMetadata`.
pub fn metadata_only(v: &Value) -> Value {
    let partial = |o: &Value| {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": o["metadata"]})
    };
    let mut out = v.clone();
    if let Some(items) = v["items"].as_array() {
        out["apiVersion"] = "meta.k8s.io/v1".into();
        out["kind"] = "PartialObjectMetadataList".into();
        out["items"] = items.iter().map(partial).collect();
    } else if v.get("object").is_some() {
        out["object"] = partial(&v["object"]);
    } else {
        out = partial(v);
    }
    out
}

/// YAML as kubectl prints it (block style, sequences not indented under their key); strings
/// that YAML would read as something else are double-quoted (JSON quoting is valid YAML).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let _ = write!(out, "{pad}{}:", scalar(&Value::String(k.clone())));
                match v {
                    Value::Object(c) if !c.is_empty() => {
                        out.push('\n');
                        emit(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        emit(v, indent, out);
                    }
                    _ => {
                        let _ = writeln!(out, " {}", scalar(v));
                    }
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // The first key goes on the dash's line, the rest under it.
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", scalar(item));
                    }
                }
            }
        }
        _ => {
            let _ = writeln!(out, "{pad}{}", scalar(v));
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./()".contains(c))
                && s.parse::<f64>().is_err()
                && !matches!(s.as_str(), "true" | "false" | "null" | "~" | "yes" | "no")
                && !s.starts_with(['-', '.']);
            if plain {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_kubectls_layout() {
        // Keys in sorted order: the same output whether serde_json keeps insertion order.
        let v = json!({"e": ["0", null, "true"], "f": "host:x",
                       "items": [{"a": 1, "b": {"c": "10.0.0.0/26"}}, {"d": []}], "kind": "List"});
        assert_eq!(
            yaml(&v),
            "e:\n- \"0\"\n- null\n- \"true\"\nf: \"host:x\"\nitems:\n- a: 1\n  b:\n    c: 10.0.0.0/26\n- d: []\nkind: List\n"
        );
    }

    #[test]
    fn datastore_files_name_every_node_once() {
        let c = Cluster::new(3);
        let files = c.datastore(Format::Json);
        assert_eq!(
            files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            [
                "kubectl-ipam.json",
                "calicoctl-nodes.json",
                "calicoctl-felix.json"
            ]
        );
        let nodes: Value = serde_json::from_str(&files[1].1).expect("json");
        assert_eq!(nodes["items"].as_array().map(Vec::len), Some(4));
        assert_eq!(c.ip_batch().matches("route add").count(), 4);
        assert_eq!(c.fdb_batch().lines().count(), 3);
    }
}
