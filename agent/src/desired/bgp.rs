//! The BGP sessions calico-node's BIRD should have on one node, and the routes it programs,
//! computed the way confd renders `bird.cfg` (shared/reference/calico-dataplane.md §10;
//! `confd/pkg/backends/calico/client.go` `updatePeersV1`, `nodeAsBGPPeers`,
//! `nodesWithIPPortAndAS`; `confd/pkg/backends/calico/bgp_processor.go` `processMeshPeers`,
//! `buildPeerFromData`; template `node/filesystem/etc/calico/confd/templates/bird.cfg.template`).
//!
//! Both families, each computed the same way from its own node addresses: confd renders
//! `bird.cfg` and `bird6.cfg` with `GetBirdBGPConfig(4)` / `(6)`, whose `processMeshPeers`
//! takes each host's `ip_addr_v4` or `ip_addr_v6` (`Node.spec.bgp.ipv4Address` /
//! `ipv6Address`), names the protocol `Mesh_<ip>` with `.` or `:` replaced by `_`, and whose
//! `processGlobalPeers`/`processNodePeers` read `peer_v4` or `peer_v6` (BGPPeers by the family
//! of their peerIP; a peerSelector yields both of the selected node's addresses,
//! `client.go` `nodeAsBGPPeers(name, true, true, …)`). `bird6.cfg.template` renders no peers
//! at all when this node has no IPv6 address ("IPv6 disabled on this node"), as
//! `bird.cfg.template` does without IPv4. The AS rules are the same for both.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

pub use crate::observed::bird::Family;

use super::{
    BgpPeerObject, Datastore, Node, parse_as_number,
    selector::{Selector, SelectorError},
};

/// confd's default when no BGPConfiguration sets one (`client.go` `globalDefaults`).
pub const DEFAULT_AS: u32 = 64512;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExpectedBgp {
    /// This node's AS: its `spec.bgp.asNumber`, else BGPConfiguration `default`'s, else 64512.
    pub as_number: u32,
    /// `nodeToNodeMeshEnabled` (default true), and this node not a route reflector.
    pub mesh: bool,
    pub sessions: Vec<ExpectedSession>,
    /// Why the list may lack sessions BIRD legitimately has (a selector that could not be
    /// parsed, peers of local workloads): a session BIRD has beyond the list is then only
    /// `info`.
    pub incomplete: Vec<String>,
    /// Remote blocks whose routes BIRD programs (learned over BGP), with the session they
    /// are learned from when the mesh provides one.
    pub learned: Vec<LearnedBlock>,
    /// Whether BIRD (its `static` protocol, `bird_aggr.cfg`) programs this node's local
    /// IPv4 blackholes, rather than Felix.
    pub bird_blackholes: bool,
    /// The same for `bird6` and the IPv6 blocks (`bird6_aggr.cfg`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bird6_blackholes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedSession {
    /// BIRD's protocol name: `Mesh_10_99_0_12`, `Node_…`, `Global_…[_port_<n>]`.
    pub name: String,
    pub peer_ip: IpAddr,
    pub kind: SessionKind,
    pub peer_as: u32,
    pub local_as: u32,
    /// The Calico node at the other end, when the peer is one.
    pub node: Option<String>,
    /// Where the session comes from: `node-to-node mesh`, `BGPPeer rack-tor`, or
    /// `BGPPeer rack-tor (reverse peering)`.
    pub source: String,
}

impl ExpectedSession {
    /// Which BIRD holds the session: `bird6` for an IPv6 peer.
    pub fn family(&self) -> Family {
        Family::of(self.peer_ip)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SessionKind {
    Mesh,
    Node,
    Global,
}

impl SessionKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Mesh => "Mesh",
            Self::Node => "Node",
            Self::Global => "Global",
        }
    }
}

