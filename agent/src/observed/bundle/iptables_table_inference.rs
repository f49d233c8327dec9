//! Which iptables table a chain of a fragment belongs to, when nothing printed the `*table`
//! header: from the chain's name (Felix's and kube-proxy's chains live in fixed tables,
//! shared/reference/calico-dataplane.md §4.2), from targets only one table accepts, from the
//! chains it jumps to or is jumped from, and last from the rest of the fragment. What cannot
//! be placed stays `unknown`: a guess would turn into a false finding.

use std::collections::BTreeMap;

use crate::observed::iptables::IptRule;

pub const UNKNOWN: &str = "unknown";

/// Chains that exist in one table only.
fn table_of_name(chain: &str) -> Option<&'static str> {
    const FILTER: &[&str] = &[
        "cali-INPUT",
        "cali-FORWARD",
        "cali-wl-to-host",
        "cali-from-hep-forward",
        "cali-to-hep-forward",
        "cali-cidr-block",
        "cali-forward-check",
        "cali-forward-endpoint-mark",
        "cali-set-endpoint-mark",
        "cali-from-endpoint-mark",
        "KUBE-FORWARD",
        "KUBE-FIREWALL",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-PROXY-FIREWALL",
        "DOCKER-USER",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-ISOLATION-STAGE-2",
    ];
    const FILTER_PREFIXES: &[&str] = &[
        "cali-from-wl-dispatch",
        "cali-to-wl-dispatch",
        "cali-fw-",
        "cali-tw-",
        "cali-pri-",
        "cali-pro-",
        "cali-sm-",
    ];
    const NAT: &[&str] = &[
        "cali-nat-outgoing",
        "cali-fip-dnat",
        "cali-fip-snat",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-NODEPORTS",
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-MASQ",
        "CNI-HOSTPORT-SETMARK",
    ];
    const NAT_PREFIXES: &[&str] = &["KUBE-SVC-", "KUBE-SEP-", "KUBE-FW-", "KUBE-XLB-", "CNI-DN-"];
    const RAW: &[&str] = &["cali-rpf-skip", "cali-wireguard-incoming-mark"];
    if FILTER.contains(&chain) || FILTER_PREFIXES.iter().any(|p| chain.starts_with(p)) {
        Some("filter")
    } else if NAT.contains(&chain) || NAT_PREFIXES.iter().any(|p| chain.starts_with(p)) {
        Some("nat")
    } else if RAW.contains(&chain) {
        Some("raw")
    } else {
        None
    }
}

/// A target or match only one table accepts, with the reason in a few words.
fn table_of_rule(rule: &IptRule) -> Option<(&'static str, &'static str)> {
    let target = rule.target.as_deref().unwrap_or_default();
    match target {
        "MASQUERADE" | "SNAT" | "DNAT" | "REDIRECT" | "NETMAP" => {
            return Some(("nat", "MASQUERADE/SNAT/DNAT targets mean nat"));
        }
        "NOTRACK" | "CT" => return Some(("raw", "NOTRACK targets mean raw")),
        "TPROXY" | "DSCP" | "TOS" | "TTL" | "TCPMSS" => {
            return Some(("mangle", "packet-mangling targets mean mangle"));
        }
        _ => {}
    }
    let words: Vec<&str> = rule.spec.split_whitespace().collect();
    if words.contains(&"rpfilter") {
        return Some(("raw", "the rpfilter match Felix uses in raw"));
    }
    // Felix mirrors the failsafe ports in raw only: source-port rules in a failsafe chain.
    if rule.chain.starts_with("cali-failsafe-")
        && words.iter().any(|w| {
            matches!(
                *w,
                "--sports" | "--sport" | "--source-ports" | "--source-port"
            )
        })
    {
        return Some((
            "raw",
            "failsafe rules matching source ports are Felix's raw-table mirror",
        ));
    }
    None
}

