//! Felix's chains: present, hooked into the built-in chains, in one backend only; failsafe
//! ports and NAT-outgoing, per shared/reference/calico-dataplane.md §4–§5.

use super::{CheckId, Finding, NotRun, Severity, Skipped};
use crate::{
    desired::{ProtoPort, expected::Expected},
    observed::{
        ObservedDataplane, Source,
        iptables::{Backend, IptTable, IptablesDump},
        nft::NftRuleset,
    },
};

/// (table, built-in chain, Felix chain) hooks Felix inserts in iptables mode (`setUpIptablesNormal`).
pub(super) const HOOKS: &[(&str, &str, &str)] = &[
    ("raw", "PREROUTING", "cali-PREROUTING"),
    ("raw", "OUTPUT", "cali-OUTPUT"),
    ("mangle", "PREROUTING", "cali-PREROUTING"),
    ("mangle", "POSTROUTING", "cali-POSTROUTING"),
    ("filter", "INPUT", "cali-INPUT"),
    ("filter", "FORWARD", "cali-FORWARD"),
    ("filter", "OUTPUT", "cali-OUTPUT"),
    ("nat", "PREROUTING", "cali-PREROUTING"),
    ("nat", "OUTPUT", "cali-OUTPUT"),
    ("nat", "POSTROUTING", "cali-POSTROUTING"),
];

/// nftables mode: base chain → Felix chain in table `ip calico`.
const NFT_HOOKS: &[(&str, &str)] = &[
    ("filter-INPUT", "filter-cali-INPUT"),
    ("filter-FORWARD", "filter-cali-FORWARD"),
    ("filter-OUTPUT", "filter-cali-OUTPUT"),
    ("nat-PREROUTING", "nat-cali-PREROUTING"),
    ("nat-POSTROUTING", "nat-cali-POSTROUTING"),
];

