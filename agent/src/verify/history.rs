//! The checks that need time, for the long-running agent: `bgp.session.flapping` and
//! `wireguard.peer.stale-handshake`. One read cannot judge them (a session that flapped between
//! two reads looks healthy; an idle WireGuard peer has an old handshake legitimately), so the
//! daemon feeds every BIRD/WireGuard poll to [`History::observe`] and lets [`History::apply`]
//! add the findings to each verification.
//!
//! Memory is bounded: per BGP session the last state and the times of its recent state
//! changes; per WireGuard peer at most [`WG_SAMPLES`] (+2) transmit-counter samples over the
//! stale-handshake window. Sessions and peers that vanish are forgotten.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use super::{CheckId, Finding, NotRun, Severity, Skipped, Verification};
use crate::observed::{
    ObservedDataplane, Source,
    bird::{BgpPeer, Family},
};

/// WireGuard's REJECT_AFTER_TIME: a session key older than this is never used again, so a peer
/// we send to must have handshaken since.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Most state changes kept per BGP session, whatever the window (far above any threshold).
const MAX_CHANGES: usize = 1024;
/// Transmit samples kept per WireGuard peer over the window: polls closer together than
/// window / WG_SAMPLES update the newest sample instead of adding one.
const WG_SAMPLES: u64 = 64;

/// What counts as flapping and as a stale handshake.
#[derive(Debug, Clone)]
pub struct HistoryPolicy {
    /// The window state changes are counted in.
    pub flap_window: Duration,
    /// State changes within `flap_window` that make a flap (0 is treated as 1).
    pub flap_threshold: u32,
    /// A handshake older than this (or none) while traffic is sent means the session key is
    /// dead; also the window traffic is looked for in.
    pub stale_handshake: Duration,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            flap_window: Duration::from_secs(600),
            flap_threshold: 3,
            stale_handshake: REJECT_AFTER_TIME,
        }
    }
}

/// BGP and WireGuard state over time. The daemon polls more often than `stale_handshake`
/// (two samples must fall inside that window for a peer to be judged).
#[derive(Debug)]
pub struct History {
    /// How long state changes and transmit samples are kept: the windows of the policy this
    /// history was made for. `apply`/`flaps` with longer windows see only what was kept.
    flap_retain_ms: u64,
    wg_retain_ms: u64,
    bgp_polls: Polls,
    sessions: BTreeMap<String, Session>,
    wg_polls: Polls,
    /// By (device, peer public key).
    peers: BTreeMap<(String, String), WgTrack>,
}

impl Default for History {
    fn default() -> Self {
        Self::new(&HistoryPolicy::default())
    }
}

/// How often a source was read, and why the latest poll could not read it.
#[derive(Debug, Default)]
struct Polls {
    read: u32,
    latest_missing: Option<String>,
    /// Whether the latest miss was a service that is not there (BIRD in VXLAN mode).
    not_running: bool,
}

impl Polls {
    fn read(&mut self) {
        self.read = self.read.saturating_add(1);
        self.latest_missing = None;
        self.not_running = false;
    }

    fn missed(&mut self, obs: &ObservedDataplane, source: Source) {
        self.latest_missing = Some(unread(obs, source).unwrap_or_default());
        self.not_running = super::not_run_kind(obs, &[source]) == NotRun::NotApplicable;
    }

    /// How a check judged from these polls counts when it cannot be judged yet: waiting for
    /// history, or for a service that is not there, is not a failure to observe.
    fn kind(&self) -> NotRun {
        if self.latest_missing.is_none() || self.not_running {
            NotRun::NotApplicable
        } else {
            NotRun::CouldNotObserve
        }
    }
}

/// One BIRD protocol: its last observed state and when it changed.
#[derive(Debug)]
struct Session {
    /// Whose protocol it is: `bird`'s or `bird6`'s.
    family: Family,
    peer_ip: String,
    state: String,
    since: String,
    info: String,
    /// Milliseconds since the epoch of each observed state change, oldest first.
    changes: VecDeque<u64>,
}

impl Session {
    fn new(family: Family, p: &BgpPeer) -> Self {
        Self {
            family,
            peer_ip: p.peer_ip.clone(),
            state: p.state.clone(),
            since: p.since.clone(),
            info: p.info.clone(),
            changes: VecDeque::new(),
        }
    }

    /// Whether the session changed state since the last observation: its (protocol state, BGP
    /// state) differs, or it looks the same but BIRD's time of the last state change moved (it
    /// flapped between the polls and came back).
    fn changed(&self, p: &BgpPeer) -> bool {
        if (self.state.as_str(), first_word(&self.info)) != (p.state.as_str(), first_word(&p.info))
        {
            return true;
        }
        // BIRD 1.x prints `since` as a time of day for 20 hours, then as a date: that switch
        // is the same state change printed differently. A real change is always recent.
        self.since != p.since && p.since.contains(':')
    }

