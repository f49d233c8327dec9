//! BGP sessions from calico-node's BIRD, over its control socket, the way `calicoctl node
//! status` reads them (shared/reference/calico-dataplane.md §10): `show protocols`, BIRD 1.x
//! reply codes, peers named `Mesh_<ip>`, `Node_<ip>` or `Global_<ip>`.
//!
//! calico-node runs one BIRD per family: `bird` (IPv4, `bird.ctl`) and, in dual-stack BGP
//! clusters, `bird6` (IPv6, `bird6.ctl`; `node/filesystem/etc/service/available/bird6/run`).
//! BIRD 1.6's `bird6` speaks the same control protocol, so one reader serves both.

use std::{path::Path, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// Where calico-node's BIRD listens, then the path calicoctl falls back to.
pub const SOCKETS: &[&str] = &["/var/run/calico/bird.ctl", "/var/run/bird/bird.ctl"];
/// The same for `bird6` (`calicoctl/calicoctl/commands/node/status.go` `printBIRDPeers`).
pub const SOCKETS_V6: &[&str] = &["/var/run/calico/bird6.ctl", "/var/run/bird/bird6.ctl"];
const TIMEOUT: Duration = Duration::from_secs(2);

/// Which of calico-node's two BIRDs: IPv4 sessions live in `bird`, IPv6 ones in `bird6`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];

    pub fn of(ip: std::net::IpAddr) -> Self {
        if ip.is_ipv6() { Self::V6 } else { Self::V4 }
    }

    /// The daemon's name, as in its process and socket names.
    pub fn daemon(self) -> &'static str {
        match self {
            Self::V4 => "bird",
            Self::V6 => "bird6",
        }
    }

    /// Where calico-node's daemon of this family listens, then calicoctl's fallback.
    pub fn sockets(self) -> &'static [&'static str] {
        match self {
            Self::V4 => SOCKETS,
            Self::V6 => SOCKETS_V6,
        }
    }

    /// The environment variable pointing the agent at a non-default socket.
    pub fn socket_env(self) -> &'static str {
        match self {
            Self::V4 => "AGENT_BIRD_SOCKET",
            Self::V6 => "AGENT_BIRD6_SOCKET",
        }
    }

    /// `birdcl -s <socket>`, for hints.
    pub fn birdcl(self) -> String {
        format!("birdcl -s {}", self.sockets()[0])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// BIRD's protocol name, e.g. `Mesh_10_99_0_12`.
    pub name: String,
    /// `node-to-node mesh`, `node specific` or `global`.
    pub kind: String,
    pub peer_ip: String,
    /// BIRD's protocol state (`up`, `start`, …).
    pub state: String,
    pub since: String,
    /// BGP state and detail, e.g. `Established` or `Active Socket: Connection refused`.
    pub info: String,
    /// Seconds in this state: BIRD's clock (`show status`) minus `since`, when `since` is a
    /// time of day (BIRD prints a date once the change is 20 hours old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<u64>,
}

impl BgpPeer {
    pub fn established(&self) -> bool {
        self.state == "up" && self.info.starts_with("Established")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("no {} control socket at {} (BGP not in use here?)", family.daemon(), family.sockets().join(" or "))]
    NoSocket { family: Family },
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unexpected greeting {greeting:?}")]
    Greeting {
        path: String,
        greeting: Option<String>,
    },
    #[error("{path}: BIRD error: {line}")]
    Bird { path: String, line: String },
    #[error("{path}: no answer within {TIMEOUT:?}")]
    Timeout { path: String },
}