/// A remote block BIRD programs: an IPv4 /26 learned by `bird` via the owner's IPv4 address,
/// or an IPv6 /122 learned by `bird6` via its IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LearnedBlock {
    pub block: IpNet,
    pub node: String,
    pub gateway: IpAddr,
    pub session: Option<String>,
}

impl ExpectedBgp {
    pub fn session(&self, name: &str) -> Option<&ExpectedSession> {
        self.sessions.iter().find(|s| s.name == name)
    }

    /// The sessions `family`'s BIRD should have.
    pub fn sessions_of(&self, family: Family) -> impl Iterator<Item = &ExpectedSession> {
        self.sessions.iter().filter(move |s| s.family() == family)
    }

    /// Whether `family`'s BIRD programs this node's local blackholes.
    pub fn blackholes_by_bird(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.bird_blackholes,
            Family::V6 => self.bird6_blackholes,
        }
    }
}

impl Family {
    /// A node's address in this family (`spec.bgp.ipv4Address`/`ipv6Address`, no prefix): what
    /// confd stores as `ip_addr_v4`/`ip_addr_v6`.
    pub fn node_ip(self, n: &Node) -> Option<IpAddr> {
        match self {
            Self::V4 => n.ipv4.map(|i| IpAddr::V4(i.addr())),
            Self::V6 => n.ipv6.map(|i| IpAddr::V6(i.addr())),
        }
    }
}

/// A peering as confd keys it (`model.GlobalBGPPeerKey`/`NodeBGPPeerKey`: IP and port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    global: bool,
    ip: IpAddr,
    port: u16,
}

#[derive(Debug, Clone)]
struct Peering {
    peer_as: u32,
    local_as: Option<u32>,
    node: Option<String>,
    source: String,
}

struct Ctx<'a> {
    ds: &'a Datastore,
    global_as: u32,
    global_port: Option<u16>,
    incomplete: Vec<String>,
}

impl<'a> Ctx<'a> {
    fn node_as(&self, n: &Node) -> u32 {
        n.as_number.unwrap_or(self.global_as)
    }

    /// A node's BGP listen port: BGPConfiguration `node.<name>`, else `default`'s.
    fn listen_port(&self, n: &str) -> Option<u16> {
        self.ds
            .bgp_configs
            .get(&format!("node.{n}"))
            .and_then(|c| c.listen_port)
            .or(self.global_port)
    }

