//! Findings and their stable check IDs (DESIGN.md §4). IDs are extended, never renamed.

use serde::{Deserialize, Serialize};

macro_rules! check_ids {
    ($($variant:ident => $id:literal, $what:literal;)*) => {
        /// A check's stable, dotted identifier.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum CheckId {
            $(#[serde(rename = $id)] #[doc = $what] $variant,)*
        }

        impl CheckId {
            pub const ALL: &[CheckId] = &[$(CheckId::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $(CheckId::$variant => $id,)* }
            }

            pub fn describe(self) -> &'static str {
                match self { $(CheckId::$variant => $what,)* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($id => Some(CheckId::$variant),)* _ => None }
            }
        }
    };
}

check_ids! {
    RouteMissing => "route.missing", "a route Felix programs for a remote block (or borrowed address) is absent";
    RouteWrongDevice => "route.wrong-device", "a block route leaves through the wrong device";
    RouteWrongNexthop => "route.wrong-nexthop", "a block route points at the wrong next hop";
    RouteUnexpected => "route.unexpected", "a Felix-owned route that Felix would not program (stale)";
    RouteBlackholeMissing => "route.blackhole.missing", "the blackhole for a local block is absent";
    RouteWorkloadMissing => "route.workload.missing", "a local pod's /32 route is absent";
    TunnelMissing => "tunnel.missing", "a tunnel device Felix creates is absent";
    TunnelDown => "tunnel.down", "a tunnel device is down";
    TunnelAddressMismatch => "tunnel.address.mismatch", "the tunnel's address differs from the node's, or lies outside its blocks";
    TunnelVniMismatch => "tunnel.vni.mismatch", "vxlan.calico's VNI or port differs from the configuration";
    TunnelParentMismatch => "tunnel.parent.mismatch", "the VTEP is bound to the wrong address or device";
    VxlanFdbMissing => "vxlan.fdb.missing", "no FDB entry sends a remote VTEP's MAC to its node";
    VxlanNeighMissing => "vxlan.neigh.missing", "no permanent ARP entry for a remote VTEP";
    VxlanMacMismatch => "vxlan.mac.mismatch", "a VTEP MAC differs from the one Felix derives";
    MtuTunnelMismatch => "mtu.tunnel.mismatch", "a tunnel device's MTU differs from the expected one";
    MtuWorkloadMismatch => "mtu.workload.mismatch", "a workload interface's MTU exceeds the tunnel's";
    MtuUnderlayTooSmall => "mtu.underlay.too-small", "the underlay cannot carry the tunnel MTU plus overhead";
    WireguardPeerMissing => "wireguard.peer.missing", "a remote node's WireGuard peer is absent";
    WireguardPeerStaleHandshake => "wireguard.peer.stale-handshake", "a WireGuard peer has not completed a handshake recently";
    WireguardAllowedIpsMismatch => "wireguard.allowed-ips.mismatch", "a WireGuard peer's allowed IPs differ from its node's blocks";
    WireguardRuleMissing => "wireguard.rule.missing", "the fwmark rule steering traffic into WireGuard's table is absent";
    WireguardListenPortMismatch => "wireguard.listen-port.mismatch", "the WireGuard device listens on another port than configured";
    WireguardFwmarkMismatch => "wireguard.fwmark.mismatch", "the WireGuard device's fwmark is off or not the one its routing rule exempts";
    WireguardPeerEndpointMismatch => "wireguard.peer.endpoint.mismatch", "a WireGuard peer's endpoint is not its node's IP and the listening port";
    WireguardPeerUnexpected => "wireguard.peer.unexpected", "a WireGuard peer whose key belongs to no remote node";
    WireguardRouteMissing => "wireguard.route.missing", "WireGuard's routing table lacks a remote node's block or tunnel address";
    FailsafeMissing => "failsafe.missing", "a failsafe port has no rule in a referenced failsafe chain";
    RulesFelixMissing => "rules.felix.missing", "Felix's chains are absent or not hooked into the built-in chains";
    RulesBackendMixed => "rules.backend.mixed", "Felix's rules exist in both iptables backends";
    NatOutgoingMissing => "nat-outgoing.missing", "a natOutgoing pool has no MASQUERADE rule";
    SysctlForwardingOff => "sysctl.forwarding.off", "IPv4 forwarding is disabled";
    SysctlRpFilterStrict => "sysctl.rp-filter.strict", "strict reverse-path filtering where Calico needs it loose";
    BgpSessionDown => "bgp.session.down", "a BGP session is not Established";
    BgpSessionFlapping => "bgp.session.flapping", "a BGP session keeps re-establishing";
    BgpSessionMissing => "bgp.session.missing", "a BGP session the datastore implies is not configured in BIRD";
    BgpSessionUnexpected => "bgp.session.unexpected", "BIRD has a BGP session the datastore does not imply";
    FelixUnhealthy => "felix.unhealthy", "Felix's readiness endpoint reports not ready";
    BpfRouteMissing => "bpf.route.missing", "Calico's eBPF route map lacks an entry";
    BpfRouteWrongNexthop => "bpf.route.wrong-nexthop", "a remote block's eBPF route entry points at the wrong node";
    ConntrackPressure => "conntrack.pressure", "the conntrack table is close to its limit";
    DataplaneModeMismatch => "dataplane.mode.mismatch", "the configured dataplane mode is not the one in use";
    RulesDispatchMissing => "rules.dispatch.missing", "a workload interface has no entry in Felix's dispatch chains";
    VpcCniRouteMissing => "vpccni.route.missing", "an AWS VPC CNI pod veth carries no /32 route";
    VpcCniRuleMissing => "vpccni.rule.missing", "a VPC CNI ip rule (512 to a pod, 1536 from a pod, 1024 fwmark) is absent";
    VpcCniTableMissing => "vpccni.table.missing", "a per-ENI route table that rules look up has no default route";
    VpcCniRpFilterStrict => "vpccni.rp-filter.strict", "the primary ENI's rp_filter is strict where the VPC CNI needs it loose";
    VpcCniSnatMissing => "vpccni.snat.missing", "the VPC CNI's SNAT chain, its hook or its connmark rules are absent";
    NodeIdentityMismatch => "node.identity.mismatch", "the dataplane holds another Node's addresses than the agent's node name (agent run)";
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn tag(self) -> &'static str {
        match self {
            Self::Critical => "CRIT",
            Self::Warning => "WARN",
            Self::Info => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: CheckId,
    pub severity: Severity,
    /// What the finding is about: a CIDR, a device, a MAC, a chain.
    pub subject: String,
    pub expected: String,
    pub actual: String,
    /// The likely cause and the next command to run.
    pub hint: String,
    /// Seconds since the epoch when the finding was first seen (after the grace window).
    pub since: u64,
}

impl Finding {
    pub fn new(check: CheckId, severity: Severity, subject: impl Into<String>) -> Self {
        Self {
            check,
            severity,
            subject: subject.into(),
            expected: String::new(),
            actual: String::new(),
            hint: String::new(),
            since: 0,
        }
    }

    pub fn expected(mut self, e: impl Into<String>) -> Self {
        self.expected = e.into();
        self
    }

    pub fn actual(mut self, a: impl Into<String>) -> Self {
        self.actual = a.into();
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = h.into();
        self
    }

    /// Identity of a finding across runs, for the grace window.
    pub fn key(&self) -> (CheckId, String) {
        (self.check, self.subject.clone())
    }
}

/// A check that could not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub check: CheckId,
    pub reason: String,
    /// Whether its absence limits the verdict. Missing in JSON from an older agent: taken as
    /// "could not observe", since unknown is never clean.
    #[serde(default)]
    pub kind: NotRun,
    /// What it needed, in a few words (`nft`, `the Calico datastore`, `ip neigh`), for the
    /// one-line summary of what did not run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub missing: String,
}