impl BirdError {
    /// No BIRD on this node (BGP is not in use): the BGP checks do not apply.
    pub fn not_running(&self) -> bool {
        match self {
            Self::NoSocket { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }
}

/// Reads the BGP peers of `family`'s BIRD. `Err` when no BIRD answers (BGP, or that family,
/// not in use on this node, or the socket is not mounted into the agent).
pub async fn read(family: Family, socket: Option<&str>) -> Result<Vec<BgpPeer>, BirdError> {
    let path = match socket {
        Some(p) => p.to_string(),
        None => family
            .sockets()
            .iter()
            .find(|p| Path::new(p).exists())
            .map(|p| (*p).to_string())
            .ok_or(BirdError::NoSocket { family })?,
    };
    let io = |source| BirdError::Io {
        path: path.clone(),
        source,
    };
    let exchange = async {
        let stream = UnixStream::connect(&path).await.map_err(io)?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        // The greeting: `0001 BIRD 1.6.8 ready.`
        match lines.next_line().await.map_err(io)? {
            Some(l) if l.starts_with("0001") => {}
            greeting => {
                return Err(BirdError::Greeting {
                    path: path.clone(),
                    greeting,
                });
            }
        }
        let mut ask = async |cmd: &str| -> Result<Vec<String>, BirdError> {
            w.write_all(format!("{cmd}\n").as_bytes())
                .await
                .map_err(io)?;
            let mut reply = Vec::new();
            while let Some(l) = lines.next_line().await.map_err(io)? {
                if l.starts_with('8') || l.starts_with('9') {
                    return Err(BirdError::Bird {
                        path: path.clone(),
                        line: l,
                    });
                }
                // BIRD 1.x: `DDDD-` and ` ` lines continue a reply, `DDDD ` ends it.
                let last = l.len() >= 5
                    && l.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                    && l.as_bytes()[4] == b' ';
                reply.push(l);
                if last {
                    break;
                }
            }
            Ok(reply)
        };
        let protocols = ask("show protocols").await?;
        // The server's clock, to age `since` on BIRD's own clock and time zone.
        let status = ask("show status").await?;
        Ok((protocols, status))
    };
    let (reply, status) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| BirdError::Timeout { path: path.clone() })??;
    let mut peers = parse_protocols(&reply);
    if let Some(now) = server_time_of_day(&status) {
        for p in &mut peers {
            p.since_seconds = seconds_of_day(&p.since).map(|t| (now + 86_400 - t) % 86_400);
        }
    }
    Ok(peers)
}

/// `Current server time is 2026-05-20 10:02:11` (`show status`), as seconds of the day.
fn server_time_of_day(lines: &[String]) -> Option<u64> {
    lines.iter().find_map(|l| {
        let rest = l.split_once("Current server time is ")?.1;
        seconds_of_day(rest.split_whitespace().nth(1)?)
    })
}

/// `HH:MM:SS` (optionally with `.fff`) as seconds of the day.
fn seconds_of_day(t: &str) -> Option<u64> {
    let mut it = t.split('.').next()?.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let n = |x: &str| x.parse::<u64>().ok();
    Some(n(h)? * 3600 + n(m)? * 60 + n(s)?)
}

/// Parses `show protocols` rows (`1002-` first row, ` ` continuation rows; the `2002-` header
/// is skipped). Non-BGP protocols and rows that do not name a peer are ignored.
pub fn parse_protocols(lines: &[String]) -> Vec<BgpPeer> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("1002-").or_else(|| l.strip_prefix(' ')))
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() < 5 || f[1] != "BGP" {
                return None;
            }
            let (kind, suffix) = [
                ("Mesh_", "node-to-node mesh"),
                ("Node_", "node specific"),
                ("Global_", "global"),
            ]
            .iter()
            .find_map(|(p, k)| f[0].strip_prefix(p).map(|s| (*k, s)))?;
            // confd appends `_port_<n>` for a non-default port (`buildPeerFromData`).
            let suffix = suffix.split("_port_").next().unwrap_or(suffix);
            // confd replaces `.` (bird.cfg) or `:` (bird6.cfg) with `_` (`processMeshPeers`,
            // `buildPeerFromData`): an IPv4 address has exactly three.
            let peer_ip = if suffix.matches('_').count() == 3 && !suffix.contains("__") {
                suffix.replace('_', ".")
            } else {
                suffix.replace('_', ":")
            };
            Some(BgpPeer {
                name: f[0].to_string(),
                kind: kind.to_string(),
                peer_ip,
                state: f[3].to_string(),
                since: f[4].to_string(),
                info: f[5..].join(" "),
                since_seconds: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: &str = "2002-name     proto    table    state  since       info\n\
1002-static1  Static   master   up     10:00:01    \n \
kernel1  Kernel   master   up     10:00:01    \n \
device1  Device   master   up     10:00:01    \n \
direct1  Direct   master   up     10:00:01    \n \
Mesh_10_99_0_12 BGP      master   up     10:00:05    Established   \n \
Mesh_10_99_0_13 BGP      master   start  10:02:11    Active        Socket: Connection refused\n \
Global_fd00__1 BGP      master   start  10:02:11    Connect       \n \
Node_192_0_2_9_port_1790 BGP master start 2026-05-19 Idle Received: Bad peer AS\n";

    const STATUS: &str = "1000-BIRD 1.6.8\n1011-Router ID is 10.99.0.11\n Current server time is 2026-05-20 10:03:11\n Last reboot on 2026-05-20 09:00:00\n Last reconfiguration on 2026-05-20 09:00:00\n0013 Daemon is up and running\n";

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn parses_calico_peers_and_their_states() {
        let peers = parse_protocols(&lines(REPLY));
        assert_eq!(peers.len(), 4);
        assert_eq!(
            (peers[3].peer_ip.as_str(), peers[3].info.as_str()),
            ("192.0.2.9", "Idle Received: Bad peer AS")
        );
        assert_eq!(seconds_of_day("23:59:59.123"), Some(86_399));
        assert_eq!(seconds_of_day("2026-05-19"), None);
        assert_eq!(
            (peers[0].peer_ip.as_str(), peers[0].established()),
            ("10.99.0.12", true)
        );
        assert_eq!(
            (peers[1].peer_ip.as_str(), peers[1].info.as_str()),
            ("10.99.0.13", "Active Socket: Connection refused")
        );
        assert!(!peers[1].established());
        assert_eq!(
            (peers[2].peer_ip.as_str(), peers[2].kind.as_str()),
            ("fd00::1", "global")
        );
    }

    #[test]
    fn bird6_protocol_names_give_ipv6_peers() {
        let reply = "2002-name     proto    table    state  since       info\n\
1002-static1  Static   master   up     10:00:01    \n \
Mesh_fd00_99__12 BGP master up 10:00:05 Established\n \
Node_2001_db8_0_0_1_2_3_4 BGP master up 10:00:05 Established\n \
Global_fd00__fe_port_1790 BGP master start 10:00:05 Connect\n";
        let peers = parse_protocols(&lines(reply));
        let ips: Vec<&str> = peers.iter().map(|p| p.peer_ip.as_str()).collect();
        assert_eq!(ips, ["fd00:99::12", "2001:db8:0:0:1:2:3:4", "fd00::fe"]);
        assert_eq!(Family::V6.sockets()[0], "/var/run/calico/bird6.ctl");
        assert_eq!(Family::V6.socket_env(), "AGENT_BIRD6_SOCKET");
    }

    #[tokio::test]
    async fn no_bird6_socket_is_not_running_and_names_its_paths() {
        let e = read(Family::V6, Some("/nonexistent/bird6.ctl"))
            .await
            .expect_err("no socket");
        assert!(e.not_running(), "{e}");
        let e = BirdError::NoSocket { family: Family::V6 };
        assert!(e.not_running());
        assert_eq!(
            e.to_string(),
            "no bird6 control socket at /var/run/calico/bird6.ctl or /var/run/bird/bird6.ctl (BGP not in use here?)"
        );
    }

    #[tokio::test]
    async fn talks_to_a_bird_control_socket() {
        let dir = std::env::temp_dir().join(format!("cdpt-bird{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let sock = dir.join("bird.ctl");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            if let Ok((s, _)) = listener.accept().await {
                let (r, mut w) = s.into_split();
                let _ = w.write_all(b"0001 BIRD 1.6.8 ready.\n").await;
                let mut req = BufReader::new(r).lines();
                if let Ok(Some(cmd)) = req.next_line().await {
                    assert_eq!(cmd, "show protocols");
                    let _ = w.write_all(format!("{REPLY}0000 \n").as_bytes()).await;
                }
                if let Ok(Some(cmd)) = req.next_line().await {
                    assert_eq!(cmd, "show status");
                    let _ = w.write_all(STATUS.as_bytes()).await;
                }
            }
        });
        let peers = read(Family::V4, Some(&sock.to_string_lossy()))
            .await
            .expect("peers");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(peers.iter().filter(|p| !p.established()).count(), 3);
        // Aged on BIRD's clock: 10:03:11 - 10:00:05.
        assert_eq!(peers[0].since_seconds, Some(186));
        assert!(
            read(Family::V4, Some("/nonexistent/bird.ctl"))
                .await
                .is_err()
        );
    }
}