    fn select(&mut self, peer: &BgpPeerObject, field: &str, sel: &str) -> Vec<&'a Node> {
        let ds = self.ds;
        match Selector::parse(sel) {
            Ok(s) => ds.nodes.iter().filter(|n| s.matches(&n.labels)).collect(),
            Err(SelectorError { message, .. }) => {
                self.incomplete.push(format!(
                    "BGPPeer {}: {field} {sel:?} not understood ({message}): the nodes it selects are unknown",
                    peer.name
                ));
                Vec::new()
            }
        }
    }

    /// The local side of a peering: `nodeSelector`, `node`, or none (a global peering).
    fn local_nodes(&mut self, p: &BgpPeerObject) -> Option<Vec<String>> {
        if let Some(sel) = nonempty(&p.spec.node_selector) {
            return Some(
                self.select(p, "nodeSelector", sel)
                    .iter()
                    .map(|n| n.name.clone())
                    .collect(),
            );
        }
        nonempty(&p.spec.node).map(|n| vec![n.to_string()])
    }

    /// The remote side in `family`: the `family` address of each node `peerSelector` matches,
    /// or `peerIP` (`nodeAsBGPPeers`, and the peerIP branch of `updatePeersV1`; a peerIP of
    /// the other family is filtered out by the caller).
    fn remote_peers(&mut self, p: &BgpPeerObject, family: Family) -> Vec<(Key, Peering)> {
        let source = format!("BGPPeer {}", p.name);
        let local_as = p
            .spec
            .local_as_number
            .as_ref()
            .and_then(|v| parse_as_number(v).ok());
        if let Some(sel) = nonempty(&p.spec.peer_selector) {
            let nodes: Vec<(String, Option<IpAddr>, u32)> = self
                .select(p, "peerSelector", sel)
                .iter()
                .map(|n| (n.name.clone(), family.node_ip(n), self.node_as(n)))
                .collect();
            return nodes
                .into_iter()
                .filter_map(|(name, ip, peer_as)| {
                    let key = Key {
                        global: false,
                        ip: ip?,
                        port: self.listen_port(&name).unwrap_or(0),
                    };
                    Some((
                        key,
                        Peering {
                            peer_as,
                            local_as,
                            node: Some(name),
                            source: source.clone(),
                        },
                    ))
                })
                .collect();
        }
        let Some(raw) = nonempty(&p.spec.peer_ip) else {
            self.incomplete.push(format!(
                "BGPPeer {}: neither peerIP nor peerSelector: confd ignores it",
                p.name
            ));
            return Vec::new();
        };
        let (host, mut port) = split_host_port(raw);
        let Ok(ip) = host.parse::<IpAddr>() else {
            self.incomplete.push(format!(
                "BGPPeer {}: peerIP {raw:?} is not an address: confd ignores it",
                p.name
            ));
            return Vec::new();
        };
        let peer_as = self.peer_as(p);
        let calico = self.nodes_with_ip_and_as(ip, peer_as, port);
        // No port given: a Calico node listens where its BGPConfiguration says.
        if port == 0
            && let Some(n) = calico.first()
        {
            port = self.listen_port(n).unwrap_or(0);
        }
        vec![(
            Key {
                global: false,
                ip,
                port,
            },
            Peering {
                peer_as,
                local_as,
                node: calico.first().cloned(),
                source,
            },
        )]
    }

    fn peer_as(&self, p: &BgpPeerObject) -> u32 {
        p.spec
            .as_number
            .as_ref()
            .and_then(|v| parse_as_number(v).ok())
            .filter(|a| *a != 0)
            .unwrap_or(self.global_as)
    }

    /// `nodesWithIPPortAndAS`: Calico nodes with this IP (of its family) and AS (and listen
    /// port, if given).
    fn nodes_with_ip_and_as(&self, ip: IpAddr, peer_as: u32, port: u16) -> Vec<String> {
        self.ds
            .nodes
            .iter()
            .filter(|n| Family::of(ip).node_ip(n) == Some(ip))
            .filter(|n| self.node_as(n) == peer_as)
            .filter(|n| port == 0 || self.listen_port(&n.name).is_none_or(|p| p == port))
            .map(|n| n.name.clone())
            .collect()
    }
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `<ip>:<port>` or `[<v6>]:<port>` (Go's `net.SplitHostPort`), else the address alone.
fn split_host_port(s: &str) -> (&str, u16) {
    let split = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:")
    } else if s.matches(':').count() == 1 {
        s.split_once(':')
    } else {
        None
    };
    match split.and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h, p))) {
        Some((h, p)) => (h, p),
        None => (s, 0),
    }
}

/// BIRD's protocol name for a peering (`bgp_processor.go` `buildPeerFromData`).
pub fn protocol_name(kind: SessionKind, ip: IpAddr, port: u16) -> String {
    let ip = match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "_"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "_"),
    };
    let mut name = format!("{}_{ip}", kind.prefix());
    if port > 0 && kind != SessionKind::Mesh {
        name.push_str(&format!("_port_{port}"));
    }
    name
}

