//! Block routes, blackholes, borrowed /32s, workload routes, and stale Felix-owned routes.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::{CheckId, Finding, IndexMap, IndexSet, Severity};
use calico_conventions::{
    IPIP, PROTO_BIRD, PROTO_CALICO, TUNNEL_DEVICES, VXLAN_V4, VXLAN_V6, is_workload_iface,
};

use crate::{
    desired::{
        EncapMode, Kind,
        expected::{Expected, PoolEncap, RouteTarget},
    },
    observed::{ObservedDataplane, PROTO_KERNEL, Route, RouteType, Source, TABLE_MAIN},
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
/// Without links in the input the device's state is unknown, and its routes are judged.
fn device_unusable(obs: &ObservedDataplane, dev: &str) -> bool {
    let links_known = !obs.unavailable.iter().any(|u| u.kind == Source::Links);
    links_known && obs.link(dev).is_none_or(|l| !l.is_up())
}

pub(super) fn check(e: &Expected, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    // The routes Felix programs can be listed only from the blocks, their owners and who
    // this node is; with less, each pool's mode still judges the routes into it.
    let blocks_known =
        e.kinds.contains(&Kind::IpamBlock) && e.kinds.contains(&Kind::Node) && e.node_known;
    if !blocks_known {
        pool_modes(e, obs, out);
    }
    let underlay = super::node_ip_link(e, obs).map(|l| l.name.clone());
    // An IPv6 no-encap or same-subnet route leaves by the device holding the node's IPv6.
    let underlay_v6 = e.node_ip_v6.and_then(|ip| {
        let ip = IpAddr::V6(ip.addr());
        obs.addresses
            .iter()
            .find(|a| a.address.addr() == ip)
            .map(|a| a.ifname.clone())
    });
    let underlay_of = |gw: &IpAddr| {
        if gw.is_ipv6() {
            underlay_v6.clone()
        } else {
            underlay.clone()
        }
    };
    let routes = MainRoutes::new(obs);
    let mut unusable: IndexMap<&str, bool> = IndexMap::default();
    for exp in &e.routes {
        let dst = exp.destination;
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
                (Some(device.as_str()), *gateway)
            }
            RouteTarget::Underlay { gateway } => {
                if routes.to(&dst).any(|r| {
                    r.kind == RouteType::Unicast
                        && r.dev.is_some()
                        && r.dev == underlay_of(gateway)
                        && r.gateway == Some(*gateway)
                }) {
                    continue;
                }
                (None, Some(*gateway))
            }
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
                    *gateway,
                );
            }
            RouteTarget::Underlay { gateway } => {
                let dev = underlay_of(gateway).unwrap_or_else(|| "<node IP's device>".into());
                let want = format!("{subject} via {gateway} dev {dev} proto 80 onlink");
                compare(
                    out,
                    &routes,
                    &dst,
                    &subject,
                    &want,
                    &exp.reason,
                    &dev,
                    Some(*gateway),
                );
            }
        }
    }
    workloads(e, obs, &routes, out);
    if blocks_known {
        unexpected(e, obs, out);
    }
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

/// Each route into a pool against the pool's mode (reference §1.3, §1.6, §1.7): VXLAN or IPIP
/// Always → the tunnel; CrossSubnet → the underlay when the next hop is in the node's subnet,
/// else the tunnel; Never → the underlay. Which blocks exist is what the input lacks, so no
/// route is called missing or unexpected here.
fn pool_modes(e: &Expected, obs: &ObservedDataplane, out: &mut Vec<Finding>) {
    let subnets = node_subnets(e, obs);
    for r in obs.routes.iter().filter(|r| {
        r.table == TABLE_MAIN && r.kind == RouteType::Unicast && r.destination.addr().is_ipv4()
    }) {
        let (Some(dev), IpNet::V4(dst)) = (r.dev.as_deref(), r.destination) else {
            continue;
        };
        if is_workload_iface(dev) {
            continue;
        }
        let Some(pool) = e
            .pools
            .iter()
            .filter(|p| p.cidr.contains(&dst))
            .max_by_key(|p| p.cidr.prefix_len())
        else {
            continue;
        };
        let Some(want) = wanted_device(pool, r, &subnets) else {
            continue;
        };
        let on_tunnel = TUNNEL_DEVICES.contains(&dev);
        let right = match want {
            Want::Tunnel(t) => dev == t,
            Want::Underlay => !on_tunnel,
        };
        if right || dev == calico_conventions::WIREGUARD_V4 {
            continue;
        }
        let subject = crate::observed::host_or_net(&r.destination);
        let (expected, hint) = match want {
            Want::Tunnel(t) => (
                format!(
                    "{subject} through {t} (pool {} is {})",
                    pool.cidr,
                    mode_name(pool)
                ),
                format!(
                    "packets to {subject} leave unencapsulated and the peer or the underlay drops them; Felix (or BIRD for IPIP) programs this pool's routes through {t}: who added this one? `ip -d route show {subject}`"
                ),
            ),
            Want::Underlay => (
                format!(
                    "{subject} via the underlay, not a tunnel (pool {} is {})",
                    pool.cidr,
                    mode_name(pool)
                ),
                format!(
                    "this pool is not encapsulated to that next hop, so the peer does not expect tunnel packets: a leftover from an earlier encapsulation mode? `ip -d route show {subject}`, `calicoctl get ippool -o wide`"
                ),
            ),
        };
        out.push(
            Finding::new(CheckId::RouteWrongDevice, Severity::Critical, subject)
                .expected(expected)
                .actual(r.display())
                .hint(hint),
        );
    }
}

