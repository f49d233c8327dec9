//! Calico eBPF mode: the route map Felix's TC programs route by, and whether the dataplane in
//! use is the one FelixConfiguration asks for.

use super::{CheckId, Finding, NotRun, Severity, Skipped};
use crate::{
    desired::expected::{Expected, ExpectedBpfRoute},
    observed::{
        Cause, ObservedDataplane, Source,
        calico_bpf::{BpfRoute, routes},
    },
};

/// `bpf.route.missing` and `bpf.route.wrong-nexthop`: each other node's block must have its
/// remote-workload entry, keyed by exactly the block, pointing at that node; IPv4 blocks in
/// `cali_v4_routes`, IPv6 ones in `cali_v6_routes`.
pub(super) fn check_routes(
    e: &Expected,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let not_applicable = |skipped: &mut Vec<Skipped>, map: &str, why: &str| {
        for id in [CheckId::BpfRouteMissing, CheckId::BpfRouteWrongNexthop] {
            skipped.push(Skipped::new(id, NotRun::NotApplicable, why).missing(map));
        }
    };
    if !e.bpf {
        // A map left from an earlier eBPF run is not Felix's current intent.
        not_applicable(
            skipped,
            routes::MAP_NAME,
            "FelixConfiguration does not enable eBPF mode: Felix keeps no eBPF route map",
        );
        return;
    }
    let bpf = obs.calico_bpf.as_ref();
    for (map, entries, v6) in [
        (routes::MAP_NAME, bpf.and_then(|b| b.routes.as_ref()), false),
        (
            routes::MAP_NAME_V6,
            bpf.and_then(|b| b.routes_v6.as_ref()),
            true,
        ),
    ] {
        let wanted: Vec<&ExpectedBpfRoute> = e
            .bpf_routes
            .iter()
            .filter(|r| r.block.addr().is_ipv6() == v6)
            .collect();
        if v6 && wanted.is_empty() {
            continue;
        }
        let unread = obs
            .unavailable
            .iter()
            .any(|u| u.kind == Source::CalicoBpfRoutes && u.source == map);
        let Some(entries) = entries else {
            // An unreadable map is listed by the generic pass (not observable, with the sizes).
            if unread {
                continue;
            }
            let why = if v6 {
                format!(
                    "Calico's eBPF IPv6 route map {map} is not pinned on this node: Felix runs \
                     its eBPF dataplane for IPv4 only (IPv6 in eBPF mode needs ipv6Support and \
                     a Calico version that has it), so the {} IPv6 block(s) are not judged",
                    wanted.len()
                )
            } else {
                format!(
                    "Calico's eBPF route map {map} is not pinned on this node \
                     (dataplane.mode.mismatch says whether eBPF mode is in use)"
                )
            };
            not_applicable(skipped, map, &why);
            continue;
        };
        compare(map, &wanted, entries, out);
    }
}

fn compare(map: &str, wanted: &[&ExpectedBpfRoute], entries: &[BpfRoute], out: &mut Vec<Finding>) {
    // Indexed once: a scan of the map per block is quadratic at thousands of nodes.
    let mut by_destination = std::collections::HashMap::new();
    for r in entries {
        by_destination.entry(r.destination).or_insert(r);
    }
    for want in wanted {
        let Some(got) = by_destination.get(&want.block).copied() else {
            out.push(
                Finding::new(
                    CheckId::BpfRouteMissing,
                    Severity::Critical,
                    want.block.to_string(),
                )
                .expected(format!(
                    "an entry for {} (remote workload block of {}, next hop {})",
                    want.block, want.node, want.next_hop
                ))
                .actual(format!("no entry for it among {} in {map}", entries.len()))
                .hint(format!(
                    "Felix's eBPF programs cannot route to {node}'s pods from here (the \
                         packets hit \"dropped_unknown_route\" or take the host's routes): \
                         `calico-node -bpf routes dump | grep {block}`, and Felix's log for \
                         route map errors",
                    node = want.node,
                    block = want.block
                )),
            );
            continue;
        };
        // Only a remote workload entry carries a next hop; a local or host entry for another
        // node's block is a different fault, not a wrong next hop to report.
        if got.has(routes::LOCAL) || !got.has(routes::WORKLOAD) {
            continue;
        }
        if got.next_hop != Some(want.next_hop) {
            out.push(
                Finding::new(
                    CheckId::BpfRouteWrongNexthop,
                    Severity::Critical,
                    want.block.to_string(),
                )
                .expected(format!(
                    "next hop {} ({}'s node IP)",
                    want.next_hop, want.node
                ))
                .actual(format!(
                    "next hop {} ({})",
                    got.next_hop
                        .map_or_else(|| "none".to_string(), |h| h.to_string()),
                    got.flag_names().join(", ")
                ))
                .hint(format!(
                    "pods of {} are sent to the wrong node; the Node's address may have changed \
                     without Felix catching up: `calico-node -bpf routes dump`, \
                     `kubectl get node {} -o wide`",
                    want.node, want.node
                )),
            );
        }
    }
}

