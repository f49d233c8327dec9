//! A userspace WireGuard device (boringtun, wireguard-go) over its UAPI socket: `get=1`, then
//! `key=value` lines ending in `errno=N` and a blank line (www.wireguard.com/xplatform).
//! Keys are hex there and base64 everywhere else. The reply starts with `private_key`: the
//! line is skipped while parsing, never stored or printed.
//!
//! boringtun (0.7) differs from the protocol in two ways: it sends `own_public_key` (handy:
//! the device's public key without deriving it), and its `last_handshake_time_sec` is the
//! time since the handshake, not since the epoch (`wg show` then says "56 years ago").

use std::{path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::{WgDevice, WgPeer, fwmark_text, merge_peer};

/// A userspace implementation answers at once; one that does not is stuck.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("could not connect to {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the UAPI exchange failed")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the device answered errno={0}")]
    Errno(i32),
    #[error("the answer ended before its errno line")]
    Truncated,
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
}

/// Asks the device behind socket `path` for its configuration.
pub async fn get(path: &Path) -> Result<WgDevice, UapiError> {
    tokio::time::timeout(TIMEOUT, exchange(path))
        .await
        .map_err(|_| UapiError::Timeout(TIMEOUT))?
}

async fn exchange(path: &Path) -> Result<WgDevice, UapiError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| UapiError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    stream.write_all(b"get=1\n\n").await?;
    let mut reader = BufReader::new(stream);
    let mut text = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            break;
        }
        // The private key goes no further than this buffer.
        if line.starts_with("private_key=") {
            continue;
        }
        let end = line == "\n" && text.lines().last().is_some_and(|l| l.starts_with("errno="));
        text.push_str(&line);
        if end {
            break;
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    parse(&text, now)
}

/// A handshake as `last_handshake_time_sec`/`_nsec` give it.
#[derive(Debug, Clone, Copy, Default)]
struct Handshake {
    sec: u64,
    nsec: u64,
}

/// No real handshake happened before 2001: a smaller "epoch" value is boringtun's age.
const EPOCH_FLOOR: u64 = 1_000_000_000;

impl Handshake {
    /// Seconds since the epoch; `None` for never (0.0, as the kernel and wireguard-go say).
    fn at(self, now: u64) -> Option<u64> {
        match self {
            Handshake { sec: 0, nsec: 0 } => None,
            Handshake { sec, .. } if sec >= EPOCH_FLOOR => Some(sec),
            Handshake { sec, .. } => Some(now.saturating_sub(sec)),
        }
    }
}

/// Parses a `get=1` answer read at `now` (seconds since the epoch).
pub fn parse(text: &str, now: u64) -> Result<WgDevice, UapiError> {
    let mut d = WgDevice::default();
    let mut peer: Option<WgPeer> = None;
    let mut handshake = Handshake::default();
    let mut errno = None;
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| UapiError::Malformed {
            line: n + 1,
            reason,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("no '='".to_string()))?;
        let num = |v: &str| -> Result<u64, UapiError> {
            v.parse()
                .map_err(|_| bad(format!("{key}={v} is not a number")))
        };
        match key {
            "private_key" | "preshared_key" => {}
            "listen_port" => {
                d.listen_port =
                    Some(u16::try_from(num(value)?).map_err(|_| bad(format!("port {value}")))?)
            }
            "fwmark" => {
                d.fwmark = Some(fwmark_text(
                    u32::try_from(num(value)?).map_err(|_| bad(format!("fwmark {value}")))?,
                ))
            }
            "own_public_key" => {
                d.public_key = Some(
                    hex_to_base64(value)
                        .ok_or_else(|| bad("own_public_key is not 32 hex bytes".into()))?,
                );
            }
            "public_key" => {
                finish(&mut d, peer.take(), std::mem::take(&mut handshake), now);
                peer = Some(WgPeer {
                    public_key: hex_to_base64(value)
                        .ok_or_else(|| bad("public_key is not 32 hex bytes".into()))?,
                    ..Default::default()
                });
            }
            "errno" => {
                errno = Some(
                    value
                        .parse::<i32>()
                        .map_err(|_| bad(format!("errno={value}")))?,
                );
            }
            _ => {
                let Some(p) = peer.as_mut() else {
                    // Device-level keys this reader has no use for.
                    continue;
                };
                match key {
                    "endpoint" => p.endpoint = Some(value.to_string()),
                    "allowed_ip" => p.allowed_ips.push(value.to_string()),
                    "last_handshake_time_sec" => handshake.sec = num(value)?,
                    "last_handshake_time_nsec" => handshake.nsec = num(value)?,
                    "rx_bytes" => p.rx_bytes = num(value)?,
                    "tx_bytes" => p.tx_bytes = num(value)?,
                    "persistent_keepalive_interval" => {
                        p.persistent_keepalive = Some(
                            u32::try_from(num(value)?)
                                .map_err(|_| bad(format!("keepalive {value}")))?,
                        )
                        .filter(|k| *k != 0);
                    }
                    // protocol_version, newer keys.
                    _ => {}
                }
            }
        }
    }
    finish(&mut d, peer, handshake, now);
    match errno {
        Some(0) => Ok(d),
        Some(e) => Err(UapiError::Errno(e)),
        None => Err(UapiError::Truncated),
    }
}

