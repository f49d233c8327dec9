//! Policy-only Calico on the AWS VPC CNI (shared/reference/vpc-cni-policy-only.md): the VPC
//! CNI's per-pod plumbing that packet-loss investigations check, and what does not apply.
//!
//! The VPC CNI, not Felix, owns the pod routes' existence, the ip rules, the per-ENI tables,
//! the primary ENI's rp_filter and the SNAT/connmark rules (§3.5), so each of those has its own
//! `vpccni.*` check. All are `warning`: each breaks some pods' traffic, but none is a whole-node
//! outage, and the node alone cannot always tell a pod being set up or torn down from drift (the
//! grace window covers CNI ADD/DEL). Felix's side (chains, dispatch `-i eni+`, failsafes) is
//! checked by `rules.rs` and `dispatch.rs`; Calico routing (tunnels, block routes, blackholes,
//! NAT-outgoing) is not applicable unless the node or the datastore shows some.

use std::fmt::Write as _;

use calico_conventions::{
    PROTO_BIRD, PROTO_CALICO, TUNNEL_DEVICES,
    vpc_cni::{
        CONNMARK, FROM_POD_RULE_PRIORITY, FWMARK_RULE_PRIORITY, SNAT_CHAIN, TO_POD_RULE_PRIORITY,
        VETH_PREFIX, is_pod_veth,
    },
};

use super::{CheckId, Finding, NotRun, Severity, Skipped};
use crate::{
    desired::expected::Expected,
    observed::{
        ObservedDataplane,
        vpc_cni::{self, VpcCni},
    },
};

/// Calico's own routing, which a VPC CNI node does not have: not run there (§3.3: no pools, no
/// encapsulation, `CALICO_NETWORKING_BACKEND=none`).
const CALICO_ROUTING: &[CheckId] = &[
    CheckId::RouteMissing,
    CheckId::RouteWrongDevice,
    CheckId::RouteWrongNexthop,
    CheckId::RouteUnexpected,
    CheckId::RouteBlackholeMissing,
    CheckId::RouteWorkloadMissing,
    CheckId::TunnelMissing,
    CheckId::TunnelDown,
    CheckId::TunnelAddressMismatch,
    CheckId::TunnelVniMismatch,
    CheckId::TunnelParentMismatch,
    CheckId::VxlanFdbMissing,
    CheckId::VxlanNeighMissing,
    CheckId::VxlanMacMismatch,
    CheckId::MtuTunnelMismatch,
    CheckId::MtuWorkloadMismatch,
    CheckId::MtuUnderlayTooSmall,
    CheckId::NatOutgoingMissing,
];

pub(super) fn check(
    e: Option<&Expected>,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
    notes: &mut Vec<String>,
) {
    let Some(v) = vpc_cni::read(obs) else {
        return;
    };
    if let Some(p) = e.and_then(|e| e.interface_prefix.as_deref()) {
        notes.push(format!("FelixConfiguration interfacePrefix: {p}"));
    }
    not_applicable(e, obs, out, skipped);
    felix_prefix(&v, e, obs, out);
    pods(&v, out);
    tables(&v, out);
    rp_filter(&v, out);
    snat(&v, out);
}

/// Calico routing checks are listed as not run, and their findings dropped, unless Calico
/// routing is there after all: a Calico tunnel device or proto 80/bird route on the node, or
/// tunnels or block routes the datastore expects (leftover IP pools: worth reporting, S7).
fn not_applicable(
    e: Option<&Expected>,
    obs: &ObservedDataplane,
    out: &mut Vec<Finding>,
    skipped: &mut Vec<Skipped>,
) {
    let on_node = obs.links.iter().any(|l| {
        TUNNEL_DEVICES.contains(&l.name.as_str())
            && (l.name != calico_conventions::IPIP || obs.addresses_of(&l.name).next().is_some())
    }) || obs
        .routes
        .iter()
        .any(|r| r.protocol == PROTO_CALICO || r.protocol == PROTO_BIRD);
    let expected = e.is_some_and(|e| {
        e.vxlan.is_some() || e.ipip.is_some() || !e.routes.is_empty() || !e.nat_outgoing.is_empty()
    });
    if on_node || expected {
        return;
    }
    out.retain(|f| !CALICO_ROUTING.contains(&f.check));
    skipped.retain(|s| !CALICO_ROUTING.contains(&s.check));
    for id in CALICO_ROUTING {
        skipped.push(Skipped::new(
            *id,
            NotRun::NotApplicable,
            "not applicable: policy-only on the AWS VPC CNI (the VPC CNI routes the pods; no \
             Calico tunnels, blocks or pools)",
        ));
    }
}

