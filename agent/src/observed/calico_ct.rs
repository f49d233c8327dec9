//! Calico eBPF mode's own conntrack table, read from the map Felix pins
//! (`/sys/fs/bpf/tc/globals/cali_v4_ct4`, `cali_v4_ct3` before v3.31). In eBPF mode pod traffic
//! bypasses nf_conntrack, so this map is the table whose filling drops connections.
//!
//! Layout (reference/calico-dataplane.md §6, `felix/bpf/conntrack/v4/map.go`): 16-byte key
//! (`u32 proto`, `addr_a`, `addr_b`, `u16 port_a`, `u16 port_b`); 88-byte value with
//! `rst_seen` at 0, the entry type at 16 (0 normal, 1 NAT forward, 2 NAT reverse) and, for
//! normal and NAT-reverse entries, two 24-byte legs at 24 and 48 whose `bits` word (offset 16
//! in the leg) holds SYN 0x1, ACK 0x2, FIN 0x4, RST 0x8.
//!
//! The map is read entry by entry (`BPF_MAP_GET_NEXT_KEY`), never collected: memory stays flat
//! whatever its size.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use serde::{Deserialize, Serialize};

use super::conntrack::ConntrackCounts;

/// Pinned names, newest layout first.
pub const MAP_NAMES: [&str; 2] = ["cali_v4_ct4", "cali_v4_ct3"];
pub const KEY_LEN: usize = 16;
pub const VALUE_LEN: usize = 88;

const TYPE_NAT_FWD: u8 = 1;
const LEG_A_TO_B: usize = 24;
const LEG_B_TO_A: usize = 48;
/// `bits` within a leg: after `u64 bytes`, `u32 packets`, `u32 seqno`.
const LEG_BITS: usize = 16;
const SYN: u32 = 0x1;
const ACK: u32 = 0x2;
const FIN: u32 = 0x4;
const RST: u32 = 0x8;

/// The Calico table's fill and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalicoConntrack {
    /// The pinned map's file name.
    pub map: String,
    /// Its capacity (`BPFMapSizeConntrack`, 512000 by default).
    pub max_entries: u32,
    /// `total` counts every entry (each occupies the table); the protocol and state counts
    /// are per connection, leaving out the NAT-forward companions of NAT'd connections, as
    /// `calico-node -bpf conntrack dump` does.
    pub counts: ConntrackCounts,
}

#[derive(Debug, thiserror::Error)]
pub enum CalicoCtError {
    #[error("could not open the pinned map {path} (needs CAP_BPF, or CAP_SYS_ADMIN)")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "{path} has {key}-byte keys and {value}-byte values, not the {KEY_LEN}/{VALUE_LEN} of \
         Calico's IPv4 conntrack layout: a Calico version this agent does not know"
    )]
    Layout { path: PathBuf, key: u32, value: u32 },
}

/// The Calico conntrack map pinned in `dir`, read; `None` when there is none (not eBPF mode).
pub fn read(dir: &Path) -> Option<Result<CalicoConntrack, CalicoCtError>> {
    let name = MAP_NAMES.iter().find(|n| dir.join(n).exists())?;
    Some(read_map(&dir.join(name), name))
}

