//! Felix's rules judged from a fragment: `-A` lines pasted without their table, an `iptables
//! -L` listing, nft text without its `table` line. A fragment is evidence of what is present,
//! never proof of absence: a cut paste cannot show a rule missing. So a check runs only on
//! what the fragment shows whole (a chain printed from its start to its end, in a table that
//! is known) or on positive evidence (`Chain cali-FORWARD (0 references)`: iptables itself
//! counted nothing jumping to it); everything else is "not run: the rules are a fragment",
//! which is input the user did not give, not something that could not be observed.

use super::{
    CheckId, Finding, NotRun, Skipped,
    rules::{HOOKS, failsafe, nat_outgoing_iptables, rules_missing},
};
use crate::{
    desired::expected::Expected,
    observed::{
        ObservedDataplane,
        iptables::{Fragment, IptTable, IptablesDump},
    },
};

/// Judges the fragments when no whole ruleset was read. Returns false when there are none,
/// leaving the node to the whole-ruleset checks.
pub(super) fn check(
    obs: &ObservedDataplane,
    e: Option<&Expected>,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) -> bool {
    let frags: Vec<(&IptablesDump, &Fragment)> = obs
        .iptables
        .iter()
        .filter(|d| d.family == 4)
        .filter_map(|d| d.fragment.as_ref().map(|f| (d, f)))
        .collect();
    let nft = obs.nft.as_ref().and_then(|n| n.fragment.as_deref());
    if frags.is_empty() && nft.is_none() {
        return false;
    }
    let what = forms(&frags, nft);
    let mut hooks_judged = 0;
    for (d, f) in &frags {
        hooks_judged += hooks(d, f, out);
    }
    if hooks_judged == 0 {
        skipped.push(not_run(CheckId::RulesFelixMissing, &what));
    }
    let Some(e) = e else {
        // Without a datastore these checks are already listed as needing it.
        return true;
    };
    let whole: Vec<IptablesDump> = frags.iter().map(|(d, f)| whole_chains(d, f)).collect();
    let failsafe_chains = whole.iter().any(|d| {
        d.tables.iter().any(|t| {
            t.chain("cali-failsafe-in").is_some() || t.chain("cali-failsafe-out").is_some()
        })
    });
    if failsafe_chains {
        for d in &whole {
            failsafe(d, e, if d.family == 6 { "ip6 " } else { "" }, out);
        }
    } else {
        skipped.push(not_run(CheckId::FailsafeMissing, &what));
    }
    if !e.nat_outgoing.is_empty() {
        let judged = whole.iter().find(|d| {
            d.table("nat").is_some_and(|t| {
                t.chain("cali-nat-outgoing").is_some() && t.chain("cali-POSTROUTING").is_some()
            })
        });
        match judged {
            Some(d) => nat_outgoing_iptables(d, e, d.family, out),
            None => skipped.push(not_run(CheckId::NatOutgoingMissing, &what)),
        }
    }
    true
}

/// The hooks a fragment can judge, each a finding or a pass; returns how many it judged.
fn hooks(d: &IptablesDump, f: &Fragment, out: &mut Vec<Finding>) -> usize {
    let mut judged = 0;
    for (table, builtin, chain) in HOOKS {
        if f.is_unreferenced(table, chain) {
            judged += 1;
            out.push(rules_missing(
                &format!("{table} {chain}"),
                &format!("{builtin} jumps to {chain}"),
                &format!(
                    "`Chain {chain} (0 references)` in {}: nothing jumps to it",
                    d.label()
                ),
            ));
            continue;
        }
        let Some(t) = d.table(table) else { continue };
        let jumps = t
            .rules_of(builtin)
            .any(|r| r.target.as_deref() == Some(*chain));
        if jumps {
            judged += 1;
        } else if f.is_complete(table, builtin) && t.chain(chain).is_some() {
            // The built-in chain was printed whole and Felix's chain is there: the jump
            // would have been printed.
            judged += 1;
            out.push(rules_missing(
                &format!("{table} {builtin}"),
                &format!("{builtin} jumps to {chain}"),
                &format!(
                    "no jump in {table} {builtin} ({} rule(s), printed whole in {})",
                    t.rules_of(builtin).count(),
                    d.label()
                ),
            ));
        }
    }
    judged
}

/// The fragment cut down to the chains it shows whole, so that the whole-ruleset checks see
/// only chains whose every rule is known.
fn whole_chains(d: &IptablesDump, f: &Fragment) -> IptablesDump {
    let tables = d
        .tables
        .iter()
        .map(|t| IptTable {
            name: t.name.clone(),
            chains: t
                .chains
                .iter()
                .filter(|c| f.is_complete(&t.name, &c.name))
                .cloned()
                .collect(),
            rules: t
                .rules
                .iter()
                .filter(|r| f.is_complete(&t.name, &r.chain))
                .cloned()
                .collect(),
        })
        .collect();
    IptablesDump {
        tables,
        fragment: None,
        errors: Vec::new(),
        ..d.clone()
    }
}

