//! The datastore from YAML or JSON files: what `kubectl get … -o yaml|json` or `calicoctl get …
//! -o yaml|json` prints, single objects, multi-document files or `List`s, in any mix (parsed,
//! streamed, by [`super::document`]).
//!
//! A malformed object is an error naming the file, the object and the field; unknown fields and
//! kinds are ignored with a warning, so newer Calico versions do not break the agent.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    Affinity, Allocation, BgpPeerObject, Block, Datastore, EncapMode, Node, Pool,
    object::{Failure, Parts, Spec, SpecInput, is_calico_api},
    parse_as_number, parse_v4_addr, parse_v4_with_prefix, parse_v6_addr, parse_v6_with_prefix,
    resources::{
        BgpConfigurationSpec, BgpPeerSpec, CalicoNodeSpec, CalicoNodeStatus,
        FelixConfigurationSpec, IpPoolSpec, IpamBlockSpec, ObjectMeta,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no *.yaml, *.yml or *.json file in it")]
    NoFiles { path: PathBuf },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: not valid JSON: {message}")]
    Json { file: String, message: String },
    /// Parseable, but beyond what the agent accepts (an alias bomb).
    #[error("{file}: refused: {why}")]
    Refused { file: String, why: String },
    #[error("{file}: {object}: field {field}: {message}")]
    Object {
        file: String,
        object: String,
        field: String,
        message: String,
    },
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file below `dir` (recursively, in name order),
/// or `dir` itself when it is one file (`calicoctl get … -o yaml > calico.yaml`).
pub fn load_dir(dir: &Path) -> Result<Datastore, DatastoreError> {
    let mut files = Vec::new();
    if dir.is_file() {
        files.push(dir.to_path_buf());
    } else {
        collect(dir, &mut files)?;
    }
    files.sort();
    if files.is_empty() {
        return Err(DatastoreError::NoFiles { path: dir.into() });
    }
    let mut ds = Datastore::default();
    for f in files {
        super::document::load_file(&mut ds, &f)?;
    }
    Ok(ds)
}

/// Loads the given files (as found in a bundle), in order.
pub fn load_files(files: &[PathBuf]) -> Result<Datastore, DatastoreError> {
    let mut ds = Datastore::default();
    for f in files {
        super::document::load_file(&mut ds, f)?;
    }
    Ok(ds)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatastoreError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatastoreError::Read {
        path: dir.into(),
        source,
    })?;
    for e in entries {
        let path = e
            .map_err(|source| DatastoreError::Read {
                path: dir.into(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Adds the objects of one file's text to `ds`: YAML, or JSON when the file is `*.json` or
/// its text starts like JSON (see [`super::document`]).
pub fn load_text(ds: &mut Datastore, file: &str, text: &str) -> Result<(), DatastoreError> {
    super::document::load(ds, file, text)
}

/// Adds one object (as the API server returns it) to `ds`; `source` names where it came from.
pub fn load_object(ds: &mut Datastore, source: &str, v: &Value) -> Result<(), DatastoreError> {
    load_value(ds, source, v, None)
}

pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) object: String,
}

impl Ctx<'_> {
    fn err(&self, field: &str, message: impl Into<String>) -> DatastoreError {
        DatastoreError::Object {
            file: self.file.into(),
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The spec of this object's kind, however it arrived: typed already (its unknown fields
    /// become warnings), or as JSON to type now.
    fn spec<T: DeserializeOwned>(
        &self,
        spec: SpecInput,
        warnings: &mut Vec<String>,
        pick: impl FnOnce(Spec) -> Option<T>,
    ) -> Result<T, DatastoreError> {
        match spec {
            SpecInput::Typed(s, unknown) => {
                self.warn_unknown("spec", unknown, warnings);
                pick(s).ok_or_else(|| self.err("spec", "read as another kind's spec"))
            }
            SpecInput::Json(v) => self.de(&v, "spec", warnings, true),
            SpecInput::Absent | SpecInput::Ignored => {
                self.de(&Value::Object(Default::default()), "spec", warnings, true)
            }
        }
    }

    fn warn_unknown(&self, field: &str, unknown: Vec<String>, warnings: &mut Vec<String>) {
        for p in unknown {
            warnings.push(format!(
                "{}: {}: unknown field {field}.{p} ignored",
                self.file, self.object
            ));
        }
    }

    /// The error for a field that failed while the object was being read.
    pub(super) fn failed(&self, f: Failure) -> DatastoreError {
        self.err(&at(f.part, &f.path), plain_wording(&f.message))
    }

    /// Deserialises `v` (found at `field`), warning about unknown fields and naming the exact
    /// path of a bad one.
    fn de<T: DeserializeOwned>(
        &self,
        v: &Value,
        field: &str,
        warnings: &mut Vec<String>,
        warn_unknown: bool,
    ) -> Result<T, DatastoreError> {
        let mut unknown = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(v, &mut track);
        let result = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
        match result {
            Ok(t) => {
                if warn_unknown {
                    self.warn_unknown(field, unknown, warnings);
                }
                Ok(t)
            }
            Err(e) => Err(self.err(
                &at(field, &track.path().to_string()),
                plain_wording(&e.to_string()),
            )),
        }
    }
}

/// `spec.cidr` from the part and serde_path_to_error's path below it (`.` for the part).
fn at(field: &str, path: &str) -> String {
    if path == "." || path.is_empty() {
        field.to_string()
    } else {
        format!("{field}.{path}")
    }
}

pub(super) fn load_value(
    ds: &mut Datastore,
    file: &str,
    v: &Value,
    list_kind: Option<&str>,
) -> Result<(), DatastoreError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .or(list_kind)
        .unwrap_or("");
    if kind == "List" || kind.ends_with("List") {
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for item in v
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            load_value(ds, file, item, item_kind)?;
        }
        return Ok(());
    }
    let ctx = Ctx {
        file,
        object: format!(
            "{kind} {}",
            v.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
    };
    let parts = Parts {
        kind: Some(kind.to_string()),
        api: v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        meta: match v.get("metadata") {
            Some(m) => Some(ctx.de(m, "metadata", &mut ds.warnings, false)?),
            None => None,
        },
        spec: v
            .get("spec")
            .map_or(SpecInput::Absent, |s| SpecInput::Json(s.clone())),
        status: v.get("status").cloned(),
    };
    add(ds, file, parts, None)
}

/// Adds one object read by parts; `list_kind` is the kind of the List it came in, for items
/// that do not say theirs.
pub(super) fn add(
    ds: &mut Datastore,
    file: &str,
    parts: Parts,
    list_kind: Option<&str>,
) -> Result<(), DatastoreError> {
    let kind = parts.kind.as_deref().or(list_kind).unwrap_or("");
    let api = parts.api.as_str();
    let name = parts.meta.as_ref().map_or("?", |m| m.name.as_str());
    let ctx = Ctx {
        file,
        object: format!("{kind} {name}"),
    };
    let Some(meta) = parts.meta.as_ref() else {
        return Err(ctx.err("metadata", "missing"));
    };
    let spec = parts.spec;
    let warnings = &mut ds.warnings;
    match kind {
        "IPPool" => {
            let s = ctx.spec(spec, warnings, |s| match s {
                Spec::Pool(s) => Some(s),
                _ => None,
            })?;
            ds.pools.push(pool(&ctx, meta.name.clone(), s)?);
        }
        "IPAMBlock" => {
            let s = ctx.spec(spec, warnings, |s| match s {
                Spec::Block(s) => Some(s),
                _ => None,
            })?;
            ds.blocks.push(block(&ctx, meta.name.clone(), s)?);
        }
        "BlockAffinity" => {
            let s = ctx.spec(spec, warnings, |s| match s {
                Spec::Affinity(s) => Some(s),
                _ => None,
            })?;
            let cidr = s
                .cidr
                .parse::<IpNet>()
                .map_err(|_| ctx.err("spec.cidr", format!("{:?} is not a CIDR", s.cidr)))?;
            ds.affinities.push(Affinity {
                node: s.node,
                cidr,
                state: s.state,
                deleted: s.deleted,
            });
        }
        "Node" if is_calico_api(api) => {
            let s: CalicoNodeSpec = ctx.spec(spec, warnings, |s| match s {
                Spec::Node(s) => Some(*s),
                _ => None,
            })?;
            let status: CalicoNodeStatus = match &parts.status {
                Some(st) => ctx.de(st, "status", warnings, false)?,
                None => CalicoNodeStatus::default(),
            };
            ds.nodes.push(calico_node(&ctx, meta, &s, &status)?);
        }
        "Node" => ds.nodes.push(k8s_node(&ctx, meta)?),
        "FelixConfiguration" => {
            let s: FelixConfigurationSpec = ctx.spec(spec, warnings, |s| match s {
                Spec::Felix(s) => Some(*s),
                _ => None,
            })?;
            ds.felix.insert(meta.name.clone(), s);
        }
        "BGPConfiguration" => {
            let s: BgpConfigurationSpec = ctx.spec(spec, warnings, |s| match s {
                Spec::BgpConfiguration(s) => Some(*s),
                _ => None,
            })?;
            if let Some(v) = &s.as_number {
                parse_as_number(v).map_err(|m| ctx.err("spec.asNumber", m))?;
            }
            ds.bgp_configs.insert(meta.name.clone(), s);
        }
        "BGPPeer" => {
            let s: BgpPeerSpec = ctx.spec(spec, warnings, |s| match s {
                Spec::BgpPeer(s) => Some(*s),
                _ => None,
            })?;
            for (field, v) in [
                ("spec.asNumber", &s.as_number),
                ("spec.localASNumber", &s.local_as_number),
            ] {
                if let Some(v) = v {
                    parse_as_number(v).map_err(|m| ctx.err(field, m))?;
                }
            }
            ds.bgp_peers.push(BgpPeerObject {
                name: meta.name.clone(),
                spec: s,
            });
        }
        other => ds.warnings.push(format!(
            "{file}: {other} {name}: kind not used for verification, ignored"
        )),
    }
    Ok(())
}

/// serde's wording (`invalid type: string "abc", expected u8`) in words an operator editing
/// YAML uses.
fn plain_wording(message: &str) -> String {
    let mut m = message
        .replace("invalid type: ", "got ")
        .replace("invalid value: ", "got ")
        .replace("integer `", "the number `")
        .replace("string \"", "the text \"")
        .replace("expected a sequence", "expected a list")
        .replace("expected a map", "expected a mapping (key: value)");
    for (rust, plain) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("usize", "a whole number"),
        ("f64", "a number"),
        ("a boolean", "true or false"),
    ] {
        m = m.replace(&format!("expected {rust}"), &format!("expected {plain}"));
    }
    if let Some(i) = m.find("struct ") {
        // `expected struct IpPoolSpec` names our type, not Calico's.
        m.truncate(i);
        m.push_str("a mapping (key: value)");
    }
    m
}

fn pool(ctx: &Ctx<'_>, name: String, s: IpPoolSpec) -> Result<Pool, DatastoreError> {
    let cidr = s
        .cidr
        .parse::<IpNet>()
        .map_err(|_| ctx.err("spec.cidr", format!("{:?} is not a CIDR", s.cidr)))?;
    let default_block = if cidr.addr().is_ipv4() { 26 } else { 122 };
    // Calico's validation: IPv4 pools take /20–/32 blocks, IPv6 /116–/128.
    let (min, max) = if cidr.addr().is_ipv4() {
        (20, 32)
    } else {
        (116, 128)
    };
    if let Some(b) = s.block_size
        && !(min..=max).contains(&b)
    {
        return Err(ctx.err(
            "spec.blockSize",
            format!(
                "{b} is outside {min}–{max}, Calico's range for {} pools",
                if cidr.addr().is_ipv4() {
                    "IPv4"
                } else {
                    "IPv6"
                }
            ),
        ));
    }
    Ok(Pool {
        name,
        cidr: cidr.trunc(),
        vxlan: EncapMode::parse(s.vxlan_mode.as_deref())
            .map_err(|m| ctx.err("spec.vxlanMode", m))?,
        ipip: EncapMode::parse(s.ipip_mode.as_deref()).map_err(|m| ctx.err("spec.ipipMode", m))?,
        nat_outgoing: s.nat_outgoing,
        disabled: s.disabled,
        block_size: s.block_size.unwrap_or(default_block),
        allowed_uses: s.allowed_uses.unwrap_or_default(),
    })
}

fn block(ctx: &Ctx<'_>, name: String, s: IpamBlockSpec) -> Result<Block, DatastoreError> {
    let cidr = s
        .cidr
        .parse::<IpNet>()
        .map_err(|_| ctx.err("spec.cidr", format!("{:?} is not a CIDR", s.cidr)))?;
    let affinity = s
        .affinity
        .as_deref()
        .and_then(|a| {
            a.strip_prefix("host:")
                .or_else(|| a.strip_prefix("virtual:"))
        })
        .map(str::to_string);
    // Each attribute is moved into the last allocation that uses it (usually its only one)
    // and cloned for the others.
    let mut uses = vec![0usize; s.attributes.len()];
    for attr in s.allocations.iter().flatten() {
        if let Some(n) = uses.get_mut(*attr as usize) {
            *n += 1;
        }
    }
    let mut attributes = s.attributes;
    let mut allocations = Vec::new();
    for (ordinal, attr) in s.allocations.iter().enumerate() {
        let Some(attr) = attr else { continue };
        let ip = nth_ip(&cidr, ordinal).ok_or_else(|| {
            ctx.err(
                &format!("spec.allocations[{ordinal}]"),
                "ordinal beyond the block",
            )
        })?;
        let index = *attr as usize;
        let count = attributes.len();
        let a = attributes.get_mut(index).ok_or_else(|| {
            ctx.err(
                &format!("spec.allocations[{ordinal}]"),
                format!("attribute index {attr} but only {count} attributes"),
            )
        })?;
        uses[index] -= 1;
        let attrs = if uses[index] == 0 {
            std::mem::take(&mut a.secondary)
        } else {
            a.secondary.clone()
        };
        allocations.push(Allocation { ip, attrs });
    }
    Ok(Block {
        name,
        cidr: cidr.trunc(),
        affinity,
        allocations,
        deleted: s.deleted,
    })
}

fn nth_ip(net: &IpNet, n: usize) -> Option<IpAddr> {
    let n = u128::try_from(n).ok()?;
    match net.trunc() {
        IpNet::V4(v4) => {
            let base = u32::from(v4.network());
            let ip = base.checked_add(u32::try_from(n).ok()?)?;
            let ip = std::net::Ipv4Addr::from(ip);
            v4.contains(&ip).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(v6) => {
            let ip = std::net::Ipv6Addr::from(u128::from(v6.network()).checked_add(n)?);
            v6.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}

fn opt_addr<T>(
    ctx: &Ctx<'_>,
    field: &str,
    v: Option<&str>,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, DatastoreError> {
    v.filter(|s| !s.is_empty())
        .map(|s| f(s).map_err(|m| ctx.err(field, m)))
        .transpose()
}

fn calico_node(
    ctx: &Ctx<'_>,
    meta: &ObjectMeta,
    s: &CalicoNodeSpec,
    status: &CalicoNodeStatus,
) -> Result<Node, DatastoreError> {
    let bgp = s.bgp.clone().unwrap_or_default();
    Ok(Node {
        name: meta.name.clone(),
        ipv4: opt_addr(
            ctx,
            "spec.bgp.ipv4Address",
            bgp.ipv4_address.as_deref(),
            parse_v4_with_prefix,
        )?,
        ipv4_vxlan_tunnel: opt_addr(
            ctx,
            "spec.ipv4VXLANTunnelAddr",
            s.ipv4_vxlan_tunnel_addr.as_deref(),
            parse_v4_addr,
        )?,
        vxlan_mac: s
            .vxlan_tunnel_mac_addr
            .clone()
            .filter(|m| !m.is_empty())
            .map(|m| m.to_lowercase()),
        ipv4_ipip_tunnel: opt_addr(
            ctx,
            "spec.bgp.ipv4IPIPTunnelAddr",
            bgp.ipv4_ipip_tunnel_addr.as_deref(),
            parse_v4_addr,
        )?,
        wireguard_ipv4: opt_addr(
            ctx,
            "spec.wireguard.interfaceIPv4Address",
            s.wireguard
                .as_ref()
                .and_then(|w| w.interface_ipv4_address.as_deref()),
            parse_v4_addr,
        )?,
        wireguard_public_key: status
            .wireguard_public_key
            .clone()
            .filter(|k| !k.is_empty()),
        ipv6: opt_addr(
            ctx,
            "spec.bgp.ipv6Address",
            bgp.ipv6_address.as_deref(),
            parse_v6_with_prefix,
        )?,
        ipv6_vxlan_tunnel: opt_addr(
            ctx,
            "spec.ipv6VXLANTunnelAddr",
            s.ipv6_vxlan_tunnel_addr.as_deref(),
            parse_v6_addr,
        )?,
        vxlan_mac_v6: s
            .vxlan_tunnel_mac_addr_v6
            .clone()
            .filter(|m| !m.is_empty())
            .map(|m| m.to_lowercase()),
        wireguard_ipv6: opt_addr(
            ctx,
            "spec.wireguard.interfaceIPv6Address",
            s.wireguard
                .as_ref()
                .and_then(|w| w.interface_ipv6_address.as_deref()),
            parse_v6_addr,
        )?,
        wireguard_public_key_v6: status
            .wireguard_public_key_v6
            .clone()
            .filter(|k| !k.is_empty()),
        as_number: bgp
            .as_number
            .as_ref()
            .map(|v| parse_as_number(v).map_err(|m| ctx.err("spec.bgp.asNumber", m)))
            .transpose()?,
        rr_cluster_id: bgp.route_reflector_cluster_id.filter(|c| !c.is_empty()),
        labels: meta.labels.clone(),
    })
}

/// A Kubernetes Node: Calico keeps its node data in `projectcalico.org/*` annotations.
fn k8s_node(ctx: &Ctx<'_>, meta: &ObjectMeta) -> Result<Node, DatastoreError> {
    let ann = |k: &str| {
        meta.annotations
            .get(&format!("projectcalico.org/{k}"))
            .map(String::as_str)
    };
    let field = |k: &str| format!("metadata.annotations[projectcalico.org/{k}]");
    Ok(Node {
        name: meta.name.clone(),
        ipv4: opt_addr(
            ctx,
            &field("IPv4Address"),
            ann("IPv4Address"),
            parse_v4_with_prefix,
        )?,
        ipv4_vxlan_tunnel: opt_addr(
            ctx,
            &field("IPv4VXLANTunnelAddr"),
            ann("IPv4VXLANTunnelAddr"),
            parse_v4_addr,
        )?,
        vxlan_mac: ann("VXLANTunnelMACAddr")
            .filter(|m| !m.is_empty())
            .map(str::to_lowercase),
        ipv4_ipip_tunnel: opt_addr(
            ctx,
            &field("IPv4IPIPTunnelAddr"),
            ann("IPv4IPIPTunnelAddr"),
            parse_v4_addr,
        )?,
        wireguard_ipv4: opt_addr(
            ctx,
            &field("IPv4WireguardInterfaceAddr"),
            ann("IPv4WireguardInterfaceAddr"),
            parse_v4_addr,
        )?,
        wireguard_public_key: ann("WireguardPublicKey")
            .filter(|k| !k.is_empty())
            .map(str::to_string),
        ipv6: opt_addr(
            ctx,
            &field("IPv6Address"),
            ann("IPv6Address"),
            parse_v6_with_prefix,
        )?,
        ipv6_vxlan_tunnel: opt_addr(
            ctx,
            &field("IPv6VXLANTunnelAddr"),
            ann("IPv6VXLANTunnelAddr"),
            parse_v6_addr,
        )?,
        vxlan_mac_v6: ann("VXLANTunnelMACAddrV6")
            .filter(|m| !m.is_empty())
            .map(str::to_lowercase),
        wireguard_ipv6: opt_addr(
            ctx,
            &field("IPv6WireguardInterfaceAddr"),
            ann("IPv6WireguardInterfaceAddr"),
            parse_v6_addr,
        )?,
        wireguard_public_key_v6: ann("WireguardPublicKeyV6")
            .filter(|k| !k.is_empty())
            .map(str::to_string),
        as_number: ann("ASNumber")
            .filter(|a| !a.is_empty())
            .map(|a| {
                parse_as_number(&Value::String(a.to_string()))
                    .map_err(|m| ctx.err(&field("ASNumber"), m))
            })
            .transpose()?,
        rr_cluster_id: ann("RouteReflectorClusterID")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        labels: meta.labels.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Datastore, DatastoreError> {
        let mut ds = Datastore::default();
        load_text(&mut ds, "test.yaml", text).map(|()| ds)
    }

    #[test]
    fn block_size_is_checked_against_calicos_range_in_its_terms() {
        let pool = |cidr: &str, size: &str| {
            load(&format!(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\n\
                 spec: {{cidr: {cidr}, blockSize: {size}}}\n"
            ))
        };
        for (cidr, size, err) in [
            (
                "10.244.0.0/16",
                "0",
                "test.yaml: IPPool p: field spec.blockSize: 0 is outside 20–32, Calico's range for IPv4 pools",
            ),
            (
                "10.244.0.0/16",
                "99",
                "test.yaml: IPPool p: field spec.blockSize: 99 is outside 20–32, Calico's range for IPv4 pools",
            ),
            (
                "fd00::/48",
                "64",
                "test.yaml: IPPool p: field spec.blockSize: 64 is outside 116–128, Calico's range for IPv6 pools",
            ),
            (
                "10.244.0.0/16",
                "abc",
                "test.yaml: IPPool p: field spec.blockSize: got the text \"abc\", expected a whole number from 0 to 255",
            ),
        ] {
            assert_eq!(
                pool(cidr, size).expect_err(size).to_string(),
                err,
                "{cidr} {size}"
            );
        }
        for (cidr, size) in [
            ("10.244.0.0/16", "20"),
            ("10.244.0.0/16", "32"),
            ("fd00::/48", "122"),
        ] {
            assert!(pool(cidr, size).is_ok(), "{cidr} {size}");
        }
    }

    #[test]
    fn a_single_file_or_a_directory_is_a_datastore_and_an_empty_one_is_named() {
        let dir = std::env::temp_dir().join(format!("cdpt-ds-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
        let file = dir.join("calico.yaml");
        std::fs::write(
            &file,
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16}\n",
        )
        .expect("write");
        assert_eq!(load_dir(&file).expect("one file").pools.len(), 1);
        assert_eq!(load_dir(&dir).expect("a directory").pools.len(), 1);
        let err = load_dir(&dir.join("empty")).expect_err("empty");
        assert!(matches!(&err, DatastoreError::NoFiles { path } if path.ends_with("empty")));
        assert_eq!(err.to_string(), "no *.yaml, *.yml or *.json file in it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_both_api_groups_lists_and_k8s_nodes() {
        let ds = load(include_str!("testdata/datastore.yaml")).expect("valid datastore");
        insta::assert_yaml_snapshot!(ds);
    }

    #[test]
    fn bad_field_names_file_object_and_field() {
        let err = load("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\nspec: {cidr: 10.0.0.0/33}\n")
            .expect_err("bad cidr");
        assert_eq!(
            err.to_string(),
            "test.yaml: IPPool p1: field spec.cidr: \"10.0.0.0/33\" is not a CIDR"
        );
        let err = load("apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {vxlanVNI: lots}\n")
            .expect_err("bad vni");
        assert_eq!(
            err.to_string(),
            "test.yaml: FelixConfiguration default: field spec.vxlanVNI: got the text \"lots\", \
             expected a whole number from 0 to 4294967295"
        );
        let err = load("kind: IPAMBlock\napiVersion: crd.projectcalico.org/v1\nmetadata: {name: b}\nspec: {cidr: 10.0.0.0/30, allocations: [0, 0, 0, 0, 0]}\n")
            .expect_err("ordinal beyond the block");
        assert!(
            err.to_string().contains("field spec.allocations[0]"),
            "{err}"
        );
        let err = load("kind: Node\napiVersion: v1\nmetadata:\n  name: n\n  annotations: {projectcalico.org/IPv4Address: not-an-ip}\n")
            .expect_err("bad annotation");
        assert!(
            err.to_string()
                .contains("metadata.annotations[projectcalico.org/IPv4Address]"),
            "{err}"
        );
        assert!(matches!(
            load("a: [unclosed"),
            Err(DatastoreError::Yaml { .. })
        ));
    }

    /// A Kubernetes Node carries Calico's WireGuard data for both families in annotations.
    #[test]
    fn kubernetes_node_wireguard_annotations() {
        let ds = load(
            "kind: Node\napiVersion: v1\nmetadata:\n  name: n\n  annotations:\n    \
             projectcalico.org/IPv4Address: 10.0.0.2/24\n    \
             projectcalico.org/IPv6Address: fd00::2/64\n    \
             projectcalico.org/IPv4WireguardInterfaceAddr: 10.244.1.1\n    \
             projectcalico.org/IPv6WireguardInterfaceAddr: fd00:244:1::1\n    \
             projectcalico.org/WireguardPublicKey: K4\n    \
             projectcalico.org/WireguardPublicKeyV6: K6\n",
        )
        .expect("valid");
        let n = &ds.nodes[0];
        assert_eq!(n.wireguard_ipv4, Some("10.244.1.1".parse().expect("ip")));
        assert_eq!(n.wireguard_ipv6, Some("fd00:244:1::1".parse().expect("ip")));
        assert_eq!(n.ipv6, Some("fd00::2/64".parse().expect("ip")));
        assert_eq!(
            (
                n.wireguard_public_key.as_deref(),
                n.wireguard_public_key_v6.as_deref()
            ),
            (Some("K4"), Some("K6"))
        );
        let err = load(
            "kind: Node\napiVersion: v1\nmetadata:\n  name: n\n  annotations: \
             {projectcalico.org/IPv6WireguardInterfaceAddr: 10.0.0.1}\n",
        )
        .expect_err("not IPv6");
        assert!(
            err.to_string().contains("IPv6WireguardInterfaceAddr"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_warnings() {
        let ds = load(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1, uid: x}\nspec: {cidr: 10.0.0.0/16, futureField: 1}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: gnp}\n",
        )
        .expect("loads");
        assert_eq!(ds.pools.len(), 1);
        assert_eq!(
            ds.warnings,
            [
                "test.yaml: IPPool p1: unknown field spec.futureField ignored",
                "test.yaml: GlobalNetworkPolicy gnp: kind not used for verification, ignored"
            ]
        );
    }

    #[test]
    fn per_node_felix_configuration_overrides_default() {
        let ds = load(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {vxlanMTU: 1400, vxlanVNI: 4097}\n---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.n1}\nspec: {vxlanMTU: 1350}\n",
        )
        .expect("loads");
        let c = ds.felix_config("n1");
        assert_eq!((c.vxlan_mtu, c.vxlan_vni), (Some(1350), Some(4097)));
        assert_eq!(ds.felix_config("n2").vxlan_mtu, Some(1400));
    }
}