fn read_map(path: &Path, name: &str) -> Result<CalicoConntrack, CalicoCtError> {
    let open = |source| CalicoCtError::Open {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(open)?;
    let info = data.info().map_err(open)?;
    if info.key_size() as usize != KEY_LEN || info.value_size() as usize != VALUE_LEN {
        return Err(CalicoCtError::Layout {
            path: path.to_path_buf(),
            key: info.key_size(),
            value: info.value_size(),
        });
    }
    let map = Map::from_map_data(data).map_err(open)?;
    let table: HashMap<_, [u8; KEY_LEN], [u8; VALUE_LEN]> = HashMap::try_from(map).map_err(open)?;
    let mut counts = ConntrackCounts {
        complete: true,
        ..ConntrackCounts::default()
    };
    for entry in table.iter() {
        match entry {
            Ok((key, value)) => tally(&mut counts, &key, &value),
            Err(e) => {
                // An entry deleted between listing its key and reading it; the rest goes on.
                tracing::debug!(error = %e, "calico conntrack entry vanished while reading");
                counts.complete = false;
            }
        }
    }
    Ok(CalicoConntrack {
        map: name.to_string(),
        max_entries: info.max_entries(),
        counts,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|w| <[u8; 4]>::try_from(w).ok())
        .map_or(0, u32::from_le_bytes)
}

/// Adds one entry to the counts.
pub fn tally(c: &mut ConntrackCounts, key: &[u8; KEY_LEN], value: &[u8; VALUE_LEN]) {
    c.total += 1;
    if value[16] == TYPE_NAT_FWD {
        return;
    }
    let proto = match u32_at(key, 0) {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    };
    *c.by_protocol.entry(proto.to_string()).or_default() += 1;
    if proto == "tcp" {
        let state = tcp_state(
            u32_at(value, 0) != 0 || u32_at(value, 4) != 0,
            u32_at(value, LEG_A_TO_B + LEG_BITS),
            u32_at(value, LEG_B_TO_A + LEG_BITS),
        );
        *c.tcp_states.entry(state.to_string()).or_default() += 1;
    }
}

/// The connection's state as `calico-node -bpf conntrack dump` names it.
fn tcp_state(rst_seen: bool, a_to_b: u32, b_to_a: u32) -> &'static str {
    if a_to_b & FIN != 0 && b_to_a & FIN != 0 {
        "CLOSED"
    } else if rst_seen || (a_to_b | b_to_a) & RST != 0 {
        "RESET"
    } else if a_to_b & (SYN | ACK) == SYN | ACK && b_to_a & (SYN | ACK) == SYN | ACK {
        "ESTABLISHED"
    } else {
        "SYN-SENT"
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A key and value in Calico's v4 layout.
    pub fn entry(
        proto: u32,
        kind: u8,
        rst_seen: u64,
        a: u32,
        b: u32,
    ) -> ([u8; KEY_LEN], [u8; VALUE_LEN]) {
        let mut k = [0u8; KEY_LEN];
        k[0..4].copy_from_slice(&proto.to_le_bytes());
        k[4..8].copy_from_slice(&[10, 244, 0, 5]);
        k[8..12].copy_from_slice(&[10, 244, 1, 7]);
        k[12..14].copy_from_slice(&40000u16.to_le_bytes());
        k[14..16].copy_from_slice(&443u16.to_le_bytes());
        let mut v = [0u8; VALUE_LEN];
        v[0..8].copy_from_slice(&rst_seen.to_le_bytes());
        v[8..16].copy_from_slice(&123_456_789u64.to_le_bytes());
        v[16] = kind;
        v[LEG_A_TO_B + LEG_BITS..LEG_A_TO_B + LEG_BITS + 4].copy_from_slice(&a.to_le_bytes());
        v[LEG_B_TO_A + LEG_BITS..LEG_B_TO_A + LEG_BITS + 4].copy_from_slice(&b.to_le_bytes());
        (k, v)
    }

    #[test]
    fn entries_are_counted_by_protocol_and_tcp_state() {
        let mut c = ConntrackCounts::default();
        for (k, v) in [
            entry(6, 0, 0, SYN | ACK, SYN | ACK),
            entry(6, 2, 0, SYN | ACK, SYN | ACK),
            entry(6, 0, 0, SYN, 0),
            entry(6, 0, 0, SYN | ACK | FIN, SYN | ACK | FIN),
            entry(6, 0, 1, SYN | ACK, SYN | ACK),
            entry(6, 0, 0, SYN | ACK | RST, SYN | ACK),
            // The NAT-forward companion: occupies the table, is no connection of its own.
            entry(6, TYPE_NAT_FWD, 0, 0, 0),
            entry(17, 0, 0, 0, 0),
            entry(1, 0, 0, 0, 0),
            entry(47, 0, 0, 0, 0),
        ] {
            tally(&mut c, &k, &v);
        }
        assert_eq!(c.total, 10);
        let by = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied();
        assert_eq!(by(&c.by_protocol, "tcp"), Some(6));
        assert_eq!(
            (
                by(&c.by_protocol, "udp"),
                by(&c.by_protocol, "icmp"),
                by(&c.by_protocol, "other")
            ),
            (Some(1), Some(1), Some(1))
        );
        assert_eq!(by(&c.tcp_states, "ESTABLISHED"), Some(2));
        assert_eq!(by(&c.tcp_states, "SYN-SENT"), Some(1));
        assert_eq!(by(&c.tcp_states, "CLOSED"), Some(1));
        assert_eq!(by(&c.tcp_states, "RESET"), Some(2));
    }

    #[test]
    fn no_pinned_map_means_not_ebpf_mode() {
        let dir = std::env::temp_dir().join(format!("calico-ct-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert!(read(&dir).is_none());
        let _ = std::fs::remove_dir(&dir);
    }
}
