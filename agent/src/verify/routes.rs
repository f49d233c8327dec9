//! Block routes, blackholes, borrowed /32s, workload routes, and stale Felix-owned routes.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::{CheckId, Finding, IndexMap, IndexSet, Severity};
use calico_conventions::{PROTO_BIRD, PROTO_CALICO, VXLAN_V4, is_workload_iface};

use crate::{
    desired::expected::{Expected, RouteTarget},
    observed::{ObservedDataplane, PROTO_KERNEL, Route, RouteType, TABLE_MAIN},
};

/// The main table's routes by destination, built once per verification, so that checking
/// thousands of blocks costs a lookup each rather than a scan of every route.
struct MainRoutes<'a>(IndexMap<IpNet, Vec<&'a Route>>);

impl<'a> MainRoutes<'a> {
    fn new(obs: &'a ObservedDataplane) -> Self {
        let mut by_dst = IndexMap::with_capacity_and_hasher(obs.routes.len(), Default::default());
        for r in obs.routes.iter().filter(|r| r.table == TABLE_MAIN) {
            by_dst.entry(r.destination).or_insert_with(Vec::new).push(r);
        }
        Self(by_dst)
    }

    fn to(&self, dst: &IpNet) -> impl Iterator<Item = &'a Route> + '_ {
        self.0.get(dst).into_iter().flatten().copied()
    }
}

/// A missing or down device has no routes; tunnel.missing/tunnel.down report the cause once.
fn device_unusable(obs: &ObservedDataplane, dev: &str) -> bool {
    obs.link(dev).is_none_or(|l| !l.is_up())
}

pub(super) fn check(e: &Expected, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let underlay = super::node_ip_link(e, obs).map(|l| l.name.clone());
    let routes = MainRoutes::new(obs);
    let mut unusable: IndexMap<&str, bool> = IndexMap::default();
    for exp in &e.routes {
        let dst = IpNet::V4(exp.destination);
        // The healthy case, thousands of times per verification: one lookup, no formatting.
        let (device, gateway) = match &exp.target {
            RouteTarget::Blackhole => {
                if routes.to(&dst).any(|r| r.kind == RouteType::Blackhole) {
                    continue;
                }
                (None, None)
            }
            RouteTarget::Device { device, gateway } => {
                if *unusable
                    .entry(device.as_str())
                    .or_insert_with(|| device_unusable(obs, device))
                {
                    continue;
                }
                (Some(device.as_str()), gateway.map(IpAddr::V4))
            }
            RouteTarget::Underlay { gateway } => (underlay.as_deref(), Some(IpAddr::V4(*gateway))),
        };
        if device.is_some()
            && routes.to(&dst).any(|r| {
                r.kind == RouteType::Unicast && r.dev.as_deref() == device && r.gateway == gateway
            })
        {
            continue;
        }
        let subject = crate::observed::host_or_net(&dst);
        match &exp.target {
            RouteTarget::Blackhole => {
                if !routes.to(&dst).any(|r| r.kind == RouteType::Blackhole) {
                    out.push(
                        Finding::new(CheckId::RouteBlackholeMissing, Severity::Warning, subject.clone())
                            .expected(format!("blackhole {subject} proto 80 ({})", exp.reason))
                            .actual(describe(routes.to(&dst)))
                            .hint(format!(
                                "without it, traffic to unallocated addresses of this node's block follows the default route and loops or leaks; Felix restores it on its route resync (90 s): `ip route show {subject}`"
                            )),
                    );
                }
            }
            RouteTarget::Device { device, gateway } => {
                let want = format!(
                    "{subject}{} dev {device}{}",
                    gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                    if gateway.is_some() {
                        " onlink"
                    } else {
                        " scope link"
                    }
                );
                compare(
                    out,
                    &routes,
                    &dst,
                    &subject,
                    &want,
                    &exp.reason,
                    device,
                    gateway.map(IpAddr::V4),
                );
            }
            RouteTarget::Underlay { gateway } => {
                let dev = underlay
                    .clone()
                    .unwrap_or_else(|| "<node IP's device>".into());
                let want = format!("{subject} via {gateway} dev {dev} proto 80 onlink");
                compare(
                    out,
                    &routes,
                    &dst,
                    &subject,
                    &want,
                    &exp.reason,
                    &dev,
                    Some(IpAddr::V4(*gateway)),
                );
            }
        }
    }
    workloads(e, obs, &routes, out);
    unexpected(e, obs, out);
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site per target kind; a struct would only rename them"
)]
fn compare(
    out: &mut Vec<Finding>,
    routes: &MainRoutes<'_>,
    dst: &IpNet,
    subject: &str,
    want: &str,
    reason: &str,
    device: &str,
    gateway: Option<IpAddr>,
) {
    let found: Vec<&Route> = routes
        .to(dst)
        .filter(|r| r.kind == RouteType::Unicast)
        .collect();
    let expected = format!("{want} ({reason})");
    if found.is_empty() {
        out.push(
            Finding::new(CheckId::RouteMissing, Severity::Critical, subject)
                .expected(expected)
                .actual(describe(routes.to(dst)))
                .hint(format!(
                    "traffic to {subject} follows a less specific route or is dropped; Felix re-adds it on its next route resync (90 s) — if it stays missing, check calico-node's log for route errors: `kubectl logs -n calico-system ds/calico-node -c calico-node | grep -i route`"
                )),
        );
        return;
    }
    if found
        .iter()
        .any(|r| r.dev.as_deref() == Some(device) && r.gateway == gateway)
    {
        return;
    }
    let actual = describe(found.iter().copied());
    if !found.iter().any(|r| r.dev.as_deref() == Some(device)) {
        out.push(
            Finding::new(CheckId::RouteWrongDevice, Severity::Critical, subject)
                .expected(expected)
                .actual(actual)
                .hint(format!(
                    "packets to {subject} bypass {device}; something other than Felix replaced the route (another CNI, a static route, a routing daemon): `ip -d route show {subject}`"
                )),
        );
    } else {
        out.push(
            Finding::new(CheckId::RouteWrongNexthop, Severity::Critical, subject)
                .expected(expected)
                .actual(actual)
                .hint(format!(
                    "the next hop is not the owner's tunnel/node address; the datastore and the node disagree (node IP or tunnel address changed?): `ip -d route show {subject}`, `calicoctl get node -o yaml`"
                )),
        );
    }
}