fn forms(frags: &[(&IptablesDump, &Fragment)], nft: Option<&str>) -> String {
    let mut forms: Vec<String> = frags.iter().map(|(_, f)| f.form.clone()).collect();
    if nft.is_some() {
        forms.push("nft text without its table line".into());
    }
    forms.dedup();
    forms.join(", ")
}

/// Worded as input the user did not give: the rest of the ruleset.
fn not_run(check: CheckId, what: &str) -> Skipped {
    Skipped::new(
        check,
        NotRun::NotInInput,
        format!(
            "not in the input: the rules are a fragment ({what}), which shows what is present \
             and cannot show a rule missing; give the whole `iptables-save -c` (or `nft list \
             ruleset`)"
        ),
    )
    .missing("the whole ruleset")
}

#[cfg(test)]
mod tests {
    use crate::{
        observed::{
            ObservedDataplane,
            bundle::{iptables_fragment, iptables_listing},
        },
        verify::{CheckId, Policy, testutil::healthy, verify},
    };

    fn with_fragment(d: crate::observed::iptables::IptablesDump) -> ObservedDataplane {
        let (_, mut o) = healthy();
        o.iptables = vec![d];
        o.nft = None;
        o
    }

    #[test]
    fn a_cut_fragment_never_reports_what_it_does_not_show() {
        let d = iptables_fragment::parse(
            "-A cali-FORWARD -j cali-from-wl-dispatch\n-A cali-INPUT -i cali+ -g cali-wl-to-host\n",
            None,
            4,
            None,
        );
        let (e, _) = healthy();
        let v = verify(Some(&e), &with_fragment(d), &Policy::default());
        let rules: Vec<_> = v
            .findings
            .iter()
            .filter(|f| {
                matches!(
                    f.check,
                    CheckId::RulesFelixMissing
                        | CheckId::FailsafeMissing
                        | CheckId::NatOutgoingMissing
                )
            })
            .collect();
        assert!(rules.is_empty(), "{rules:?}");
        let skipped: Vec<_> = v
            .skipped
            .iter()
            .filter(|s| s.reason.contains("fragment"))
            .map(|s| s.check)
            .collect();
        assert!(skipped.contains(&CheckId::RulesFelixMissing), "{skipped:?}");
        assert!(skipped.contains(&CheckId::FailsafeMissing), "{skipped:?}");
        assert!(
            v.skipped
                .iter()
                .all(|s| !s.reason.contains("fragment") || s.reason.starts_with("not in the input"))
        );
    }

    #[test]
    fn a_listing_shows_an_unhooked_chain_and_a_hook_printed_whole() {
        let text = "Chain FORWARD (policy DROP 0 packets, 0 bytes)
 pkts bytes target     prot opt in     out     source               destination
  10   900 KUBE-FORWARD  all  --  *      *       0.0.0.0/0            0.0.0.0/0

Chain INPUT (policy ACCEPT 0 packets, 0 bytes)
 pkts bytes target     prot opt in     out     source               destination
 100  9000 cali-INPUT  all  --  *      *       0.0.0.0/0            0.0.0.0/0            /* cali:Cz_u1IQiXIMmKD4c */

Chain cali-FORWARD (0 references)
 pkts bytes target     prot opt in     out     source               destination
    0     0 cali-from-wl-dispatch  all  --  cali+  *       0.0.0.0/0            0.0.0.0/0

";
        let d = iptables_listing::parse(text, None, 4, Some("filter"), false);
        let v = verify(None, &with_fragment(d), &Policy::default());
        let rules: Vec<(&str, &str)> = v
            .findings
            .iter()
            .filter(|f| f.check == CheckId::RulesFelixMissing)
            .map(|f| (f.subject.as_str(), f.actual.as_str()))
            .collect();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert!(rules[0].0 == "filter cali-FORWARD" && rules[0].1.contains("0 references"));
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.check == CheckId::RulesFelixMissing)
        );

        // `iptables -S` starts at the top: INPUT is printed whole, and lacks its jump.
        let d = iptables_fragment::parse(
            "-P INPUT ACCEPT\n-A INPUT -j KUBE-FIREWALL\n-A cali-INPUT -j ACCEPT\n",
            None,
            4,
            Some("filter"),
        );
        let v = verify(None, &with_fragment(d), &Policy::default());
        let subjects: Vec<&str> = v.findings.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(subjects, ["filter INPUT"]);
    }
}