enum Want {
    Tunnel(&'static str),
    Underlay,
}

/// The device a route into `pool` leaves by; `None` when the node's subnet, which decides
/// CrossSubnet, is unknown.
fn wanted_device(pool: &PoolEncap, r: &Route, subnets: &[Ipv4Net]) -> Option<Want> {
    let (mode, tunnel) = if pool.vxlan.enabled() {
        (pool.vxlan, VXLAN_V4)
    } else if pool.ipip.enabled() {
        (pool.ipip, IPIP)
    } else {
        return Some(Want::Underlay);
    };
    match mode {
        EncapMode::CrossSubnet => {
            if subnets.is_empty() {
                return None;
            }
            let in_subnet = matches!(r.gateway, Some(IpAddr::V4(gw)) if subnets.iter().any(|s| s.contains(&gw)));
            Some(if in_subnet {
                Want::Underlay
            } else {
                Want::Tunnel(tunnel)
            })
        }
        _ => Some(Want::Tunnel(tunnel)),
    }
}

fn mode_name(pool: &PoolEncap) -> String {
    let name = |m: EncapMode| match m {
        EncapMode::Never => "Never",
        EncapMode::Always => "Always",
        EncapMode::CrossSubnet => "CrossSubnet",
    };
    if pool.vxlan.enabled() {
        format!("vxlanMode {}", name(pool.vxlan))
    } else if pool.ipip.enabled() {
        format!("ipipMode {}", name(pool.ipip))
    } else {
        "not encapsulated".into()
    }
}

/// The node's subnet as Felix sees it: the prefix of its `spec.bgp.ipv4Address`
/// (`nodeInOurSubnet`, reference §1.6); without the Node, the subnets the kernel routes as
/// directly connected on the node's own devices.
fn node_subnets(e: &Expected, obs: &ObservedDataplane) -> Vec<Ipv4Net> {
    if let Some(ip) = e.node_ip {
        return vec![ip.trunc()];
    }
    obs.routes
        .iter()
        .filter(|r| {
            r.table == TABLE_MAIN
                && r.kind == RouteType::Unicast
                && r.protocol == PROTO_KERNEL
                && r.gateway.is_none()
                && r.dev
                    .as_deref()
                    .is_some_and(|d| !is_workload_iface(d) && !TUNNEL_DEVICES.contains(&d))
        })
        .filter_map(|r| match r.destination {
            IpNet::V4(n) if n.prefix_len() < 32 => Some(n),
            _ => None,
        })
        .collect()
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
        let dst = IpNet::from(w.ip);
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
    let wanted: IndexSet<IpNet> = e.routes.iter().map(|x| x.destination).collect();
    // IPv6 routes are Felix's only where it handles IPv6 (`ipv6Support`, an IPv6 pool).
    let v6_expected = e.ipv6_expected();
    for r in obs.routes.iter().filter(|r| r.table == TABLE_MAIN) {
        if r.protocol == PROTO_KERNEL
            || !matches!(r.kind, RouteType::Unicast | RouteType::Blackhole)
            || r.dev.as_deref().is_some_and(is_workload_iface)
            || (r.destination.addr().is_ipv6() && !v6_expected)
        {
            continue;
        }
        let felix_owned =
            matches!(r.dev.as_deref(), Some(VXLAN_V4 | VXLAN_V6)) || (r.protocol == PROTO_CALICO);
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
    use crate::verify::testutil::{LAB_POOL, expected_from, healthy, ids, route_mut, run};

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

    fn wrong_device_only(v: &crate::verify::Verification) -> Vec<(CheckId, String)> {
        ids(v)
            .into_iter()
            .filter(|(c, _)| {
                matches!(
                    c,
                    CheckId::RouteWrongDevice
                        | CheckId::RouteWrongNexthop
                        | CheckId::RouteUnexpected
                )
            })
            .collect()
    }

    /// Issue 13 point 1: with only the pool, the healthy node's routes into it are judged by
    /// the pool's mode and found right; a stale one is not called unexpected (no blocks).
    #[test]
    fn pool_only_datastore_judges_routes_by_the_mode_and_calls_none_unexpected() {
        let (_, mut o) = healthy();
        let e = expected_from(LAB_POOL, Some("node-a"));
        let v = run(&e, &o);
        assert_eq!(wrong_device_only(&v), []);
        let mut stale = route_mut(&mut o, "10.244.1.0/26").clone();
        stale.destination = "10.244.7.0/26".parse().expect("net");
        o.routes.push(stale);
        let v = run(&e, &o);
        assert_eq!(wrong_device_only(&v), []);
        let not_run = v
            .skipped
            .iter()
            .find(|s| s.check == CheckId::RouteUnexpected)
            .expect("route.unexpected listed as not run");
        assert_eq!(not_run.kind, crate::verify::NotRun::NotInInput);
        assert_eq!(not_run.missing, "IPAMBlock, Node");
    }

    /// Always: a route into the pool must leave by the tunnel.
    #[test]
    fn pool_mode_always_wants_the_tunnel() {
        let (_, mut o) = healthy();
        let e = expected_from(LAB_POOL, None);
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.dev = Some("eth0".into());
        r.gateway = Some("10.99.0.12".parse().expect("ip"));
        let v = run(&e, &o);
        assert_eq!(
            wrong_device_only(&v),
            [(CheckId::RouteWrongDevice, "10.244.1.0/26".into())]
        );
        assert!(v.findings[0].expected.contains("vxlanMode Always"));
    }

    /// Never: the underlay; a route into the pool through a tunnel is wrong.
    #[test]
    fn pool_mode_never_wants_the_underlay() {
        let (_, mut o) = healthy();
        let never = LAB_POOL.replace("vxlanMode: Always", "vxlanMode: Never");
        let e = expected_from(&never, Some("node-a"));
        let v = run(&e, &o);
        assert_eq!(
            wrong_device_only(&v),
            [(CheckId::RouteWrongDevice, "10.244.1.0/26".into())]
        );
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.dev = Some("eth0".into());
        r.gateway = Some("10.99.0.12".parse().expect("ip"));
        assert_eq!(wrong_device_only(&run(&e, &o)), []);
    }

    /// CrossSubnet: the underlay to a next hop in the node's subnet, else the tunnel. The
    /// subnet is the connected route's when the Node is not in the input.
    #[test]
    fn pool_mode_cross_subnet_follows_the_next_hop() {
        let cross = LAB_POOL.replace("vxlanMode: Always", "vxlanMode: CrossSubnet");
        let e = expected_from(&cross, None);
        // Via the tunnel to a VTEP (not in the subnet): right.
        let (_, mut o) = healthy();
        assert_eq!(wrong_device_only(&run(&e, &o)), []);
        // Via the underlay to a node in the subnet: right.
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.dev = Some("eth0".into());
        r.gateway = Some("10.99.0.12".parse().expect("ip"));
        assert_eq!(wrong_device_only(&run(&e, &o)), []);
        // Via the underlay to a node in another subnet: needs the tunnel.
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.gateway = Some("10.98.0.12".parse().expect("ip"));
        assert_eq!(
            wrong_device_only(&run(&e, &o)),
            [(CheckId::RouteWrongDevice, "10.244.1.0/26".into())]
        );
        // IPIP CrossSubnet through tunl0 to a node in the subnet: should be the underlay.
        let ipip = LAB_POOL
            .replace("vxlanMode: Always", "vxlanMode: Never")
            .replace("ipipMode: Never", "ipipMode: CrossSubnet");
        let e = expected_from(&ipip, None);
        let r = route_mut(&mut o, "10.244.1.0/26");
        r.dev = Some("tunl0".into());
        r.gateway = Some("10.99.0.12".parse().expect("ip"));
        assert_eq!(
            wrong_device_only(&run(&e, &o)),
            [(CheckId::RouteWrongDevice, "10.244.1.0/26".into())]
        );
    }

    /// Issue 13 point 4: a borrowed remote tunnel address routed as Felix does it is quiet;
    /// routed via itself (the old expectation) it is the device route that is checked.
    #[test]
    fn borrowed_tunnel_address_device_route_is_quiet() {
        let (_, mut o) = healthy();
        let mut ds = crate::desired::Datastore::default();
        let lab = include_str!("testdata/datastore-lab.yaml");
        crate::desired::files::load_text(&mut ds, "lab.yaml", lab).expect("lab");
        crate::desired::files::load_text(
            &mut ds,
            "c.yaml",
            "apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-c}
spec: {bgp: {ipv4Address: 10.99.0.13/24}, ipv4VXLANTunnelAddr: 10.244.1.7}
",
        )
        .expect("node-c");
        let e = crate::desired::expected::compute(
            &ds,
            Some("node-a"),
            &crate::analysis::host_facts(&o),
        )
        .expect("expected");
        let mut route = route_mut(&mut o, "10.244.1.0/26").clone();
        route.destination = "10.244.1.7/32".parse().expect("net");
        route.gateway = None;
        route.scope = 253;
        route.onlink = false;
        o.routes.push(route);
        let v = run(&e, &o);
        let routes: Vec<_> = wrong_device_only(&v);
        assert_eq!(routes, [], "{:?}", v.findings);
        // Felix's shape is exactly that: a route via the tunnel address itself is drift.
        let r = route_mut(&mut o, "10.244.1.7/32");
        r.gateway = Some("10.244.1.7".parse().expect("ip"));
        assert_eq!(
            wrong_device_only(&run(&e, &o)),
            [(CheckId::RouteWrongNexthop, "10.244.1.7".into())]
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