/// Where Felix's rules live on this node.
enum RuleHome<'a> {
    Iptables(&'a IptablesDump),
    Nft(&'a NftRuleset),
}

fn felix_nft(obs: &ObservedDataplane) -> Option<&NftRuleset> {
    obs.nft
        .as_ref()
        .filter(|n| n.fragment.is_none() && n.chains_of("ip", "calico").any(|c| c.hook.is_some()))
}

pub(super) fn check(
    obs: &ObservedDataplane,
    e: Option<&Expected>,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let bpf = e.is_some_and(|e| e.bpf) || !obs.calico_bpf_pins.is_empty();
    // Parts of a ruleset show what is present and never what is missing: they are judged
    // apart (rules_fragment), and only when no whole ruleset was read.
    let v4: Vec<&IptablesDump> = obs
        .iptables
        .iter()
        .filter(|d| d.family == 4 && d.fragment.is_none())
        .collect();
    if v4.is_empty()
        && felix_nft(obs).is_none()
        && super::rules_fragment::check(obs, e, out, skipped)
    {
        return;
    }
    let with_chains: Vec<&IptablesDump> = v4
        .iter()
        .copied()
        .filter(|d| d.felix_chain_count() > 0)
        .collect();
    if with_chains
        .iter()
        .any(|d| d.backend == Some(Backend::Legacy))
        && with_chains.iter().any(|d| d.backend == Some(Backend::Nft))
    {
        let counts: Vec<String> = with_chains
            .iter()
            .map(|d| format!("{}: {} cali- chains", d.label(), d.felix_chain_count()))
            .collect();
        out.push(
            Finding::new(CheckId::RulesBackendMixed, Severity::Warning, "iptables")
                .expected("Felix's chains in one iptables backend (the one kube-proxy uses)")
                .actual(counts.join(", "))
                .hint("one set is stale and may still match packets first (legacy and nft tables both run); Felix's IptablesBackend must match kube-proxy's: check FELIX_IPTABLESBACKEND and remove the stale rules with the other backend's iptables-save/restore"),
        );
    }
    let home = match (
        felix_nft(obs),
        with_chains.iter().max_by_key(|d| d.felix_chain_count()),
    ) {
        (Some(n), _) => RuleHome::Nft(n),
        (None, Some(d)) => RuleHome::Iptables(d),
        (None, None) => {
            if v4.is_empty() && obs.nft.is_none() {
                let kind = super::not_run_kind(obs, &[Source::Iptables, Source::Nftables]);
                let reason = match kind {
                    NotRun::NotInInput => {
                        "neither iptables nor nftables is in the input".to_string()
                    }
                    _ => format!(
                        "neither iptables nor nftables could be read{}",
                        needs_capability(obs)
                    ),
                };
                let mut what: Vec<&str> = Vec::new();
                for u in obs
                    .unavailable
                    .iter()
                    .filter(|u| matches!(u.kind, Source::Iptables | Source::Nftables))
                {
                    if !what.contains(&u.source.as_str()) {
                        what.push(&u.source);
                    }
                }
                if what.is_empty() {
                    what = vec!["iptables-save", "nft"];
                }
                skipped.push(
                    Skipped::new(CheckId::RulesFelixMissing, kind, reason).missing(what.join(", ")),
                );
            } else if !bpf {
                out.push(
                    Finding::new(CheckId::RulesFelixMissing, Severity::Critical, "cali- chains")
                        .expected("Felix's chains (cali-INPUT, cali-FORWARD, …) in iptables, or table ip calico in nftables")
                        .actual(format!("none in {}", sources(obs)))
                        .hint("without them no policy, failsafe or NAT-outgoing applies; is calico-node running on this node? `kubectl get pods -n calico-system -o wide | grep $(hostname)`"),
                );
            }
            return;
        }
    };
    if bpf {
        skipped.push(Skipped::new(
            CheckId::FailsafeMissing,
            NotRun::NotApplicable,
            "eBPF mode keeps failsafes in the cali_v4_fsafes2 map",
        ));
        return;
    }
    // Felix programs the same chains for IPv6 (ip6tables, table `ip6 calico`) when it handles
    // IPv6; they are judged only where the datastore expects IPv6, so an IPv4-only cluster is
    // judged as before.
    let v6 = e.is_some_and(Expected::ipv6_expected);
    match home {
        RuleHome::Iptables(d) => {
            iptables_hooks(d, "", out);
            if v6 {
                // The IPv6 dump of the backend Felix uses for IPv4: an empty one is drift, an
                // absent one was not read.
                let v6_dump = obs
                    .iptables
                    .iter()
                    .filter(|x| x.family == 6 && x.fragment.is_none() && x.backend == d.backend)
                    .max_by_key(|x| x.felix_chain_count());
                if let Some(d6) = v6_dump {
                    iptables_hooks(d6, "ip6 ", out);
                    if let Some(e) = e {
                        failsafe(d6, e, "ip6 ", out);
                        nat_outgoing_iptables(d6, e, 6, out);
                    }
                }
            }
            if let Some(e) = e {
                failsafe(d, e, "", out);
                nat_outgoing_iptables(d, e, 4, out);
            }
        }
        RuleHome::Nft(n) => {
            nft_hooks(n, "ip", out);
            if v6 {
                nft_hooks(n, "ip6", out);
            }
            if let Some(e) = e {
                nft_nat_outgoing(n, e, "ip", out);
                nft_failsafe(n, e, "ip", out);
                if v6 {
                    nft_nat_outgoing(n, e, "ip6", out);
                    nft_failsafe(n, e, "ip6", out);
                }
            }
        }
    }
}

fn sources(obs: &ObservedDataplane) -> String {
    let mut s: Vec<String> = obs
        .iptables
        .iter()
        .filter(|d| d.family == 4)
        .map(IptablesDump::label)
        .collect();
    if obs.nft.is_some() {
        s.push("nftables".into());
    }
    s.join(", ")
}

/// `prefix` ("ip6 " for ip6tables) keeps the subjects of the two families apart.
fn iptables_hooks(d: &IptablesDump, prefix: &str, out: &mut Vec<Finding>) {
    for (table, builtin, chain) in HOOKS {
        let Some(t) = d.table(table) else {
            out.push(rules_missing(
                &format!("{prefix}{table} table"),
                &format!("table {table} with {builtin} -> {chain}"),
                &format!("no {table} table in {}", d.label()),
            ));
            continue;
        };
        if t.chain(chain).is_none() {
            out.push(rules_missing(
                &format!("{prefix}{table} {chain}"),
                &format!("chain {chain} in table {table}"),
                &format!("absent from {}", d.label()),
            ));
        } else if !t
            .rules_of(builtin)
            .any(|r| r.target.as_deref() == Some(*chain))
        {
            out.push(rules_missing(
                &format!("{prefix}{table} {builtin}"),
                &format!("{builtin} jumps to {chain}"),
                &format!(
                    "no jump in {table} {builtin} ({} rule(s) there)",
                    t.rules_of(builtin).count()
                ),
            ));
        }
    }
}

/// `family` is `ip` or `ip6`: Felix's tables `ip calico` and `ip6 calico`.
fn nft_hooks(n: &NftRuleset, family: &str, out: &mut Vec<Finding>) {
    for (base, chain) in NFT_HOOKS {
        let rules = n
            .rules
            .iter()
            .filter(|r| r.family == family && r.table == "calico" && r.chain == *base);
        if n.chains_of(family, "calico").all(|c| c.name != *chain) {
            out.push(rules_missing(
                &format!("{family} calico {chain}"),
                &format!("chain {chain}"),
                "absent",
            ));
        } else if !rules
            .into_iter()
            .any(|r| r.target.as_deref() == Some(*chain))
        {
            out.push(rules_missing(
                &format!("{family} calico {base}"),
                &format!("{base} jumps to {chain}"),
                "no jump",
            ));
        }
    }
}

pub(super) fn rules_missing(subject: &str, expected: &str, actual: &str) -> Finding {
    Finding::new(CheckId::RulesFelixMissing, Severity::Critical, subject)
        .expected(expected.to_string())
        .actual(actual.to_string())
        .hint("traffic bypasses Calico policy (and failsafes) at this hook; Felix re-inserts its rules on its iptables refresh (180 s, or 5 s after its own writes) — if they vanish again, another tool (firewalld, a node script) is flushing them: `iptables-save | grep -n cali-`")
}

/// Ports named in a rule's `--dports`/`--dport`/`--destination-ports`.
fn dports(spec: &str) -> Vec<u16> {
    let mut words = spec.split_whitespace();
    let mut ports = Vec::new();
    while let Some(w) = words.next() {
        if matches!(
            w,
            "--dports" | "--dport" | "--destination-ports" | "--destination-port"
        ) && let Some(list) = words.next()
        {
            ports.extend(
                list.split(',')
                    .filter_map(|p| p.split(':').next()?.parse::<u16>().ok()),
            );
        }
    }
    ports
}

fn proto_of(spec: &str) -> Option<&str> {
    let mut words = spec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-p" || w == "--protocol" {
            return words.next();
        }
    }
    None
}

