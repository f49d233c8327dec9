//! Which Node of the datastore the observed dataplane belongs to. A wrong `--node-name` (an
//! FQDN for a short name, another node's name) makes every expected value someone else's and
//! every check fire: one line naming the slip is worth more than that storm.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

use super::{Datastore, Node, expected};
use crate::observed::{ObservedDataplane, RouteType, TABLE_LOCAL};

/// The dataplane carries another node's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityMismatch {
    /// The node name the agent was given (or resolved).
    pub named: String,
    /// The datastore Node whose addresses and MAC the dataplane holds.
    pub looks_like: String,
    /// What matched, e.g. `vxlan.calico MAC 66:07:02:c1:cc:60`.
    pub evidence: Vec<String>,
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this node looks like {}; --node-name says {}",
            self.looks_like, self.named
        )
    }
}

/// What the dataplane holds that could name a node, indexed once: a scan of every block and
/// route per Node is 10^8 steps at 5,000 nodes.
struct Clues<'a> {
    /// The addresses the node holds, with their devices: `ip addr`, and what routes show of
    /// them when only `ip route` was captured (the `src` of connected routes, the local table).
    held: HashSet<(IpAddr, &'a str)>,
    held_anywhere: HashMap<IpAddr, &'a str>,
    blackholes: HashSet<IpNet>,
    blocks_of: HashMap<&'a str, Vec<IpNet>>,
    vxlan_mac: Option<&'a str>,
}

impl<'a> Clues<'a> {
    fn new(ds: &'a Datastore, obs: &'a ObservedDataplane) -> Self {
        let mut held: Vec<(IpAddr, &str)> = obs
            .addresses
            .iter()
            .map(|a| (a.address.addr(), a.ifname.as_str()))
            .collect();
        for r in &obs.routes {
            let Some(dev) = r.dev.as_deref() else {
                continue;
            };
            if r.kind == RouteType::Local && r.table == TABLE_LOCAL {
                held.push((r.destination.addr(), dev));
            }
            if let Some(src) = r.prefsrc {
                held.push((src, dev));
            }
        }
        // The first device in address order, as the listing names it.
        held.sort_unstable();
        let mut held_anywhere = HashMap::new();
        for (ip, dev) in &held {
            held_anywhere.entry(*ip).or_insert(*dev);
        }
        let mut blocks_of: HashMap<&str, Vec<IpNet>> = HashMap::new();
        for b in ds.blocks.iter().filter(|b| !b.deleted) {
            if let Some(owner) = b.affinity.as_deref() {
                blocks_of.entry(owner).or_default().push(b.cidr);
            }
        }
        Self {
            held: held.into_iter().collect(),
            held_anywhere,
            blackholes: obs
                .routes
                .iter()
                .filter(|r| r.kind == RouteType::Blackhole)
                .map(|r| r.destination)
                .collect(),
            blocks_of,
            vxlan_mac: obs.link(expected::VXLAN_DEV).and_then(|l| l.mac.as_deref()),
        }
    }

    /// What of `node`'s identity the dataplane holds.
    fn evidence(&self, node: &Node) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(ip) = node.ipv4.map(|n| IpAddr::V4(n.addr()))
            && let Some(dev) = self.held_anywhere.get(&ip)
        {
            out.push(format!("node IP {ip} on {dev}"));
        }
        for (dev, ip) in [
            (expected::VXLAN_DEV, node.ipv4_vxlan_tunnel),
            (expected::IPIP_DEV, node.ipv4_ipip_tunnel),
            (expected::WIREGUARD_DEV, node.wireguard_ipv4),
        ] {
            if let Some(ip) = ip.map(IpAddr::V4)
                && self.held.contains(&(ip, dev))
            {
                out.push(format!("{dev} address {ip}"));
            }
        }
        // Felix blackholes the blocks affine to its own node (reference §1.4).
        for cidr in self.blocks_of.get(node.name.as_str()).into_iter().flatten() {
            if self.blackholes.contains(cidr) {
                out.push(format!("blackhole for its block {cidr}"));
            }
        }
        let mac = node
            .vxlan_mac
            .clone()
            .unwrap_or_else(|| expected::vtep_mac(&node.name));
        if let Some(seen) = self.vxlan_mac.filter(|m| m.eq_ignore_ascii_case(&mac)) {
            out.push(format!("{} MAC {seen}", expected::VXLAN_DEV));
        }
        out
    }
}

