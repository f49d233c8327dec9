//! The lab, read back through `observed/`, must be exactly what the lab built; faults must
//! show up in what is read, and repairs must restore it.

use std::net::IpAddr;

use agent::{
    diag::{self, Mode},
    observed::{ObservedDataplane, PROTO_BOOT, RouteType, TABLE_MAIN, iptables::Backend},
};
use calico_conventions::PROTO_CALICO;
use integration_tests::{LabGuard, observe};
use xtask::lab::{
    Fault, NodeSpec,
    spec::{FAILSAFE_IN, FAILSAFE_OUT, VNI, VXLAN_DEV, VXLAN_MTU, VXLAN_PORT},
};

fn node_a(lab: &LabGuard) -> (&NodeSpec, &NodeSpec) {
    (&lab.0.spec.nodes[0], &lab.0.spec.nodes[1])
}

fn remote_route<'a>(
    obs: &'a ObservedDataplane,
    remote: &NodeSpec,
) -> Option<&'a agent::observed::Route> {
    obs.routes
        .iter()
        .find(|r| r.table == TABLE_MAIN && r.destination == remote.block.into())
}

#[test]
fn lab_is_read_back_exactly() {
    let lab = LabGuard::up("read");
    lab.0
        .check_connectivity()
        .expect("pods reach each other across the tunnel");
    let (node, remote) = node_a(&lab);
    let obs = observe(&node.netns, &node.name);
    // No Felix or BIRD runs in the lab: only their live services are not observable.
    assert!(
        obs.unavailable.iter().all(|u| u.kind.live_service()),
        "{:?}",
        obs.unavailable
    );
    assert_eq!(obs.node_name, "node-a");

    // vxlan.calico exactly as Felix creates it.
    let vx = obs.link(VXLAN_DEV).expect("vxlan.calico");
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mtu, VXLAN_MTU);
    assert!(vx.is_up());
    assert_eq!(vx.mac.as_deref(), Some(node.vtep_mac.as_str()));
    let info = vx.vxlan.as_ref().expect("vxlan details");
    assert_eq!(info.vni, Some(VNI));
    assert_eq!(info.port, Some(VXLAN_PORT));
    assert_eq!(info.local, Some(node.ip));
    assert_eq!(info.parent_name.as_deref(), Some("eth0"));
    assert!(!info.learning);
    let tunnel_addrs: Vec<String> = obs
        .addresses_of(VXLAN_DEV)
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(tunnel_addrs, [format!("{}/32", node.tunnel_ip)]);

    // Routes: local blackhole, remote block via the tunnel, one /32 per pod.
    let blackhole = obs
        .routes
        .iter()
        .find(|r| r.kind == RouteType::Blackhole)
        .expect("blackhole route");
    assert_eq!(blackhole.destination, node.block.into());
    assert_eq!(blackhole.protocol, PROTO_CALICO);
    let route = remote_route(&obs, remote).expect("remote block route");
    assert_eq!(route.gateway, Some(IpAddr::V4(remote.tunnel_ip)));
    assert_eq!(route.dev.as_deref(), Some(VXLAN_DEV));
    assert!(route.onlink);
    assert_eq!(route.mtu, Some(VXLAN_MTU));
    assert_eq!(route.protocol, PROTO_BOOT);
    for pod in &node.pods {
        let r = obs
            .routes
            .iter()
            .find(|r| r.destination == IpAddr::V4(pod.ip).into())
            .unwrap_or_else(|| panic!("route to {}", pod.ip));
        assert_eq!(
            (r.dev.as_deref(), r.metric, r.scope),
            (Some(pod.veth.as_str()), 1024, 253)
        );
        let veth = obs.link(&pod.veth).expect("workload veth");
        assert_eq!(veth.mtu, VXLAN_MTU);
        assert_eq!(veth.mac.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
        assert_eq!(obs.sysctls.proxy_arp.get(&pod.veth), Some(&1));
    }

    // Permanent FDB and ARP entries for the remote VTEP.
    let fdb: Vec<_> = obs.fdb.iter().filter(|f| f.dev == VXLAN_DEV).collect();
    assert_eq!(fdb.len(), 1, "{fdb:?}");
    assert_eq!(fdb[0].mac, remote.vtep_mac);
    assert_eq!(fdb[0].destination, Some(IpAddr::V4(remote.ip)));
    assert!(fdb[0].self_entry && fdb[0].is_permanent());
    let neigh = obs
        .neighbours
        .iter()
        .find(|n| n.dev == VXLAN_DEV && n.destination == IpAddr::V4(remote.tunnel_ip))
        .expect("ARP entry for the remote tunnel address");
    assert_eq!(neigh.lladdr.as_deref(), Some(remote.vtep_mac.as_str()));
    assert!(neigh.is_permanent());

    // Felix's chains in the nft backend of iptables, hooked and with every failsafe port.
    let nft = obs
        .iptables
        .iter()
        .find(|d| d.backend == Some(Backend::Nft) && d.family == 4)
        .expect("iptables-nft dump");
    assert!(nft.errors.is_empty(), "{:?}", nft.errors);
    let filter = nft.table("filter").expect("filter table");
    let jump = filter.rules_of("INPUT").next().expect("INPUT hook");
    assert_eq!(
        (jump.target.as_deref(), jump.felix_hash()),
        (Some("cali-INPUT"), Some("Cz_u1IQiXIMmKD4c"))
    );
    assert_eq!(
        filter.rules_of("cali-failsafe-in").count(),
        FAILSAFE_IN.len()
    );
    assert_eq!(
        filter.rules_of("cali-failsafe-out").count(),
        FAILSAFE_OUT.len()
    );
    assert!(
        obs.iptables
            .iter()
            .filter(|d| d.backend == Some(Backend::Legacy))
            .all(|d| d.felix_chain_count() == 0),
        "the lab writes only through iptables-nft"
    );
    assert_eq!(obs.sysctls.ip_forward, Some(1));

    // And the summary an operator sees.
    let d = diag::build(&obs);
    assert_eq!(d.modes, [Mode::Vxlan]);
    assert!(d.anomalies.is_empty(), "{:?}", d.anomalies);
    assert_eq!(d.routes.remote_via_tunnel.len(), 1);
    assert_eq!(d.routes.local_blackholes.len(), 1);
    assert_eq!(d.routes.workload.len(), node.pods.len());
    assert_eq!(d.rules_backend.as_deref(), Some("iptables-nft"));
}

