//! The verification engine: a pure function from what Felix should have programmed
//! ([`Expected`], when the datastore is known) and what the kernel holds
//! ([`ObservedDataplane`]) to [`Finding`]s. No I/O; every check is tested firing and quiet.
//!
//! Without a datastore the mode is inferred from the node and only the checks that need no
//! datastore run; the others are listed as skipped, with the reason.

mod bgp;
mod bpf;
mod dispatch;
pub mod finding;
mod grace;
mod history;
pub mod identity;
mod infer;
mod routes;
mod rules;
mod rules_fragment;
mod tunnel;
mod vpc_cni;
mod wireguard;

use serde::{Deserialize, Serialize};

pub use self::{
    bgp::age as bgp_age,
    finding::{CheckId, Finding, NotRun, Severity, SeverityCounts, Skipped, Verdict},
    grace::GraceTracker,
    history::{History, HistoryPolicy, REJECT_AFTER_TIME},
};
use calico_conventions::{TUNNEL_DEVICES, is_workload_iface};

use crate::{
    desired::{Kind, expected::Expected},
    observed::{Cause, Link, ObservedDataplane, Source, Unavailable},
};

/// The indexes verification builds on every run (thousands of routes, neighbours and FDB
/// entries): a fast hash, as SipHash was a third of the run at 5,000 nodes.
type IndexMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type IndexSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// How verification behaves; the defaults are what an operator expects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
    /// Seconds since the epoch, stamped on findings as `since`.
    pub now: u64,
    /// Fill fraction of the conntrack table above which `conntrack.pressure` fires.
    pub conntrack_pressure: f64,
}

/// New connections are dropped ("nf_conntrack: table full") at 100%; warn well before.
pub const DEFAULT_CONNTRACK_PRESSURE: f64 = 0.9;