/// The pools of a family (`ip` or `ip6` in nftables' words) whose traffic Felix masquerades.
fn nat_pools(e: &Expected, v6: bool) -> Vec<String> {
    e.nat_outgoing
        .iter()
        .filter(|p| matches!(p, ipnet::IpNet::V6(_)) == v6)
        .map(ToString::to_string)
        .collect()
}

/// nftables mode: `nat-cali-nat-outgoing` in `ip calico` (`ip6 calico`) masquerades.
fn nft_nat_outgoing(n: &NftRuleset, e: &Expected, family: &str, out: &mut Vec<Finding>) {
    if nat_pools(e, family == "ip6").is_empty() {
        return;
    }
    let masquerades = n.rules.iter().any(|r| {
        r.family == family
            && r.table == "calico"
            && r.chain == "nat-cali-nat-outgoing"
            && r.exprs.iter().any(|x| x == "masquerade" || x == "snat")
    });
    if !masquerades {
        let subject = if family == "ip" {
            "nat-cali-nat-outgoing".to_string()
        } else {
            format!("{family} nat-cali-nat-outgoing")
        };
        out.push(nat_missing(
            &subject,
            &format!("no masquerade rule in table {family} calico"),
            family == "ip6",
        ));
    }
}

/// `prefix` ("ip6 " for ip6tables) keeps the subjects of the two families apart.
pub(super) fn failsafe(d: &IptablesDump, e: &Expected, prefix: &str, out: &mut Vec<Finding>) {
    for t in &d.tables {
        for (chain, ports) in [
            ("cali-failsafe-in", &e.failsafe_in),
            ("cali-failsafe-out", &e.failsafe_out),
        ] {
            // Felix programs only referenced chains: no host endpoint, no failsafe chain.
            if t.chain(chain).is_none() {
                continue;
            }
            for p in ports.iter() {
                if !has_port(t, chain, p) {
                    out.push(
                        Finding::new(CheckId::FailsafeMissing, Severity::Critical, format!("{prefix}{} {chain} {}:{}", t.name, p.protocol, p.port))
                            .expected(format!("{chain} accepts {} port {} ({} table)", p.protocol, p.port, t.name))
                            .actual(format!("no such rule among {} in {chain}", t.rules_of(chain).count()))
                            .hint(format!(
                                "a host endpoint policy can now lock out {}:{} (ssh, BGP, etcd, the API server…); Felix rewrites the chain on its iptables refresh: `{}tables -t {} -S {chain}`",
                                p.protocol, p.port, if prefix.is_empty() { "ip" } else { "ip6" }, t.name
                            )),
                    );
                }
            }
        }
    }
}

