//! Calico eBPF mode's own state: the maps Felix pins under `/sys/fs/bpf/tc/globals`
//! (`felix/bpf/bpfdefs/defs.go` `GlobalPinDir`) and the TCX/netkit links it pins for its TC
//! programs (`felix/bpf/tc/attach.go` `ProgPinPath`: `/sys/fs/bpf/tcx/<iface without
//! dots>_<ingress|egress>`).
//!
//! Each map is decoded only in a layout identified by both its pinned name (Felix appends the
//! map's version, `felix/bpf/maps/maps.go` `versionedStr`) and the key and value sizes and
//! type the kernel reports for it; anything else is "not observable", naming the sizes.

pub mod counters;
pub mod routes;

use std::path::{Path, PathBuf};

use aya::maps::{LpmTrie, Map, MapData, MapError, PerCpuHashMap};
use serde::{Deserialize, Serialize};

use super::{Source, Unavailable, error_chain};

pub use self::{
    counters::{Hook, IfaceCounters},
    routes::BpfRoute,
};

/// What Felix's eBPF dataplane left on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoBpf {
    /// Every `cali_*` map pinned in the globals directory, by name.
    pub maps: Vec<PinnedMap>,
    /// Felix's TC/netkit links pinned for interfaces (`tcx/eth0_ingress`): programs attached
    /// now, the evidence that eBPF mode is live rather than left-over pins.
    pub attached: Vec<String>,
    /// The route map's entries; `None` when it is not pinned or could not be decoded.
    pub routes: Option<Vec<BpfRoute>>,
    /// The IPv6 route map's, likewise (Felix pins it only with IPv6 in eBPF mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_v6: Option<Vec<BpfRoute>>,
    /// Per-interface counters; `None` when the map is not pinned or could not be decoded.
    pub counters: Option<CounterMap>,
}

impl CalicoBpf {
    /// Records how many entries a decoded map holds, for the summary.
    pub fn set_entries(&mut self, name: &str, n: u64) {
        if let Some(m) = self.maps.iter_mut().find(|m| m.name == name) {
            m.entries = Some(n);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedMap {
    pub name: String,
    /// The version suffix Felix appended (1 when there is none).
    pub version: u32,
    /// The kernel's map type, e.g. `LpmTrie`; empty when the map could not be opened.
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Counted for the maps this agent decodes.
    pub entries: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterMap {
    pub map: String,
    pub interfaces: Vec<IfaceCounters>,
}

#[derive(Debug, thiserror::Error)]
pub enum CalicoBpfError {
    #[error("could not open the pinned map {path} (needs CAP_BPF, or CAP_SYS_ADMIN)")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "{name} is a {kind} map with {key}-byte keys and {value}-byte values; Calico's layout \
         is a {expected_kind} with {expected_key}-byte keys and {expected_value}-byte values: \
         a Calico version this agent does not know"
    )]
    Layout {
        name: String,
        kind: String,
        key: u32,
        value: u32,
        expected_kind: &'static str,
        expected_key: usize,
        expected_value: usize,
    },
    #[error(transparent)]
    Counters(#[from] counters::LayoutError),
}

/// The version suffix of a pinned name (`cali_v4_ct4` → 4, `cali_v4_routes` → 1).
fn version_suffix(name: &str) -> u32 {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    name[name.len() - digits..].parse().unwrap_or(1)
}

/// Reads Felix's pinned eBPF state under `pin_dir` (the globals directory; the link pins are
/// looked for two levels up, at the bpffs root). `None` when Felix pinned no map there.
pub fn read(pin_dir: &Path, unavailable: &mut Vec<Unavailable>) -> Option<CalicoBpf> {
    let names = pinned_names(pin_dir);
    // Felix in eBPF mode always pins its maps; link pins alone (`tcx/` is a shared place) may
    // be another tool's and are not taken for Felix's.
    if names.is_empty() {
        return None;
    }
    let mut bpf = CalicoBpf {
        attached: pin_dir
            .parent()
            .and_then(Path::parent)
            .map(link_pins)
            .unwrap_or_default(),
        ..CalicoBpf::default()
    };
    for name in &names {
        bpf.maps.push(describe(&pin_dir.join(name), name));
    }
    for (name, v6) in [(routes::MAP_NAME, false), (routes::MAP_NAME_V6, true)] {
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let path = pin_dir.join(name);
        let read = if v6 {
            read_routes::<16, { routes::KEY_LEN_V6 }, { routes::VALUE_LEN_V6 }>(
                &path,
                name,
                routes::decode_v6,
            )
        } else {
            read_routes::<4, { routes::KEY_LEN }, { routes::VALUE_LEN }>(
                &path,
                name,
                routes::decode,
            )
        };
        match read {
            Ok(r) => {
                bpf.set_entries(name, r.len() as u64);
                if v6 {
                    bpf.routes_v6 = Some(r);
                } else {
                    bpf.routes = Some(r);
                }
            }
            Err(e) => unavailable.push(Unavailable::new(
                Source::CalicoBpfRoutes,
                name,
                error_chain(&e),
            )),
        }
    }
    // The newest version pinned is the one the running Felix uses; older ones are left-overs
    // of an upgrade.
    let counter_map = names
        .iter()
        .filter(|n| counters::version_of(n).is_some())
        .max_by_key(|n| counters::version_of(n));
    if let Some(name) = counter_map {
        match read_counters(&pin_dir.join(name), name) {
            Ok(c) => {
                bpf.set_entries(name, c.interfaces.len() as u64);
                bpf.counters = Some(c);
            }
            Err(e) => unavailable.push(Unavailable::new(
                Source::CalicoBpfCounters,
                name.clone(),
                error_chain(&e),
            )),
        }
    }
    Some(bpf)
}

/// The `cali_*` pins in `dir`, sorted; none when it cannot be listed.
pub(crate) fn pinned_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("cali_"))
        .collect();
    names.sort();
    names
}

/// Felix's TCX and netkit link pins, `tcx/<iface>_<hook>`.
fn link_pins(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["tcx", "netkit"] {
        for e in std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if let Ok(name) = e.file_name().into_string()
                && (name.ends_with("_ingress") || name.ends_with("_egress"))
            {
                out.push(format!("{sub}/{name}"));
            }
        }
    }
    out.sort();
    out
}