impl Default for Policy {
    fn default() -> Self {
        Self {
            now: 0,
            conntrack_pressure: DEFAULT_CONNTRACK_PRESSURE,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Most severe first, then by check and subject.
    pub findings: Vec<Finding>,
    pub skipped: Vec<Skipped>,
    /// Whether the expected state came from the datastore (else it was inferred).
    pub with_datastore: bool,
    pub notes: Vec<String>,
}

impl Verification {
    /// Drift that should page someone: anything above `info`.
    pub fn has_drift(&self) -> bool {
        self.findings.iter().any(|f| f.severity != Severity::Info)
    }

    /// Drift wins over everything; then anything that exists but could not be read makes the
    /// node unverifiable; then input the user did not give makes the answer incomplete.
    pub fn verdict(&self) -> Verdict {
        let not_run = |k: NotRun| self.skipped.iter().any(|s| s.kind == k);
        if self.has_drift() {
            Verdict::Drift
        } else if not_run(NotRun::CouldNotObserve) {
            Verdict::Unverifiable
        } else if not_run(NotRun::NotInInput) {
            Verdict::Incomplete
        } else {
            Verdict::Clean
        }
    }

    pub fn counts(&self) -> SeverityCounts {
        let n = |s: Severity| self.findings.iter().filter(|f| f.severity == s).count();
        SeverityCounts {
            critical: n(Severity::Critical),
            warning: n(Severity::Warning),
            info: n(Severity::Info),
        }
    }
}

/// The capabilities (`CAP_NET_ADMIN`, …) these texts name, once each, in order.
pub fn capabilities_named<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in texts {
        let mut rest = t;
        while let Some(i) = rest.find("CAP_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(tail.len());
            let cap = tail[..end].trim_end_matches('_');
            if cap.len() > 4 && !out.iter().any(|c| c == cap) {
                out.push(cap.to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

/// What the missing `sources` mean for a check that needs them: unreadable anywhere makes it
/// unobserved; otherwise missing from a bundle makes it input not given; a service that is
/// not running makes it not applicable.
pub(crate) fn not_run_kind(obs: &ObservedDataplane, sources: &[Source]) -> NotRun {
    let causes: Vec<Cause> = obs
        .unavailable
        .iter()
        .filter(|u| sources.contains(&u.kind))
        .map(|u| u.cause)
        .collect();
    if causes.is_empty() || causes.contains(&Cause::Unreadable) {
        NotRun::CouldNotObserve
    } else if causes.contains(&Cause::NotInInput) {
        NotRun::NotInInput
    } else {
        NotRun::NotApplicable
    }
}

/// Checks that need the datastore; without one they are skipped with this reason.
const NEEDS_DATASTORE: &[CheckId] = &[
    CheckId::RouteBlackholeMissing,
    CheckId::RouteWorkloadMissing,
    CheckId::RouteWrongNexthop,
    CheckId::RouteUnexpected,
    CheckId::TunnelMissing,
    CheckId::TunnelVniMismatch,
    CheckId::TunnelParentMismatch,
    CheckId::VxlanMacMismatch,
    CheckId::MtuTunnelMismatch,
    CheckId::FailsafeMissing,
    CheckId::NatOutgoingMissing,
    CheckId::WireguardPeerMissing,
    CheckId::WireguardAllowedIpsMismatch,
    CheckId::WireguardRuleMissing,
    CheckId::WireguardListenPortMismatch,
    CheckId::WireguardFwmarkMismatch,
    CheckId::WireguardPeerEndpointMismatch,
    CheckId::WireguardPeerUnexpected,
    CheckId::WireguardRouteMissing,
    CheckId::DataplaneModeMismatch,
    CheckId::BpfRouteMissing,
    CheckId::BpfRouteWrongNexthop,
    CheckId::BgpSessionMissing,
    CheckId::BgpSessionUnexpected,
];

/// What a check's expected values come from, besides the node's own sources: datastore kinds,
/// and knowing which node this is (a bundle may not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Kind(Kind),
    NodeName,
}

/// The datastore inputs each check needs. With a partial datastore, a check whose inputs are
/// present runs; one whose inputs are not falls back to its datastore-free form when it has
/// one (verify/infer.rs), else is listed as not in the input, naming what is missing.
fn datastore_needs(check: CheckId) -> &'static [Input] {
    use Input::NodeName;
    const POOL: Input = Input::Kind(Kind::IpPool);
    const BLOCK: Input = Input::Kind(Kind::IpamBlock);
    const NODE: Input = Input::Kind(Kind::Node);
    const FELIX: Input = Input::Kind(Kind::FelixConfiguration);
    match check {
        // Which blocks are remote and their next hops: blocks, their owners, and who we are.
        CheckId::RouteMissing | CheckId::RouteWrongNexthop | CheckId::RouteUnexpected => {
            &[POOL, BLOCK, NODE, NodeName]
        }
        // The same, and whether Felix runs in eBPF mode at all.
        CheckId::BpfRouteMissing | CheckId::BpfRouteWrongNexthop => {
            &[POOL, BLOCK, NODE, FELIX, NodeName]
        }
        // The pool's mode alone says which device a route into it leaves by.
        CheckId::RouteWrongDevice | CheckId::TunnelMissing | CheckId::NatOutgoingMissing => &[POOL],
        CheckId::RouteBlackholeMissing => &[POOL, BLOCK, NodeName],
        CheckId::RouteWorkloadMissing => &[BLOCK, NodeName],
        CheckId::TunnelAddressMismatch
        | CheckId::TunnelParentMismatch
        | CheckId::VxlanMacMismatch
        | CheckId::VxlanNeighMissing
        | CheckId::VxlanFdbMissing => &[NODE, NodeName],
        // Values FelixConfiguration may set (MTUs, VNI, failsafe ports, WireGuard, eBPF):
        // without it, Felix's defaults would be a guess.
        CheckId::TunnelVniMismatch | CheckId::MtuTunnelMismatch | CheckId::MtuWorkloadMismatch => {
            &[POOL, FELIX]
        }
        CheckId::MtuUnderlayTooSmall
        | CheckId::FailsafeMissing
        | CheckId::WireguardRuleMissing
        | CheckId::WireguardListenPortMismatch
        | CheckId::WireguardFwmarkMismatch
        | CheckId::DataplaneModeMismatch => &[FELIX],
        CheckId::WireguardPeerMissing
        | CheckId::WireguardAllowedIpsMismatch
        | CheckId::WireguardPeerEndpointMismatch
        | CheckId::WireguardPeerUnexpected => &[FELIX, NODE, NodeName],
        CheckId::WireguardRouteMissing => &[FELIX, BLOCK, NODE, NodeName],
        // The sessions confd renders: the mesh to every other Node, BGPPeers by node.
        CheckId::BgpSessionMissing | CheckId::BgpSessionUnexpected => &[NODE, NodeName],
        _ => &[],
    }
}

/// What of its datastore inputs `check` lacks, by name.
fn missing_inputs(e: &Expected, check: CheckId) -> Vec<&'static str> {
    datastore_needs(check)
        .iter()
        .filter_map(|need| match need {
            Input::Kind(k) => (!e.kinds.contains(k)).then_some(k.name()),
            Input::NodeName => (!e.node_known).then_some("the node's name"),
        })
        .collect()
}

/// Why a check did not run for lack of datastore inputs.
fn missing_reason(missing: &[&str]) -> String {
    let kinds: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|m| *m != "the node's name")
        .collect();
    let mut why = Vec::new();
    if !kinds.is_empty() {
        why.push(format!(
            "needs {} from the datastore (not in the input)",
            kinds.join(", ")
        ));
    }
    if missing.contains(&"the node's name") {
        why.push(
            "needs to know which node this is: pass --node-name (the bundle has no hostname \
             or nodename file, and no Node of the datastore holds its addresses)"
                .to_string(),
        );
    }
    why.join("; ")
}

/// Why the checks of [`NEEDS_DATASTORE`] did not run without one.
pub const NEEDS_DATASTORE_REASON: &str =
    "needs the Calico datastore (--datastore, --kube, or a bundle with Calico YAML)";

/// Checks whose source the agent does not read yet, in either mode.
const NOT_OBSERVED: &[(CheckId, &str)] = &[
    (
        CheckId::NodeIdentityMismatch,
        "agent run's: a one-shot run names the slip on its first line and in `identity`, with \
         the verdict unverifiable",
    ),
    (
        CheckId::BgpSessionFlapping,
        "needs BGP session history over time (a long-running agent); one read cannot tell",
    ),
    (
        CheckId::WireguardPeerStaleHandshake,
        "an idle peer has an old handshake legitimately; needs traffic counters over time",
    ),
    (
        CheckId::SysctlRpFilterStrict,
        "strict rp_filter is harmless for Calico's symmetric routes; not reported",
    ),
];

/// The state each check judges. A check whose state was not observable (no privilege, not in
/// the bundle) is skipped: an unread source is unknown, never empty.
fn needs(check: CheckId) -> &'static [Source] {
    use Source::*;
    match check {
        CheckId::RouteMissing | CheckId::RouteWorkloadMissing => &[Routes, Links],
        CheckId::RouteWrongDevice
        | CheckId::RouteWrongNexthop
        | CheckId::RouteUnexpected
        | CheckId::RouteBlackholeMissing => &[Routes],
        CheckId::TunnelMissing
        | CheckId::TunnelDown
        | CheckId::MtuTunnelMismatch
        | CheckId::MtuWorkloadMismatch
        | CheckId::MtuUnderlayTooSmall
        | CheckId::DataplaneModeMismatch => &[Links],
        CheckId::TunnelAddressMismatch => &[Addresses],
        // The VNI, port and `local` address are in `ip -d link`; whether the parent holds the
        // node IP is judged only when the addresses are there too.
        CheckId::TunnelVniMismatch | CheckId::TunnelParentMismatch => &[LinkDetails],
        CheckId::VxlanFdbMissing => &[Fdb, Neighbours],
        CheckId::VxlanNeighMissing => &[Neighbours],
        CheckId::VxlanMacMismatch => &[LinkDetails, Neighbours],
        CheckId::WireguardPeerMissing
        | CheckId::WireguardAllowedIpsMismatch
        | CheckId::WireguardPeerStaleHandshake
        | CheckId::WireguardListenPortMismatch
        | CheckId::WireguardPeerEndpointMismatch
        | CheckId::WireguardPeerUnexpected => &[Wireguard],
        CheckId::WireguardFwmarkMismatch => &[Wireguard, Rules],
        CheckId::WireguardRuleMissing => &[Rules],
        CheckId::WireguardRouteMissing => &[Routes],
        CheckId::FailsafeMissing | CheckId::RulesFelixMissing | CheckId::NatOutgoingMissing => {
            &[Iptables, Nftables]
        }
        CheckId::RulesBackendMixed => &[Iptables],
        CheckId::FelixUnhealthy => &[FelixHealth],
        CheckId::SysctlForwardingOff
        | CheckId::SysctlRpFilterStrict
        | CheckId::ConntrackPressure => &[Sysctls],
        CheckId::BgpSessionDown | CheckId::BgpSessionMissing | CheckId::BgpSessionUnexpected => {
            &[Bgp]
        }
        CheckId::BgpSessionFlapping | CheckId::NodeIdentityMismatch => &[],
        CheckId::BpfRouteMissing | CheckId::BpfRouteWrongNexthop => &[CalicoBpfRoutes],
        CheckId::RulesDispatchMissing => &[Iptables, Links],
        CheckId::VpcCniRouteMissing => &[Routes, Links],
        CheckId::VpcCniRuleMissing | CheckId::VpcCniTableMissing => &[Rules, Routes],
        CheckId::VpcCniRpFilterStrict => &[Sysctls, Routes],
        CheckId::VpcCniSnatMissing => &[Iptables],
    }
}

/// Verifies `obs` against `expected` (or, without it, against what can be inferred).
pub fn verify(
    expected: Option<&Expected>,
    obs: &ObservedDataplane,
    policy: &Policy,
) -> Verification {
    let mut v = Verification {
        with_datastore: expected.is_some(),
        ..Default::default()
    };
    let mut out = Vec::new();
    rules::check(obs, expected, &mut out, &mut v.skipped);
    sysctl(obs, &mut out);
    conntrack(obs, policy, &mut out);
    felix(obs, &mut out);
    match expected {
        Some(e) => {
            tunnel::check(e, obs, &mut out);
            routes::check(e, obs, &mut out);
            wireguard::check(e, obs, &mut out, &mut v.skipped);
            bpf::check_mode(e, obs, &mut out, &mut v.skipped);
            bpf::check_routes(e, obs, &mut out, &mut v.skipped);
            v.notes.extend(e.notes.iter().cloned());
            v.notes.extend(e.bgp.incomplete.iter().cloned());
            partial(e, obs, &mut out, &mut v.skipped);
        }
        None => {
            infer::check(obs, &mut out);
            for id in NEEDS_DATASTORE {
                v.skipped.push(
                    Skipped::new(*id, NotRun::NotInInput, NEEDS_DATASTORE_REASON)
                        .missing("the Calico datastore"),
                );
            }
        }
    }
    bgp::check(expected, obs, &mut out);
    let bpf = expected.is_some_and(|e| e.bpf) || !obs.calico_bpf_pins.is_empty();
    dispatch::check(obs, bpf, &mut out, &mut v.skipped);
    vpc_cni::check(expected, obs, &mut out, &mut v.skipped, &mut v.notes);
    for (id, reason) in NOT_OBSERVED {
        v.skipped.push(
            Skipped::new(*id, NotRun::NotApplicable, *reason)
                .missing("history or a reserved source"),
        );
    }
    for id in CheckId::ALL {
        let missing: Vec<&Unavailable> = needs(*id)
            .iter()
            .filter_map(|s| obs.unavailable.iter().find(|u| u.kind == *s))
            .collect();
        if missing.is_empty() || v.skipped.iter().any(|s| s.check == *id) {
            continue;
        }
        out.retain(|f| f.check != *id);
        let why: Vec<String> = missing
            .iter()
            .map(|u| format!("{}: {}", u.source, u.reason))
            .collect();
        let kind = not_run_kind(obs, needs(*id));
        let reason = match kind {
            NotRun::NotApplicable => format!("not running here ({})", why.join("; ")),
            NotRun::NotInInput => format!("not in the input ({})", why.join("; ")),
            NotRun::CouldNotObserve => format!("not observable ({})", why.join("; ")),
        };
        let mut what: Vec<&str> = Vec::new();
        for u in &missing {
            if !what.contains(&u.source.as_str()) {
                what.push(&u.source);
            }
        }
        v.skipped
            .push(Skipped::new(*id, kind, reason).missing(what.join(", ")));
    }
    bgp::skip_unobserved(expected, obs, &mut v.skipped);
    for f in &mut out {
        f.since = policy.now;
    }
    out.sort_by(|a, b| (a.severity, a.check, &a.subject).cmp(&(b.severity, b.check, &b.subject)));
    out.dedup_by(|a, b| a.key() == b.key());
    v.findings = out;
    v
}

/// With a partial datastore: the checks whose inputs are missing drop what they found (it was
/// judged against defaults standing in for the missing kinds), run in their datastore-free
/// form when they have one, and are otherwise listed as not in the input.
fn partial(
    e: &Expected,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let unmet: Vec<(CheckId, Vec<&str>)> = CheckId::ALL
        .iter()
        .map(|id| (*id, missing_inputs(e, *id)))
        .filter(|(_, missing)| !missing.is_empty())
        .collect();
    if !unmet.is_empty() {
        out.retain(|f| !unmet.iter().any(|(id, _)| *id == f.check));
        let mut inferred = Vec::new();
        infer::check(obs, &mut inferred);
        for (id, missing) in &unmet {
            skipped.retain(|s| s.check != *id);
            if NEEDS_DATASTORE.contains(id) || !infer::CHECKS.contains(id) {
                skipped.push(
                    Skipped::new(*id, NotRun::NotInInput, missing_reason(missing))
                        .missing(missing.join(", ")),
                );
            } else {
                out.extend(inferred.iter().filter(|f| f.check == *id).cloned());
            }
        }
    }
    // An MTU Felix derives from the underlay is unknown when the input lacks the underlay's
    // link: not a finding against Felix's 1460 fallback, a check that could not be made.
    let derived_unknown = e.vxlan.iter().chain(&e.ipip).any(|t| t.mtu.is_none())
        || e.wireguard.as_ref().is_some_and(|w| w.mtu.is_none());
    if derived_unknown
        && !skipped
            .iter()
            .any(|s| s.check == CheckId::MtuTunnelMismatch)
    {
        skipped.push(
            Skipped::new(
                CheckId::MtuTunnelMismatch,
                NotRun::NotInInput,
                "not observable: the tunnel MTU follows the underlay's, and the input shows no \
                 link matching mtuIfacePattern (a full `ip link` listing has it)",
            )
            .missing("the underlay link"),
        );
    }
}

fn sysctl(obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    if obs.sysctls.ip_forward == Some(0) {
        out.push(
            Finding::new(CheckId::SysctlForwardingOff, Severity::Critical, "net.ipv4.ip_forward")
                .expected("1 (Felix's IPForwarding=Enabled)")
                .actual("0")
                .hint("pods cannot reach anything beyond this node; something reset the sysctl: `sysctl net.ipv4.ip_forward`, check the node's sysctl.d and other agents"),
        );
    }
    for (iface, v) in &obs.sysctls.forwarding {
        if *v == 0 && is_workload_iface(iface) {
            out.push(
                Finding::new(CheckId::SysctlForwardingOff, Severity::Critical, format!("net.ipv4.conf.{iface}.forwarding"))
                    .expected("1 (Felix sets it on every workload interface)")
                    .actual("0")
                    .hint(format!("`sysctl net.ipv4.conf.{iface}.forwarding`; Felix re-applies it when the interface comes up")),
            );
        }
    }
}

/// Both tables drop new connections when full: nf_conntrack, and in eBPF mode Calico's own map
/// (pod traffic bypasses nf_conntrack there; host traffic still uses it).
fn conntrack(obs: &ObservedDataplane, policy: &Policy, out: &mut Vec<Finding>) {
    if let (Some(count), Some(max)) = (obs.sysctls.conntrack_count, obs.sysctls.conntrack_max) {
        pressure(
            out,
            policy,
            "nf_conntrack",
            "net.netfilter.nf_conntrack_max",
            count,
            max,
            "at 100% the kernel drops new connections (\"nf_conntrack: table full, dropping packet\" in dmesg): raise net.netfilter.nf_conntrack_max or find the flood with `conntrack -L | awk '{print $1, $4}' | sort | uniq -c | sort -rn | head`",
        );
    }
    if let Some(ct) = &obs.calico_conntrack {
        pressure(
            out,
            policy,
            &ct.map,
            "the map's max_entries",
            ct.counts.total,
            u64::from(ct.max_entries),
            "at 100% Calico's eBPF programs cannot create conntrack entries and new connections fail: raise FelixConfiguration bpfMapSizeConntrack, or find the flood with `calico-node -bpf conntrack dump`",
        );
    }
}

fn pressure(
    out: &mut Vec<Finding>,
    policy: &Policy,
    table: &str,
    limit: &str,
    count: u64,
    max: u64,
    hint: &str,
) {
    if max == 0 || (count as f64) < policy.conntrack_pressure * max as f64 {
        return;
    }
    out.push(
        Finding::new(CheckId::ConntrackPressure, Severity::Warning, table)
            .expected(format!(
                "fewer than {:.0}% of {limit} ({max}) in use",
                policy.conntrack_pressure * 100.0
            ))
            .actual(format!(
                "{count} entries ({:.1}%)",
                count as f64 * 100.0 / max as f64
            ))
            .hint(hint),
    );
}

fn felix(obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let Some(h) = obs.felix_health.as_ref().filter(|h| !h.ready()) else {
        return;
    };
    out.push(
        Finding::new(CheckId::FelixUnhealthy, Severity::Critical, "felix")
            .expected(format!("{} /readiness answers 200 or 204", h.endpoint))
            .actual(format!("HTTP {}{}", h.status, if h.detail.is_empty() { String::new() } else { format!(": {}", h.detail.replace('\n', " ")) }))
            .hint("Felix is not programming the dataplane, so drift will not heal: `kubectl logs -n calico-system ds/calico-node -c calico-node --tail=100`, `kubectl describe pod -n calico-system -l k8s-app=calico-node`"),
    );
}

/// The device a VXLAN device is bound to.
fn parent_of<'a>(obs: &'a ObservedDataplane, link: &Link) -> Option<&'a Link> {
    link.vxlan
        .as_ref()
        .and_then(|v| v.parent_index)
        .and_then(|i| obs.link_by_index(i))
}