/// `Some` when another Node's identity matches the dataplane better than `named`'s does.
pub fn check(ds: &Datastore, named: &str, obs: &ObservedDataplane) -> Option<IdentityMismatch> {
    let clues = Clues::new(ds, obs);
    let own = ds.node(named).map_or(0, |n| clues.evidence(n).len());
    ds.nodes
        .iter()
        .filter(|n| n.name != named)
        .map(|n| (n, clues.evidence(n)))
        .filter(|(_, e)| e.len() > own)
        .max_by_key(|(_, e)| e.len())
        .map(|(n, evidence)| IdentityMismatch {
            named: named.to_string(),
            looks_like: n.name.clone(),
            evidence,
        })
}

/// The Node a dataplane that does not name itself belongs to (a bundle without a hostname
/// file): the one Node whose addresses, tunnel addresses, VTEP MAC or blocks it holds. Two
/// candidates, or none, leave it unknown: a guess would judge the node against another's state.
pub fn identify(ds: &Datastore, obs: &ObservedDataplane) -> Option<Identified> {
    let clues = Clues::new(ds, obs);
    let mut matching = ds
        .nodes
        .iter()
        .map(|n| (n, clues.evidence(n)))
        .filter(|(_, e)| !e.is_empty());
    let (node, evidence) = matching.next()?;
    if matching.next().is_some() {
        return None;
    }
    Some(Identified {
        node: node.name.clone(),
        evidence,
    })
}

/// The node [`identify`] found, with what matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    pub node: String,
    pub evidence: Vec<String>,
}