/// Computes the sessions and BIRD-programmed routes for `node` (which must be in `ds`).
pub fn compute(ds: &Datastore, me: &Node) -> ExpectedBgp {
    let global = ds.bgp_configs.get("default");
    let global_as = global
        .and_then(|c| c.as_number.as_ref())
        .and_then(|v| parse_as_number(v).ok())
        .unwrap_or(DEFAULT_AS);
    let mut ctx = Ctx {
        ds,
        global_as,
        global_port: global.and_then(|c| c.listen_port),
        incomplete: Vec::new(),
    };
    let my_as = ctx.node_as(me);
    let mesh = global
        .and_then(|c| c.node_to_node_mesh_enabled)
        .unwrap_or(true)
        && me.rr_cluster_id.is_none();
    let mut out = ExpectedBgp {
        as_number: my_as,
        mesh,
        ..Default::default()
    };
    for family in Family::ALL {
        // bird.cfg.template / bird6.cfg.template: "IPv4 (IPv6) disabled on this node", no
        // peers of that family at all.
        let Some(my_ip) = family.node_ip(me) else {
            continue;
        };
        let mut sessions = Vec::new();
        if mesh {
            for n in ds.nodes.iter().filter(|n| n.name != me.name) {
                let Some(ip) = family.node_ip(n).filter(|ip| *ip != my_ip) else {
                    continue;
                };
                if n.rr_cluster_id.is_some() {
                    continue;
                }
                sessions.push(ExpectedSession {
                    name: protocol_name(SessionKind::Mesh, ip, 0),
                    peer_ip: ip,
                    kind: SessionKind::Mesh,
                    peer_as: ctx.node_as(n),
                    local_as: my_as,
                    node: Some(n.name.clone()),
                    source: "node-to-node mesh".into(),
                });
            }
        }
        for (key, p) in peerings(&mut ctx, me, family) {
            // buildPeerFromData: never a session to ourselves; `peer_v4`/`peer_v6` hold the
            // peers of one family each.
            if key.ip == my_ip || Family::of(key.ip) != family {
                continue;
            }
            let kind = if key.global {
                SessionKind::Global
            } else {
                SessionKind::Node
            };
            sessions.push(ExpectedSession {
                name: protocol_name(kind, key.ip, key.port),
                peer_ip: key.ip,
                kind,
                peer_as: p.peer_as,
                local_as: p.local_as.unwrap_or(my_as),
                node: p.node,
                source: p.source,
            });
        }
        sessions.sort_by(|a, b| a.name.cmp(&b.name));
        let (learned, blackholes) = bird_routes(ds, me, family, &sessions);
        out.sessions.extend(sessions);
        out.learned.extend(learned);
        match family {
            Family::V4 => out.bird_blackholes = blackholes,
            Family::V6 => out.bird6_blackholes = blackholes,
        }
    }
    let mut incomplete = ctx.incomplete;
    incomplete.sort();
    incomplete.dedup();
    out.incomplete = incomplete;
    out
}

