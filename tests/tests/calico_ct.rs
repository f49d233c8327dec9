//! Calico eBPF mode's conntrack map as Felix pins it: a real LRU hash map in Calico's IPv4
//! layout (16-byte key, 88-byte value), created and filled with bpftool in a bpffs mounted for
//! the test only, then read by the agent: counts per protocol and TCP state, the map's
//! capacity, and a clear error for a layout it does not know.

use std::{fmt::Write as _, path::PathBuf};

use agent::observed::calico_ct::{self, CalicoCtError};
use integration_tests::unique;
use xtask::sh;

/// A bpffs of the test's own, unmounted and removed on drop.
struct BpfFs(PathBuf);

impl BpfFs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("bpffs"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let path = dir.to_string_lossy().into_owned();
        sh::run(&["mount", "-t", "bpf", "bpf", &path]).expect("mount bpffs");
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let path = self.0.to_string_lossy().into_owned();
        let _ = sh::run(&["umount", &path]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

const SYN: u32 = 0x1;
const ACK: u32 = 0x2;

/// Key and value bytes for one connection from 10.244.0.5:`sport` to 10.244.1.7:443, written
/// out from the layout in reference/calico-dataplane.md §6 independently of the agent's reader.
fn entry(proto: u32, sport: u16, kind: u8, a_bits: u32, b_bits: u32) -> (Vec<u8>, Vec<u8>) {
    let mut key = proto.to_le_bytes().to_vec();
    key.extend([10, 244, 0, 5, 10, 244, 1, 7]);
    key.extend(sport.to_le_bytes());
    key.extend(443u16.to_le_bytes());
    let mut value = vec![0u8; 88];
    value[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
    value[16] = kind;
    // Legs at 24 and 48: u64 bytes, u32 packets, u32 seqno, u32 bits, u32 ifindex.
    value[40..44].copy_from_slice(&a_bits.to_le_bytes());
    value[64..68].copy_from_slice(&b_bits.to_le_bytes());
    (key, value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::from("hex"), |mut s, b| {
        let _ = write!(s, " {b:02x}");
        s
    })
}

/// Creates the pinned map and fills it in one bpftool batch.
fn pin_map(path: &str, name: &str, value_len: usize, entries: &[(Vec<u8>, Vec<u8>)]) {
    sh::run(&[
        "bpftool",
        "map",
        "create",
        path,
        "type",
        "lru_hash",
        "key",
        "16",
        "value",
        &value_len.to_string(),
        "entries",
        "1024",
        "name",
        name,
    ])
    .expect("bpftool map create");
    if entries.is_empty() {
        return;
    }
    let batch: String = entries
        .iter()
        .map(|(k, v)| format!("map update pinned {path} key {} value {}\n", hex(k), hex(v)))
        .collect();
    let file = std::env::temp_dir().join(unique("ctbatch"));
    std::fs::write(&file, batch).expect("batch file");
    let result = sh::run(&["bpftool", "batch", "file", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    result.expect("bpftool batch");
}

#[test]
fn the_pinned_calico_map_is_counted_by_protocol_and_state() {
    let fs = BpfFs::new();
    let mut entries = Vec::new();
    for p in 0..300 {
        entries.push(entry(6, 10_000 + p, 0, SYN | ACK, SYN | ACK));
    }
    for p in 0..20 {
        entries.push(entry(6, 20_000 + p, 0, SYN, 0));
    }
    // NAT-forward companions of NAT'd connections: in the table, not connections.
    for p in 0..5 {
        entries.push(entry(6, 30_000 + p, 1, 0, 0));
    }
    for p in 0..50 {
        entries.push(entry(17, 40_000 + p, 0, 0, 0));
    }
    pin_map(&fs.path("cali_v4_ct4"), "cali_v4_ct4", 88, &entries);

    let ct = calico_ct::read(&fs.0)
        .expect("the map is found")
        .expect("the map is read");
    assert_eq!((ct.map.as_str(), ct.max_entries), ("cali_v4_ct4", 1024));
    let c = &ct.counts;
    assert_eq!(c.total, 375);
    assert!(c.complete);
    assert_eq!(c.by_protocol.get("tcp"), Some(&320));
    assert_eq!(c.by_protocol.get("udp"), Some(&50));
    assert_eq!(c.tcp_states.get("ESTABLISHED"), Some(&300));
    assert_eq!(c.tcp_states.get("SYN-SENT"), Some(&20));
}

#[test]
fn an_unknown_layout_is_a_clear_error() {
    let fs = BpfFs::new();
    // The pre-v3.31 name with a value size no Calico release used.
    pin_map(&fs.path("cali_v4_ct3"), "cali_v4_ct3", 64, &[]);
    match calico_ct::read(&fs.0) {
        Some(Err(e @ CalicoCtError::Layout { .. })) => {
            let msg = e.to_string();
            assert!(
                msg.contains("cali_v4_ct3") && msg.contains("64-byte values"),
                "{msg}"
            );
        }
        other => panic!("expected a layout error, got {other:?}"),
    }
}