fn finish(d: &mut WgDevice, peer: Option<WgPeer>, handshake: Handshake, now: u64) {
    if let Some(mut p) = peer {
        p.latest_handshake = handshake.at(now);
        merge_peer(&mut d.peers, p);
    }
}

fn hex_to_base64(hex: &str) -> Option<String> {
    if hex.len() != 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some(BASE64.encode(bytes?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const PRIVATE: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

    fn reply() -> String {
        format!(
            "private_key={PRIVATE}\nlisten_port=51820\nfwmark=2097152\n\
             public_key={PEER_A}\npreshared_key={PRIVATE}\nprotocol_version=1\n\
             endpoint=192.168.50.2:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=12\ntx_bytes=92\nrx_bytes=148\n\
             persistent_keepalive_interval=0\nallowed_ip=10.244.1.0/26\n\
             allowed_ip=10.244.1.1/32\n\
             public_key={}\nallowed_ip=10.244.2.0/26\nlast_handshake_time_sec=0\n\
             errno=0\n\n",
            "02".repeat(32)
        )
    }

    #[test]
    fn parses_a_reply_with_hex_keys_as_base64_and_without_the_private_key() {
        let d = parse(&reply(), NOW).expect("parses");
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(d.fwmark.as_deref(), Some("0x200000"));
        assert_eq!(d.peers.len(), 2);
        let a = &d.peers[0];
        assert_eq!(a.public_key, BASE64.encode([1u8; 32]));
        assert_eq!(a.endpoint.as_deref(), Some("192.168.50.2:51820"));
        assert_eq!(a.allowed_ips, ["10.244.1.0/26", "10.244.1.1/32"]);
        assert_eq!(a.latest_handshake, Some(1_700_000_000));
        assert_eq!((a.rx_bytes, a.tx_bytes), (148, 92));
        assert_eq!(a.persistent_keepalive, None);
        assert_eq!(d.peers[1].latest_handshake, None);
        let shown = format!("{d:?}");
        assert!(
            !shown.contains("5a5a") && !shown.contains("WlpaWlpa"),
            "{shown}"
        );
    }

    const NOW: u64 = 1_700_000_100;

    /// boringtun 0.7 as it answers after a ping: its own key, and the handshake's age.
    #[test]
    fn boringtun_gives_its_own_key_and_the_handshake_age() {
        let text = format!(
            "private_key={PRIVATE}\nown_public_key={}\nlisten_port=51820\n\
             public_key={PEER_A}\nlast_handshake_time_sec=7\nlast_handshake_time_nsec=5\n\
             public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=170794550\n\
             public_key={}\nerrno=0\n\n",
            "03".repeat(32),
            "02".repeat(32),
            "04".repeat(32)
        );
        let d = parse(&text, NOW).expect("parses");
        assert_eq!(d.public_key, Some(BASE64.encode([3u8; 32])));
        let at: Vec<Option<u64>> = d.peers.iter().map(|p| p.latest_handshake).collect();
        // 7 s ago; under a second ago; never (no line at all).
        assert_eq!(at, [Some(NOW - 7), Some(NOW), None]);
    }

    #[test]
    fn an_errno_or_a_cut_reply_is_an_error() {
        assert!(matches!(
            parse("errno=19\n\n", NOW),
            Err(UapiError::Errno(19))
        ));
        assert!(matches!(
            parse("listen_port=51820\n", NOW),
            Err(UapiError::Truncated)
        ));
        assert!(matches!(
            parse("public_key=zz\nerrno=0\n", NOW),
            Err(UapiError::Malformed { line: 1, .. })
        ));
    }

    /// The socket exchange itself, against a fake device that answers like boringtun.
    #[tokio::test]
    async fn reads_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("wg-uapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("wg-test.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut got = String::new();
            r.read_line(&mut got).await.expect("read");
            assert_eq!(got, "get=1\n");
            w.write_all(reply().as_bytes()).await.expect("write");
            // Keep the connection open: the reader must stop at the blank line, not at EOF.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let d = get(&path).await.expect("device");
        assert_eq!(d.peers.len(), 2);
        server.abort();
        std::fs::remove_dir_all(&dir).expect("cleanup");
        let missing = get(&dir.join("none.sock")).await.expect_err("no socket");
        assert!(matches!(missing, UapiError::Connect { .. }), "{missing:?}");
    }
}