/// A map's type and sizes as the kernel reports them; unopenable maps are listed bare.
fn describe(path: &Path, name: &str) -> PinnedMap {
    let mut m = PinnedMap {
        name: name.to_string(),
        version: version_suffix(name),
        kind: String::new(),
        key_size: 0,
        value_size: 0,
        max_entries: 0,
        entries: None,
    };
    if let Ok(info) = MapData::from_pin(path).and_then(|d| d.info()) {
        m.kind = info
            .map_type()
            .map(|t| format!("{t:?}"))
            .unwrap_or_default();
        m.key_size = info.key_size();
        m.value_size = info.value_size();
        m.max_entries = info.max_entries();
    }
    m
}

fn open(path: &Path) -> Result<(MapData, aya::maps::MapInfo), CalicoBpfError> {
    let err = |source| CalicoBpfError::Open {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(err)?;
    let info = data.info().map_err(err)?;
    Ok((data, info))
}

fn kind_of(info: &aya::maps::MapInfo) -> String {
    info.map_type()
        .map(|t| format!("{t:?}"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads a route map: an LPM trie whose keys are `K` bytes (the `u32` prefix length, then an
/// `A`-byte address) and whose values are `V` bytes, each entry decoded by `decode`.
fn read_routes<const A: usize, const K: usize, const V: usize>(
    path: &Path,
    name: &str,
    decode: fn(&[u8; K], &[u8; V]) -> Result<BpfRoute, routes::BadPrefix>,
) -> Result<Vec<BpfRoute>, CalicoBpfError> {
    let (data, info) = open(path)?;
    let layout = || CalicoBpfError::Layout {
        name: name.into(),
        kind: kind_of(&info),
        key: info.key_size(),
        value: info.value_size(),
        expected_kind: "LpmTrie",
        expected_key: K,
        expected_value: V,
    };
    if info.key_size() as usize != K || info.value_size() as usize != V {
        return Err(layout());
    }
    let map = Map::from_map_data(data).map_err(|source| CalicoBpfError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !matches!(map, Map::LpmTrie(_)) {
        return Err(layout());
    }
    let trie: LpmTrie<_, [u8; A], [u8; V]> =
        LpmTrie::try_from(map).map_err(|source| CalicoBpfError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = Vec::new();
    for entry in trie.iter() {
        match entry {
            Ok((key, value)) => {
                let mut k = [0u8; K];
                k[..4].copy_from_slice(&key.prefix_len().to_le_bytes());
                k[4..].copy_from_slice(&key.data());
                match decode(&k, &value) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::debug!(error = %e, map = name, "calico route entry skipped"),
                }
            }
            // Deleted between listing its key and reading it: Felix is reprogramming.
            Err(e) => {
                tracing::debug!(error = %e, map = name, "calico route entry vanished while reading")
            }
        }
    }
    out.sort_by_key(|r| r.destination);
    Ok(out)
}

fn read_counters(path: &Path, name: &str) -> Result<CounterMap, CalicoBpfError> {
    let (data, info) = open(path)?;
    let n = counters::layout(name, info.key_size(), info.value_size())?;
    let map = Map::from_map_data(data).map_err(|source| CalicoBpfError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !matches!(map, Map::PerCpuHashMap(_)) {
        return Err(CalicoBpfError::Layout {
            name: name.into(),
            kind: kind_of(&info),
            key: info.key_size(),
            value: info.value_size(),
            expected_kind: "PerCpuHash",
            expected_key: counters::KEY_LEN,
            expected_value: n * 8,
        });
    }
    let interfaces = match n {
        14 => per_cpu::<14>(map, path)?,
        17 => per_cpu::<17>(map, path)?,
        23 => per_cpu::<23>(map, path)?,
        25 => per_cpu::<25>(map, path)?,
        _ => per_cpu::<27>(map, path)?,
    };
    Ok(CounterMap {
        map: name.to_string(),
        interfaces,
    })
}

fn per_cpu<const N: usize>(map: Map, path: &Path) -> Result<Vec<IfaceCounters>, CalicoBpfError> {
    let err = |source| CalicoBpfError::Open {
        path: path.to_path_buf(),
        source,
    };
    let table: PerCpuHashMap<_, [u8; counters::KEY_LEN], [u64; N]> =
        PerCpuHashMap::try_from(map).map_err(err)?;
    let mut out = Vec::new();
    for entry in table.iter() {
        match entry {
            Ok((key, values)) => {
                let Some((ifindex, hook)) = counters::decode_key(&key) else {
                    continue;
                };
                out.push(counters::sum(ifindex, hook, values.iter().map(|v| &v[..])));
            }
            Err(e) => tracing::debug!(error = %e, "calico counters entry vanished while reading"),
        }
    }
    out.sort_by_key(|c| (c.ifindex, c.hook));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_names_carry_their_version() {
        assert_eq!(version_suffix("cali_v4_ct4"), 4);
        assert_eq!(version_suffix("cali_counters6"), 6);
        assert_eq!(version_suffix("cali_v4_routes"), 1);
    }

    /// Files that are not BPF objects (a copied directory, a bpffs mounted elsewhere wrongly):
    /// listed bare, the route map not observable, never decoded as something.
    #[test]
    fn pins_that_are_not_maps_are_listed_bare_and_not_decoded() {
        let dir = std::env::temp_dir().join(format!("calico-bpf-files-{}", std::process::id()));
        let globals = dir.join("tc/globals");
        std::fs::create_dir_all(&globals).expect("dir");
        std::fs::create_dir_all(dir.join("tcx")).expect("dir");
        for f in [
            globals.join("cali_v4_routes"),
            globals.join("cali_counters6"),
            dir.join("tcx/eth0_ingress"),
            dir.join("tcx/README"),
        ] {
            std::fs::write(f, b"").expect("file");
        }
        let mut unavailable = Vec::new();
        let found = read(&globals, &mut unavailable);
        let _ = std::fs::remove_dir_all(&dir);
        let b = found.expect("maps pinned");
        assert_eq!(b.attached, ["tcx/eth0_ingress"]);
        assert_eq!(b.maps.len(), 2);
        assert!(
            b.maps
                .iter()
                .all(|m| m.kind.is_empty() && m.entries.is_none())
        );
        assert_eq!((b.routes, b.counters), (None, None));
        let kinds: Vec<Source> = unavailable.iter().map(|u| u.kind).collect();
        assert_eq!(kinds, [Source::CalicoBpfRoutes, Source::CalicoBpfCounters]);
        assert!(
            unavailable[0]
                .reason
                .contains("could not open the pinned map"),
            "{unavailable:?}"
        );
    }

    #[test]
    fn an_empty_directory_is_not_ebpf_mode() {
        let dir = std::env::temp_dir().join(format!("calico-bpf-none-{}", std::process::id()));
        let globals = dir.join("tc/globals");
        std::fs::create_dir_all(&globals).expect("dir");
        let mut unavailable = Vec::new();
        let found = read(&globals, &mut unavailable);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(found.is_none());
        assert!(unavailable.is_empty());
    }
}
