//! calico-node's BGP: the sessions BIRD has against the ones the datastore implies
//! (`desired::bgp`), and which routes BIRD rather than Felix programs, so that a missing one
//! names the session it should have been learned from.
//!
//! Judged only from what BIRD's control socket answered: without it these checks are not run
//! (the `Bgp` source is unavailable, `verify::needs`), never reported as drift.
//!
//! Each family is judged against its own BIRD: IPv4 sessions against `bird`, IPv6 ones against
//! `bird6`, with the same checks. When IPv6 sessions are due and `bird6` did not answer while
//! `bird` did, the checks are listed as not run for IPv6 ([`skip_unobserved`]).

use std::collections::BTreeMap;

use super::{CheckId, Finding, NotRun, Severity, Skipped};
use crate::{
    desired::{bgp::ExpectedBgp, expected::Expected},
    observed::{
        Cause, ObservedDataplane, Source,
        bird::{BgpPeer, Family},
    },
};

/// The config file confd renders for `family`'s BIRD.
fn config_file(family: Family) -> &'static str {
    match family {
        Family::V4 => "bird.cfg",
        Family::V6 => "bird6.cfg",
    }
}

/// Where confd puts `family`'s local blocks as static blackholes.
fn aggr_file(family: Family) -> &'static str {
    match family {
        Family::V4 => "bird_aggr.cfg",
        Family::V6 => "bird6_aggr.cfg",
    }
}

/// How findings name `family`'s daemon: `BIRD` as before for IPv4, `bird6` for IPv6.
fn daemon(family: Family) -> &'static str {
    match family {
        Family::V4 => "BIRD",
        Family::V6 => "bird6",
    }
}

pub(super) fn check(expected: Option<&Expected>, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let bgp = expected.map(|e| &e.bgp);
    for family in Family::ALL {
        if let Some(peers) = obs.bgp_peers_of(family) {
            sessions(bgp, family, peers, out);
        }
    }
    if let Some(e) = expected {
        explain_routes(e, obs, out);
    }
}

/// The session checks, for IPv6, when `bird6` did not answer although IPv6 sessions are due:
/// not observable, naming the socket. (Without `bird` either, BGP is not running here and the
/// checks are already skipped as a whole through the `Bgp` source.)
pub(super) fn skip_unobserved(
    expected: Option<&Expected>,
    obs: &ObservedDataplane,
    skipped: &mut Vec<Skipped>,
) {
    let Some(e) = expected else {
        return;
    };
    let due = e.bgp.sessions_of(Family::V6).count();
    if due == 0 || obs.bgp6_peers.is_some() || obs.bgp_peers.is_none() {
        return;
    }
    let unavailable = obs.unavailable.iter().find(|u| u.kind == Source::Bgp6);
    let why = unavailable.map_or_else(
        || format!("no bird6 answer at {}", Family::V6.sockets().join(" or ")),
        |u| format!("{}: {}", u.source, u.reason),
    );
    // bird6 should be answering wherever bird does and IPv6 sessions are due: not observed,
    // unless a bundle simply lacks calicoctl's IPv6 section.
    let (kind, what) = match unavailable.map(|u| u.cause) {
        Some(Cause::NotInInput) => (NotRun::NotInInput, "not in the input"),
        _ => (NotRun::CouldNotObserve, "not observable"),
    };
    for id in [
        CheckId::BgpSessionDown,
        CheckId::BgpSessionMissing,
        CheckId::BgpSessionUnexpected,
    ] {
        skipped.push(
            Skipped::new(
                id,
                kind,
                format!("IPv6 sessions ({due} due) {what} ({why}); IPv4 sessions judged"),
            )
            .missing("bird6 show protocols"),
        );
    }
}

