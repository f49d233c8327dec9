//! The BGP section of `agent diag`: each session of calico-node's BIRD with its state, how long
//! it has been in it (on BIRD's clock), BIRD's last error, and — from the running daemon — how
//! often it changed state in the flap window.

use std::fmt::Write as _;

use crate::{analysis::Analysis, observed::bird::BgpPeer};

pub fn sessions(o: &mut String, a: &Analysis) {
    if let Some(peers) = &a.diag.bgp_sessions {
        family(o, a, "BGP SESSIONS (calico-node's BIRD", peers);
    }
    if let Some(peers) = &a.diag.bgp6_sessions {
        family(o, a, "BGP SESSIONS, IPv6 (calico-node's bird6", peers);
    }
}

/// One BIRD's sessions under `title`: `bird`'s, then `bird6`'s in a dual-stack cluster.
fn family(o: &mut String, a: &Analysis, title: &str, peers: &[BgpPeer]) {
    let flaps = a.daemon.as_ref().map(|d| &d.bgp_flaps);
    let up = peers.iter().filter(|p| p.established()).count();
    let _ = writeln!(o, "\n{title}: {up} of {} Established)", peers.len());
    if peers.is_empty() {
        let _ = writeln!(o, "  none configured");
    }
    for p in peers {
        let age = p
            .since_seconds
            .map(|s| format!(" ({})", crate::verify::bgp_age(s)))
            .unwrap_or_default();
        let mut line = format!(
            "  {:<22} {:<15} {:<17} {:<5} since {}{age}  {}",
            p.name,
            p.peer_ip,
            p.kind,
            p.state,
            p.since,
            if p.info.is_empty() { "-" } else { &p.info }
        );
        if let Some(f) = flaps {
            let _ = write!(
                line,
                "  {} flap(s) in the window",
                f.get(&p.name).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(peers: Option<Vec<BgpPeer>>, daemon: bool) -> Analysis {
        let obs = crate::observed::ObservedDataplane {
            bgp_peers: peers,
            ..Default::default()
        };
        Analysis {
            diag: crate::diag::build(&obs),
            verification: None,
            input_notes: Vec::new(),
            traffic: None,
            traffic_unavailable: None,
            daemon: daemon.then(|| crate::analysis::DaemonInfo {
                bgp_flaps: [("Mesh_10_99_0_12".to_string(), 4)].into(),
                ..Default::default()
            }),
            identity: None,
            bundle: None,
        }
    }

    fn peer(state: &str, info: &str) -> BgpPeer {
        BgpPeer {
            name: "Mesh_10_99_0_12".into(),
            kind: "node-to-node mesh".into(),
            peer_ip: "10.99.0.12".into(),
            state: state.into(),
            since: "10:00:05".into(),
            info: info.into(),
            since_seconds: Some(245),
        }
    }

    #[test]
    fn sessions_with_state_age_error_and_flaps() {
        let mut o = String::new();
        sessions(
            &mut o,
            &analysis(
                Some(vec![peer("start", "Active Received: Bad peer AS")]),
                true,
            ),
        );
        assert!(
            o.contains("BGP SESSIONS (calico-node's BIRD: 0 of 1 Established)"),
            "{o}"
        );
        assert!(o.contains("Mesh_10_99_0_12"), "{o}");
        assert!(o.contains("start since 10:00:05 (4m05s)  Active Received: Bad peer AS  4 flap(s) in the window"), "{o}");
        let mut o = String::new();
        sessions(
            &mut o,
            &analysis(Some(vec![peer("up", "Established")]), false),
        );
        assert!(
            o.contains("up    since 10:00:05 (4m05s)  Established\n"),
            "{o}"
        );
        let mut o = String::new();
        sessions(&mut o, &analysis(None, false));
        assert!(o.is_empty());
    }

    #[test]
    fn bird6s_sessions_follow_birds_with_their_flaps() {
        let mut a = analysis(Some(vec![peer("up", "Established")]), true);
        let mut v6 = peer("start", "Connect");
        v6.name = "Mesh_fd00_99__12".into();
        v6.peer_ip = "fd00:99::12".into();
        a.diag.bgp6_sessions = Some(vec![v6]);
        if let Some(d) = a.daemon.as_mut() {
            d.bgp_flaps.insert("Mesh_fd00_99__12".into(), 5);
        }
        let mut o = String::new();
        sessions(&mut o, &a);
        let v4 = o
            .find("BGP SESSIONS (calico-node's BIRD: 1 of 1 Established)")
            .expect("bird's");
        let v6 = o
            .find("BGP SESSIONS, IPv6 (calico-node's bird6: 0 of 1 Established)")
            .expect("bird6's");
        assert!(v4 < v6, "{o}");
        assert!(
            o.contains("Mesh_fd00_99__12       fd00:99::12     node-to-node mesh start since 10:00:05 (4m05s)  Connect  5 flap(s) in the window"),
            "{o}"
        );
        // Without bird6 (an IPv4-only cluster) there is no IPv6 section.
        let mut o = String::new();
        sessions(
            &mut o,
            &analysis(Some(vec![peer("up", "Established")]), false),
        );
        assert!(!o.contains("IPv6"), "{o}");
    }
}
