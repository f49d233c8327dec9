//! WireGuard devices and peers from `wg show all dump`, which answers for kernel devices
//! (genetlink) and userspace ones (UAPI socket, e.g. boringtun) alike.
//!
//! The dump's interface lines carry the private key: it is dropped while parsing and never
//! stored, logged or printed.

use serde::{Deserialize, Serialize};

use super::{Source, Unavailable, exec};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgDevice {
    pub name: String,
    pub public_key: Option<String>,
    pub listen_port: Option<u16>,
    /// `off` or a hex mark, as `wg` prints it.
    pub fwmark: Option<String>,
    pub peers: Vec<WgPeer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgPeer {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Seconds since the epoch of the latest handshake; `None` if there never was one.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u32>,
}

/// Parses `wg show all dump`. Lines are tab-separated: 5 fields for an interface
/// (`name private public port fwmark`), 9 for a peer. Malformed lines are reported.
pub fn parse_dump(text: &str) -> (Vec<WgDevice>, Vec<String>) {
    let mut devices: Vec<WgDevice> = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.len() {
            0 | 1 if line.trim().is_empty() => {}
            5 => devices.push(WgDevice {
                name: f[0].into(),
                // f[1] is the private key: deliberately not kept.
                public_key: key(f[2]),
                listen_port: f[3].parse().ok(),
                fwmark: Some(f[4].into()),
                peers: Vec::new(),
            }),
            9 => {
                let peer = WgPeer {
                    public_key: f[1].into(),
                    endpoint: key(f[3]),
                    allowed_ips: if f[4] == "(none)" {
                        Vec::new()
                    } else {
                        f[4].split(',').map(str::to_string).collect()
                    },
                    latest_handshake: f[5].parse().ok().filter(|t| *t != 0),
                    rx_bytes: f[6].parse().unwrap_or(0),
                    tx_bytes: f[7].parse().unwrap_or(0),
                    persistent_keepalive: f[8].parse().ok(),
                };
                // Large devices may be printed in pieces; merge by device name.
                match devices.iter_mut().find(|d| d.name == f[0]) {
                    Some(d) => d.peers.push(peer),
                    None => devices.push(WgDevice {
                        name: f[0].into(),
                        peers: vec![peer],
                        ..Default::default()
                    }),
                }
            }
            k => errors.push(format!(
                "line {}: {k} fields, expected 5 (interface) or 9 (peer)",
                n + 1
            )),
        }
    }
    (devices, errors)
}

fn key(v: &str) -> Option<String> {
    (v != "(none)" && !v.is_empty()).then(|| v.to_string())
}

/// Reads all WireGuard devices, if any exist and `wg` is installed.
pub async fn read(unavailable: &mut Vec<Unavailable>) -> Vec<WgDevice> {
    match exec::run("wg", &["show", "all", "dump"]).await {
        Ok(out) => {
            let (devices, errors) = parse_dump(&out);
            unavailable.extend(
                errors
                    .into_iter()
                    .map(|reason| Unavailable::new(Source::Wireguard, "wg show all dump", reason)),
            );
            devices
        }
        Err(e) => {
            unavailable.push(Unavailable::new(
                Source::Wireguard,
                "wg show all dump",
                e.to_string(),
            ));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "wireguard.cali\tcHJpdmF0ZS1rZXktbmV2ZXIta2VwdC1pbi1tZW1vcnkxMjM=\tQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\t51820\t0x200000\n\
wireguard.cali\tQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\t(none)\t10.99.0.12:51820\t10.244.1.0/26,10.244.1.0/32\t1763920000\t1234\t5678\toff\n\
wireguard.cali\tQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";

    #[test]
    fn parses_devices_and_peers_without_the_private_key() {
        let (devices, errors) = parse_dump(DUMP);
        assert!(errors.is_empty(), "{errors:?}");
        let text = format!("{devices:?}");
        assert!(
            !text.contains("cHJpdmF0ZS1rZXk"),
            "private key leaked: {text}"
        );
        insta::assert_yaml_snapshot!(devices);
    }

    #[test]
    fn malformed_lines_are_reported() {
        let (devices, errors) = parse_dump("wireguard.cali\tonly-two\n");
        assert!(devices.is_empty());
        assert_eq!(
            errors,
            ["line 1: 2 fields, expected 5 (interface) or 9 (peer)"]
        );
    }
}