/// Felix must police the VPC CNI's veths: `cali-FORWARD -i eni+` (failure F6b: a prefix that
/// differs from the VPC CNI's `vethPrefix` leaves every pod without policy, fail-open).
fn felix_prefix(v: &VpcCni, e: Option<&Expected>, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    // Felix's rules not in iptables (nftables mode, unreadable): nothing to judge here.
    let veths = obs.links.iter().filter(|l| is_pod_veth(&l.name)).count();
    if v.felix_dispatches != Some(false) || veths == 0 {
        return;
    }
    let configured = e
        .and_then(|e| e.interface_prefix.as_deref())
        .map(|p| format!(" (FelixConfiguration interfacePrefix: {p})"))
        .unwrap_or_default();
    out.push(
        Finding::new(CheckId::RulesDispatchMissing, Severity::Warning, format!("{VETH_PREFIX}+"))
            .expected(format!("cali-FORWARD -i {VETH_PREFIX}+ -j cali-from-wl-dispatch (Felix's interfacePrefix includes the VPC CNI's veth prefix {VETH_PREFIX})"))
            .actual(format!("no {VETH_PREFIX}+ dispatch in cali-FORWARD, {veths} {VETH_PREFIX}… veth(s) on the node{configured}"))
            .hint("no Calico policy applies to these pods (they are forwarded unpoliced): set FELIX_INTERFACEPREFIX=eni on calico-node (the operator does for cni.type AmazonVPC) or interfacePrefix in FelixConfiguration, matching aws-node's AWS_VPC_K8S_CNI_VETHPREFIX: `iptables-save -t filter | grep 'cali-FORWARD -i'`"),
    );
}