/// The device holding this node's IP: where same-subnet and no-encap routes leave, and the
/// underlay of tunnels not bound to a parent (tunl0).
fn node_ip_link<'a>(e: &Expected, obs: &'a ObservedDataplane) -> Option<&'a Link> {
    let ip = std::net::IpAddr::V4(e.node_ip?.addr());
    obs.addresses
        .iter()
        .find(|a| a.address.addr() == ip)
        .and_then(|a| obs.link(&a.ifname))
}

/// Workload interfaces whose MTU exceeds `limit` (`why` says where the limit comes from).
fn workload_mtu(obs: &ObservedDataplane, limit: u32, why: &str, out: &mut Vec<Finding>) {
    for l in obs
        .links
        .iter()
        .filter(|l| is_workload_iface(&l.name) && l.mtu > limit)
    {
        out.push(
            Finding::new(CheckId::MtuWorkloadMismatch, Severity::Warning, l.name.clone())
                .expected(format!("MTU ≤ {limit} ({why})"))
                .actual(format!("MTU {}", l.mtu))
                .hint(format!(
                    "this pod sends packets the tunnel cannot carry: large transfers stall (PMTUD blackhole). The CNI plugin set the MTU when the pod started (from /var/lib/calico/mtu or veth_mtu); recreate the pod after fixing the MTU config: `ip link show {}`",
                    l.name
                )),
        );
    }
}