/// What says Felix's eBPF dataplane is live on the node: its pinned TC/netkit links and its
/// `bpfin.cali`/`bpfout.cali` devices (attached programs), or only its pinned maps (which
/// outlive a switch back to iptables when Felix's clean-up, `tc.CleanUpProgramsAndPins`,
/// could not run).
struct Evidence {
    attached: Vec<String>,
    maps: usize,
}

/// The veth pair Felix creates in eBPF mode (reference §6).
const BPF_DEVICES: [&str; 2] = ["bpfin.cali", "bpfout.cali"];

fn evidence(obs: &ObservedDataplane) -> Evidence {
    let mut attached: Vec<String> = obs
        .calico_bpf
        .iter()
        .flat_map(|b| b.attached.iter().cloned())
        .collect();
    attached.extend(
        BPF_DEVICES
            .iter()
            .filter(|d| obs.link(d).is_some())
            .map(|d| format!("device {d}")),
    );
    Evidence {
        attached,
        maps: obs.calico_bpf_pins.len(),
    }
}

/// `dataplane.mode.mismatch`: FelixConfiguration's `bpfEnabled` against the node.
pub(super) fn check_mode(
    e: &Expected,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let ev = evidence(obs);
    let pins_unknown = obs
        .unavailable
        .iter()
        .any(|u| u.kind == Source::CalicoBpfRoutes && u.cause == Cause::NotInInput);
    if e.bpf && ev.attached.is_empty() && ev.maps == 0 && pins_unknown {
        // A bundle: no bpffs listing, and no bpfin.cali among its links.
        skipped.push(
            Skipped::new(
                CheckId::DataplaneModeMismatch,
                NotRun::NotInInput,
                "FelixConfiguration enables eBPF mode, and the input holds no listing of \
                 /sys/fs/bpf (`ls -R /sys/fs/bpf/tc/globals /sys/fs/bpf/tcx` tells)",
            )
            .missing("bpffs"),
        );
        return;
    }
    if e.bpf && ev.attached.is_empty() && ev.maps == 0 {
        out.push(
            Finding::new(CheckId::DataplaneModeMismatch, Severity::Critical, "bpfEnabled")
                .expected("Calico eBPF dataplane (maps pinned under /sys/fs/bpf/tc/globals, bpfin.cali)")
                .actual("no Calico eBPF maps or devices: the iptables/nftables dataplane is in use")
                .hint("Felix has not switched to eBPF mode: check calico-node's log for BPF errors (kernel too old, bpffs not mounted): `kubectl logs -n calico-system ds/calico-node -c calico-node | grep -i bpf`"),
        );
        return;
    }
    if e.bpf {
        return;
    }
    if !ev.attached.is_empty() {
        out.push(
            Finding::new(CheckId::DataplaneModeMismatch, Severity::Warning, "bpfEnabled")
                .expected("the iptables/nftables dataplane (FelixConfiguration bpfEnabled is not true)")
                .actual(format!(
                    "Felix's eBPF programs are attached: {}",
                    summarise(&ev.attached)
                ))
                .hint("eBPF programs still route and filter this node's traffic although Felix is configured without them: did the FelixConfiguration change without calico-node restarting? `kubectl get felixconfiguration default -o yaml`, `bpftool net show`, `ls /sys/fs/bpf/tcx`"),
        );
    } else if ev.maps > 0 {
        out.push(
            Finding::new(CheckId::DataplaneModeMismatch, Severity::Info, "bpfEnabled")
                .expected("no Calico eBPF state (FelixConfiguration bpfEnabled is not true)")
                .actual(format!(
                    "{} Calico map(s) pinned under /sys/fs/bpf/tc/globals, no program attached",
                    ev.maps
                ))
                .hint("left over from an earlier eBPF run; harmless while nothing is attached. Felix removes them at start when it can run bpftool: `ls /sys/fs/bpf/tc/globals`"),
        );
    }
}