fn describe<'a>(routes: impl Iterator<Item = &'a Route>) -> String {
    let v: Vec<String> = routes.map(Route::display).collect();
    if v.is_empty() {
        "no route".into()
    } else {
        v.join("; ")
    }
}

fn workloads(
    e: &Expected,
    obs: &ObservedDataplane,
    routes: &MainRoutes<'_>,
    out: &mut Vec<Finding>,
) {
    for w in &e.workloads {
        // Until the CNI plugin has created the interface (or after it removed it) there is
        // nothing to route to: that is pod churn, not drift.
        let Some(link) = obs.link(&w.iface) else {
            continue;
        };
        if !link.is_up() {
            continue;
        }
        let dst = IpNet::V4(Ipv4Net::from(w.ip));
        if routes
            .to(&dst)
            .any(|r| r.dev.as_deref() == Some(w.iface.as_str()))
        {
            continue;
        }
        out.push(
            Finding::new(CheckId::RouteWorkloadMissing, Severity::Critical, w.ip.to_string())
                .expected(format!("{} dev {} scope link (pod {})", w.ip, w.iface, w.pod))
                .actual(describe(routes.to(&dst)))
                .hint(format!(
                    "the pod {} cannot receive traffic; Felix writes this route when the workload endpoint is active: check `kubectl get workloadendpoints -A | grep {}` and calico-node's log",
                    w.pod,
                    w.ip
                )),
        );
    }
}