/// The datastore's node names, closest to `name` first: a name that contains the other (an
/// FQDN and its short name) before the rest, then by edit distance.
pub fn closest_names(ds: &Datastore, name: &str) -> Vec<String> {
    let mut names: Vec<(bool, usize, &str)> = ds
        .nodes
        .iter()
        .map(|n| {
            let short = |s: &str| s.split('.').next().unwrap_or(s).to_string();
            let related = short(&n.name) == short(name);
            (!related, edit_distance(&n.name, name), n.name.as_str())
        })
        .collect();
    names.sort();
    names.into_iter().map(|(_, _, n)| n.to_string()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Block;
    use crate::verify::testutil::healthy;
    use std::net::Ipv4Addr;

    fn node(name: &str, ip: [u8; 4], tunnel: [u8; 4]) -> Node {
        Node {
            name: name.into(),
            ipv4: Some(ipnet::Ipv4Net::new(Ipv4Addr::from(ip), 24).expect("net")),
            ipv4_vxlan_tunnel: Some(Ipv4Addr::from(tunnel)),
            vxlan_mac: None,
            ipv4_ipip_tunnel: None,
            wireguard_ipv4: None,
            wireguard_public_key: None,
            ipv6: None,
            wireguard_ipv6: None,
            wireguard_public_key_v6: None,
            as_number: None,
            rr_cluster_id: None,
            labels: Default::default(),
            ..Default::default()
        }
    }

    fn datastore(obs: &ObservedDataplane) -> Datastore {
        // The healthy fixture is node-a: give its datastore twin and a second node.
        let vx = obs
            .addresses
            .iter()
            .find(|a| a.ifname == expected::VXLAN_DEV)
            .map(|a| a.address.addr());
        let Some(IpAddr::V4(tunnel)) = vx else {
            panic!("fixture has a vxlan.calico address");
        };
        let ip = obs
            .addresses
            .iter()
            .find_map(|a| match a.address.addr() {
                IpAddr::V4(v) if a.ifname != expected::VXLAN_DEV && !v.is_loopback() => Some(v),
                _ => None,
            })
            .expect("fixture has a node IP");
        Datastore {
            nodes: vec![
                node(&obs.node_name, ip.octets(), tunnel.octets()),
                node("node-z", [10, 99, 0, 200], [10, 244, 9, 0]),
            ],
            ..Datastore::default()
        }
    }

    #[test]
    fn the_right_name_is_quiet() {
        let (_, obs) = healthy();
        let ds = datastore(&obs);
        assert_eq!(check(&ds, &obs.node_name, &obs), None);
    }

    #[test]
    fn another_nodes_name_is_named_with_the_evidence() {
        let (_, obs) = healthy();
        let ds = datastore(&obs);
        let m = check(&ds, "node-z", &obs).expect("mismatch");
        assert_eq!(m.looks_like, obs.node_name);
        assert_eq!(
            m.to_string(),
            format!(
                "this node looks like {}; --node-name says node-z",
                obs.node_name
            )
        );
        assert!(
            m.evidence.iter().any(|e| e.starts_with("node IP ")),
            "{m:?}"
        );
        // A name the datastore does not hold at all: the same answer.
        assert!(check(&ds, "node-a.example.com", &obs).is_some());
    }

    /// Issue 13 point 2: a bundle that names no node is the one Node its data belongs to.
    #[test]
    fn identify_finds_the_one_node_the_data_belongs_to() {
        let (_, obs) = healthy();
        let ds = datastore(&obs);
        let found = identify(&ds, &obs).expect("identified");
        assert_eq!(found.node, obs.node_name);
        assert!(
            found.evidence.iter().any(|e| e.starts_with("node IP ")),
            "{found:?}"
        );
        // Only `ip route`: the connected route's `src` is the node IP.
        let mut routes_only = obs.clone();
        routes_only.addresses.clear();
        routes_only.links.clear();
        for r in &mut routes_only.routes {
            if r.destination.to_string() == "10.99.0.0/24" {
                r.prefsrc = Some("10.99.0.11".parse().expect("ip"));
            }
        }
        assert_eq!(
            identify(&ds, &routes_only).map(|f| f.node),
            Some(obs.node_name.clone())
        );
        // Nothing that belongs to any Node: unknown, not a guess.
        let mut stranger = routes_only.clone();
        stranger.routes.clear();
        assert_eq!(identify(&ds, &stranger), None);
    }

    #[test]
    fn identify_refuses_to_choose_between_two_nodes() {
        let (_, mut obs) = healthy();
        let ds = datastore(&obs);
        obs.addresses.push(crate::observed::Address {
            ifindex: 2,
            ifname: "eth0".into(),
            address: "10.99.0.200/24".parse().expect("net"),
            scope: "global".into(),
        });
        assert_eq!(identify(&ds, &obs), None);
    }

    /// A blackhole for a block affine to a Node is that Node's (reference §1.4).
    #[test]
    fn identify_by_the_blackholed_block() {
        let (_, mut obs) = healthy();
        let mut ds = datastore(&obs);
        for n in &mut ds.nodes {
            n.ipv4 = None;
            n.ipv4_vxlan_tunnel = None;
        }
        obs.links.clear();
        ds.blocks.push(Block {
            name: "b".into(),
            cidr: "10.244.0.0/26".parse().expect("net"),
            affinity: Some(obs.node_name.clone()),
            allocations: Vec::new(),
            deleted: false,
        });
        let found = identify(&ds, &obs).expect("identified");
        assert_eq!(found.evidence, ["blackhole for its block 10.244.0.0/26"]);
    }

    #[test]
    fn closest_names_put_the_short_name_of_an_fqdn_first() {
        let (_, obs) = healthy();
        let mut ds = datastore(&obs);
        ds.nodes
            .push(node("worker-1", [10, 99, 0, 3], [10, 244, 3, 0]));
        let got = closest_names(&ds, "node-z.example.com");
        assert_eq!(got[0], "node-z");
        assert_eq!(closest_names(&ds, "worker-2")[0], "worker-1");
    }
}