/// The table of each chain named in `chains` (in order) or by `rules`, and why.
pub fn assign(chains: &[String], rules: &[IptRule]) -> BTreeMap<String, (String, String)> {
    let mut names: Vec<String> = chains.to_vec();
    for r in rules {
        if !names.contains(&r.chain) {
            names.push(r.chain.clone());
        }
    }
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    for n in &names {
        if let Some(t) = table_of_name(n) {
            out.insert(n.clone(), (t.into(), format!("{n} exists only in {t}")));
        }
    }
    for r in rules {
        if out.contains_key(&r.chain) {
            continue;
        }
        if let Some((t, why)) = table_of_rule(r) {
            out.insert(
                r.chain.clone(),
                (t.into(), format!("{} ({})", why, r.chain)),
            );
        }
    }
    // A jump stays within its table (iptables refuses any other): from a placed chain to an
    // unplaced one, and back.
    loop {
        let mut changed = false;
        for r in rules {
            let Some(target) = r.target.as_deref().filter(|t| names.iter().any(|n| n == t)) else {
                continue;
            };
            let from = out.get(&r.chain).map(|(t, _)| t.clone());
            let to = out.get(target).map(|(t, _)| t.clone());
            match (from, to) {
                (Some(t), None) => {
                    let why = format!("{} jumps to it from {t}", r.chain);
                    out.insert(target.to_string(), (t, why));
                    changed = true;
                }
                (None, Some(t)) => {
                    let why = format!("it jumps to {target}, a {t} chain");
                    out.insert(r.chain.clone(), (t, why));
                    changed = true;
                }
                _ => {}
            }
        }
        if !changed {
            break;
        }
    }
    // A paste is most often one table's part of a dump: when everything placed agrees, the
    // rest goes with it, saying so.
    let placed: Vec<&str> = out.values().map(|(t, _)| t.as_str()).collect();
    let single = placed
        .first()
        .filter(|first| placed.iter().all(|t| t == *first))
        .map(|t| t.to_string());
    for n in &names {
        if out.contains_key(n) {
            continue;
        }
        let entry = match &single {
            Some(t) => (
                t.clone(),
                format!(
                    "the rest of the fragment goes with its {t} chains, nothing there names another table"
                ),
            ),
            None => (
                UNKNOWN.to_string(),
                format!("nothing in {n} or what jumps to it names a table"),
            ),
        };
        out.insert(n.clone(), entry);
    }
    out
}

/// Per table, the reasons its chains were assigned to it, shortest first, at most three.
pub fn reasons_by_table(assigned: &BTreeMap<String, (String, String)>) -> Vec<(String, String)> {
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (t, why) in assigned.values() {
        let list = by.entry(t.as_str()).or_default();
        if !list.contains(&why.as_str()) {
            list.push(why);
        }
    }
    by.into_iter()
        .map(|(t, mut whys)| {
            whys.sort_by_key(|w| w.len());
            let more = whys.len().saturating_sub(3);
            let mut text = whys.into_iter().take(3).collect::<Vec<_>>().join("; ");
            if more > 0 {
                text.push_str(&format!("; {more} more"));
            }
            (t.to_string(), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::iptables::parse_rule;

    fn rules(lines: &[&str]) -> Vec<IptRule> {
        lines.iter().map(|l| parse_rule(l).expect("rule")).collect()
    }

    #[test]
    fn names_targets_and_jumps_place_chains() {
        let r = rules(&[
            "-A POSTROUTING -j cali-POSTROUTING",
            "-A cali-POSTROUTING -j cali-nat-outgoing",
            "-A cali-nat-outgoing -m set --match-set cali40masq-ipam-pools src -j MASQUERADE",
            "-A cali-PREROUTING -p udp --dport 4789 -j NOTRACK",
            "-A cali-failsafe-in -p tcp -m multiport --sports 22 -j ACCEPT",
            "-A cali-OUTPUT -j ACCEPT",
        ]);
        let a = assign(&[], &r);
        let t = |c: &str| a.get(c).map(|(t, _)| t.as_str());
        assert_eq!(t("cali-nat-outgoing"), Some("nat"));
        assert_eq!(t("cali-POSTROUTING"), Some("nat"));
        // POSTROUTING is in mangle too; its jump to a nat chain places it.
        assert_eq!(t("POSTROUTING"), Some("nat"));
        assert_eq!(t("cali-PREROUTING"), Some("raw"));
        assert_eq!(t("cali-failsafe-in"), Some("raw"));
        assert_eq!(t("cali-OUTPUT"), Some("unknown"));
    }

    #[test]
    fn a_single_table_takes_the_rest() {
        let r = rules(&[
            "-A cali-INPUT -j cali-wl-to-host",
            "-A cali-OUTPUT -o cali+ -j RETURN",
        ]);
        let a = assign(&[], &r);
        assert_eq!(a["cali-OUTPUT"].0, "filter");
        assert!(
            a["cali-OUTPUT"]
                .1
                .contains("the rest of the fragment goes with")
        );
        let reasons = reasons_by_table(&a);
        assert_eq!(reasons.len(), 1);
    }
}
