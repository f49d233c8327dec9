//! `calicoctl node status`: the BGP peer table calicoctl prints from BIRD's `show protocols`
//! (shared/reference/calico-dataplane.md §10), the most common BGP evidence in issue threads.
//!
//! ```text
//! IPv4 BGP status
//! +----------------+-------------------+-------+----------+--------------------------------+
//! |  PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |              INFO              |
//! +----------------+-------------------+-------+----------+--------------------------------+
//! | 192.168.63.204 | node-to-node mesh | start | 17:19:38 | Active Socket: Connection      |
//! |                |                   |       |          | refused                        |
//! +----------------+-------------------+-------+----------+--------------------------------+
//! ```
//!
//! A row whose first cell is empty continues the row above (calicoctl wraps long INFO). When
//! calicoctl could not ask BIRD ("Error querying BIRD: unable to connect to BIRDv4 socket",
//! "Calico process is not running") nothing is known about the sessions: that is kept as the
//! reason, never turned into a session finding.
//!
//! calicoctl prints `bird`'s table under "IPv4 BGP status" and `bird6`'s under "IPv6 BGP
//! status" (`printBIRDPeers(4)`/`(6)`): each section's rows and errors belong to its family.

use super::LineNote;
use crate::observed::bird::BgpPeer;

/// What one `calicoctl node status` said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// The sessions of the IPv4 peer table (`bird`'s), and of a table under no heading.
    pub peers: Vec<BgpPeer>,
    /// An IPv4 peer table or "No IPv4 peers found." was printed: the list of sessions is known.
    pub answered: bool,
    /// Why calicoctl could not read the sessions, as it said it.
    pub bird_errors: Vec<String>,
    /// The same for the "IPv6 BGP status" section (`bird6`).
    pub peers6: Vec<BgpPeer>,
    pub answered6: bool,
    pub bird6_errors: Vec<String>,
}

pub fn parse(text: &str) -> (NodeStatus, Vec<LineNote>) {
    let mut status = NodeStatus::default();
    let mut notes = Vec::new();
    let mut rows: Vec<(Vec<String>, bool)> = Vec::new();
    let mut row_lines: Vec<usize> = Vec::new();
    // Inside the "IPv6 BGP status" section.
    let mut v6 = false;
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        let line = raw.trim();
        if line.starts_with("IPv4 BGP status") || line.starts_with("IPv6 BGP status") {
            v6 = line.starts_with("IPv6");
            continue;
        }
        if line.starts_with("No IPv4 peers found") {
            status.answered = true;
            continue;
        }
        if line.starts_with("No IPv6 peers found") {
            status.answered6 = true;
            continue;
        }
        if line.starts_with("Error querying BIRD")
            || line.starts_with("Calico process is not running")
            || (line.starts_with("INFO:") && line.contains("is not running"))
            || line.contains("BIRD is not ready")
        {
            // "unable to connect to BIRDv6 socket", or any error within the IPv6 section.
            if v6 || line.contains("BIRDv6") {
                status.bird6_errors.push(line.to_string());
            } else {
                status.bird_errors.push(line.to_string());
            }
            continue;
        }
        let Some(inner) = line.strip_prefix('|') else {
            continue;
        };
        let cells: Vec<String> = inner
            .trim_end_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells.first().is_some_and(|c| c == "PEER ADDRESS") {
            if v6 {
                status.answered6 = true;
            } else {
                status.answered = true;
            }
            continue;
        }
        let continues = cells.first().is_some_and(String::is_empty);
        match rows.last_mut() {
            Some((prev, _)) if continues => {
                for (i, c) in cells.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
                    if let Some(p) = prev.get_mut(i) {
                        if !p.is_empty() {
                            p.push(' ');
                        }
                        p.push_str(c);
                    }
                }
            }
            _ if continues => notes.push(LineNote::new(lineno, "continuation row without a peer")),
            _ => {
                rows.push((cells, v6));
                row_lines.push(lineno);
            }
        }
    }
    for ((cells, v6), lineno) in rows.iter().zip(row_lines) {
        match peer(cells) {
            Some(p) if *v6 => status.peers6.push(p),
            Some(p) => status.peers.push(p),
            None => notes.push(LineNote::new(
                lineno,
                "peer row with fewer than 5 columns (cut off?); not read",
            )),
        }
    }
    (status, notes)
}

/// A row as the peer BIRD's protocol describes: `Mesh_10_0_0_1` for a node-to-node mesh
/// peer, `Node_…` node specific, `Global_…` global (calicoctl's own mapping, reversed).
fn peer(cells: &[String]) -> Option<BgpPeer> {
    let [address, kind, state, since, info, ..] = cells else {
        return None;
    };
    if address.is_empty() || state.is_empty() {
        return None;
    }
    let prefix = match kind.as_str() {
        "node-to-node mesh" => "Mesh_",
        "node specific" => "Node_",
        "global" => "Global_",
        _ => "Peer_",
    };
    Some(BgpPeer {
        name: format!("{prefix}{}", address.replace(['.', ':'], "_")),
        kind: kind.clone(),
        peer_ip: address.clone(),
        state: state.clone(),
        since: since.clone(),
        info: info.clone(),
        // calicoctl prints BIRD's `since` as a time of day without a date: not an age.
        since_seconds: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_info_joins_its_row() {
        let text = "Calico process is running.

IPv4 BGP status
+----------------+-------------------+-------+----------+--------------------------------+
|  PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |              INFO              |
+----------------+-------------------+-------+----------+--------------------------------+
| 192.168.63.204 | node-to-node mesh | start | 17:19:38 | Active Socket: Connection      |
|                |                   |       |          | refused                        |
| 192.168.63.205 | global            | up    | 17:19:38 | Established                    |
+----------------+-------------------+-------+----------+--------------------------------+

IPv6 BGP status
No IPv6 peers found.
";
        let (s, notes) = parse(text);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(s.answered && s.answered6 && s.peers6.is_empty());
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].info, "Active Socket: Connection refused");
        assert_eq!(s.peers[0].name, "Mesh_192_168_63_204");
        assert!(!s.peers[0].established());
        assert!(s.peers[1].established());
        assert_eq!(s.peers[1].kind, "global");
    }

    #[test]
    fn bird_errors_are_not_sessions() {
        let text = "Calico process is running.\n\nIPv4 BGP status\nError querying BIRD: unable to connect to BIRDv4 socket: dial unix /var/run/bird/bird.ctl: connect: no such file or directory\n";
        let (s, _) = parse(text);
        assert!(!s.answered);
        assert!(s.peers.is_empty());
        assert_eq!(s.bird_errors.len(), 1);
    }

    #[test]
    fn the_ipv6_section_is_bird6s() {
        let text = "Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 10.0.0.2     | node-to-node mesh | up    | 17:19:38 | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| fd00::2      | node-to-node mesh | start | 17:19:38 | Connect     |
+--------------+-------------------+-------+----------+-------------+
";
        let (s, notes) = parse(text);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(s.answered && s.answered6);
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers6.len(), 1);
        assert_eq!(s.peers6[0].name, "Mesh_fd00__2");
        assert!(!s.peers6[0].established());
        // bird6 not answering is bird6's error, not bird's.
        let text = "IPv4 BGP status\nNo IPv4 peers found.\n\nIPv6 BGP status\nError querying BIRD: unable to connect to BIRDv6 socket: dial unix /var/run/calico/bird6.ctl: connect: no such file or directory\n";
        let (s, _) = parse(text);
        assert!(s.answered && !s.answered6);
        assert!(s.bird_errors.is_empty());
        assert_eq!(s.bird6_errors.len(), 1);
    }
}
