//! Felix's workload dispatch (iptables mode): every up workload interface of the prefixes
//! `cali-FORWARD` dispatches on (`-i cali+`, or `-i eni+` in policy-only mode on the AWS VPC
//! CNI) has its `-i <iface> -g cali-fw-<iface>` entry in `cali-from-wl-dispatch` (or one of its
//! child chains) and its `-o <iface> -g cali-tw-<iface>` entry in `cali-to-wl-dispatch`.
//! Without them the interface's packets fall to the dispatch chains' final "Unknown interface"
//! DROP (`felix/rules/dispatch.go` `buildSingleDispatchChainTree`; calico-dataplane.md §4.3,
//! vpc-cni-policy-only.md §3.2 and failure F6).

use super::{CheckId, Finding, IndexSet, NotRun, Severity, Skipped};
use crate::observed::{
    ObservedDataplane,
    iptables::{IptTable, IptablesDump},
    vpc_cni::iface_match,
};

const FROM: &str = "cali-from-wl-dispatch";
const TO: &str = "cali-to-wl-dispatch";

pub(super) fn check(
    obs: &ObservedDataplane,
    bpf: bool,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    if bpf {
        skipped.push(Skipped::new(
            CheckId::RulesDispatchMissing,
            NotRun::NotApplicable,
            "eBPF mode dispatches to workloads in its TC programs, not in iptables",
        ));
        return;
    }
    let calico_nft = obs
        .nft
        .as_ref()
        .is_some_and(|n| n.chains_of("ip", "calico").any(|c| c.hook.is_some()));
    if calico_nft {
        // A source this version does not read yet, as for the other reserved checks.
        skipped.push(Skipped::new(
            CheckId::RulesDispatchMissing,
            NotRun::NotApplicable,
            "nftables mode dispatches through verdict maps, whose elements this version does \
             not read",
        ));
        return;
    }
    // The dump Felix writes to: the one with the most cali- chains (rules.rs reports a split).
    let Some(filter) = obs
        .iptables
        .iter()
        .filter(|d| d.family == 4 && d.felix_chain_count() > 0)
        .max_by_key(|d| d.felix_chain_count())
        .and_then(|d: &IptablesDump| d.table("filter"))
    else {
        return;
    };
    let prefixes: Vec<&str> = filter
        .rules_of("cali-FORWARD")
        .filter(|r| r.target.as_deref() == Some(FROM))
        .filter_map(|r| iface_match(&r.spec, "-i")?.strip_suffix('+'))
        .filter(|p| !p.is_empty())
        .collect();
    if prefixes.is_empty() {
        return;
    }
    let from = entries(filter, FROM, "-i", "cali-fw-");
    let to = entries(filter, TO, "-o", "cali-tw-");
    for l in obs.links.iter().filter(|l| {
        l.is_up()
            && !l.name.contains('.')
            && prefixes
                .iter()
                .any(|p| l.name.len() > p.len() && l.name.starts_with(p))
    }) {
        let (has_from, has_to) = (from.contains(l.name.as_str()), to.contains(l.name.as_str()));
        if has_from && has_to {
            continue;
        }
        let mut missing = Vec::new();
        if !has_from {
            missing.push(format!(
                "no `-i {} -g cali-fw-{}` in {FROM}",
                l.name, l.name
            ));
        }
        if !has_to {
            missing.push(format!("no `-o {} -g cali-tw-{}` in {TO}", l.name, l.name));
        }
        out.push(
            Finding::new(CheckId::RulesDispatchMissing, Severity::Warning, l.name.clone())
                .expected(format!("{} in Felix's workload dispatch chains (it matches cali-FORWARD's workload prefix)", l.name))
                .actual(missing.join("; "))
                .hint(format!(
                    "the pod behind {} has every packet dropped as \"Unknown interface\" until Felix learns its WorkloadEndpoint; past pod start that means Felix does not know the pod (pod IP not yet reported — on the AWS VPC CNI set ANNOTATE_POD_IP=true on aws-node — or calico-node cannot reach the API server): `iptables-save -t filter | grep -c {}`, `kubectl logs -n calico-system ds/calico-node -c calico-node | grep {}`",
                    l.name, l.name, l.name
                )),
        );
    }
}

/// Interfaces with a terminal entry (`-i <iface> -g cali-fw-<iface>`) in `root` or its child
/// chains (`<root>-<char>…`, one per shared next character of the sorted names).
fn entries<'a>(t: &'a IptTable, root: &str, flag: &str, target: &str) -> IndexSet<&'a str> {
    t.rules
        .iter()
        .filter(|r| r.chain.starts_with(root))
        .filter_map(|r| {
            let iface = iface_match(&r.spec, flag)?;
            let chain = r.target.as_deref()?;
            (chain.strip_prefix(target) == Some(iface)).then_some(iface)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::{
        observed::iptables::Backend,
        verify::{
            CheckId,
            testutil::{healthy, ids, run, run_inferred},
        },
    };

    #[test]
    fn a_cali_workload_without_its_entries_fires_and_is_quiet_with_them() {
        let (e, mut o) = healthy();
        assert!(run(&e, &o).findings.is_empty());
        let veth = e.workloads[0].iface.clone();
        let filter = o
            .iptables
            .iter_mut()
            .find(|d| d.backend == Some(Backend::Nft))
            .and_then(|d| d.tables.iter_mut().find(|t| t.name == "filter"))
            .expect("filter");
        filter
            .rules
            .retain(|r| !(r.chain == "cali-to-wl-dispatch" && r.spec.contains(&veth)));
        let v = run_inferred(&o);
        assert_eq!(ids(&v), [(CheckId::RulesDispatchMissing, veth.clone())]);
        assert!(v.findings[0].actual.contains("cali-to-wl-dispatch"));
        assert!(!v.findings[0].actual.contains("cali-from-wl-dispatch"));
        // A veth that is down (pod going away) is not judged.
        o.links
            .iter_mut()
            .filter(|l| l.name == veth)
            .for_each(|l| l.admin_up = false);
        assert!(
            !ids(&run_inferred(&o))
                .iter()
                .any(|(c, _)| *c == CheckId::RulesDispatchMissing)
        );
    }

    #[test]
    fn ebpf_mode_skips_it() {
        let (_, mut o) = healthy();
        o.calico_bpf_pins = vec!["cali_v4_routes".into()];
        let v = run_inferred(&o);
        assert!(
            v.skipped
                .iter()
                .any(|s| s.check == CheckId::RulesDispatchMissing && s.reason.contains("eBPF"))
        );
    }
}
