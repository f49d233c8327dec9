//! WireGuard devices and their peers. A kernel device (link kind `wireguard`) is read over
//! generic netlink, a userspace one (boringtun, wireguard-go: a TUN device) over its UAPI
//! socket; a bundle holds `wg show all dump` instead.
//!
//! Every reader meets the private key: it is dropped where it is decoded and never stored,
//! logged or printed.

mod dump;
pub mod genl;
pub mod uapi;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use dump::parse_dump;

use super::{Link, Source, Unavailable, error_chain};

/// Where wireguard-tools, wireguard-go and boringtun put a userspace device's UAPI socket.
pub const UAPI_DIR: &str = "/var/run/wireguard";

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

impl WgDevice {
    /// The fwmark as a number; `None` when off or unreadable.
    pub fn fwmark_value(&self) -> Option<u32> {
        let m = self.fwmark.as_deref()?;
        let v = match m.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => m.parse().ok()?,
        };
        (v != 0).then_some(v)
    }
}

/// `wg`'s rendering of a fwmark: `off` for none.
pub fn fwmark_text(mark: u32) -> String {
    if mark == 0 {
        "off".into()
    } else {
        format!("0x{mark:x}")
    }
}

/// Adds `peer` to `peers`, or folds it into the peer with the same public key. Kernel dumps
/// split a large device across messages and may continue one peer's allowed IPs in the next
/// message, repeating only its key.
pub fn merge_peer(peers: &mut Vec<WgPeer>, peer: WgPeer) {
    let Some(have) = peers.iter_mut().find(|p| p.public_key == peer.public_key) else {
        peers.push(peer);
        return;
    };
    for ip in peer.allowed_ips {
        if !have.allowed_ips.contains(&ip) {
            have.allowed_ips.push(ip);
        }
    }
    have.endpoint = have.endpoint.take().or(peer.endpoint);
    have.latest_handshake = have.latest_handshake.or(peer.latest_handshake);
    have.rx_bytes = have.rx_bytes.max(peer.rx_bytes);
    have.tx_bytes = have.tx_bytes.max(peer.tx_bytes);
    have.persistent_keepalive = have.persistent_keepalive.or(peer.persistent_keepalive);
}

/// Whether a link is a WireGuard device or may be a userspace one (a TUN device by Felix's
/// naming).
fn candidate(l: &Link) -> bool {
    l.kind.as_deref() == Some("wireguard")
        || l.name.starts_with("wireguard.")
        || l.name.starts_with("wg-")
}

/// How a device is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadVia {
    Uapi(PathBuf),
    Genl,
    /// A device named like Felix's that is neither a kernel device nor has a socket.
    None,
}

fn path_for(l: &Link, uapi_dir: &Path) -> ReadVia {
    let sock = uapi_dir.join(format!("{}.sock", l.name));
    if l.kind.as_deref() != Some("wireguard") && sock.exists() {
        ReadVia::Uapi(sock)
    } else if l.kind.as_deref() == Some("wireguard") {
        ReadVia::Genl
    } else {
        ReadVia::None
    }
}

/// Reads every WireGuard device among `links`. A device that cannot be read is reported in
/// `unavailable` with the reason and left out, so its peer checks do not run.
pub async fn read(links: &[Link], unavailable: &mut Vec<Unavailable>) -> Vec<WgDevice> {
    // AGENT_WG_UAPI_DIR: a userspace implementation started with another socket directory.
    let dir = std::env::var_os("AGENT_WG_UAPI_DIR")
        .map_or_else(|| PathBuf::from(UAPI_DIR), PathBuf::from);
    let mut devices = Vec::new();
    for l in links.iter().filter(|l| candidate(l)) {
        let (what, got) = match path_for(l, &dir) {
            ReadVia::Uapi(sock) => (
                format!("WireGuard UAPI {}", sock.display()),
                uapi::get(&sock).await.map_err(|e| error_chain(&e)),
            ),
            ReadVia::Genl => (
                format!("WireGuard generic netlink {}", l.name),
                genl::get(&l.name).map_err(|e| error_chain(&e)),
            ),
            // A TUN device named wg-… is not necessarily WireGuard: nothing to report unless
            // it bears the configured name, which the checks judge from the link itself.
            ReadVia::None => {
                if l.name.starts_with("wireguard.") {
                    unavailable.push(Unavailable::new(
                        Source::Wireguard,
                        format!("WireGuard device {}", l.name),
                        format!(
                            "not a kernel WireGuard device and no UAPI socket at {}",
                            dir.join(format!("{}.sock", l.name)).display()
                        ),
                    ));
                }
                continue;
            }
        };
        match got {
            Ok(mut d) => {
                d.name.clone_from(&l.name);
                tracing::debug!(device = %d.name, peers = d.peers.len(), via = %what, "read WireGuard device");
                devices.push(d);
            }
            Err(reason) => {
                tracing::debug!(device = %l.name, %reason, "WireGuard device unreadable");
                unavailable.push(Unavailable::new(Source::Wireguard, what, reason));
            }
        }
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: &str, ips: &[&str]) -> WgPeer {
        WgPeer {
            public_key: key.into(),
            allowed_ips: ips.iter().map(|s| (*s).to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_peer_continued_in_the_next_message_is_merged() {
        let mut peers = Vec::new();
        let mut first = peer("A", &["10.0.0.0/26", "10.0.0.64/26"]);
        first.endpoint = Some("192.168.0.2:51820".into());
        first.latest_handshake = Some(1_700_000_000);
        merge_peer(&mut peers, first);
        merge_peer(&mut peers, peer("B", &["10.0.1.0/26"]));
        // The continuation repeats only the key (no endpoint, no handshake).
        merge_peer(&mut peers, peer("A", &["10.0.0.128/26", "10.0.0.64/26"]));
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[0].allowed_ips,
            ["10.0.0.0/26", "10.0.0.64/26", "10.0.0.128/26"]
        );
        assert_eq!(peers[0].endpoint.as_deref(), Some("192.168.0.2:51820"));
        assert_eq!(peers[0].latest_handshake, Some(1_700_000_000));
        assert_eq!(peers[1].allowed_ips, ["10.0.1.0/26"]);
    }

    #[test]
    fn fwmark_renders_and_parses_as_wg_does() {
        assert_eq!(fwmark_text(0), "off");
        assert_eq!(fwmark_text(0x20_0000), "0x200000");
        let mut d = WgDevice {
            fwmark: Some("0x200000".into()),
            ..Default::default()
        };
        assert_eq!(d.fwmark_value(), Some(0x20_0000));
        d.fwmark = Some("off".into());
        assert_eq!(d.fwmark_value(), None);
    }

    #[test]
    fn kernel_devices_use_genetlink_and_tun_devices_their_socket() {
        let dir = std::env::temp_dir().join(format!("wg-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("wg-user.sock"), b"").expect("file");
        let link = |name: &str, kind: Option<&str>| Link {
            index: 1,
            name: name.into(),
            kind: kind.map(Into::into),
            mtu: 1440,
            admin_up: true,
            oper_state: "unknown".into(),
            mac: None,
            link_index: None,
            controller: None,
            vxlan: None,
        };
        assert_eq!(
            path_for(&link("wireguard.cali", Some("wireguard")), &dir),
            ReadVia::Genl
        );
        assert_eq!(
            path_for(&link("wg-user", Some("tun")), &dir),
            ReadVia::Uapi(dir.join("wg-user.sock"))
        );
        assert_eq!(
            path_for(&link("wg-other", Some("tun")), &dir),
            ReadVia::None
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
