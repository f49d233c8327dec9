//! One Calico object read straight from the parser into its types, without an intermediate
//! `serde_json::Value`: at 10,000 nodes the IPAM blocks' specs are most of the datastore, and
//! building a tree of them first doubled the load. Unknown fields are still collected (for the
//! warnings) and a bad field still named by its path, as [`super::files`] does for objects
//! that arrive as JSON values.

use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::resources::{
    BgpConfigurationSpec, BgpPeerSpec, BlockAffinitySpec, CalicoNodeSpec, FelixConfigurationSpec,
    IpPoolSpec, IpamBlockSpec, ObjectMeta,
};

/// A spec read into the type its kind has.
pub enum Spec {
    Pool(IpPoolSpec),
    Block(IpamBlockSpec),
    Affinity(BlockAffinitySpec),
    Node(Box<CalicoNodeSpec>),
    Felix(Box<FelixConfigurationSpec>),
    BgpConfiguration(Box<BgpConfigurationSpec>),
    BgpPeer(Box<BgpPeerSpec>),
}

/// A spec as it arrived.
pub enum SpecInput {
    Absent,
    /// Not typed yet (its kind was not known when it was read).
    Json(Value),
    /// Typed, with the paths of the fields it had that the type does not know.
    Typed(Spec, Vec<String>),
    /// Not in the datastore's terms: nothing of it is needed (a Kubernetes Node's spec, a
    /// kind not used for verification).
    Ignored,
}

/// One object's parts.
pub struct Parts {
    pub kind: Option<String>,
    pub api: String,
    pub meta: Option<ObjectMeta>,
    pub spec: SpecInput,
    pub status: Option<Value>,
}

/// Where a field failed: its path below the part (`cidr`, `allocations[3]`) and serde's words.
#[derive(Debug, Default)]
pub struct Failure {
    /// `IPPool default-ipv4-ippool`, as far as it was read.
    pub object: String,
    pub part: &'static str,
    pub path: String,
    pub message: String,
}

/// Calico's Nodes live in both API groups; a Kubernetes Node carries its data in annotations.
pub fn is_calico_api(api: &str) -> bool {
    api.starts_with("projectcalico.org") || api.starts_with("crd.projectcalico.org")
}

/// Reads one object map; on a bad field, `failure` says where and the read stops.
pub struct ObjectSeed<'a> {
    pub failure: &'a mut Option<Failure>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Parts;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parts, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Parts;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Calico object (a mapping with kind, metadata and spec)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let failure = self.failure;
        let mut parts = Parts {
            kind: None,
            api: String::new(),
            meta: None,
            spec: SpecInput::Absent,
            status: None,
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "kind" => parts.kind = Some(map.next_value()?),
                "apiVersion" => parts.api = map.next_value()?,
                "metadata" => {
                    let mut unknown = Vec::new();
                    let seed = Tracked::<ObjectMeta>::new("metadata", &mut unknown, failure);
                    let read = map.next_value_seed(seed);
                    parts.meta = Some(read.inspect_err(|_| name_failure(failure, &parts))?);
                }
                // Typed at once when the kind is known and the error could name the object,
                // as both kubectl and calicoctl print them: kind and metadata first.
                "spec" => {
                    parts.spec = match (&parts.kind, &parts.meta) {
                        (Some(kind), Some(_)) => {
                            let seed = SpecSeed {
                                kind,
                                api: &parts.api,
                                failure,
                            };
                            let read = map.next_value_seed(seed);
                            read.inspect_err(|_| name_failure(failure, &parts))?
                        }
                        _ => SpecInput::Json(map.next_value()?),
                    };
                }
                "status" => parts.status = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

/// Names the object a field failed in, as far as it was read.
fn name_failure(failure: &mut Option<Failure>, parts: &Parts) {
    if let Some(f) = failure {
        f.object = format!(
            "{} {}",
            parts.kind.as_deref().unwrap_or("?"),
            parts.meta.as_ref().map_or("?", |m| m.name.as_str())
        );
    }
}

/// The spec of a known kind, read into its type.
struct SpecSeed<'a> {
    kind: &'a str,
    api: &'a str,
    failure: &'a mut Option<Failure>,
}

impl<'de> DeserializeSeed<'de> for SpecSeed<'_> {
    type Value = SpecInput;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<SpecInput, D::Error> {
        let mut unknown = Vec::new();
        let f = self.failure;
        let spec = match self.kind {
            "IPPool" => Spec::Pool(Tracked::new("spec", &mut unknown, f).deserialize(d)?),
            "IPAMBlock" => Spec::Block(Tracked::new("spec", &mut unknown, f).deserialize(d)?),
            "BlockAffinity" => {
                Spec::Affinity(Tracked::new("spec", &mut unknown, f).deserialize(d)?)
            }
            "Node" if is_calico_api(self.api) => Spec::Node(Box::new(
                Tracked::new("spec", &mut unknown, f).deserialize(d)?,
            )),
            "FelixConfiguration" => Spec::Felix(Box::new(
                Tracked::new("spec", &mut unknown, f).deserialize(d)?,
            )),
            "BGPConfiguration" => Spec::BgpConfiguration(Box::new(
                Tracked::new("spec", &mut unknown, f).deserialize(d)?,
            )),
            "BGPPeer" => Spec::BgpPeer(Box::new(
                Tracked::new("spec", &mut unknown, f).deserialize(d)?,
            )),
            _ => {
                <IgnoredAny as de::Deserialize>::deserialize(d)?;
                return Ok(SpecInput::Ignored);
            }
        };
        Ok(SpecInput::Typed(spec, unknown))
    }
}

/// `T` read with the paths of unknown fields collected and a bad field's path kept.
struct Tracked<'a, T> {
    part: &'static str,
    unknown: &'a mut Vec<String>,
    failure: &'a mut Option<Failure>,
    _t: PhantomData<T>,
}

impl<'a, T> Tracked<'a, T> {
    fn new(
        part: &'static str,
        unknown: &'a mut Vec<String>,
        failure: &'a mut Option<Failure>,
    ) -> Self {
        Self {
            part,
            unknown,
            failure,
            _t: PhantomData,
        }
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Tracked<'_, T> {
    type Value = T;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(d, &mut track);
        let unknown = self.unknown;
        let result = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
        result.inspect_err(|e| {
            *self.failure = Some(Failure {
                object: String::new(),
                part: self.part,
                path: track.path().to_string(),
                message: e.to_string(),
            });
        })
    }
}