    fn changes_within(&self, window_ms: u64, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.changes
            .iter()
            .copied()
            .filter(move |t| within(now_ms, *t, window_ms))
    }
}

/// One WireGuard peer: its latest handshake and endpoint, and its transmit counter over time.
#[derive(Debug, Default)]
struct WgTrack {
    endpoint: Option<String>,
    /// Seconds since the epoch.
    handshake: Option<u64>,
    /// (ms since the epoch, tx_bytes), oldest first.
    samples: VecDeque<(u64, u64)>,
}

impl WgTrack {
    fn sample(&mut self, now_ms: u64, tx: u64, retain_ms: u64) {
        let spacing = retain_ms / WG_SAMPLES;
        let n = self.samples.len();
        if n >= 2 && self.samples[n - 1].0.saturating_sub(self.samples[n - 2].0) < spacing {
            self.samples[n - 1] = (now_ms, tx);
        } else {
            self.samples.push_back((now_ms, tx));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| !within(now_ms, *t, retain_ms))
        {
            self.samples.pop_front();
        }
    }
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

/// Whether `t` lies inside the `window_ms` before `now_ms` (a moment exactly one window old has
/// aged out).
fn within(now_ms: u64, t: u64, window_ms: u64) -> bool {
    now_ms.saturating_sub(t) < window_ms
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// "10 min", "180 s".
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Why `source` was not read in `obs`, from its `unavailable` entry.
fn unread(obs: &ObservedDataplane, source: Source) -> Option<String> {
    obs.unavailable
        .iter()
        .find(|u| u.kind == source)
        .map(|u| format!("{}: {}", u.source, u.reason))
}

/// Replaces what `v` says about `check`: its findings, or why it could not be judged.
fn settle(v: &mut Verification, check: CheckId, judged: Result<Vec<Finding>, (NotRun, String)>) {
    v.skipped.retain(|s| s.check != check);
    match judged {
        Ok(findings) => {
            v.findings.retain(|f| f.check != check);
            v.findings.extend(findings);
        }
        Err((kind, reason)) => v
            .skipped
            .push(Skipped::new(check, kind, reason).missing("history")),
    }
}

/// `QkJCQkJC…` from a base64 public key.
fn abbreviate(key: &str) -> String {
    match key.char_indices().nth(8) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_string(),
    }
}

impl History {
    /// A history keeping what `policy`'s windows need.
    pub fn new(policy: &HistoryPolicy) -> Self {
        Self {
            flap_retain_ms: millis(policy.flap_window),
            wg_retain_ms: millis(policy.stale_handshake),
            bgp_polls: Polls::default(),
            sessions: BTreeMap::new(),
            wg_polls: Polls::default(),
            peers: BTreeMap::new(),
        }
    }

    /// Feeds one observation (the daemon calls this every time BIRD or WireGuard was polled),
    /// at `now_ms` (ms since the epoch). A source the observation could not read (BIRD not
    /// answering, `wg` failing) leaves its history untouched.
    pub fn observe(&mut self, obs: &ObservedDataplane, now_ms: u64) {
        self.observe_bgp(obs, now_ms);
        self.observe_wireguard(obs, now_ms);
    }

    /// Both BIRDs' sessions, each family from its own daemon: one that did not answer this
    /// poll leaves its sessions as they were (`bird`'s answer is what the polls count, as
    /// calico-node runs it whenever it runs BGP at all).
    fn observe_bgp(&mut self, obs: &ObservedDataplane, now_ms: u64) {
        if obs.bgp_peers.is_some() {
            self.bgp_polls.read();
        } else {
            self.bgp_polls.missed(obs, Source::Bgp);
        }
        for family in Family::ALL {
            if let Some(peers) = obs.bgp_peers_of(family) {
                self.observe_sessions(family, peers, now_ms);
            }
        }
    }

    /// Replaces `family`'s sessions with `peers`, counting each one's state changes.
    fn observe_sessions(&mut self, family: Family, peers: &[BgpPeer], now_ms: u64) {
        let (mut old, others): (BTreeMap<String, Session>, _) = std::mem::take(&mut self.sessions)
            .into_iter()
            .partition(|(_, s)| s.family == family);
        self.sessions = others;
        for p in peers {
            let mut s = match old.remove(&p.name) {
                Some(mut s) => {
                    if s.changed(p) {
                        s.changes.push_back(now_ms);
                    }
                    s.peer_ip.clone_from(&p.peer_ip);
                    s.state.clone_from(&p.state);
                    s.since.clone_from(&p.since);
                    s.info.clone_from(&p.info);
                    s
                }
                None => Session::new(family, p),
            };
            while s.changes.len() > MAX_CHANGES
                || s.changes
                    .front()
                    .is_some_and(|t| !within(now_ms, *t, self.flap_retain_ms))
            {
                s.changes.pop_front();
            }
            self.sessions.insert(p.name.clone(), s);
        }
    }