/// nftables mode: the failsafe chains are `<layer>-cali-failsafe-in|out` in `ip calico`,
/// present only while host endpoints reference them.
fn nft_failsafe(n: &NftRuleset, e: &Expected, family: &str, out: &mut Vec<Finding>) {
    for layer in ["raw", "mangle", "filter"] {
        for (dir, ports) in [("in", &e.failsafe_in), ("out", &e.failsafe_out)] {
            let chain = format!("{layer}-cali-failsafe-{dir}");
            if n.chains_of(family, "calico").all(|c| c.name != chain) {
                continue;
            }
            let rules: Vec<_> = n
                .rules
                .iter()
                .filter(|r| r.family == family && r.table == "calico" && r.chain == chain)
                .collect();
            for p in ports.iter() {
                let covered = rules.iter().any(|r| {
                    r.dports.iter().any(|(proto, port)| {
                        *port == p.port && proto.eq_ignore_ascii_case(&p.protocol)
                    })
                });
                if !covered {
                    out.push(
                        Finding::new(CheckId::FailsafeMissing, Severity::Critical, format!("{family} calico {chain} {}:{}", p.protocol, p.port))
                            .expected(format!("{chain} accepts {} dport {}", p.protocol, p.port))
                            .actual(format!("no such rule among {} in {chain}", rules.len()))
                            .hint(format!(
                                "a host endpoint policy can now lock out {}:{}; Felix rewrites the chain on its nftables refresh: `nft list chain {family} calico {chain}`",
                                p.protocol, p.port
                            )),
                    );
                }
            }
        }
    }
}

fn has_port(t: &IptTable, chain: &str, p: &ProtoPort) -> bool {
    t.rules_of(chain).any(|r| {
        proto_of(&r.spec).is_some_and(|pr| pr.eq_ignore_ascii_case(&p.protocol))
            && dports(&r.spec).contains(&p.port)
    })
}

/// `family` 4 or 6: the pools of that family, Felix's ipset `cali40masq-ipam-pools` or
/// `cali60masq-ipam-pools`, in iptables or ip6tables.
pub(super) fn nat_outgoing_iptables(
    d: &IptablesDump,
    e: &Expected,
    family: u8,
    out: &mut Vec<Finding>,
) {
    let pools = nat_pools(e, family == 6);
    if pools.is_empty() {
        return;
    }
    let Some(nat) = d.table("nat") else { return };
    let set = format!("cali{family}0masq-ipam-pools");
    let masq = nat.rules_of("cali-nat-outgoing").any(|r| {
        r.spec.contains(&set) && matches!(r.target.as_deref(), Some("MASQUERADE" | "SNAT"))
    });
    let hooked = nat
        .rules_of("cali-POSTROUTING")
        .any(|r| r.target.as_deref() == Some("cali-nat-outgoing"));
    if !masq || !hooked {
        out.push(nat_missing(
            if family == 6 {
                "ip6 cali-nat-outgoing"
            } else {
                "cali-nat-outgoing"
            },
            &format!(
                "{} (pools with natOutgoing: {})",
                if masq {
                    "cali-POSTROUTING does not jump to cali-nat-outgoing".to_string()
                } else {
                    format!("no MASQUERADE rule for {set}")
                },
                pools.join(", ")
            ),
            family == 6,
        ));
    }
}

fn nat_missing(subject: &str, actual: &str, v6: bool) -> Finding {
    let (tool, family) = if v6 {
        ("ip6tables", 6)
    } else {
        ("iptables", 4)
    };
    Finding::new(CheckId::NatOutgoingMissing, Severity::Critical, subject)
        .expected("pods' traffic to outside the pools is masqueraded (natOutgoing)")
        .actual(actual.to_string())
        .hint(format!("pods reach the outside world with their pod IPs and replies never come back; Felix rewrites it on its refresh: `{tool} -t nat -S cali-nat-outgoing`, `ipset list cali{family}0masq-ipam-pools`"))
}