/// The first few items, then how many more.
fn summarise(items: &[String]) -> String {
    const SHOWN: usize = 4;
    let more = items.len().saturating_sub(SHOWN);
    let mut s = items[..items.len().min(SHOWN)].join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        observed::calico_bpf::{BpfRoute, CalicoBpf},
        verify::{
            Verification,
            testutil::{expected_from, healthy, ids, run},
        },
    };

    const LAB: &str = include_str!("testdata/datastore-lab.yaml");

    fn bpf_expected() -> Expected {
        let e = expected_from(
            &LAB.replace(
                "spec: {logSeverityScreen: Info}",
                "spec: {logSeverityScreen: Info, bpfEnabled: true}",
            ),
            Some("node-a"),
        );
        assert!(e.bpf, "the fixture enables eBPF mode");
        e
    }

    fn remote_block(next_hop: [u8; 4]) -> BpfRoute {
        BpfRoute {
            destination: "10.244.1.0/26".parse().expect("cidr"),
            flags: routes::IN_POOL | routes::WORKLOAD | routes::TUNNELED | routes::VXLAN,
            next_hop: Some(next_hop.into()),
            ifindex: None,
        }
    }

    fn bpf_node(routes: Vec<BpfRoute>) -> ObservedDataplane {
        let (_, mut o) = healthy();
        o.calico_bpf_pins = vec!["cali_counters6".into(), "cali_v4_routes".into()];
        o.calico_bpf = Some(CalicoBpf {
            attached: vec!["tcx/eth0_ingress".into(), "tcx/eth0_egress".into()],
            routes: Some(routes),
            ..CalicoBpf::default()
        });
        o
    }

    fn bpf_ids(v: &Verification) -> Vec<(CheckId, String)> {
        ids(v)
            .into_iter()
            .filter(|(c, _)| {
                matches!(
                    c,
                    CheckId::BpfRouteMissing
                        | CheckId::BpfRouteWrongNexthop
                        | CheckId::DataplaneModeMismatch
                )
            })
            .collect()
    }

    /// The dual-stack lab in eBPF mode: node-b (fd00:99::12) owns fd00:244::40/122.
    fn bpf_expected_dual_stack(extra: &str) -> Expected {
        let yaml = include_str!("testdata/datastore-lab-dual-stack.yaml").replace(
            "spec: {logSeverityScreen: Info, ipv6Support: true}",
            &format!("spec: {{logSeverityScreen: Info, bpfEnabled: true{extra}}}"),
        );
        expected_from(&yaml, Some("node-a"))
    }

    fn remote_block_v6(next_hop: &str) -> BpfRoute {
        BpfRoute {
            destination: "fd00:244::40/122".parse().expect("cidr"),
            next_hop: Some(next_hop.parse().expect("ip")),
            ..remote_block([0; 4])
        }
    }

    #[test]
    fn ipv6_blocks_are_judged_in_the_ipv6_route_map() {
        let e = bpf_expected_dual_stack("");
        let with_v6 = |v6: Vec<BpfRoute>| {
            let mut o = bpf_node(vec![remote_block([10, 99, 0, 12])]);
            if let Some(b) = o.calico_bpf.as_mut() {
                b.routes_v6 = Some(v6);
            }
            o
        };
        let v = run(&e, &with_v6(vec![remote_block_v6("fd00:99::12")]));
        assert_eq!(bpf_ids(&v), []);
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.check == CheckId::BpfRouteMissing)
        );
        let v = run(&e, &with_v6(Vec::new()));
        assert_eq!(
            bpf_ids(&v),
            [(CheckId::BpfRouteMissing, "fd00:244::40/122".into())]
        );
        let f = v
            .findings
            .iter()
            .find(|f| f.check == CheckId::BpfRouteMissing)
            .expect("finding");
        assert!(f.actual.contains("cali_v6_routes"), "{f:?}");
        let v = run(&e, &with_v6(vec![remote_block_v6("fd00:99::13")]));
        assert_eq!(
            bpf_ids(&v),
            [(CheckId::BpfRouteWrongNexthop, "fd00:244::40/122".into())]
        );
        // No IPv6 map: Felix's eBPF dataplane is IPv4-only here; IPv4 is still judged.
        let v = run(&e, &bpf_node(Vec::new()));
        assert_eq!(
            bpf_ids(&v),
            [(CheckId::BpfRouteMissing, "10.244.1.0/26".into())]
        );
        let s = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::BpfRouteMissing)
            .expect("IPv6 not run");
        assert_eq!(s.kind, NotRun::NotApplicable);
        assert!(s.reason.contains("cali_v6_routes"), "{s:?}");
        // Without ipv6Support no IPv6 entry is expected.
        let e = bpf_expected_dual_stack(", ipv6Support: false");
        let blocks: Vec<String> = e.bpf_routes.iter().map(|r| r.block.to_string()).collect();
        assert_eq!(blocks, ["10.244.1.0/26"]);
    }

    #[test]
    fn a_healthy_ebpf_node_has_no_findings() {
        let e = bpf_expected();
        assert_eq!(e.bpf_routes.len(), 1, "{:?}", e.bpf_routes);
        let v = run(&e, &bpf_node(vec![remote_block([10, 99, 0, 12])]));
        assert_eq!(ids(&v), [], "no finding at all on the healthy node");
        for id in [CheckId::BpfRouteMissing, CheckId::BpfRouteWrongNexthop] {
            assert!(!v.skipped.iter().any(|s| s.check == id), "{id} ran");
        }
    }

    #[test]
    fn a_remote_block_without_its_entry_is_missing() {
        let v = run(&bpf_expected(), &bpf_node(Vec::new()));
        assert_eq!(
            bpf_ids(&v),
            [(CheckId::BpfRouteMissing, "10.244.1.0/26".into())]
        );
        let f = &v.findings[0];
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.expected.contains("node-b"), "{f:?}");
    }

    #[test]
    fn an_entry_to_the_wrong_node_is_a_wrong_next_hop() {
        let v = run(
            &bpf_expected(),
            &bpf_node(vec![remote_block([10, 99, 0, 13])]),
        );
        assert_eq!(
            bpf_ids(&v),
            [(CheckId::BpfRouteWrongNexthop, "10.244.1.0/26".into())]
        );
        assert!(v.findings[0].actual.contains("10.99.0.13"));
    }

    #[test]
    fn without_ebpf_mode_or_without_the_map_the_route_checks_do_not_apply() {
        // Not configured: no expectation, even with a map left over.
        let (e, o) = healthy();
        assert!(e.bpf_routes.is_empty());
        let v = run(&e, &o);
        let s = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::BpfRouteMissing)
            .expect("not run");
        assert_eq!(s.kind, NotRun::NotApplicable);
        // An unreadable map: not observable, with the reader's words.
        let mut o = bpf_node(Vec::new());
        if let Some(b) = o.calico_bpf.as_mut() {
            b.routes = None;
        }
        o.unavailable.push(crate::observed::Unavailable::new(
            Source::CalicoBpfRoutes,
            "cali_v4_routes",
            "cali_v4_routes is a LpmTrie map with 8-byte keys and 12-byte values",
        ));
        let v = run(&bpf_expected(), &o);
        assert_eq!(bpf_ids(&v), []);
        let s = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::BpfRouteMissing)
            .expect("not run");
        assert_eq!(s.kind, NotRun::CouldNotObserve);
        assert!(s.reason.contains("12-byte values"), "{s:?}");
    }

    #[test]
    fn ebpf_configured_without_programs_or_maps_is_a_mode_mismatch() {
        let (_, o) = healthy();
        let v = run(&bpf_expected(), &o);
        assert_eq!(
            bpf_ids(&v),
            [(CheckId::DataplaneModeMismatch, "bpfEnabled".into())]
        );
        assert_eq!(v.findings[0].severity, Severity::Critical);
    }

    #[test]
    fn ebpf_programs_attached_while_configured_off_is_a_warning_and_stale_maps_info() {
        let (e, _) = healthy();
        let v = run(&e, &bpf_node(Vec::new()));
        let f: Vec<_> = v
            .findings
            .iter()
            .filter(|f| f.check == CheckId::DataplaneModeMismatch)
            .collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].actual.contains("tcx/eth0_ingress"), "{:?}", f[0]);
        let mut o = bpf_node(Vec::new());
        if let Some(b) = o.calico_bpf.as_mut() {
            b.attached.clear();
        }
        let v = run(&e, &o);
        let f: Vec<_> = v
            .findings
            .iter()
            .filter(|f| f.check == CheckId::DataplaneModeMismatch)
            .collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Info);
        assert!(!v.has_drift(), "{:?}", v.findings);
    }

    #[test]
    fn a_bundle_without_the_bpffs_cannot_tell_whether_ebpf_is_in_use() {
        let (_, mut o) = healthy();
        o.unavailable.push(
            crate::observed::Unavailable::new(Source::CalicoBpfRoutes, "bpffs", "not in bundle")
                .with_cause(Cause::NotInInput),
        );
        let v = run(&bpf_expected(), &o);
        assert_eq!(bpf_ids(&v), []);
        let s = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::DataplaneModeMismatch)
            .expect("not run");
        assert_eq!((s.kind, s.missing.as_str()), (NotRun::NotInInput, "bpffs"));
        // bpfin.cali among the bundle's links says eBPF mode is on: nothing to report.
        let bpfin = o.links[0].clone();
        o.links.push(crate::observed::Link {
            name: "bpfin.cali".into(),
            index: 999,
            ..bpfin
        });
        let v = run(&bpf_expected(), &o);
        assert_eq!(bpf_ids(&v), []);
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.check == CheckId::DataplaneModeMismatch)
        );
    }

    #[test]
    fn without_felix_configuration_the_mode_check_names_the_missing_kind() {
        let without = LAB.replace(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {logSeverityScreen: Info}\n---\n",
            "",
        );
        assert_ne!(without, LAB, "fixture changed");
        let e = expected_from(&without, Some("node-a"));
        let v = run(&e, &bpf_node(Vec::new()));
        assert_eq!(bpf_ids(&v), []);
        let s = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::DataplaneModeMismatch)
            .expect("not run");
        assert_eq!(s.missing, "FelixConfiguration");
    }
}