    fn observe_wireguard(&mut self, obs: &ObservedDataplane, now_ms: u64) {
        if unread(obs, Source::Wireguard).is_some() {
            self.wg_polls.missed(obs, Source::Wireguard);
            return;
        }
        self.wg_polls.read();
        let mut old = std::mem::take(&mut self.peers);
        for d in &obs.wireguard {
            for p in &d.peers {
                let key = (d.name.clone(), p.public_key.clone());
                let mut t = old.remove(&key).unwrap_or_default();
                t.endpoint.clone_from(&p.endpoint);
                t.handshake = p.latest_handshake;
                t.sample(now_ms, p.tx_bytes, self.wg_retain_ms);
                self.peers.insert(key, t);
            }
        }
    }

    /// Adds the time-based findings to `v` and removes those two checks from `v.skipped` when
    /// there is enough history to judge them (else keeps them skipped, with the reason).
    /// Findings get `since` in seconds: the first state change in the window, or when traffic
    /// was first seen going to a peer whose key had died.
    pub fn apply(&self, v: &mut Verification, policy: &HistoryPolicy, now_ms: u64) {
        let flapping = match self.bgp_unjudged() {
            Some(reason) => Err((self.bgp_polls.kind(), reason)),
            None => Ok(self.flapping(policy, now_ms)),
        };
        settle(v, CheckId::BgpSessionFlapping, flapping);
        let stale = match self.wg_unjudged() {
            Some(reason) => Err((self.wg_polls.kind(), reason)),
            None => Ok(self.stale_handshakes(policy, now_ms)),
        };
        settle(v, CheckId::WireguardPeerStaleHandshake, stale);
        v.findings.sort_by(|a, b| {
            (a.severity, a.check, &a.subject).cmp(&(b.severity, b.check, &b.subject))
        });
    }

    /// Flap count per BGP peer (protocol name -> state changes within the window), for
    /// `agent diag` and metrics. Every session BIRD listed in its latest answer is present.
    pub fn flaps(&self, policy: &HistoryPolicy, now_ms: u64) -> BTreeMap<String, u32> {
        let window = millis(policy.flap_window);
        self.sessions
            .iter()
            .map(|(name, s)| {
                let n = s.changes_within(window, now_ms).count();
                (name.clone(), u32::try_from(n).unwrap_or(u32::MAX))
            })
            .collect()
    }

    fn bgp_unjudged(&self) -> Option<String> {
        let p = &self.bgp_polls;
        match (p.read, p.latest_missing.as_deref()) {
            (0, Some(why)) if !why.is_empty() => {
                Some(format!("no BGP sessions observed (BIRD not read: {why})"))
            }
            (0, _) => Some("no BGP sessions observed (BIRD not read)".into()),
            (_, Some("")) => {
                Some("BIRD not read in the latest poll; judged again once it answers".into())
            }
            (_, Some(why)) => Some(format!(
                "BIRD not read in the latest poll ({why}); judged again once it answers"
            )),
            (1, None) => {
                Some("needs history: judged from the second BIRD poll on (1 so far)".into())
            }
            _ => None,
        }
    }

    fn wg_unjudged(&self) -> Option<String> {
        let p = &self.wg_polls;
        match (p.read, &p.latest_missing) {
            (0, Some(why)) => Some(format!("not observable ({why})")),
            (_, Some(why)) => Some(format!("not observable in the latest poll ({why})")),
            (n @ (0 | 1), None) => Some(format!(
                "needs history: judged from the second WireGuard poll on ({n} so far)"
            )),
            _ => None,
        }
    }

    fn flapping(&self, policy: &HistoryPolicy, now_ms: u64) -> Vec<Finding> {
        let window = millis(policy.flap_window);
        let threshold = policy.flap_threshold.max(1);
        let mut out = Vec::new();
        for (name, s) in &self.sessions {
            let recent: Vec<u64> = s.changes_within(window, now_ms).collect();
            let n = u32::try_from(recent.len()).unwrap_or(u32::MAX);
            if n < threshold {
                continue;
            }
            let now_state = format!("{} {}", s.state, s.info);
            let mut f = Finding::new(CheckId::BgpSessionFlapping, Severity::Warning, s.peer_ip.clone())
                .expected(format!(
                    "a stable session (fewer than {threshold} state changes in {})",
                    span(policy.flap_window)
                ))
                .actual(format!(
                    "{n} state changes in the last {}, now {}",
                    span(policy.flap_window),
                    now_state.trim()
                ))
                .hint(format!(
                    "each drop withdraws the routes learned from {ip} and re-learns them. The seed incident: a peer with the wrong AS number (BGPPeer asNumber vs the remote node's or BGPConfiguration's asNumber) cycled Established <-> Connect about every 30 s. Look for \"Last error\" / \"BGP Error: Bad peer AS\" in `{birdcl} show protocols all {name}`, compare `calicoctl get bgppeer -o yaml` with `calicoctl get bgpconfiguration default -o yaml` and the nodes' spec.bgp.asNumber; otherwise an unstable path to {ip}:179 (hold timer expiring) or the peer's calico-node restarting",
                    ip = s.peer_ip,
                    birdcl = s.family.birdcl()
                ));
            f.since = recent.first().map_or(now_ms, |t| *t) / 1000;
            out.push(f);
        }
        out
    }