/// The largest MTU a workload may have as the node stands: the smallest MTU of the Calico
/// tunnels that are up and in use, whether or not any route is in the input. tunl0 exists
/// whenever the ipip module is loaded; it counts when addressed, routed through, or when
/// `expected_in_use` says IPIP is on.
fn tunnel_mtu_limit(
    obs: &ObservedDataplane,
    expected_in_use: impl Fn(&Link) -> bool,
) -> Option<(u32, String)> {
    let ipip_in_use = |t: &Link| {
        obs.addresses_of(&t.name).next().is_some()
            || obs
                .routes
                .iter()
                .any(|r| r.dev.as_deref() == Some(t.name.as_str()))
            || expected_in_use(t)
    };
    present_tunnels(obs)
        .filter(|t| t.is_up() && (t.name != calico_conventions::IPIP || ipip_in_use(t)))
        .map(|t| (t.mtu, t.name.clone()))
        .min()
}

/// Calico tunnel devices present on the node.
fn present_tunnels(obs: &ObservedDataplane) -> impl Iterator<Item = &Link> {
    obs.links
        .iter()
        .filter(|l| TUNNEL_DEVICES.contains(&l.name.as_str()))
}

#[cfg(test)]
mod ipv6_tests;
#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::{
        CheckId, NotRun, Verdict,
        testutil::{LAB_POOL, expected_from, healthy, run},
    };

    /// Issue 13 point 1: a pool-only datastore runs what the pool decides and lists the rest
    /// as not in the input, naming the kinds; the healthy node is incomplete, never an error.
    #[test]
    fn a_partial_datastore_runs_what_it_can_and_names_what_is_missing() {
        let (_, o) = healthy();
        let v = run(&expected_from(LAB_POOL, Some("node-a")), &o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        assert_eq!(v.verdict(), Verdict::Incomplete);
        let not_run = |id: CheckId| v.skipped.iter().find(|s| s.check == id);
        let blackhole = not_run(CheckId::RouteBlackholeMissing).expect("not run");
        assert_eq!(
            (blackhole.kind, blackhole.missing.as_str()),
            (NotRun::NotInInput, "IPAMBlock")
        );
        assert!(
            blackhole
                .reason
                .contains("needs IPAMBlock from the datastore")
        );
        let vni = not_run(CheckId::TunnelVniMismatch).expect("not run");
        assert_eq!(vni.missing, "FelixConfiguration");
        // What the pool decides ran.
        for ran in [CheckId::RouteWrongDevice, CheckId::TunnelMissing] {
            assert!(not_run(ran).is_none(), "{ran} should run");
        }
        // Checks with a datastore-free form run in it (the VTEP's ARP and FDB entries).
        assert!(not_run(CheckId::VxlanNeighMissing).is_none());
    }

    /// Issue 13 point 2: a node the input does not name: node-specific checks are listed as
    /// not run, naming what would tell; the pool's checks still run.
    #[test]
    fn an_unknown_node_lists_its_checks_as_not_run() {
        let (_, o) = healthy();
        let lab = include_str!("testdata/datastore-lab.yaml");
        let v = run(&expected_from(lab, None), &o);
        assert!(v.findings.is_empty(), "{:?}", v.findings);
        for id in [
            CheckId::RouteWrongNexthop,
            CheckId::RouteUnexpected,
            CheckId::RouteBlackholeMissing,
            CheckId::TunnelParentMismatch,
            CheckId::VxlanMacMismatch,
        ] {
            let s = v
                .skipped
                .iter()
                .find(|s| s.check == id)
                .unwrap_or_else(|| panic!("{id} not run"));
            assert_eq!(s.missing, "the node's name", "{s:?}");
            assert!(s.reason.contains("--node-name"), "{s:?}");
        }
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.check == CheckId::RouteWrongDevice)
        );
        // Those with a datastore-free form (route.missing for a VTEP without a route) run in it.
        assert!(!v.skipped.iter().any(|s| s.check == CheckId::RouteMissing));
    }
}