/// The peerings confd emits that concern `me` in `family`: every global one, and the
/// node-specific ones (forward, then automatic reverse) keyed to `me`. The first emitted for a
/// key wins, and a node-specific one is dropped where a global one has the same IP and port.
fn peerings(ctx: &mut Ctx<'_>, me: &Node, family: Family) -> BTreeMap<Key, Peering> {
    let mut out: BTreeMap<Key, Peering> = BTreeMap::new();
    let emit = |out: &mut BTreeMap<Key, Peering>, key: Key, p: Peering| {
        let global_twin = Key {
            global: true,
            ..key.clone()
        };
        if !out.contains_key(&key) && (key.global || !out.contains_key(&global_twin)) {
            out.insert(key, p);
        }
    };
    let peers = ctx.ds.bgp_peers.clone();
    for global_pass in [true, false] {
        for p in &peers {
            let is_global =
                nonempty(&p.spec.node_selector).is_none() && nonempty(&p.spec.node).is_none();
            if is_global != global_pass {
                continue;
            }
            if nonempty(&p.spec.local_workload_selector).is_some() {
                ctx.incomplete.push(format!(
                    "BGPPeer {}: peers with local workloads (Local_Workload_… sessions) are not computed",
                    p.name
                ));
                continue;
            }
            if !global_pass {
                let local = ctx.local_nodes(p).unwrap_or_default();
                if !local.contains(&me.name) {
                    continue;
                }
            }
            for (mut key, peering) in ctx.remote_peers(p, family) {
                key.global = global_pass;
                emit(&mut out, key, peering);
            }
        }
    }
    // Reverse peerings (unless `reversePeering: Manual`): where `me` is the remote side of a
    // BGPPeer, it peers back with that peer's local nodes: over both families when a
    // peerSelector chose `me`, over the peerIP's family only otherwise (`updatePeersV1`'s
    // `includeV4`/`includeV6`).
    for p in &peers {
        if p.spec.reverse_peering.as_deref() == Some("Manual")
            || nonempty(&p.spec.local_workload_selector).is_some()
        {
            continue;
        }
        let i_am_remote = if let Some(sel) = nonempty(&p.spec.peer_selector) {
            ctx.select(p, "peerSelector", sel)
                .iter()
                .any(|n| n.name == me.name)
        } else if let Some(raw) = nonempty(&p.spec.peer_ip) {
            let (host, port) = split_host_port(raw);
            host.parse::<IpAddr>().is_ok_and(|ip| {
                if Family::of(ip) != family {
                    return false;
                }
                let peer_as = ctx.peer_as(p);
                ctx.nodes_with_ip_and_as(ip, peer_as, port)
                    .contains(&me.name)
            })
        } else {
            false
        };
        if !i_am_remote {
            continue;
        }
        let locals: Vec<String> = match ctx.local_nodes(p) {
            Some(names) => names,
            None => ctx.ds.nodes.iter().map(|n| n.name.clone()).collect(),
        };
        for name in locals {
            let Some(n) = ctx.ds.node(&name) else {
                continue;
            };
            let Some(ip) = family.node_ip(n) else {
                continue;
            };
            let key = Key {
                global: false,
                ip,
                port: ctx.listen_port(&name).unwrap_or(0),
            };
            let peering = Peering {
                peer_as: ctx.node_as(n),
                local_as: None,
                node: Some(name.clone()),
                source: format!("BGPPeer {} (reverse peering)", p.name),
            };
            emit(&mut out, key, peering);
        }
    }
    out
}

/// Which routes BIRD programs here: remote blocks of no-encap pools (and IPIP pools, through
/// `tunl0`) unless Felix owns those cluster routes (FelixConfiguration `programClusterRoutes`,
/// calico-dataplane.md §1.7–1.8: Felix-owned values are `Enabled`, `EnabledNoEncapOnly`,
/// `EnabledIPIPOnly`; unset means BIRD in every released version), and this node's
/// blackholes for those pools (`bird_aggr.cfg.template`: `route <block> blackhole;`). Per
/// family: `bird6` does the same for IPv6 blocks (`bird6_aggr.cfg.template`,
/// `bird6_ipam.cfg.template`), learning them via the owner's IPv6 address.
fn bird_routes(
    ds: &Datastore,
    me: &Node,
    family: Family,
    sessions: &[ExpectedSession],
) -> (Vec<LearnedBlock>, bool) {
    let felix_owns = ds.felix_config(&me.name).program_cluster_routes;
    let bird_owns = |p: &super::Pool| {
        if p.vxlan.enabled() {
            return false;
        }
        let felix = match felix_owns.as_deref() {
            Some("Enabled") => true,
            Some("EnabledNoEncapOnly") => !p.ipip.enabled(),
            Some("EnabledIPIPOnly") => p.ipip.enabled(),
            _ => false,
        };
        !felix
    };
    let mut learned = Vec::new();
    let mut blackholes = false;
    for b in ds.blocks.iter().filter(|b| !b.deleted) {
        let cidr = b.cidr;
        let Some(owner) = b.affinity.as_deref() else {
            continue;
        };
        if Family::of(cidr.addr()) != family {
            continue;
        }
        if ds
            .pool_for(&b.cidr)
            .is_none_or(|p| !p.routes_workloads() || !bird_owns(p))
        {
            continue;
        }
        if owner == me.name {
            blackholes = true;
            continue;
        }
        let Some(gateway) = ds.node(owner).and_then(|n| family.node_ip(n)) else {
            continue;
        };
        learned.push(LearnedBlock {
            block: cidr,
            node: owner.to_string(),
            gateway,
            session: sessions
                .iter()
                .find(|s| s.node.as_deref() == Some(owner))
                .map(|s| s.name.clone()),
        });
    }
    (learned, blackholes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::files::load_text;

    fn ds(extra: &str) -> Datastore {
        let mut ds = Datastore::default();
        let text = format!("{NODES}{extra}");
        load_text(&mut ds, "t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        ds
    }

    /// Three nodes in racks, one with its own AS, and a no-encap pool with a block each.
    const NODES: &str = "
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 10.244.0.0/16, vxlanMode: Never, ipipMode: Never}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: a, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: b, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.2/24, asNumber: 64600}}
---
apiVersion: v1
kind: Node
metadata:
  name: c
  labels: {rack: r2}
  annotations: {projectcalico.org/IPv4Address: 10.0.0.3/24}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b-a}