    fn stale_handshakes(&self, policy: &HistoryPolicy, now_ms: u64) -> Vec<Finding> {
        let stale_ms = millis(policy.stale_handshake);
        let mut out = Vec::new();
        for ((dev, key), t) in &self.peers {
            let handshake_ms = t.handshake.map(|h| h.saturating_mul(1000));
            if handshake_ms.is_some_and(|h| now_ms.saturating_sub(h) <= stale_ms) {
                continue;
            }
            // Traffic sent after the key died: the sender's WireGuard must have tried to
            // handshake, and none completed since. Traffic sent while the key was alive and
            // then nothing (a peer going idle) is healthy.
            let dead_from_ms = handshake_ms.map_or(0, |h| h.saturating_add(stale_ms));
            let mut sent = 0;
            let mut first: Option<(u64, u64)> = None;
            for (a, b) in t.samples.iter().zip(t.samples.iter().skip(1)) {
                if within(now_ms, a.0, stale_ms) && a.0 >= dead_from_ms && b.1 > a.1 {
                    sent += b.1 - a.1;
                    first.get_or_insert((a.0, b.0));
                }
            }
            let Some((from_ms, seen_ms)) = first else {
                continue;
            };
            let endpoint = t.endpoint.as_deref().unwrap_or("no endpoint");
            let port = t
                .endpoint
                .as_deref()
                .and_then(|e| e.rsplit_once(':'))
                .map_or("51820", |(_, p)| p);
            let last = match t.handshake {
                Some(h) => format!("last handshake {} s ago", (now_ms / 1000).saturating_sub(h)),
                None => "last handshake never".into(),
            };
            let mut f = Finding::new(
                CheckId::WireguardPeerStaleHandshake,
                Severity::Critical,
                format!("{} ({endpoint})", abbreviate(key)),
            )
            .expected(format!(
                "a handshake within the last {} s while traffic is sent",
                policy.stale_handshake.as_secs()
            ))
            .actual(format!(
                "{last}, {sent} bytes sent in the last {} s ({dev})",
                now_ms.saturating_sub(from_ms) / 1000
            ))
            .hint(format!(
                "traffic to that node is being blackholed: WireGuard keeps initiating handshakes and none completes. Check that UDP {port} passes between the nodes both ways (security groups, host firewalls), that {endpoint} is the node's current address, and that the key was not rotated: compare `calicoctl get node -o yaml` (wireguardPublicKey) with `wg show {dev}`"
            ));
            f.since = dead_from_ms.max(seen_ms) / 1000;
            out.push(f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        observed::{
            Unavailable,
            wireguard::{WgDevice, WgPeer},
        },
        verify::{Policy, verify},
    };

    /// 2023-11-14T22:13:20Z.
    const T0: u64 = 1_700_000_000_000;
    const KEY: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
    const KEY2: &str = "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M=";

    fn at(secs: u64) -> u64 {
        T0 + secs * 1000
    }

    /// BIRD's `since` for a moment: its time of day.
    fn clock(ms: u64) -> String {
        let s = (ms / 1000) % 86_400;
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }

    fn session(ip: &str, state: &str, since: &str, info: &str) -> BgpPeer {
        BgpPeer {
            name: format!("Mesh_{}", ip.replace('.', "_")),
            kind: "node-to-node mesh".into(),
            peer_ip: ip.into(),
            state: state.into(),
            since: since.into(),
            info: info.into(),
            since_seconds: None,
        }
    }

    fn bird(peers: Vec<BgpPeer>) -> ObservedDataplane {
        ObservedDataplane {
            bgp_peers: Some(peers),
            ..Default::default()
        }
    }

    fn wg(peers: Vec<WgPeer>) -> ObservedDataplane {
        ObservedDataplane {
            wireguard: vec![WgDevice {
                name: "wireguard.cali".into(),
                listen_port: Some(51820),
                peers,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn wg_peer(key: &str, handshake: Option<u64>, tx: u64) -> WgPeer {
        WgPeer {
            public_key: key.into(),
            endpoint: Some("10.99.0.12:51820".into()),
            allowed_ips: vec!["10.244.1.0/26".into()],
            latest_handshake: handshake,
            tx_bytes: tx,
            ..Default::default()
        }
    }

    /// What `verify` hands the daemon: both time-based checks skipped.
    fn verified() -> Verification {
        verify(None, &ObservedDataplane::default(), &Policy::default())
    }

    fn judged(h: &History, now_ms: u64) -> Verification {
        let mut v = verified();
        h.apply(&mut v, &HistoryPolicy::default(), now_ms);
        v
    }

    fn of(v: &Verification, check: CheckId) -> Vec<&Finding> {
        v.findings.iter().filter(|f| f.check == check).collect()
    }

    fn skip_reason(v: &Verification, check: CheckId) -> Option<&str> {
        v.skipped
            .iter()
            .find(|s| s.check == check)
            .map(|s| s.reason.as_str())
    }

    /// Polls every 10 s from `from` to `to` (seconds after T0) while the session toggles
    /// Established <-> Connect every 30 s (the wrong-AS incident).
    fn flapping(h: &mut History, from: u64, to: u64) {
        for s in (from..=to).step_by(10) {
            let changed = at(s - s % 30);
            let p = if (s / 30) % 2 == 0 {
                session("10.99.0.12", "up", &clock(changed), "Established")
            } else {
                session(
                    "10.99.0.12",
                    "start",
                    &clock(changed),
                    "Connect Socket: Connection reset by peer",
                )
            };
            h.observe(&bird(vec![p]), at(s));
        }
    }

    fn stable(h: &mut History, from: u64, to: u64) {
        for s in (from..=to).step_by(10) {
            let p = session("10.99.0.12", "up", "09:00:00", "Established");
            h.observe(&bird(vec![p]), at(s));
        }
    }

    /// bird6's sessions are counted like bird's, each from its own daemon: a poll bird6
    /// does not answer leaves the IPv6 sessions' history as it was.
    #[test]
    fn ipv6_sessions_flap_in_bird6s_history() {
        let mut h = History::default();
        let v4 = session("10.99.0.12", "up", "09:00:00", "Established");
        for s in (0..=120).step_by(10) {
            let changed = at(s - s % 30);
            let (state, info) = if (s / 30) % 2 == 0 {
                ("up", "Established")
            } else {
                ("start", "Connect")
            };
            let mut v6 = session("fd00:99::12", state, &clock(changed), info);
            v6.name = "Mesh_fd00_99__12".into();
            let mut obs = bird(vec![v4.clone()]);
            // Every third poll bird6 is silent: nothing is forgotten or counted.
            if s % 30 != 20 {
                obs.bgp6_peers = Some(vec![v6]);
            }
            h.observe(&obs, at(s));
        }
        let v = judged(&h, at(120));
        let f = of(&v, CheckId::BgpSessionFlapping);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, "fd00:99::12");
        assert!(
            f[0].hint.contains("birdcl -s /var/run/calico/bird6.ctl"),
            "{}",
            f[0].hint
        );
        let flaps = h.flaps(&HistoryPolicy::default(), at(120));
        assert_eq!(flaps.get("Mesh_10_99_0_12"), Some(&0));
        assert!(
            flaps.get("Mesh_fd00_99__12").is_some_and(|n| *n >= 3),
            "{flaps:?}"
        );
    }

    #[test]
    fn verify_lists_both_checks_skipped() {
        let v = verified();
        assert!(skip_reason(&v, CheckId::BgpSessionFlapping).is_some());
        assert!(skip_reason(&v, CheckId::WireguardPeerStaleHandshake).is_some());
    }

    #[test]
    fn session_cycling_every_30s_fires() {
        let mut h = History::default();
        flapping(&mut h, 0, 180);
        let v = judged(&h, at(180));
        assert_eq!(skip_reason(&v, CheckId::BgpSessionFlapping), None);
        let f = of(&v, CheckId::BgpSessionFlapping);
        assert_eq!(f.len(), 1, "{v:#?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].subject, "10.99.0.12");
        assert_eq!(
            f[0].expected,
            "a stable session (fewer than 3 state changes in 10 min)"
        );
        assert_eq!(
            f[0].actual,
            "6 state changes in the last 10 min, now up Established"
        );
        assert!(f[0].hint.contains("show protocols all Mesh_10_99_0_12"));
        assert!(f[0].hint.contains("Bad peer AS"));
        assert!(f[0].hint.contains("calicoctl get bgppeer -o yaml"));
        assert_eq!(f[0].since, at(30) / 1000);
        assert_eq!(
            h.flaps(&HistoryPolicy::default(), at(180)),
            BTreeMap::from([("Mesh_10_99_0_12".to_string(), 6)])
        );
    }

    #[test]
    fn stable_session_is_quiet() {
        let mut h = History::default();
        stable(&mut h, 0, 600);
        let v = judged(&h, at(600));
        assert_eq!(skip_reason(&v, CheckId::BgpSessionFlapping), None);
        assert!(of(&v, CheckId::BgpSessionFlapping).is_empty());
        assert_eq!(
            h.flaps(&HistoryPolicy::default(), at(600))["Mesh_10_99_0_12"],
            0
        );
    }

    #[test]
    fn changes_older_than_the_window_age_out() {
        let mut h = History::default();
        let policy = HistoryPolicy::default();
        // Changes at 30, 60, ..., 180 s; Established from then on.
        flapping(&mut h, 0, 180);
        stable_since(&mut h, 190, 660, at(180));
        // At 660 s the change at 60 s is exactly 10 min old: 30 and 60 have aged out.
        assert_eq!(h.flaps(&policy, at(660))["Mesh_10_99_0_12"], 4);
        assert_eq!(
            of(&judged(&h, at(660)), CheckId::BgpSessionFlapping).len(),
            1
        );
        // At 720 s only 150 and 180 remain: below the threshold, quiet again.
        stable_since(&mut h, 670, 720, at(180));
        assert_eq!(h.flaps(&policy, at(720))["Mesh_10_99_0_12"], 2);
        assert!(of(&judged(&h, at(720)), CheckId::BgpSessionFlapping).is_empty());
        // Aged-out changes are dropped from memory, not just filtered.
        assert_eq!(h.sessions["Mesh_10_99_0_12"].changes.len(), 2);
        stable_since(&mut h, 730, 790, at(180));
        assert!(h.sessions["Mesh_10_99_0_12"].changes.is_empty());
    }

    fn stable_since(h: &mut History, from: u64, to: u64, changed: u64) {
        for s in (from..=to).step_by(10) {
            let p = session("10.99.0.12", "up", &clock(changed), "Established");
            h.observe(&bird(vec![p]), at(s));
        }
    }

    #[test]
    fn since_moving_between_polls_counts_as_a_flap() {
        let mut h = History::default();
        // Polled every 60 s; each time the session dropped and came back in between: BIRD
        // shows it Established every time, only `since` tells.
        for (i, s) in [0u64, 60, 120, 180].into_iter().enumerate() {
            let p = session("10.99.0.12", "up", &clock(at(s) - 5000), "Established");
            h.observe(&bird(vec![p]), at(s));
            let expect = i as u32;
            assert_eq!(
                h.flaps(&HistoryPolicy::default(), at(s))["Mesh_10_99_0_12"],
                expect
            );
        }
        let v = judged(&h, at(180));
        let f = of(&v, CheckId::BgpSessionFlapping);
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].actual,
            "3 state changes in the last 10 min, now up Established"
        );
    }

    #[test]
    fn since_turning_into_a_date_is_not_a_flap() {
        let mut h = History::default();
        for (s, since) in [(0, "10:00:05"), (10, "2023-11-13"), (20, "2023-11-13")] {
            h.observe(
                &bird(vec![session("10.99.0.12", "up", since, "Established")]),
                at(s),
            );
        }
        assert_eq!(
            h.flaps(&HistoryPolicy::default(), at(20))["Mesh_10_99_0_12"],
            0
        );
    }

    #[test]
    fn a_down_session_changing_sub_state_counts_once_per_poll() {
        let mut h = History::default();
        // Active -> Connect (same protocol state and `since`) is a change; a new detail text
        // with the same BGP state is not.
        for (s, info) in [
            (0, "Active Socket: Connection refused"),
            (10, "Active Socket: Connection timed out"),
            (20, "Connect"),
            (30, "Connect"),
        ] {
            h.observe(
                &bird(vec![session("10.99.0.13", "start", "10:02:11", info)]),
                at(s),
            );
        }
        assert_eq!(
            h.flaps(&HistoryPolicy::default(), at(30))["Mesh_10_99_0_13"],
            1
        );
    }

    #[test]
    fn vanished_session_is_forgotten() {
        let mut h = History::default();
        flapping(&mut h, 0, 180);
        let other = session("10.99.0.13", "up", "09:00:00", "Established");
        h.observe(&bird(vec![other.clone()]), at(190));
        let flaps = h.flaps(&HistoryPolicy::default(), at(190));
        assert_eq!(flaps, BTreeMap::from([("Mesh_10_99_0_13".to_string(), 0)]));
        assert!(of(&judged(&h, at(190)), CheckId::BgpSessionFlapping).is_empty());
        // It comes back: a new session with no history.
        let back = session("10.99.0.12", "up", &clock(at(195)), "Established");
        h.observe(&bird(vec![other, back]), at(200));
        assert_eq!(
            h.flaps(&HistoryPolicy::default(), at(200))["Mesh_10_99_0_12"],
            0
        );
    }

    #[test]
    fn bird_never_read_keeps_the_check_skipped() {
        let mut h = History::default();
        let mut obs = ObservedDataplane::default();
        obs.unavailable.push(Unavailable::new(
            Source::Bgp,
            "bird",
            "no BIRD control socket",
        ));
        h.observe(&obs, at(0));
        h.observe(&obs, at(10));
        let v = judged(&h, at(10));
        assert_eq!(
            skip_reason(&v, CheckId::BgpSessionFlapping),
            Some("no BGP sessions observed (BIRD not read: bird: no BIRD control socket)")
        );
        assert_eq!(
            skip_reason(
                &judged(&History::default(), at(0)),
                CheckId::BgpSessionFlapping
            ),
            Some("no BGP sessions observed (BIRD not read)")
        );
        assert!(h.flaps(&HistoryPolicy::default(), at(10)).is_empty());
    }

    #[test]
    fn single_observation_is_skipped_with_a_reason() {
        let mut h = History::default();
        let mut obs = bird(vec![session("10.99.0.12", "up", "09:00:00", "Established")]);
        obs.wireguard = wg(vec![wg_peer(KEY, None, 100)]).wireguard;
        h.observe(&obs, at(0));
        let v = judged(&h, at(0));
        assert!(v.findings.iter().all(|f| !matches!(
            f.check,
            CheckId::BgpSessionFlapping | CheckId::WireguardPeerStaleHandshake
        )));
        assert_eq!(
            skip_reason(&v, CheckId::BgpSessionFlapping),
            Some("needs history: judged from the second BIRD poll on (1 so far)")
        );
        assert_eq!(
            skip_reason(&v, CheckId::WireguardPeerStaleHandshake),
            Some("needs history: judged from the second WireGuard poll on (1 so far)")
        );
        // Exactly one entry each, replacing verify's.
        assert_eq!(
            v.skipped
                .iter()
                .filter(|s| s.check == CheckId::BgpSessionFlapping)
                .count(),
            1
        );
    }

    #[test]
    fn bird_missing_in_the_latest_poll_skips_but_keeps_history() {
        let mut h = History::default();
        flapping(&mut h, 0, 180);
        h.observe(&ObservedDataplane::default(), at(190));
        let v = judged(&h, at(190));
        assert!(
            skip_reason(&v, CheckId::BgpSessionFlapping)
                .is_some_and(|r| r.starts_with("BIRD not read in the latest poll"))
        );
        assert!(of(&v, CheckId::BgpSessionFlapping).is_empty());
        flapping(&mut h, 210, 210);
        assert_eq!(
            of(&judged(&h, at(210)), CheckId::BgpSessionFlapping).len(),
            1
        );
    }

    /// Polls every 10 s from `from` to `to` with a fixed handshake and `tx(s)` bytes sent.
    fn wg_polls(h: &mut History, from: u64, to: u64, peer: impl Fn(u64) -> WgPeer) {
        for s in (from..=to).step_by(10) {
            h.observe(&wg(vec![peer(s)]), at(s));
        }
    }

    #[test]
    fn old_handshake_with_traffic_fires() {
        let mut h = History::default();
        let hs = at(0) / 1000 - 1000;
        wg_polls(&mut h, 0, 60, |s| wg_peer(KEY, Some(hs), 5000 + s * 100));
        let v = judged(&h, at(60));
        assert_eq!(skip_reason(&v, CheckId::WireguardPeerStaleHandshake), None);
        let f = of(&v, CheckId::WireguardPeerStaleHandshake);
        assert_eq!(f.len(), 1, "{v:#?}");
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].subject, "QkJCQkJC… (10.99.0.12:51820)");
        assert_eq!(
            f[0].expected,
            "a handshake within the last 180 s while traffic is sent"
        );
        assert_eq!(
            f[0].actual,
            "last handshake 1060 s ago, 6000 bytes sent in the last 60 s (wireguard.cali)"
        );
        assert!(f[0].hint.contains("UDP 51820"));
        assert!(f[0].hint.contains("wireguardPublicKey"));
        assert!(f[0].hint.contains("wg show wireguard.cali"));
        assert_eq!(f[0].since, at(10) / 1000);
        // Critical findings sort first.
        assert_eq!(v.findings[0].severity, Severity::Critical);
    }

    #[test]
    fn old_handshake_while_idle_is_quiet() {
        let mut h = History::default();
        let hs = at(0) / 1000 - 1000;
        wg_polls(&mut h, 0, 300, |_| wg_peer(KEY, Some(hs), 5000));
        let v = judged(&h, at(300));
        assert_eq!(skip_reason(&v, CheckId::WireguardPeerStaleHandshake), None);
        assert!(of(&v, CheckId::WireguardPeerStaleHandshake).is_empty());
    }

    #[test]
    fn fresh_handshake_with_traffic_is_quiet() {
        let mut h = History::default();
        // Rekeyed every 120 s while sending (REKEY_AFTER_TIME).
        wg_polls(&mut h, 0, 600, |s| {
            wg_peer(KEY, Some(at(s - s % 120) / 1000), 5000 + s * 100)
        });
        assert!(of(&judged(&h, at(600)), CheckId::WireguardPeerStaleHandshake).is_empty());
    }

    #[test]
    fn never_handshaked_peer_with_traffic_fires() {
        let mut h = History::default();
        wg_polls(&mut h, 0, 30, |s| wg_peer(KEY, None, s * 148 / 5));
        let v = judged(&h, at(30));
        let f = of(&v, CheckId::WireguardPeerStaleHandshake);
        assert_eq!(f.len(), 1);
        assert!(
            f[0].actual
                .starts_with("last handshake never, 888 bytes sent in the last 30 s")
        );
        // Never handshaked and nothing sent: quiet.
        let mut idle = History::default();
        wg_polls(&mut idle, 0, 30, |_| wg_peer(KEY, None, 0));
        assert!(of(&judged(&idle, at(30)), CheckId::WireguardPeerStaleHandshake).is_empty());
    }

    #[test]
    fn peer_going_idle_is_quiet_while_its_handshake_ages() {
        let mut h = History::default();
        // Sends until 100 s (last handshake at 20 s), then idle: at 250 s the handshake is
        // 230 s old and the last traffic only 150 s ago, but it was sent with a live key.
        wg_polls(&mut h, 0, 250, |s| {
            wg_peer(KEY, Some(at(20) / 1000), 5000 + s.min(100) * 100)
        });
        assert!(of(&judged(&h, at(250)), CheckId::WireguardPeerStaleHandshake).is_empty());
        // Traffic resumes and no handshake completes: fires.
        wg_polls(&mut h, 260, 280, |s| {
            wg_peer(KEY, Some(at(20) / 1000), 20_000 + s)
        });
        let v = judged(&h, at(280));
        let f = of(&v, CheckId::WireguardPeerStaleHandshake);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].since, at(260) / 1000);
    }