fn pods(v: &VpcCni, out: &mut Vec<Finding>) {
    // Rules naming an IP with no route: which pod lost its route, when a veth has none.
    let unrouted_ips: Vec<String> = v
        .pods
        .iter()
        .filter(|p| p.veth.is_none() && p.to_rule)
        .map(|p| p.ip.to_string())
        .collect();
    for veth in &v.veths_without_route {
        let mut actual = format!("no route in main through {veth}");
        if !unrouted_ips.is_empty() {
            let _ = write!(
                actual,
                "; {TO_POD_RULE_PRIORITY} rules name {} without a route (the pod's IP is likely among them)",
                unrouted_ips.join(", ")
            );
        }
        out.push(
            Finding::new(CheckId::VpcCniRouteMissing, Severity::Warning, veth.clone())
                .expected(format!("<pod IP> dev {veth} scope link in main (the VPC CNI adds it at pod start; metric 1024 once Felix ≥ v3.32 owns it)"))
                .actual(actual)
                .hint(format!(
                    "the pod behind {veth} is unreachable. Felix deletes routes on {VETH_PREFIX}* links it has no WorkloadEndpoint for, 10 s after it sees them (aws/amazon-vpc-cni-k8s#1159, projectcalico/calico#9706): check Felix's log for \"removing old route\" and that calico-node sees the pod; recreating the pod re-runs CNI ADD: `ip route show dev {veth}`"
                )),
        );
    }
    for p in v.pods.iter().filter(|p| p.veth.is_some()) {
        let ip = p.ip;
        if !p.to_rule {
            out.push(
                Finding::new(CheckId::VpcCniRuleMissing, Severity::Warning, format!("to {ip}"))
                    .expected(format!("{TO_POD_RULE_PRIORITY}: from all to {ip} lookup main"))
                    .actual(format!("no {TO_POD_RULE_PRIORITY} rule for {ip}"))
                    .hint(format!(
                        "pods on secondary ENIs cannot reach {ip} on this node: their {FROM_POD_RULE_PRIORITY} rule sends the packets to their ENI's table and out of the node (aws/amazon-vpc-cni-k8s#641). ipamd never re-creates it; something flushed rules (systemd-networkd, nm-cloud-setup): `ip rule | grep {ip}`; recreate the pod or `ip rule add to {ip} lookup main priority {TO_POD_RULE_PRIORITY}`"
                    )),
            );
        }
        if p.from_tables.is_empty() && p.needs_from_rule == Some(true) {
            let tables: Vec<String> = p.candidate_tables.iter().map(ToString::to_string).collect();
            out.push(
                Finding::new(CheckId::VpcCniRuleMissing, Severity::Warning, format!("from {ip}"))
                    .expected(format!(
                        "{FROM_POD_RULE_PRIORITY}: from {ip} lookup {} ({ip} is in the subnet of a secondary ENI, not the primary's)",
                        tables.join(" or ")
                    ))
                    .actual(format!("no {FROM_POD_RULE_PRIORITY} rule for {ip}: its traffic leaves through the main table's default route"))
                    .hint(format!(
                        "the pod's packets leave through the primary ENI with a source address that ENI does not own, and the VPC drops them (aws/amazon-vpc-cni-k8s#1856, #3309, #3524). ipamd re-creates no missing rule, not even at restart (it only rewrites existing ones); a restart of systemd-networkd or nm-cloud-setup flushes them: `ip rule | grep {ip}`; recreate the pod (CNI ADD writes it) or `ip rule add from {ip} lookup <table> priority {FROM_POD_RULE_PRIORITY}`"
                    )),
            );
        }
    }
    if v.snat.chain_rules > 0 && v.fwmark_rule.is_none() {
        let mark = format!("fwmark {CONNMARK:#x}/{CONNMARK:#x}");
        out.push(
            Finding::new(CheckId::VpcCniRuleMissing, Severity::Warning, mark.clone())
                .expected(format!("{FWMARK_RULE_PRIORITY}: from all {mark} lookup main (SNAT is on: connmarked traffic must leave through the primary ENI)"))
                .actual(format!("no {FWMARK_RULE_PRIORITY} rule with the mask {CONNMARK:#x}"))
                .hint("pods on secondary ENIs lose traffic to outside the VPC and NodePort replies leave through the wrong ENI (aws/amazon-vpc-cni-k8s#2025, PR #340); ipamd adds it at start: `ip rule | grep fwmark`, restart aws-node"),
        );
    }
}

/// Every table a `1536`/`32765` rule looks up needs the ENI's default route (failure F4).
fn tables(v: &VpcCni, out: &mut Vec<Finding>) {
    for t in v.tables.iter().filter(|t| t.default_route.is_none()) {
        out.push(
            Finding::new(CheckId::VpcCniTableMissing, Severity::Warning, format!("table {}", t.table))
                .expected(format!("default via <ENI subnet gateway> dev <ENI> table {} (the ENI's table; {} rule(s) look it up)", t.table, t.rules))
                .actual(if t.routes == 0 { "the table is empty".to_string() } else { format!("{} route(s), no default", t.routes) })
                .hint(format!(
                    "pods on that ENI have no way out of the node. Felix flushes tables in its routeTableRange (default 1–250 in manifest installs, 65–99 with the operator; projectcalico/calico#5432), and networkd flushes foreign tables: `ip route show table {}`, `kubectl get felixconfiguration default -o yaml | grep -A2 routeTableRange`; ipamd re-creates it when it sets the ENI up (restart aws-node)",
                    t.table
                )),
        );
    }
}