impl Skipped {
    pub fn new(check: CheckId, kind: NotRun, reason: impl Into<String>) -> Self {
        Self {
            check,
            reason: reason.into(),
            kind,
            missing: String::new(),
        }
    }

    pub fn missing(mut self, what: impl Into<String>) -> Self {
        self.missing = what.into();
        self
    }
}

/// Why a check did not run, as it bears on the verdict.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum NotRun {
    /// The node's mode or this kind of run does not have it (no BIRD in VXLAN mode, checks
    /// only time can make, reserved checks): nothing is missing.
    NotApplicable,
    /// The input the user gave lacks it (a bundle without `ip neigh`, no datastore): the
    /// verdict holds for what was given.
    NotInInput,
    /// It exists but could not be read (a missing capability or binary, a source error):
    /// the node cannot be called clean.
    #[default]
    CouldNotObserve,
}

impl NotRun {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotApplicable => "not-applicable",
            Self::NotInInput => "not-in-input",
            Self::CouldNotObserve => "could-not-observe",
        }
    }
}

/// The answer to "is this node's dataplane what Felix programs?", and how far it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check that applies ran, and none found a warning or critical.
    Clean,
    /// At least one warning or critical finding (whatever else could not run).
    Drift,
    /// No drift in what was given, but some checks need input the user did not give.
    Incomplete,
    /// Some state that exists could not be read (or there was nothing to verify): no drift
    /// found is not the same as none.
    Unverifiable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Drift => "drift",
            Self::Incomplete => "incomplete",
            Self::Unverifiable => "unverifiable",
        }
    }

    /// `agent check`'s exit code: 0 clean (also for what the input holds), 1 drift, 2 could
    /// not verify.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Clean | Self::Incomplete => 0,
            Self::Drift => 1,
            Self::Unverifiable => 2,
        }
    }
}

/// Findings per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverityCounts {
    pub critical: usize,
    pub warning: usize,
    pub info: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_check_from_an_older_agent_counts_as_not_observed() {
        let s: Skipped =
            serde_json::from_str(r#"{"check":"felix.unhealthy","reason":"x"}"#).expect("json");
        assert_eq!(s.kind, NotRun::CouldNotObserve);
        let json = serde_json::to_value(Skipped::new(
            CheckId::BgpSessionDown,
            NotRun::NotApplicable,
            "no BIRD",
        ))
        .expect("json");
        assert_eq!(json["kind"], "not-applicable");
    }

    #[test]
    fn ids_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for id in CheckId::ALL {
            assert_eq!(CheckId::parse(id.as_str()), Some(*id));
            assert!(seen.insert(id.as_str()), "duplicate {id}");
            let json = serde_json::to_string(id).expect("json");
            assert_eq!(json, format!("\"{}\"", id.as_str()));
        }
    }
}
