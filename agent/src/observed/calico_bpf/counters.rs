//! Felix's per-interface packet counters, `cali_counters<N>`: what its TC and XDP programs
//! accepted, dropped and redirected, and why.
//!
//! Layout (`felix/bpf/counters/counters.go`, `felix/bpf/counters/map.go`,
//! `felix/bpf-gpl/counters.h`): a per-CPU hash keyed by `struct counters_key { u32 ifindex;
//! u32 hook; }` (hook 0 TC ingress, 1 TC egress, 2 XDP) whose value is an array of `u64`
//! counters. The array only ever grew at its end, each growth with a new map version:
//! v2 14 counters (v3.26–v3.29), v3 17 (v3.30), v4 23 (development only), v5 25 (v3.31), v6
//! 27 (v3.32, master `87c15906f20c`). A version is trusted only with its own value size.

use serde::{Deserialize, Serialize};

/// The pinned name without its version suffix (`maps.versionedStr`: `Name` + `Version`).
pub const MAP_PREFIX: &str = "cali_counters";
pub const KEY_LEN: usize = 8;

/// The counter indices' names, in the order of the `TotalPackets = iota` block of
/// `counters.go`; a version's array is a prefix of this list.
pub const REASONS: [&str; 27] = [
    "total_packets",
    "accepted_by_failsafe",
    "accepted_by_policy",
    "accepted_by_another_program",
    "dropped_by_policy",
    "dropped_short_packet",
    "dropped_failed_csum",
    "dropped_ip_options",
    "dropped_ip_malformed",
    "dropped_failed_encap",
    "dropped_failed_decap",
    "dropped_unauth_source",
    "dropped_unknown_route",
    "dropped_blackhole_route",
    "source_collision_hit",
    "source_collision_resolution_failed",
    "conntrack_create_failed",
    "redirect",
    "redirect_neigh",
    "redirect_peer",
    "dropped_frag_wait",
    "dropped_frag_reorder",
    "dropped_frag_unsupported",
    "dropped_qos",
    "reserved1",
    "dropped_maglev_no_backend",
    "dropped_no_host_ip",
];

/// Map version → number of counters, for the versions Felix has shipped.
const KNOWN: [(u32, usize); 5] = [(2, 14), (3, 17), (4, 23), (5, 25), (6, 27)];

/// The pinned names this agent can decode, newest first.
pub fn known_names() -> impl Iterator<Item = String> {
    KNOWN.iter().rev().map(|(v, _)| format!("{MAP_PREFIX}{v}"))
}

/// The version a pinned file name carries (`cali_counters6` → 6, `cali_counters` → 1).
pub fn version_of(name: &str) -> Option<u32> {
    let suffix = name.strip_prefix(MAP_PREFIX)?;
    if suffix.is_empty() {
        return Some(1);
    }
    suffix.parse().ok()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "{name}: version {version} is not one this agent knows (it knows {known}); \
         found {key}-byte keys and {value}-byte values"
    )]
    UnknownVersion {
        name: String,
        version: u32,
        known: String,
        key: u32,
        value: u32,
    },
    #[error(
        "{name}: version {version} has {expected_key}-byte keys and {expected_value}-byte values \
         ({counters} counters), found {key} and {value}: a layout this agent does not know"
    )]
    Sizes {
        name: String,
        version: u32,
        counters: usize,
        expected_key: usize,
        expected_value: usize,
        key: u32,
        value: u32,
    },
}

/// How many counters the map named `name` holds, checked against its key and value sizes.
pub fn layout(name: &str, key: u32, value: u32) -> Result<usize, LayoutError> {
    let version = version_of(name).unwrap_or(0);
    let Some((_, counters)) = KNOWN.iter().find(|(v, _)| *v == version) else {
        return Err(LayoutError::UnknownVersion {
            name: name.to_string(),
            version,
            known: KNOWN
                .iter()
                .map(|(v, n)| format!("v{v}: {} bytes", n * 8))
                .collect::<Vec<_>>()
                .join(", "),
            key,
            value,
        });
    };
    if key as usize != KEY_LEN || value as usize != counters * 8 {
        return Err(LayoutError::Sizes {
            name: name.to_string(),
            version,
            counters: *counters,
            expected_key: KEY_LEN,
            expected_value: counters * 8,
            key,
            value,
        });
    }
    Ok(*counters)
}