/// The primary ENI must be loose (2): `aws-vpc-cni-init` sets it, because replies to NodePort
/// and load-balancer traffic for pods on secondary ENIs, and de-SNATed replies to those pods,
/// arrive on the primary ENI but route back through the pod's ENI table (failure F8; aws PR
/// #130). The kernel applies max(all, interface).
fn rp_filter(v: &VpcCni, out: &mut Vec<Finding>) {
    let Some(eni) = &v.primary_eni else { return };
    let Some(own) = eni.rp_filter else { return };
    let effective = own.max(v.rp_filter_all.unwrap_or(0));
    if effective != 1 {
        return;
    }
    let name = &eni.name;
    out.push(
        Finding::new(CheckId::VpcCniRpFilterStrict, Severity::Warning, name.clone())
            .expected(format!("net.ipv4.conf.{name}.rp_filter = 2 (loose; aws-vpc-cni-init sets it on the primary ENI)"))
            .actual(format!(
                "strict: {name}={own}, all={} (the kernel uses the larger)",
                v.rp_filter_all.map_or("?".into(), |a| a.to_string())
            ))
            .hint(format!(
                "the kernel drops as martians the replies that reach pods on secondary ENIs through {name} (NodePort and load-balancer traffic, SNATed traffic to outside the VPC) (aws/amazon-vpc-cni-k8s#75, #212, PR #130): `sysctl -w net.ipv4.conf.{name}.rp_filter=2`, and find what reset it (sysctl.d, the AMI)"
            )),
    );
}