fn sessions(bgp: Option<&ExpectedBgp>, family: Family, peers: &[BgpPeer], out: &mut Vec<Finding>) {
    let (bird, cfg, birdcl) = (daemon(family), config_file(family), family.birdcl());
    for p in peers {
        let want = bgp.and_then(|b| b.session(&p.name));
        if let (Some(b), None) = (bgp, want) {
            // Not implied by the datastore: reported as unexpected (whatever its state), not
            // as a session that should be up.
            let severity = if b.incomplete.is_empty() {
                Severity::Warning
            } else {
                Severity::Info
            };
            let implied = b.sessions_of(family).count();
            out.push(
                Finding::new(CheckId::BgpSessionUnexpected, severity, p.peer_ip.clone())
                    .expected(format!(
                        "no {bird} session to {} ({implied} session(s) implied by the mesh and BGPPeers{})",
                        p.peer_ip,
                        if b.incomplete.is_empty() { "" } else { "; some BGPPeers could not be evaluated" }
                    ))
                    .actual(format!("{} ({}): {}", p.name, p.kind, state(p)))
                    .hint(format!(
                        "confd renders {cfg} from the datastore; a session it does not imply is a stale config (a node or BGPPeer that was removed, confd not re-rendering) or a hand edit: `grep -n {} /etc/calico/confd/config/{cfg}`, `calicoctl get bgppeer -o wide`, calico-node's confd log",
                        p.name
                    )),
            );
            continue;
        }
        if p.established() {
            continue;
        }
        let expected = match want {
            Some(s) => format!(
                "BGP session {} ({} with {}, AS {} -> AS {}) Established",
                p.name,
                s.source,
                s.node.as_deref().unwrap_or(&p.peer_ip),
                s.local_as,
                s.peer_as
            ),
            None => format!("BGP session {} ({}) Established", p.name, p.kind),
        };
        out.push(
            Finding::new(
                CheckId::BgpSessionDown,
                Severity::Critical,
                p.peer_ip.clone(),
            )
            .expected(expected)
            .actual(state(p))
            .hint(down_hint(
                p,
                &birdcl,
                want.map(|s| (s.peer_as, s.source.as_str(), s.node.as_deref())),
            )),
        );
    }
    let Some(b) = bgp else {
        return;
    };
    let present: BTreeMap<&str, &BgpPeer> = peers.iter().map(|p| (p.name.as_str(), p)).collect();
    for s in b
        .sessions_of(family)
        .filter(|s| !present.contains_key(s.name.as_str()))
    {
        let with = s
            .node
            .as_deref()
            .map(|n| format!(" with {n}"))
            .unwrap_or_default();
        out.push(
            Finding::new(CheckId::BgpSessionMissing, Severity::Warning, s.peer_ip.to_string())
                .expected(format!(
                    "{bird} protocol {} ({}{with}, neighbor {} as {})",
                    s.name, s.source, s.peer_ip, s.peer_as
                ))
                .actual(format!("not among {bird}'s {} BGP session(s)", peers.len()))
                .hint(format!(
                    "{bird} runs a config that lacks this peering, so nothing is learned from {ip} over it (route.missing shows what that costs): confd has not rendered the current datastore — check calico-node's confd log and `grep -n {name} /etc/calico/confd/config/{cfg}`; `{birdcl} show protocols`",
                    ip = s.peer_ip,
                    name = s.name
                )),
        );
    }
}

/// `start since 10:02:11 (for 3m05s): Active Received: Bad peer AS`.
fn state(p: &BgpPeer) -> String {
    format!(
        "{} since {}{}: {}",
        p.state,
        p.since,
        p.since_seconds
            .map(|s| format!(" (for {})", age(s)))
            .unwrap_or_default(),
        if p.info.is_empty() { "-" } else { &p.info }
    )
}