/// Where on an interface a program counted (`counters.h` `COUNTERS_TC_INGRESS` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Ingress,
    Egress,
    Xdp,
}

impl Hook {
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            2 => Some(Self::Xdp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Xdp => "xdp",
        }
    }
}

/// One interface's counters at one hook, summed over CPUs; zero counters are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceCounters {
    pub ifindex: u32,
    pub hook: Hook,
    /// Reason name → packets.
    pub counts: Vec<(String, u64)>,
}

impl IfaceCounters {
    pub fn get(&self, reason: &str) -> u64 {
        self.counts
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// Decodes a key: `None` for a hook Felix does not define.
pub fn decode_key(key: &[u8; KEY_LEN]) -> Option<(u32, Hook)> {
    let ifindex = u32::from_le_bytes([key[0], key[1], key[2], key[3]]);
    let hook = Hook::from_raw(u32::from_le_bytes([key[4], key[5], key[6], key[7]]))?;
    Some((ifindex, hook))
}

/// Names and sums one entry's per-CPU arrays (each `counters` long).
pub fn sum<'a>(
    ifindex: u32,
    hook: Hook,
    per_cpu: impl IntoIterator<Item = &'a [u64]>,
) -> IfaceCounters {
    let mut totals = [0u64; REASONS.len()];
    for cpu in per_cpu {
        for (t, v) in totals.iter_mut().zip(cpu) {
            *t = t.wrapping_add(*v);
        }
    }
    IfaceCounters {
        ifindex,
        hook,
        counts: REASONS
            .iter()
            .zip(totals)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| ((*r).to_string(), n))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shipped_version_is_known_by_name_and_size() {
        assert_eq!(layout("cali_counters6", 8, 216), Ok(27));
        assert_eq!(layout("cali_counters5", 8, 200), Ok(25));
        assert_eq!(layout("cali_counters3", 8, 136), Ok(17));
        assert_eq!(layout("cali_counters2", 8, 112), Ok(14));
        assert_eq!(version_of("cali_counters"), Some(1));
        assert_eq!(version_of("cali_rule_ctrs2"), None);
    }

    #[test]
    fn a_size_that_does_not_match_its_version_names_both() {
        let e = layout("cali_counters6", 8, 200).expect_err("wrong size");
        assert_eq!(
            e.to_string(),
            "cali_counters6: version 6 has 8-byte keys and 216-byte values (27 counters), \
             found 8 and 200: a layout this agent does not know"
        );
        let e = layout("cali_counters7", 8, 232).expect_err("unknown version");
        let s = e.to_string();
        assert!(s.contains("version 7 is not one this agent knows"), "{s}");
        assert!(s.contains("found 8-byte keys and 232-byte values"), "{s}");
        assert!(s.contains("v6: 216 bytes"), "{s}");
    }

    #[test]
    fn per_cpu_arrays_are_summed_and_named() {
        let key = [5, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(decode_key(&key), Some((5, Hook::Egress)));
        assert_eq!(decode_key(&[5, 0, 0, 0, 9, 0, 0, 0]), None);
        let mut cpu0 = [0u64; 14];
        let mut cpu1 = [0u64; 14];
        cpu0[0] = 10;
        cpu1[0] = 5;
        cpu0[4] = 2;
        cpu1[12] = 1;
        let c = sum(5, Hook::Egress, [&cpu0[..], &cpu1[..]]);
        assert_eq!(
            c.counts,
            [
                ("total_packets".to_string(), 15),
                ("dropped_by_policy".to_string(), 2),
                ("dropped_unknown_route".to_string(), 1)
            ]
        );
        assert_eq!(c.get("dropped_by_policy"), 2);
        assert_eq!(c.get("redirect"), 0);
    }
}