    #[test]
    fn traffic_older_than_the_window_does_not_count() {
        let mut h = History::default();
        let hs = at(0) / 1000 - 1000;
        // Sent in the first 30 s with a dead key, then nothing for 200 s.
        wg_polls(&mut h, 0, 230, |s| {
            wg_peer(KEY, Some(hs), 5000 + s.min(30) * 10)
        });
        assert!(of(&judged(&h, at(230)), CheckId::WireguardPeerStaleHandshake).is_empty());
    }

    #[test]
    fn vanished_peers_and_devices_are_forgotten() {
        let mut h = History::default();
        h.observe(
            &wg(vec![wg_peer(KEY, None, 0), wg_peer(KEY2, None, 0)]),
            at(0),
        );
        h.observe(&wg(vec![wg_peer(KEY, None, 0)]), at(10));
        assert_eq!(
            h.peers.keys().map(|(_, k)| k.as_str()).collect::<Vec<_>>(),
            [KEY]
        );
        // KEY2 returns with traffic: only one sample of it so far, so it cannot fire yet.
        h.observe(
            &wg(vec![wg_peer(KEY, None, 0), wg_peer(KEY2, None, 5000)]),
            at(20),
        );
        assert!(of(&judged(&h, at(20)), CheckId::WireguardPeerStaleHandshake).is_empty());
        // The device goes away.
        h.observe(&ObservedDataplane::default(), at(30));
        assert!(h.peers.is_empty());
    }