spec: {cidr: 10.244.0.0/26, affinity: 'host:a'}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b-b}
spec: {cidr: 10.244.1.0/26, affinity: 'host:b'}
";

    fn sessions(ds: &Datastore, node: &str) -> Vec<(String, u32, String)> {
        let me = ds.node(node).expect("node");
        compute(ds, me)
            .sessions
            .into_iter()
            .map(|s| (s.name, s.peer_as, s.source))
            .collect()
    }

    fn names(ds: &Datastore, node: &str) -> Vec<String> {
        sessions(ds, node).into_iter().map(|s| s.0).collect()
    }

    #[test]
    fn full_mesh_by_default_with_each_node_as() {
        let ds = ds("");
        assert_eq!(
            sessions(&ds, "a"),
            [
                ("Mesh_10_0_0_2".into(), 64600, "node-to-node mesh".into()),
                ("Mesh_10_0_0_3".into(), 64512, "node-to-node mesh".into()),
            ]
        );
        let e = compute(&ds, ds.node("b").expect("b"));
        assert_eq!(e.as_number, 64600);
        assert!(e.bird_blackholes);
        assert_eq!(
            e.learned
                .iter()
                .map(|l| (l.block.to_string(), l.session.clone()))
                .collect::<Vec<_>>(),
            [(
                "10.244.0.0/26".to_string(),
                Some("Mesh_10_0_0_1".to_string())
            )]
        );
    }

    #[test]
    fn configuration_sets_the_as_and_turns_the_mesh_off() {
        let ds = ds("---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 65001, nodeToNodeMeshEnabled: false}
");
        let me = ds.node("a").expect("a");
        let e = compute(&ds, me);
        assert_eq!((e.as_number, e.mesh), (65001, false));
        assert!(e.sessions.is_empty());
        // The Node's own asNumber still wins.
        assert_eq!(compute(&ds, ds.node("b").expect("b")).as_number, 64600);
    }

    #[test]
    fn route_reflectors_leave_the_mesh() {
        let ds = ds("").clone();
        let mut ds2 = ds.clone();
        if let Some(n) = ds2.nodes.iter_mut().find(|n| n.name == "c") {
            n.rr_cluster_id = Some("1.0.0.1".into());
        }
        assert_eq!(names(&ds2, "a"), ["Mesh_10_0_0_2"]);
        assert!(names(&ds2, "c").is_empty());
    }

    #[test]
    fn global_node_and_selector_peers() {
        let ds = ds("---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1, asNumber: 65000}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: rack1-rr}
spec: {nodeSelector: rack == 'r1', peerIP: '192.0.2.9:1790', asNumber: 65009}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: only-c}
spec: {node: c, peerIP: 192.0.2.5, asNumber: 65005}
");
        assert_eq!(
            names(&ds, "a"),
            [
                "Global_192_0_2_1",
                "Mesh_10_0_0_2",
                "Mesh_10_0_0_3",
                "Node_192_0_2_9_port_1790"
            ]
        );
        assert_eq!(
            names(&ds, "c"),
            [
                "Global_192_0_2_1",
                "Mesh_10_0_0_1",
                "Mesh_10_0_0_2",
                "Node_192_0_2_5"
            ]
        );
        let tor = sessions(&ds, "c")
            .into_iter()
            .find(|s| s.0 == "Global_192_0_2_1");
        assert_eq!(tor.map(|t| (t.1, t.2)), Some((65000, "BGPPeer tor".into())));
    }

    #[test]
    fn peer_selector_peers_and_reverse_peerings() {
        // Rack r2's nodes peer with rack r1's: r1 gets the reverse sessions automatically.
        let ds = ds("---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: r2-to-r1}
spec: {nodeSelector: rack == 'r2', peerSelector: rack == 'r1'}
");
        assert_eq!(names(&ds, "c"), ["Node_10_0_0_1", "Node_10_0_0_2"]);
        let back = sessions(&ds, "b");
        assert_eq!(
            back,
            [(
                "Node_10_0_0_3".into(),
                64512,
                "BGPPeer r2-to-r1 (reverse peering)".into()
            )]
        );
        // Manual reverse peering: only the forward side.
        let mut manual = ds.clone();
        manual.bgp_peers[0].spec.reverse_peering = Some("Manual".into());
        assert!(names(&manual, "b").is_empty());
        assert_eq!(names(&manual, "c").len(), 2);
    }

    #[test]
    fn a_peer_ip_that_is_a_calico_node_gets_its_reverse_peering() {
        let ds = ds("---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: a-to-b}
spec: {node: a, peerIP: 10.0.0.2, asNumber: 64600}
");
        assert_eq!(
            sessions(&ds, "a"),
            [("Node_10_0_0_2".into(), 64600, "BGPPeer a-to-b".into())]
        );
        assert_eq!(names(&ds, "b"), ["Node_10_0_0_1"]);
        // The wrong AS: b is no longer recognised as the peer, so no reverse session on b.
        let mut wrong = ds.clone();
        wrong.bgp_peers[0].spec.as_number = Some(serde_json::json!(64999));
        assert_eq!(sessions(&wrong, "a")[0].1, 64999);
        assert!(names(&wrong, "b").is_empty());
    }

    #[test]
    fn an_unparseable_selector_makes_the_list_incomplete_not_wrong() {
        let ds = ds("---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: odd}
spec: {nodeSelector: rack === 'r1', peerIP: 192.0.2.1, asNumber: 65000}
");
        let e = compute(&ds, ds.node("a").expect("a"));
        assert_eq!(e.sessions.len(), 2);
        assert!(
            e.incomplete[0].contains("BGPPeer odd: nodeSelector"),
            "{:?}",
            e.incomplete
        );
    }

    #[test]
    fn felix_owned_or_vxlan_routes_are_not_birds() {
        let ds = ds("---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {programClusterRoutes: Enabled}
");
        let e = compute(&ds, ds.node("a").expect("a"));
        assert!(e.learned.is_empty() && !e.bird_blackholes);
    }

    /// Nodes a and b dual stack (b in its own AS), c IPv4 only; a no-encap IPv6 pool with a
    /// block each for a and b.
    const DUAL: &str = "
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p6}
spec: {cidr: 'fd00:244::/64', vxlanMode: Never, ipipMode: Never}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: a, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.1/24, ipv6Address: 'fd00::1/64'}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: b, labels: {rack: r1}}
spec: {bgp: {ipv4Address: 10.0.0.2/24, ipv6Address: 'fd00::2/64', asNumber: 64600}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: c, labels: {rack: r2}}
spec: {bgp: {ipv4Address: 10.0.0.3/24}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b6-a}
spec: {cidr: 'fd00:244::/122', affinity: 'host:a'}
---
apiVersion: crd.projectcalico.org/v1
kind: IPAMBlock
metadata: {name: b6-b}
spec: {cidr: 'fd00:244::40/122', affinity: 'host:b'}
";

    fn dual(extra: &str) -> Datastore {
        let mut ds = Datastore::default();
        load_text(&mut ds, "t.yaml", &format!("{DUAL}{extra}")).unwrap_or_else(|e| panic!("{e}"));
        ds
    }

    #[test]
    fn bird6_meshes_over_ipv6_addresses_only_where_this_node_has_one() {
        let ds = dual("");
        let e = compute(&ds, ds.node("a").expect("a"));
        let v6: Vec<(&str, &str, u32)> = e
            .sessions_of(Family::V6)
            .map(|s| (s.name.as_str(), s.source.as_str(), s.peer_as))
            .collect();
        // c has no IPv6 address: no IPv6 session to it, and none of its own.
        assert_eq!(v6, [("Mesh_fd00__2", "node-to-node mesh", 64600)]);
        assert_eq!(e.sessions_of(Family::V4).count(), 2);
        assert_eq!(
            e.session("Mesh_fd00__2").map(|s| s.peer_ip.to_string()),
            Some("fd00::2".into())
        );
        let c = compute(&ds, ds.node("c").expect("c"));
        assert_eq!(c.sessions_of(Family::V6).count(), 0);
        assert_eq!(c.sessions_of(Family::V4).count(), 2);
        // bird6 learns b's /122 via b's IPv6 address, and blackholes a's own.
        assert!(e.bird6_blackholes && !e.bird_blackholes);
        assert_eq!(
            e.learned
                .iter()
                .map(|l| (
                    l.block.to_string(),
                    l.gateway.to_string(),
                    l.session.clone()
                ))
                .collect::<Vec<_>>(),
            [(
                "fd00:244::40/122".to_string(),
                "fd00::2".to_string(),
                Some("Mesh_fd00__2".to_string())
            )]
        );
        // The mesh off: no IPv6 mesh either.
        let off = dual(
            "---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
",
        );
        assert!(compute(&off, off.node("a").expect("a")).sessions.is_empty());
    }

    #[test]
    fn ipv6_bgp_peers_by_the_family_of_their_peer_ip_and_selected_nodes_addresses() {
        let ds = dual(
            "---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor6}
spec: {peerIP: 'fd00::ff', asNumber: 65000}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor6-port}
spec: {node: a, peerIP: '[fd00::fe]:1790', asNumber: 65001}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: r2-to-r1}
spec: {nodeSelector: rack == 'r2', peerSelector: rack == 'r1'}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: a-to-b6}
spec: {node: a, peerIP: 'fd00::2', asNumber: 64600}
",
        );
        // IPv4 sessions first, then IPv6 ones, each by name.
        // a: the global IPv6 peer, its own v6 peer with a port, b by its IPv6 address (whose
        // reverse peering is IPv6 only), and the reverse of c's selector peering over IPv4
        // only (c has no IPv6 address).
        assert_eq!(
            names(&ds, "a"),
            [
                "Node_10_0_0_3",
                "Global_fd00__ff",
                "Node_fd00__2",
                "Node_fd00__fe_port_1790"
            ]
        );
        // b: the global peer, and the reverse of a-to-b6 over IPv6 (same family as its
        // peerIP) and of c's selector over IPv4.
        assert_eq!(
            names(&ds, "b"),
            ["Node_10_0_0_3", "Global_fd00__ff", "Node_fd00__1"]
        );
        // c has no IPv6 address: bird6 has nothing; the selector peers it over IPv4 only.
        assert_eq!(names(&ds, "c"), ["Node_10_0_0_1", "Node_10_0_0_2"]);
        let tor = compute(&ds, ds.node("b").expect("b"));
        let tor = tor.session("Global_fd00__ff").expect("tor6");
        assert_eq!((tor.peer_as, tor.local_as), (65000, 64600));
        assert_eq!(tor.family(), Family::V6);
    }
}