pub fn age(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn down_hint(p: &BgpPeer, birdcl: &str, want: Option<(u32, &str, Option<&str>)>) -> String {
    let ip = &p.peer_ip;
    let name = &p.name;
    if p.info.contains("Bad peer AS") {
        let configured = match want {
            Some((peer_as, source, node)) => format!(
                " The datastore implies AS {peer_as} for {} ({source}).",
                node.unwrap_or(ip)
            ),
            None => String::new(),
        };
        return format!(
            "the two ends disagree on the AS number: one side's OPEN carried an AS the other was not configured for, so the session never establishes and no routes are exchanged.{configured} Compare `calicoctl get bgppeer -o yaml` (asNumber), `calicoctl get bgpconfiguration default -o yaml` and the nodes' spec.bgp.asNumber (`calicoctl get node -o yaml`); `{birdcl} show protocols all {name}` shows the neighbor AS and the last error"
        );
    }
    format!(
        "routes learned from {ip} are withdrawn while it is down; check TCP 179 between the nodes and the peer's calico-node: `nc -vz {ip} 179`, `{birdcl} show protocols all {name}` (last error), `calicoctl node status`"
    )
}

/// Route findings about what BIRD programs get BIRD's shape and a cause in BGP terms: a
/// remote block is learned from a session; a local blackhole comes from BIRD's static
/// protocol. The route checks themselves are agnostic of who programs the route.
fn explain_routes(e: &Expected, obs: &ObservedDataplane, out: &mut [Finding]) {
    let b = &e.bgp;
    for f in out.iter_mut() {
        match f.check {
            CheckId::RouteMissing | CheckId::RouteWrongDevice | CheckId::RouteWrongNexthop => {
                let Some(l) = b.learned.iter().find(|l| l.block.to_string() == f.subject) else {
                    continue;
                };
                let family = Family::of(l.block.addr());
                let (bird, birdcl) = (daemon(family), family.birdcl());
                let dev = super::node_ip_link(e, obs).map_or("<node IP's device>", |l| &l.name);
                let from = l.session.as_deref().map_or_else(
                    || {
                        format!(
                            "a BGP peer that advertises {}'s block (a route reflector or BGPPeer)",
                            l.node
                        )
                    },
                    |s| format!("{s} ({})", l.gateway),
                );
                f.expected = format!(
                    "{} via {} dev {dev} proto bird (block of {}, learned over BGP from {from})",
                    l.block, l.gateway, l.node
                );
                let session = l.session.as_deref().and_then(|s| {
                    obs.bgp_peers_of(family)
                        .map(|ps| ps.iter().find(|p| p.name == s))
                });
                let why = match session {
                    None => format!("{bird}'s sessions could not be read here"),
                    Some(None) => {
                        format!("{from} is not configured in {bird} (bgp.session.missing)")
                    }
                    Some(Some(p)) if !p.established() => format!(
                        "{} is down ({}): nothing is learned until it is Established (bgp.session.down)",
                        p.name,
                        state(p)
                    ),
                    Some(Some(p)) => format!(
                        "{} is Established, so {} does not advertise it (its {bird} lacks the block's static route in {aggr}, the pool has disableBGPExport, or an export filter) or this {bird} did not program it",
                        p.name,
                        l.node,
                        aggr = aggr_file(family)
                    ),
                };
                f.hint = format!(
                    "{bird}, not Felix, programs this route (no-encap/IPIP pool, Felix programClusterRoutes not set): {why}. `{birdcl} show route {} all`, `{birdcl} show protocols all {}`",
                    l.block,
                    l.session.as_deref().unwrap_or("")
                );
            }
            CheckId::RouteBlackholeMissing => {
                let Some(family) = f
                    .subject
                    .parse::<ipnet::IpNet>()
                    .ok()
                    .map(|n| Family::of(n.addr()))
                    .filter(|fam| b.blackholes_by_bird(*fam))
                else {
                    continue;
                };
                let (bird, birdcl, aggr) = (daemon(family), family.birdcl(), aggr_file(family));
                f.expected = format!(
                    "blackhole {} proto bird (local block, {bird}'s static protocol)",
                    f.subject
                );
                f.hint = format!(
                    "calico-node's {bird} installs it from `route {} blackhole;` in {aggr} (its static protocol), and exports the block to its peers from it: without it peers may lose the route too. `{birdcl} show route {} all`, `grep -n {} /etc/calico/confd/config/{aggr}`",
                    f.subject, f.subject, f.subject
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        desired::bgp::{ExpectedSession, LearnedBlock, SessionKind},
        observed::{Route, RouteType},
        verify::{
            Policy,
            testutil::{healthy, ids},
            verify,
        },
    };

    fn peer(ip: &str, state: &str, info: &str) -> BgpPeer {
        BgpPeer {
            name: format!("Mesh_{}", ip.replace(['.', ':'], "_")),
            kind: "node-to-node mesh".into(),
            peer_ip: ip.into(),
            state: state.into(),
            since: "10:00:00".into(),
            info: info.into(),
            since_seconds: Some(95),
        }
    }

    fn session(ip: &str, node: &str, peer_as: u32) -> ExpectedSession {
        ExpectedSession {
            name: format!("Mesh_{}", ip.replace(['.', ':'], "_")),
            peer_ip: ip.parse::<IpAddr>().expect("ip"),
            kind: SessionKind::Mesh,
            peer_as,
            local_as: 64512,
            node: Some(node.into()),
            source: "node-to-node mesh".into(),
        }
    }

    /// The healthy fixture with a mesh session to node-b, established.
    fn bgp_healthy() -> (Expected, ObservedDataplane) {
        let (mut e, mut o) = healthy();
        e.bgp.sessions = vec![session("10.99.0.12", "node-b", 64512)];
        o.bgp_peers = Some(vec![peer("10.99.0.12", "up", "Established")]);
        (e, o)
    }

    fn run(e: &Expected, o: &ObservedDataplane) -> crate::verify::Verification {
        verify(Some(e), o, &Policy::default())
    }

    #[test]
    fn the_sessions_the_datastore_implies_are_quiet() {
        let (e, o) = bgp_healthy();
        assert_eq!(ids(&run(&e, &o)), Vec::<(CheckId, String)>::new());
    }

    #[test]
    fn wrong_as_is_down_naming_the_peer_the_error_and_the_as() {
        let (e, mut o) = bgp_healthy();
        o.bgp_peers = Some(vec![peer(
            "10.99.0.12",
            "start",
            "Active Received: Bad peer AS",
        )]);
        let v = run(&e, &o);
        assert_eq!(ids(&v), [(CheckId::BgpSessionDown, "10.99.0.12".into())]);
        let f = &v.findings[0];
        assert!(
            f.expected
                .contains("Mesh_10_99_0_12 (node-to-node mesh with node-b, AS 64512 -> AS 64512)"),
            "{}",
            f.expected
        );
        assert_eq!(
            f.actual,
            "start since 10:00:00 (for 1m35s): Active Received: Bad peer AS"
        );
        assert!(f.hint.contains("disagree on the AS number"), "{}", f.hint);
        assert!(f.hint.contains("AS 64512 for node-b"), "{}", f.hint);
    }

    #[test]
    fn a_missing_session_is_reported() {
        let (e, mut o) = bgp_healthy();
        o.bgp_peers = Some(Vec::new());
        let v = run(&e, &o);
        assert_eq!(ids(&v), [(CheckId::BgpSessionMissing, "10.99.0.12".into())]);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        assert!(
            v.findings[0]
                .expected
                .contains("BIRD protocol Mesh_10_99_0_12")
        );
    }

    #[test]
    fn an_extra_session_is_unexpected_not_down() {
        let (e, mut o) = bgp_healthy();
        if let Some(ps) = o.bgp_peers.as_mut() {
            ps.push(peer(
                "10.99.0.99",
                "start",
                "Active Socket: No route to host",
            ));
        }
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::BgpSessionUnexpected, "10.99.0.99".into())]
        );
        assert_eq!(v.findings[0].severity, Severity::Warning);
        assert!(v.findings[0].actual.contains("No route to host"));
        // Some BGPPeers could not be evaluated: only info.
        let mut e2 = e.clone();
        e2.bgp.incomplete = vec!["BGPPeer odd: nodeSelector …".into()];
        let v = run(&e2, &o);
        assert_eq!(v.findings[0].severity, Severity::Info);
    }

    #[test]
    fn without_bird_nothing_is_judged_and_the_checks_say_why() {
        let (e, mut o) = bgp_healthy();
        o.bgp_peers = None;
        o.unavailable.push(crate::observed::Unavailable::new(
            crate::observed::Source::Bgp,
            "bird show protocols",
            "no BIRD control socket at /var/run/calico/bird.ctl",
        ));
        let v = run(&e, &o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        for id in [
            CheckId::BgpSessionDown,
            CheckId::BgpSessionMissing,
            CheckId::BgpSessionUnexpected,
        ] {
            let s = v.skipped.iter().find(|s| s.check == id).expect("skipped");
            assert!(s.reason.contains("no BIRD control socket"), "{}", s.reason);
        }
    }

    #[test]
    fn without_a_datastore_only_down_is_judged() {
        let (_, mut o) = bgp_healthy();
        if let Some(ps) = o.bgp_peers.as_mut() {
            ps.push(peer("10.99.0.99", "start", "Connect"));
        }
        let v = verify(None, &o, &Policy::default());
        assert_eq!(ids(&v), [(CheckId::BgpSessionDown, "10.99.0.99".into())]);
        assert!(
            v.skipped
                .iter()
                .any(|s| s.check == CheckId::BgpSessionMissing)
        );
    }

    #[test]
    fn a_block_not_learned_names_the_session() {
        let (mut e, mut o) = bgp_healthy();
        // The fixture is VXLAN; make node-b's block a BIRD-learned no-encap route.
        let block: ipnet::IpNet = "10.244.1.0/26".parse().expect("net");
        e.bgp.learned = vec![LearnedBlock {
            block,
            node: "node-b".into(),
            gateway: "10.99.0.12".parse().expect("ip"),
            session: Some("Mesh_10_99_0_12".into()),
        }];
        o.routes
            .retain(|r: &Route| r.destination.to_string() != "10.244.1.0/26");
        let v = run(&e, &o);
        assert_eq!(ids(&v), [(CheckId::RouteMissing, "10.244.1.0/26".into())]);
        let f = &v.findings[0];
        assert!(
            f.expected.contains(
                "proto bird (block of node-b, learned over BGP from Mesh_10_99_0_12 (10.99.0.12))"
            ),
            "{}",
            f.expected
        );
        assert!(
            f.hint
                .contains("Mesh_10_99_0_12 is Established, so node-b does not advertise it"),
            "{}",
            f.hint
        );
        // The session down: the hint says so.
        o.bgp_peers = Some(vec![peer("10.99.0.12", "start", "Connect")]);
        let v = run(&e, &o);
        let f = v
            .findings
            .iter()
            .find(|f| f.check == CheckId::RouteMissing)
            .expect("route");
        assert!(f.hint.contains("Mesh_10_99_0_12 is down"), "{}", f.hint);
        // BIRD's blackhole.
        e.bgp.bird_blackholes = true;
        o.routes.retain(|r| r.kind != RouteType::Blackhole);
        let v = run(&e, &o);
        let f = v
            .findings
            .iter()
            .find(|f| f.check == CheckId::RouteBlackholeMissing)
            .expect("blackhole");
        assert!(
            f.expected
                .ends_with("proto bird (local block, BIRD's static protocol)"),
            "{}",
            f.expected
        );
    }

    /// The healthy fixture, dual stack: bird's IPv4 and bird6's IPv6 session to node-b.
    fn dual_stack() -> (Expected, ObservedDataplane) {
        let (mut e, mut o) = bgp_healthy();
        e.bgp.sessions.push(session("fd00:99::12", "node-b", 64512));
        o.bgp6_peers = Some(vec![peer("fd00:99::12", "up", "Established")]);
        (e, o)
    }

    fn bgp_skips(v: &crate::verify::Verification) -> Vec<&crate::verify::Skipped> {
        v.skipped
            .iter()
            .filter(|s| {
                matches!(
                    s.check,
                    CheckId::BgpSessionDown
                        | CheckId::BgpSessionMissing
                        | CheckId::BgpSessionUnexpected
                )
            })
            .collect()
    }

    #[test]
    fn a_healthy_dual_stack_node_is_quiet_and_fully_judged() {
        let (e, o) = dual_stack();
        let v = run(&e, &o);
        assert_eq!(ids(&v), Vec::<(CheckId, String)>::new());
        assert!(bgp_skips(&v).is_empty(), "{:?}", v.skipped);
    }

    #[test]
    fn ipv6_sessions_are_judged_against_bird6() {
        // Wrong AS on the IPv6 session: down, named as bird6's.
        let (e, mut o) = dual_stack();
        o.bgp6_peers = Some(vec![peer(
            "fd00:99::12",
            "start",
            "Active Received: Bad peer AS",
        )]);
        let v = run(&e, &o);
        assert_eq!(ids(&v), [(CheckId::BgpSessionDown, "fd00:99::12".into())]);
        let f = &v.findings[0];
        assert!(
            f.expected.contains(
                "BGP session Mesh_fd00_99__12 (node-to-node mesh with node-b, AS 64512 -> AS 64512)"
            ),
            "{}",
            f.expected
        );
        assert!(
            f.hint.contains("birdcl -s /var/run/calico/bird6.ctl"),
            "{}",
            f.hint
        );
        // bird6 lacks the IPv6 mesh: missing, only the IPv6 session.
        o.bgp6_peers = Some(Vec::new());
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::BgpSessionMissing, "fd00:99::12".into())]
        );
        assert!(
            v.findings[0]
                .expected
                .contains("bird6 protocol Mesh_fd00_99__12"),
            "{}",
            v.findings[0].expected
        );
        assert!(
            v.findings[0].hint.contains("bird6.cfg"),
            "{}",
            v.findings[0].hint
        );
        // A bird6 session nothing implies; its count is of IPv6 sessions.
        o.bgp6_peers = Some(vec![
            peer("fd00:99::12", "up", "Established"),
            peer("fd00:99::99", "start", "Connect"),
        ]);
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::BgpSessionUnexpected, "fd00:99::99".into())]
        );
        assert!(
            v.findings[0]
                .expected
                .contains("no bird6 session to fd00:99::99 (1 session(s) implied"),
            "{}",
            v.findings[0].expected
        );
        // An IPv4 session in bird's list is not looked for in bird6's, nor the reverse.
        let (e, mut o) = dual_stack();
        o.bgp_peers = Some(vec![peer("fd00:99::12", "up", "Established")]);
        o.bgp6_peers = Some(vec![peer("10.99.0.12", "up", "Established")]);
        let v = run(&e, &o);
        assert_eq!(
            ids(&v)
                .iter()
                .filter(|(c, _)| *c == CheckId::BgpSessionMissing)
                .count(),
            2,
            "{:?}",
            ids(&v)
        );
    }

    #[test]
    fn without_a_datastore_a_bird6_session_down_is_judged() {
        let (_, mut o) = dual_stack();
        o.bgp6_peers = Some(vec![peer("fd00:99::12", "start", "Connect")]);
        let v = verify(None, &o, &Policy::default());
        assert_eq!(ids(&v), [(CheckId::BgpSessionDown, "fd00:99::12".into())]);
    }

    #[test]
    fn bird6_silent_with_ipv6_sessions_due_is_not_observable_naming_its_socket() {
        let (e, mut o) = dual_stack();
        o.bgp6_peers = None;
        o.unavailable.push(crate::observed::Unavailable::new(
            crate::observed::Source::Bgp6,
            "bird6 show protocols",
            "no bird6 control socket at /var/run/calico/bird6.ctl or /var/run/bird/bird6.ctl (BGP not in use here?)",
        ).with_cause(crate::observed::Cause::NotRunning));
        let v = run(&e, &o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        let skips = bgp_skips(&v);
        assert_eq!(skips.len(), 3, "{skips:?}");
        for s in skips {
            assert_eq!(s.kind, NotRun::CouldNotObserve);
            assert!(s.reason.contains("IPv6 sessions (1 due)"), "{}", s.reason);
            assert!(
                s.reason.contains("/var/run/calico/bird6.ctl"),
                "{}",
                s.reason
            );
        }
        // A bundle without calicoctl's IPv6 section: not in the input, rather than unobserved.
        let mut bundle = o.clone();
        if let Some(u) = bundle
            .unavailable
            .iter_mut()
            .find(|u| u.kind == crate::observed::Source::Bgp6)
        {
            u.cause = crate::observed::Cause::NotInInput;
        }
        let v = run(&e, &bundle);
        assert!(
            bgp_skips(&v)
                .iter()
                .all(|s| s.kind == NotRun::NotInInput && s.reason.contains("not in the input")),
            "{:?}",
            v.skipped
        );
        // IPv4 is still judged.
        o.bgp_peers = Some(vec![peer("10.99.0.12", "start", "Connect")]);
        let v = run(&e, &o);
        assert_eq!(ids(&v), [(CheckId::BgpSessionDown, "10.99.0.12".into())]);
        // No IPv6 sessions due (an IPv4-only cluster): bird6's absence says nothing.
        let (e, mut o) = bgp_healthy();
        o.unavailable.push(
            crate::observed::Unavailable::new(
                crate::observed::Source::Bgp6,
                "bird6 show protocols",
                "no bird6 control socket",
            )
            .with_cause(crate::observed::Cause::NotRunning),
        );
        let v = run(&e, &o);
        assert!(v.findings.is_empty() && bgp_skips(&v).is_empty(), "{v:?}");
        assert_eq!(v.verdict(), crate::verify::Verdict::Clean);
    }

    #[test]
    fn an_ipv6_block_not_learned_names_bird6s_session() {
        let (mut e, o) = dual_stack();
        e.bgp.learned = vec![LearnedBlock {
            block: "fd00:244::40/122".parse().expect("net"),
            node: "node-b".into(),
            gateway: "fd00:99::12".parse().expect("ip"),
            session: Some("Mesh_fd00_99__12".into()),
        }];
        let mut out = vec![Finding::new(
            CheckId::RouteMissing,
            Severity::Critical,
            "fd00:244::40/122",
        )];
        explain_routes(&e, &o, &mut out);
        assert!(
            out[0].expected.contains(
                "fd00:244::40/122 via fd00:99::12 dev eth0 proto bird (block of node-b, learned over BGP from Mesh_fd00_99__12 (fd00:99::12))"
            ),
            "{}",
            out[0].expected
        );
        assert!(
            out[0]
                .hint
                .contains("bird6, not Felix, programs this route")
                && out[0].hint.contains("Mesh_fd00_99__12 is Established"),
            "{}",
            out[0].hint
        );
        // bird6's blackholes are explained only when bird6 programs them.
        let mut out = vec![Finding::new(
            CheckId::RouteBlackholeMissing,
            Severity::Critical,
            "fd00:244::/122",
        )];
        e.bgp.bird_blackholes = true;
        explain_routes(&e, &o, &mut out);
        assert!(
            !out[0].expected.contains("proto bird"),
            "{}",
            out[0].expected
        );
        e.bgp.bird6_blackholes = true;
        explain_routes(&e, &o, &mut out);
        assert!(
            out[0]
                .expected
                .contains("proto bird (local block, bird6's static protocol)"),
            "{}",
            out[0].expected
        );
    }
}