#[test]
fn faults_show_up_and_repairs_restore() {
    let lab = LabGuard::up("fault");
    let (node, remote) = node_a(&lab);
    let read = || observe(&node.netns, &node.name);

    lab.0
        .fault(&node.name, Fault::RouteUnderlay)
        .expect("fault");
    let obs = read();
    let r = remote_route(&obs, remote).expect("route still there");
    assert_eq!(
        (r.dev.as_deref(), r.gateway),
        (Some("eth0"), Some(IpAddr::V4(remote.ip)))
    );

    lab.0.fault(&node.name, Fault::FdbFlush).expect("fault");
    lab.0.fault(&node.name, Fault::TunnelDown).expect("fault");
    lab.0.fault(&node.name, Fault::PodMtu).expect("fault");
    let obs = read();
    assert!(obs.fdb.iter().all(|f| f.dev != VXLAN_DEV));
    assert!(!obs.link(VXLAN_DEV).expect("vxlan.calico").is_up());
    assert_eq!(obs.link(&node.pods[0].veth).expect("veth").mtu, 1500);
    let d = diag::build(&obs);
    let tunnel = d
        .tunnels
        .iter()
        .find(|t| t.name == VXLAN_DEV)
        .expect("tunnel summary");
    assert!(!tunnel.up);

    lab.0.fault(&node.name, Fault::RouteDelete).expect("fault");
    lab.0
        .fault(&node.name, Fault::InputJumpDelete)
        .expect("fault");
    let obs = read();
    assert!(remote_route(&obs, remote).is_none());
    let filter = obs
        .iptables
        .iter()
        .find(|d| d.backend == Some(Backend::Nft))
        .and_then(|d| d.table("filter"))
        .expect("filter");
    assert!(
        filter
            .rules_of("INPUT")
            .all(|r| r.target.as_deref() != Some("cali-INPUT"))
    );

    lab.0.repair().expect("repair");
    let obs = read();
    let r = remote_route(&obs, remote).expect("route back");
    assert_eq!(r.dev.as_deref(), Some(VXLAN_DEV));
    assert_eq!(obs.fdb.iter().filter(|f| f.dev == VXLAN_DEV).count(), 1);
    assert!(obs.link(VXLAN_DEV).expect("vxlan.calico").is_up());
    assert_eq!(obs.link(&node.pods[0].veth).expect("veth").mtu, VXLAN_MTU);
    assert!(diag::build(&obs).anomalies.is_empty());
    lab.0
        .check_connectivity()
        .expect("connectivity after repair");
}