    #[test]
    fn wireguard_unreadable_is_skipped_as_not_observable() {
        let mut h = History::default();
        let mut obs = ObservedDataplane::default();
        obs.unavailable.push(Unavailable::new(
            Source::Wireguard,
            "wg show all dump",
            "wg: not found",
        ));
        h.observe(&obs, at(0));
        h.observe(&obs, at(10));
        assert_eq!(
            skip_reason(&judged(&h, at(10)), CheckId::WireguardPeerStaleHandshake),
            Some("not observable (wg show all dump: wg: not found)")
        );
    }

    #[test]
    fn memory_stays_bounded_under_fast_polling() {
        let mut h = History::default();
        let hs = at(0) / 1000 - 1000;
        // An observation every 50 ms for 10 minutes, with traffic and a flapping session.
        for i in 0..12_000u64 {
            let now = T0 + i * 50;
            let mut obs = wg(vec![wg_peer(KEY, Some(hs), i * 100)]);
            let up = (i / 20) % 2 == 0;
            obs.bgp_peers = Some(vec![session(
                "10.99.0.12",
                if up { "up" } else { "start" },
                &clock(now),
                if up { "Established" } else { "Connect" },
            )]);
            h.observe(&obs, now);
        }
        let samples = h.peers.values().map(|t| t.samples.len()).max();
        assert!(
            samples.is_some_and(|n| n <= WG_SAMPLES as usize + 2),
            "{samples:?}"
        );
        assert!(h.sessions["Mesh_10_99_0_12"].changes.len() <= MAX_CHANGES);
        let now = T0 + 11_999 * 50;
        assert_eq!(
            of(&judged(&h, now), CheckId::WireguardPeerStaleHandshake).len(),
            1
        );
        assert_eq!(of(&judged(&h, now), CheckId::BgpSessionFlapping).len(), 1);
    }
}
