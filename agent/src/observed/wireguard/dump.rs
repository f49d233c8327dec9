//! `wg show all dump`, as a bundle captures it. Its interface lines carry the private key: the
//! field is skipped while parsing, never stored, logged or printed.

use super::{WgDevice, WgPeer};

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
                    Some(d) => super::merge_peer(&mut d.peers, peer),
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