/// " (needs CAP_…)" naming the capabilities the rule readers said they lack, else the tools.
fn needs_capability(obs: &ObservedDataplane) -> String {
    let caps = super::capabilities_named(
        obs.unavailable
            .iter()
            .filter(|u| matches!(u.kind, Source::Iptables | Source::Nftables))
            .map(|u| u.reason.as_str()),
    );
    if caps.is_empty() {
        " (needs the iptables/nft binaries and CAP_NET_ADMIN)".into()
    } else {
        format!(" (needs {})", caps.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        observed::iptables,
        verify::testutil::{healthy, healthy_dual_stack, ids, run},
    };

    /// A table of the nft-backend dump, to break it.
    fn table_mut<'a>(o: &'a mut ObservedDataplane, name: &str) -> &'a mut iptables::IptTable {
        nft_dump(o)
            .tables
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no table {name}"))
    }

    fn nft_dump(o: &mut ObservedDataplane) -> &mut IptablesDump {
        o.iptables
            .iter_mut()
            .find(|d| d.backend == Some(Backend::Nft))
            .expect("nft dump")
    }

    #[test]
    fn hook_and_chain_removal_fire() {
        let (e, mut o) = healthy();
        let filter = table_mut(&mut o, "filter");
        filter
            .rules
            .retain(|r| !(r.chain == "INPUT" && r.target.as_deref() == Some("cali-INPUT")));
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RulesFelixMissing, "filter INPUT".into())]
        );
        let nat = table_mut(&mut o, "nat");
        nat.chains.retain(|c| c.name != "cali-POSTROUTING");
        let got = ids(&run(&e, &o));
        assert!(
            got.contains(&(CheckId::RulesFelixMissing, "nat cali-POSTROUTING".into())),
            "{got:?}"
        );
    }

    #[test]
    fn no_felix_chains_at_all() {
        let (e, mut o) = healthy();
        o.iptables = vec![iptables::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n",
            Some(Backend::Nft),
            4,
        )];
        let got = ids(&run(&e, &o));
        assert!(
            got.contains(&(CheckId::RulesFelixMissing, "cali- chains".into())),
            "{got:?}"
        );
    }

    #[test]
    fn mixed_backends() {
        let (e, mut o) = healthy();
        let mut legacy = nft_dump(&mut o).clone();
        legacy.backend = Some(Backend::Legacy);
        o.iptables.push(legacy);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RulesBackendMixed, "iptables".into())]
        );
    }

    #[test]
    fn failsafe_port_removed() {
        let (e, mut o) = healthy();
        let filter = table_mut(&mut o, "filter");
        let idx = filter
            .rules
            .iter()
            .position(|r| r.chain == "cali-failsafe-in")
            .expect("failsafe rule");
        filter.rules.remove(idx);
        assert_eq!(
            ids(&run(&e, &o)),
            [(
                CheckId::FailsafeMissing,
                "filter cali-failsafe-in tcp:22".into()
            )]
        );
    }

    #[test]
    fn failsafe_chains_absent_without_host_endpoints_is_quiet() {
        let (e, mut o) = healthy();
        for t in &mut nft_dump(&mut o).tables {
            t.chains.retain(|c| !c.name.starts_with("cali-failsafe"));
            t.rules.retain(|r| !r.chain.starts_with("cali-failsafe"));
        }
        assert!(run(&e, &o).findings.is_empty());
    }

    #[test]
    fn nat_outgoing_rule_removed() {
        let (e, mut o) = healthy();
        let nat = table_mut(&mut o, "nat");
        nat.rules.retain(|r| r.chain != "cali-nat-outgoing");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::NatOutgoingMissing, "cali-nat-outgoing".into())]
        );
    }

    /// The filter table of the ip6tables dump.
    fn filter6_mut(o: &mut ObservedDataplane) -> &mut iptables::IptTable {
        o.iptables
            .iter_mut()
            .find(|d| d.family == 6 && d.fragment.is_none())
            .and_then(|d| d.tables.iter_mut().find(|t| t.name == "filter"))
            .expect("ip6 filter")
    }

    #[test]
    fn ipv6_failsafe_and_nat_outgoing_are_judged_in_ip6tables() {
        let (mut e, mut o) = healthy_dual_stack();
        assert!(run(&e, &o).findings.is_empty());
        // Felix's failsafe chain as ip6tables holds it too (the same ports).
        let f = table_mut(&mut o, "filter");
        let chain = f
            .chain("cali-failsafe-in")
            .cloned()
            .expect("failsafe chain");
        let rules: Vec<_> = f.rules_of("cali-failsafe-in").cloned().collect();
        let filter6 = filter6_mut(&mut o);
        filter6.chains.push(chain);
        filter6.rules.extend(rules);
        assert!(run(&e, &o).findings.is_empty());
        let filter6 = filter6_mut(&mut o);
        let ssh = filter6
            .rules
            .iter()
            .position(|r| r.chain == "cali-failsafe-in" && dports(&r.spec).contains(&22))
            .expect("tcp:22");
        let removed = filter6.rules.remove(ssh);
        assert_eq!(
            ids(&run(&e, &o)),
            [(
                CheckId::FailsafeMissing,
                "ip6 filter cali-failsafe-in tcp:22".into()
            )]
        );
        filter6_mut(&mut o).rules.push(removed);
        // An IPv6 pool with natOutgoing: ip6tables' nat has no masquerade for it.
        e.nat_outgoing.push("fd00:244::/64".parse().expect("cidr"));
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::NatOutgoingMissing, "ip6 cali-nat-outgoing".into())]
        );
    }

    #[test]
    fn an_ipv6_pools_nat_outgoing_is_not_asked_of_iptables() {
        let (mut e, mut o) = healthy();
        e.nat_outgoing = vec!["fd00:244::/64".parse().expect("cidr")];
        table_mut(&mut o, "nat")
            .rules
            .retain(|r| r.chain != "cali-nat-outgoing");
        assert!(run(&e, &o).findings.is_empty());
    }

    #[test]
    fn unrelated_chains_are_ignored() {
        let (e, mut o) = healthy();
        let filter = table_mut(&mut o, "filter");
        let extra = iptables::parse(
            "*filter\n:KUBE-FIREWALL - [0:0]\n:DOCKER-USER - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP\n-A DOCKER-USER -j RETURN\nCOMMIT\n",
            None,
            4,
        );
        let t = &extra.tables[0];
        filter.chains.extend(t.chains.iter().cloned());
        filter.rules.splice(0..0, t.rules.iter().cloned());
        assert!(run(&e, &o).findings.is_empty());
    }

    fn nft_mode() -> (Expected, ObservedDataplane) {
        let (e, mut o) = healthy();
        o.iptables.clear();
        o.nft = Some(
            crate::observed::nft::parse_json(include_str!("testdata/nft-calico-failsafe.json"))
                .expect("nft JSON"),
        );
        (e, o)
    }

    #[test]
    fn nft_mode_healthy_is_quiet_and_a_removed_failsafe_port_fires() {
        let (e, o) = nft_mode();
        assert!(
            run(&e, &o).findings.is_empty(),
            "{:?}",
            run(&e, &o).findings
        );
        let (e, mut o) = nft_mode();
        let nft = o.nft.as_mut().expect("nft");
        nft.rules.retain(|r| {
            !(r.chain == "filter-cali-failsafe-in" && r.dports.contains(&("tcp".into(), 22)))
        });
        assert_eq!(
            ids(&run(&e, &o)),
            [(
                CheckId::FailsafeMissing,
                "ip calico filter-cali-failsafe-in tcp:22".into()
            )]
        );
        // A set of ports counts for each port in it.
        let (e, mut o) = nft_mode();
        let nft = o.nft.as_mut().expect("nft");
        nft.rules
            .retain(|r| !(r.chain == "filter-cali-failsafe-out" && r.dports.len() > 1));
        assert_eq!(ids(&run(&e, &o)).len(), 7);
    }

    #[test]
    fn nft_mode_hook_removal_fires() {
        let (e, mut o) = nft_mode();
        let nft = o.nft.as_mut().expect("nft");
        nft.rules.retain(|r| r.chain != "filter-INPUT");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RulesFelixMissing, "ip calico filter-INPUT".into())]
        );
    }

    #[test]
    fn parses_port_lists() {
        assert_eq!(
            dports("-p tcp -m multiport --dports 22,179,6443 -j ACCEPT"),
            [22, 179, 6443]
        );
        assert_eq!(dports("-p udp -m udp --dport 68 -j ACCEPT"), [68]);
        assert_eq!(proto_of("-p udp -m udp --dport 68"), Some("udp"));
    }
}