/// `AWS-SNAT-CHAIN-0` exists on every VPC CNI node (empty with external SNAT); with SNAT on, it
/// must be hooked from nat POSTROUTING and the connmark rules must send pods' traffic to
/// outside the VPC through the primary ENI (failure F11). ipamd writes them in `nodeInit` and
/// again only when the VPC CIDRs change (`pkg/ipamd/ipamd.go` `updateCIDRsRulesOnChange`,
/// polled every 30 s, calls `UpdateHostSNATRules` only on a difference).
fn snat(v: &VpcCni, out: &mut Vec<Finding>) {
    let s = &v.snat;
    let finding = |subject: &str, expected: String, actual: String| {
        Finding::new(CheckId::VpcCniSnatMissing, Severity::Warning, subject)
            .expected(expected)
            .actual(actual)
            .hint(
                "pods lose traffic to outside the VPC (no SNAT to the node's IP, or it leaves through a secondary ENI); ipamd writes these rules only at start and when the VPC's CIDRs change, so they stay lost until aws-node restarts — find what flushed nat (firewalld, a node script): `iptables-save -t nat | grep AWS`, `kubectl -n kube-system rollout restart ds/aws-node`",
            )
    };
    if !s.chain {
        out.push(finding(
            SNAT_CHAIN,
            format!("nat chain {SNAT_CHAIN} (ipamd creates it at start, empty with external SNAT)"),
            "absent from every iptables backend".into(),
        ));
        return;
    }
    if s.chain_rules > 0 && !s.hooked {
        out.push(finding(
            "nat POSTROUTING",
            format!("POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j {SNAT_CHAIN}"),
            format!(
                "{SNAT_CHAIN} has {} rule(s) but POSTROUTING does not jump to it",
                s.chain_rules
            ),
        ));
    }
    if s.snat_to.is_some() && s.connmark.is_none() {
        out.push(finding(
            "AWS-CONNMARK-CHAIN-0",
            format!("nat PREROUTING -i {VETH_PREFIX}+ -j AWS-CONNMARK-CHAIN-0, or nftables table ip aws-cni (v1.23+)"),
            "neither: pods' connections to outside the VPC are not connmarked".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        desired::{
            Datastore,
            expected::{HostFacts, compute},
            files::load_text,
        },
        observed::{
            bundle,
            iptables::{Backend, IptTable},
        },
        verify::{
            Verification,
            testutil::{ids, run, run_inferred},
        },
    };

    const NODE: &str = "ip-10-0-1-10.ec2.internal";
    const REDIS: &str = "10.0.2.21";
    const REDIS_VETH: &str = "eniccec0fc857b";

    /// The VPC CNI lab's node as `agent diag --bundle-out` captured it (healthy).
    fn healthy() -> ObservedDataplane {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/verify/testdata/vpc-cni-lab");
        let b = bundle::read_dir(&dir).expect("fixture bundle");
        assert_eq!(b.observed.node_name, NODE);
        b.observed
    }

    fn expected(o: &ObservedDataplane) -> Expected {
        let mut ds = Datastore::default();
        load_text(
            &mut ds,
            "vpc-cni-lab.yaml",
            include_str!("testdata/vpc-cni-lab.yaml"),
        )
        .expect("datastore");
        let facts = HostFacts {
            links: o
                .links
                .iter()
                .map(|l| (l.name.clone(), l.mtu, l.is_up()))
                .collect(),
        };
        compute(&ds, Some(NODE), &facts).expect("expected")
    }

    fn table_mut<'a>(o: &'a mut ObservedDataplane, name: &str) -> &'a mut IptTable {
        o.iptables
            .iter_mut()
            .find(|d| d.backend == Some(Backend::Nft) && d.family == 4)
            .and_then(|d| d.tables.iter_mut().find(|t| t.name == name))
            .unwrap_or_else(|| panic!("no table {name}"))
    }

    fn only(v: &Verification) -> Vec<(CheckId, String)> {
        ids(v)
    }

    fn host(ip: &str) -> Option<ipnet::IpNet> {
        Some(format!("{ip}/32").parse().expect("net"))
    }

    #[test]
    fn healthy_node_is_quiet_and_calico_routing_is_not_applicable() {
        let o = healthy();
        let e = expected(&o);
        assert_eq!(e.interface_prefix.as_deref(), Some("eni"));
        for v in [run_inferred(&o), run(&e, &o)] {
            assert!(v.findings.is_empty(), "{:#?}", v.findings);
            for id in CALICO_ROUTING {
                let s: Vec<_> = v.skipped.iter().filter(|s| s.check == *id).collect();
                assert_eq!(s.len(), 1, "{id}: {s:?}");
                assert!(s[0].reason.contains("not applicable"), "{s:?}");
            }
            // The VPC CNI checks and Felix's dispatch ran.
            for id in [
                CheckId::VpcCniRouteMissing,
                CheckId::VpcCniRuleMissing,
                CheckId::VpcCniTableMissing,
                CheckId::VpcCniRpFilterStrict,
                CheckId::VpcCniSnatMissing,
                CheckId::RulesDispatchMissing,
                CheckId::RulesFelixMissing,
            ] {
                assert!(!v.skipped.iter().any(|s| s.check == id), "{id} skipped");
            }
        }
        assert!(
            run(&e, &o)
                .notes
                .contains(&"FelixConfiguration interfacePrefix: eni".to_string())
        );
        let plumbing = vpc_cni::read(&o).expect("VPC CNI detected");
        assert_eq!(plumbing.pods.len(), 4);
        assert_eq!(plumbing.felix_dispatches, Some(true));
        assert_eq!(
            plumbing.primary_eni.as_ref().map(|e| e.name.as_str()),
            Some("eth0")
        );
        assert_eq!(plumbing.tables.len(), 1);
        let redis = plumbing
            .pods
            .iter()
            .find(|p| p.ip.to_string() == REDIS)
            .expect("redis");
        assert_eq!(redis.from_tables, [2]);
        assert_eq!(redis.needs_from_rule, Some(true));
    }

    #[test]
    fn not_a_vpc_cni_node_runs_none_of_this() {
        let (_, o) = crate::verify::testutil::healthy();
        assert!(vpc_cni::read(&o).is_none());
        let v = run_inferred(&o);
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.reason.contains("not applicable")),
            "{:?}",
            v.skipped
        );
    }

    #[test]
    fn calico_routing_on_the_node_keeps_its_checks() {
        // Leftover tunnels (IP pools from an earlier Calico CNI install) are worth reporting.
        let mut o = healthy();
        let mut vx = o.links[0].clone();
        vx.name = "vxlan.calico".into();
        vx.index = 999;
        o.links.push(vx);
        let v = run_inferred(&o);
        assert!(
            !v.skipped
                .iter()
                .any(|s| s.reason.contains("not applicable")),
            "{:?}",
            v.skipped
        );
    }

    #[test]
    fn route_missing_fires_for_a_veth_without_its_route() {
        let mut o = healthy();
        o.routes
            .retain(|r| !(r.dev.as_deref() == Some(REDIS_VETH) && r.destination.addr().is_ipv4()));
        let v = run_inferred(&o);
        assert_eq!(only(&v), [(CheckId::VpcCniRouteMissing, REDIS_VETH.into())]);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        assert!(
            v.findings[0].actual.contains(REDIS),
            "{}",
            v.findings[0].actual
        );
        // A downed veth (pod going away) is not reported.
        o.links
            .iter_mut()
            .filter(|l| l.name == REDIS_VETH)
            .for_each(|l| l.admin_up = false);
        assert!(run_inferred(&o).findings.is_empty());
    }

    #[test]
    fn rule_missing_fires_for_each_rule() {
        let mut o = healthy();
        o.rules
            .retain(|r| !(r.priority == 512 && r.destination == host(REDIS)));
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniRuleMissing, format!("to {REDIS}"))]
        );

        let mut o = healthy();
        o.rules
            .retain(|r| !(r.priority == 1536 && r.source == host(REDIS)));
        let v = run_inferred(&o);
        assert_eq!(
            only(&v),
            [(CheckId::VpcCniRuleMissing, format!("from {REDIS}"))]
        );
        assert!(
            v.findings[0].expected.contains("lookup 2"),
            "{}",
            v.findings[0].expected
        );

        let mut o = healthy();
        o.rules.retain(|r| r.priority != 1024);
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniRuleMissing, "fwmark 0x80/0x80".into())]
        );
    }

    #[test]
    fn from_rule_is_not_judged_when_the_eni_subnets_do_not_tell() {
        // All ENIs in one subnet (the VPC CNI's default): which ENI owns an IP is ipamd's.
        let mut o = healthy();
        o.addresses
            .iter_mut()
            .filter(|a| a.ifname == "eth1")
            .for_each(|a| a.address = "10.0.2.10/16".parse().expect("net"));
        o.addresses
            .iter_mut()
            .filter(|a| a.ifname == "eth0")
            .for_each(|a| a.address = "10.0.1.10/16".parse().expect("net"));
        o.rules
            .retain(|r| !(r.priority == 1536 && r.source == host(REDIS)));
        assert!(run_inferred(&o).findings.is_empty());
        // A pod on the primary ENI needs none.
        let plumbing = vpc_cni::read(&healthy()).expect("vpc");
        let nginx = plumbing
            .pods
            .iter()
            .find(|p| p.ip.to_string() == "10.0.1.21")
            .expect("nginx");
        assert_eq!(nginx.needs_from_rule, Some(false));
    }

    #[test]
    fn table_missing_fires_for_a_flushed_eni_table() {
        let mut o = healthy();
        o.routes.retain(|r| r.table != 2);
        let v = run_inferred(&o);
        assert_eq!(only(&v), [(CheckId::VpcCniTableMissing, "table 2".into())]);
        assert!(v.findings[0].actual.contains("empty"));
        let mut o = healthy();
        o.routes
            .retain(|r| !(r.table == 2 && r.destination.prefix_len() == 0));
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniTableMissing, "table 2".into())]
        );
    }

    #[test]
    fn rp_filter_strict_fires_on_the_primary_eni_only() {
        let mut o = healthy();
        // Secondary ENIs are left strict by the distro: healthy (the fixture has eth1 = 1).
        assert_eq!(o.sysctls.rp_filter.get("eth1"), Some(&1));
        o.sysctls.rp_filter.insert("eth0".into(), 1);
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniRpFilterStrict, "eth0".into())]
        );
        // The kernel uses max(all, interface): all=1 makes an unset (0) primary ENI strict,
        // but not one at 2.
        let mut o = healthy();
        o.sysctls.rp_filter.insert("all".into(), 1);
        assert!(run_inferred(&o).findings.is_empty());
        o.sysctls.rp_filter.insert("eth0".into(), 0);
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniRpFilterStrict, "eth0".into())]
        );
        o.sysctls.rp_filter.insert("all".into(), 2);
        assert!(run_inferred(&o).findings.is_empty());
    }

    #[test]
    fn snat_missing_fires_for_chain_hook_and_connmark() {
        let mut o = healthy();
        table_mut(&mut o, "nat")
            .rules
            .retain(|r| !(r.chain == "POSTROUTING" && r.target.as_deref() == Some(SNAT_CHAIN)));
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniSnatMissing, "nat POSTROUTING".into())]
        );

        let mut o = healthy();
        table_mut(&mut o, "nat")
            .rules
            .retain(|r| r.target.as_deref() != Some("AWS-CONNMARK-CHAIN-0"));
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniSnatMissing, "AWS-CONNMARK-CHAIN-0".into())]
        );

        let mut o = healthy();
        let nat = table_mut(&mut o, "nat");
        nat.chains.retain(|c| c.name != SNAT_CHAIN);
        nat.rules
            .retain(|r| r.chain != SNAT_CHAIN && r.target.as_deref() != Some(SNAT_CHAIN));
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::VpcCniSnatMissing, SNAT_CHAIN.into())]
        );
    }

    #[test]
    fn external_snat_is_healthy() {
        // AWS_VPC_K8S_CNI_EXTERNALSNAT=true: the chain stays, empty and unhooked; no connmark.
        let mut o = healthy();
        let nat = table_mut(&mut o, "nat");
        nat.rules.retain(|r| {
            r.chain != SNAT_CHAIN
                && r.chain != "AWS-CONNMARK-CHAIN-0"
                && !r.target.as_deref().is_some_and(|t| t.starts_with("AWS-"))
                && !r.comments.iter().any(|c| c.starts_with("AWS"))
        });
        let v = run_inferred(&o);
        assert!(v.findings.is_empty(), "{:#?}", v.findings);
        assert!(vpc_cni::read(&o).expect("vpc").snat.external());
    }

    #[test]
    fn felix_without_the_eni_prefix_polices_nothing() {
        let mut o = healthy();
        table_mut(&mut o, "filter")
            .rules
            .retain(|r| !(r.chain == "cali-FORWARD" && r.spec.contains("eni+")));
        let v = run_inferred(&o);
        assert_eq!(only(&v), [(CheckId::RulesDispatchMissing, "eni+".into())]);
        assert!(
            v.findings[0].actual.contains("4 eni… veth(s)"),
            "{}",
            v.findings[0].actual
        );
    }

    #[test]
    fn unreadable_iptables_judges_neither_felix_nor_snat() {
        let mut o = healthy();
        o.iptables.clear();
        o.nft = None;
        for kind in [
            crate::observed::Source::Iptables,
            crate::observed::Source::Nftables,
        ] {
            o.unavailable.push(crate::observed::Unavailable::new(
                kind,
                "iptables-nft-save",
                "needs CAP_NET_ADMIN",
            ));
        }
        let v = run_inferred(&o);
        assert!(v.findings.is_empty(), "{:#?}", v.findings);
        assert_eq!(vpc_cni::read(&o).expect("vpc").felix_dispatches, None);
        for id in [CheckId::VpcCniSnatMissing, CheckId::RulesDispatchMissing] {
            assert!(
                v.skipped
                    .iter()
                    .any(|s| s.check == id && s.reason.contains("CAP_NET_ADMIN")),
                "{id}: {:?}",
                v.skipped
            );
        }
    }

    #[test]
    fn dispatch_missing_fires_inline_and_in_a_child_chain() {
        let mut o = healthy();
        // client's entry is inline in the root chain.
        table_mut(&mut o, "filter").rules.retain(|r| {
            !(r.chain == "cali-from-wl-dispatch" && r.spec.contains("-i enia7a3e029a7b "))
        });
        let v = run_inferred(&o);
        assert_eq!(
            only(&v),
            [(CheckId::RulesDispatchMissing, "enia7a3e029a7b".into())]
        );
        assert!(v.findings[0].actual.contains("cali-from-wl-dispatch"));
        // nginx's is in the child chain for `enic…`.
        let mut o = healthy();
        table_mut(&mut o, "filter").rules.retain(|r| {
            !(r.chain == "cali-to-wl-dispatch-c" && r.spec.contains("-o enic440f455693 "))
        });
        assert_eq!(
            only(&run_inferred(&o)),
            [(CheckId::RulesDispatchMissing, "enic440f455693".into())]
        );
    }
}