/// Routes Felix owns (on vxlan.calico, or with its exclusive protocol 80) that it would not
/// program now: left over from a block that moved or a node that left.
fn unexpected(e: &Expected, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let wanted: IndexSet<IpNet> = e.routes.iter().map(|x| IpNet::V4(x.destination)).collect();
    for r in obs.routes.iter().filter(|r| r.table == TABLE_MAIN) {
        if r.protocol == PROTO_KERNEL
            || !matches!(r.kind, RouteType::Unicast | RouteType::Blackhole)
            || r.dev.as_deref().is_some_and(is_workload_iface)
            || r.destination.addr().is_ipv6()
        {
            continue;
        }
        let felix_owned = r.dev.as_deref() == Some(VXLAN_V4) || (r.protocol == PROTO_CALICO);
        if !felix_owned || wanted.contains(&r.destination) {
            continue;
        }
        // Pod routes for this node's workloads on the tunnel do not exist; a BIRD route is
        // BIRD's. Anything else Felix owns and does not want is stale.
        if r.protocol == PROTO_BIRD {
            continue;
        }
        let subject = crate::observed::host_or_net(&r.destination);
        out.push(
            Finding::new(CheckId::RouteUnexpected, Severity::Warning, subject.clone())
                .expected("no such route: no IPAM block or tunnel address needs it")
                .actual(r.display())
                .hint(format!(
                    "a stale Felix route (block released or node removed); Felix deletes it on its next resync unless it cannot: `ip route show {subject}`, `calicoctl ipam show --show-blocks`"
                )),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testutil::{healthy, ids, route_mut, run};

    #[test]
    fn healthy_node_is_quiet() {
        let (e, o) = healthy();
        assert_eq!(ids(&run(&e, &o)), Vec::<(CheckId, String)>::new());
    }

    #[test]
    fn missing_remote_route() {
        let (e, mut o) = healthy();
        o.routes
            .retain(|r| r.destination.to_string() != "10.244.1.0/26");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RouteMissing, "10.244.1.0/26".into())]
        );
    }

    #[test]
    fn route_via_underlay_is_wrong_device() {
        let (e, mut o) = healthy();
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.dev = Some("eth0".into());
        r.gateway = Some("10.99.0.12".parse().expect("ip"));
        let v = run(&e, &o);
        assert_eq!(
            ids(&v),
            [(CheckId::RouteWrongDevice, "10.244.1.0/26".into())]
        );
        assert!(v.findings[0].actual.contains("dev eth0"));
    }

    #[test]
    fn wrong_gateway_is_wrong_nexthop() {
        let (e, mut o) = healthy();
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.gateway = Some("10.244.1.9".parse().expect("ip"));
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RouteWrongNexthop, "10.244.1.0/26".into())]
        );
    }

    #[test]
    fn missing_blackhole() {
        let (e, mut o) = healthy();
        o.routes.retain(|r| r.kind != RouteType::Blackhole);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RouteBlackholeMissing, "10.244.0.0/26".into())]
        );
    }

    #[test]
    fn stale_block_route_is_unexpected_but_foreign_routes_are_not() {
        let (e, mut o) = healthy();
        let mut stale = route_mut(&mut o, "10.244.1.0/26").clone();
        stale.destination = "10.244.7.0/26".parse().expect("net");
        o.routes.push(stale);
        let mut foreign = o.routes[0].clone();
        foreign.destination = "192.168.50.0/24".parse().expect("net");
        foreign.dev = Some("eth0".into());
        foreign.protocol = 4;
        o.routes.push(foreign);
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RouteUnexpected, "10.244.7.0/26".into())]
        );
    }

    #[test]
    fn workload_route_missing_only_when_the_interface_is_up() {
        let (e, mut o) = healthy();
        o.routes
            .retain(|r| r.destination.to_string() != "10.244.0.1/32");
        assert_eq!(
            ids(&run(&e, &o)),
            [(CheckId::RouteWorkloadMissing, "10.244.0.1".into())]
        );
        // Pod being torn down: interface gone with its route; nothing to report.
        o.links.retain(|l| l.name != e.workloads[0].iface);
        assert!(run(&e, &o).findings.is_empty());
    }
}
