//! The Amazon VPC CNI's plumbing as one snapshot shows it, on a node where the VPC CNI wires
//! the pods and Felix only enforces policy: per pod its /32 route on an `eni…` veth, its
//! `512: to <pod>` and `1536: from <pod>` rules; per secondary ENI its route table; the
//! primary ENI's rp_filter; the SNAT and connmark rules (shared/reference/vpc-cni-policy-only.md
//! §2). A pure reading of routes, rules, links, sysctls and iptables; `diag` shows it and
//! `verify::vpc_cni` judges it.
//!
//! Which ENI owns which pod IP is ipamd's knowledge (`/v1/enis`, `ipam.json`), not the kernel's:
//! secondary IPs are configured on no interface (`setupENINetwork` adds only the ENI's primary
//! IP). So a pod's need for a `1536` rule is judged only where the ENI subnets tell it
//! unambiguously.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use calico_conventions::vpc_cni::{
    CONNMARK, CONNMARK_CHAIN, FROM_ENI_RULE_PRIORITY, FROM_POD_RULE_PRIORITY, FWMARK_RULE_PRIORITY,
    NFT_TABLE, SNAT_CHAIN, TO_POD_RULE_PRIORITY, VETH_PREFIX, is_pod_veth,
};

use super::{
    IpRule, ObservedDataplane, RouteType, TABLE_MAIN,
    iptables::{IptRule, IptablesDump},
};

/// What the VPC CNI programmed on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpcCni {
    /// `eni…` veths on the node, up or not.
    pub veths: usize,
    /// The ENI holding the main table's default route (the node's primary IP).
    pub primary_eni: Option<Eni>,
    /// ENIs whose table a `1536`/`32765` rule looks up, by table.
    pub secondary_enis: Vec<Eni>,
    /// Route tables the rules look up, with what they hold.
    pub tables: Vec<EniTable>,
    pub pods: Vec<PodPlumbing>,
    /// `eni…` veths that are up and carry no route in main.
    pub veths_without_route: Vec<String>,
    /// `1024: from all fwmark 0x80/0x80 lookup main`, as `ip rule` prints it.
    pub fwmark_rule: Option<String>,
    /// `net.ipv4.conf.all.rp_filter`, which the kernel combines with each interface's (max).
    pub rp_filter_all: Option<u8>,
    pub snat: Snat,
    /// Felix's `cali-FORWARD` sends `-i eni+` to its workload dispatch (Felix polices these
    /// pods); `None` when Felix's rules are not in iptables (nftables mode, or unreadable).
    pub felix_dispatches: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    pub name: String,
    /// The ENI's primary address with its subnet's prefix length (`10.0.2.10/24`).
    pub address: Option<Ipv4Net>,
    /// Its table: main for the primary ENI, else the one its default route is in.
    pub table: u32,
    pub rp_filter: Option<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniTable {
    pub table: u32,
    /// `default via <gateway> dev <eni>` when present.
    pub default_route: Option<String>,
    pub routes: usize,
    /// Rules looking this table up (`1536: from <pod>` and `32765: from <ENI IP>`).
    pub rules: usize,
}

/// One pod IP and the objects the VPC CNI creates for it (`setupVeth`,
/// `setupIPBasedContainerRouteRules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlumbing {
    pub ip: Ipv4Addr,
    /// The `eni…` veth its /32 route in main leaves through.
    pub veth: Option<String>,
    /// That route's metric: 0 from the VPC CNI, 1024 once Felix ≥ v3.32 owns it.
    pub route_metric: Option<u32>,
    /// `512: from all to <ip> lookup main`.
    pub to_rule: bool,
    /// Tables of `1536: from <ip> lookup <table>` rules (one when healthy, none on the primary ENI).
    pub from_tables: Vec<u32>,
    /// Whether the pod's IP is on a secondary ENI and so needs a `1536` rule: `Some` only when
    /// the ENIs' subnets tell (the IP is in the primary ENI's subnet only, or only in
    /// secondary ones); `None` when they overlap or the IP is in none of them.
    pub needs_from_rule: Option<bool>,
    /// The tables a `1536` rule may name: those of the secondary ENIs whose subnet holds the IP.
    pub candidate_tables: Vec<u32>,
}

/// The VPC CNI's nat rules (`buildIptablesSNATRules`, `iptablesConnmark`/`nftConnmark`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snat {
    /// The iptables dump holding `AWS-SNAT-CHAIN-0` (`iptables-nft`, `iptables-legacy`).
    pub backend: Option<String>,
    pub chain: bool,
    pub chain_rules: usize,
    /// nat `POSTROUTING -j AWS-SNAT-CHAIN-0`.
    pub hooked: bool,
    /// `--to-source` of the SNAT rule (the primary ENI's IP); `None` with external SNAT.
    pub snat_to: Option<String>,
    /// Where the connmark rules are: `AWS-CONNMARK-CHAIN-0` hooked from nat PREROUTING, or
    /// nftables `table ip aws-cni` (v1.23+ with the nft backend).
    pub connmark: Option<String>,
}

impl Snat {
    /// External SNAT (`AWS_VPC_K8S_CNI_EXTERNALSNAT=true`) leaves the chain empty and unhooked.
    pub fn external(&self) -> bool {
        self.chain && self.chain_rules == 0 && !self.hooked
    }
}

/// Reads the VPC CNI's plumbing, or `None` when nothing on the node is the VPC CNI's: neither
/// its `512: to <pod> lookup main` rules nor its `AWS-SNAT-CHAIN-0` (§1.1 signals S5, S6).
pub fn read(obs: &ObservedDataplane) -> Option<VpcCni> {
    let v4_rules: Vec<&IpRule> = obs.rules.iter().filter(|r| r.family == 4).collect();
    let to_rules: BTreeSet<Ipv4Addr> = v4_rules
        .iter()
        .filter(|r| r.priority == TO_POD_RULE_PRIORITY && lookup(r) == Some(TABLE_MAIN))
        .filter_map(|r| host(r.destination))
        .collect();
    let mut from_rules: BTreeMap<Ipv4Addr, Vec<u32>> = BTreeMap::new();
    for r in v4_rules
        .iter()
        .filter(|r| r.priority == FROM_POD_RULE_PRIORITY && r.destination.is_none())
    {
        if let (Some(ip), Some(t)) = (host(r.source), lookup(r)) {
            from_rules.entry(ip).or_default().push(t);
        }
    }
    let eni_rules: Vec<(Ipv4Addr, u32)> = v4_rules
        .iter()
        .filter(|r| r.priority == FROM_ENI_RULE_PRIORITY)
        .filter_map(|r| Some((host(r.source)?, lookup(r)?)))
        .collect();
    let snat = snat(obs);
    if to_rules.is_empty() && !snat.chain {
        return None;
    }

    let mut v = VpcCni {
        rp_filter_all: obs.sysctls.rp_filter.get("all").copied(),
        fwmark_rule: v4_rules
            .iter()
            .find(|r| {
                r.priority == FWMARK_RULE_PRIORITY
                    && r.fwmark == Some(CONNMARK)
                    && lookup(r) == Some(TABLE_MAIN)
            })
            .map(|r| r.display().replace('\t', " ")),
        felix_dispatches: felix_dispatches(obs),
        snat,
        ..Default::default()
    };

    // Pod routes: /32s in main through an `eni…` veth, whatever their metric. (IPv6 link-local
    // routes on the veth are the kernel's, not a pod route.)
    let mut routes: BTreeMap<Ipv4Addr, (String, u32)> = BTreeMap::new();
    let mut routed_veths = BTreeSet::new();
    for r in obs.routes.iter().filter(|r| {
        r.table == TABLE_MAIN
            && r.kind == RouteType::Unicast
            && r.gateway.is_none()
            && r.destination.addr().is_ipv4()
    }) {
        let Some(dev) = r.dev.as_deref().filter(|d| is_pod_veth(d)) else {
            continue;
        };
        routed_veths.insert(dev.to_string());
        if let IpNet::V4(n) = r.destination
            && n.prefix_len() == 32
        {
            routes.insert(n.addr(), (dev.to_string(), r.metric));
        }
    }
    let veths: Vec<_> = obs.links.iter().filter(|l| is_pod_veth(&l.name)).collect();
    v.veths_without_route = veths
        .iter()
        .filter(|l| l.is_up() && !routed_veths.contains(&l.name))
        .map(|l| l.name.clone())
        .collect();

    // Tables the rules look up, and the ENI each one's default route leaves through.
    let looked_up: BTreeSet<u32> = from_rules
        .values()
        .flatten()
        .copied()
        .chain(eni_rules.iter().map(|(_, t)| *t))
        .filter(|t| *t != TABLE_MAIN)
        .collect();
    for t in &looked_up {
        let in_table: Vec<_> = obs.routes.iter().filter(|r| r.table == *t).collect();
        let default = in_table
            .iter()
            .find(|r| r.destination.prefix_len() == 0 && r.kind == RouteType::Unicast);
        if let Some(dev) = default.and_then(|r| r.dev.as_deref())
            && !v.secondary_enis.iter().any(|e| e.name == dev)
        {
            v.secondary_enis.push(eni(obs, dev, *t));
        }
        v.tables.push(EniTable {
            table: *t,
            default_route: default.map(|r| r.display().replacen("0.0.0.0/0", "default", 1)),
            routes: in_table.len(),
            rules: from_rules.values().flatten().filter(|x| *x == t).count()
                + eni_rules.iter().filter(|(_, x)| x == t).count(),
        });
    }
    v.primary_eni = obs
        .routes
        .iter()
        .filter(|r| {
            r.table == TABLE_MAIN
                && r.kind == RouteType::Unicast
                && r.destination.prefix_len() == 0
                && r.destination.addr().is_ipv4()
        })
        .filter_map(|r| Some((r.metric, r.dev.as_deref()?)))
        .filter(|(_, d)| !is_pod_veth(d))
        .min()
        .map(|(_, dev)| eni(obs, dev, TABLE_MAIN));

    let ips: BTreeSet<Ipv4Addr> = routes
        .keys()
        .chain(&to_rules)
        .chain(from_rules.keys())
        .copied()
        .collect();
    let in_primary = |ip: Ipv4Addr| {
        v.primary_eni
            .as_ref()
            .and_then(|e| e.address)
            .is_some_and(|a| a.trunc().contains(&ip))
    };
    for ip in ips {
        let candidate_tables: Vec<u32> = v
            .secondary_enis
            .iter()
            .filter(|e| e.address.is_some_and(|a| a.trunc().contains(&ip)))
            .map(|e| e.table)
            .collect();
        let needs_from_rule = match (in_primary(ip), candidate_tables.is_empty()) {
            (true, true) => Some(false),
            (false, false) => Some(true),
            _ => None,
        };
        let route = routes.get(&ip);
        v.pods.push(PodPlumbing {
            ip,
            veth: route.map(|(d, _)| d.clone()),
            route_metric: route.map(|(_, m)| *m),
            to_rule: to_rules.contains(&ip),
            from_tables: from_rules.get(&ip).cloned().unwrap_or_default(),
            needs_from_rule,
            candidate_tables,
        });
    }

    v.veths = veths.len();
    Some(v)
}

impl VpcCni {
    /// Why this node is taken for a VPC CNI node, for `diag`.
    pub fn evidence(&self) -> Vec<String> {
        let to = self.pods.iter().filter(|p| p.to_rule).count();
        let from = self
            .pods
            .iter()
            .filter(|p| !p.from_tables.is_empty())
            .count();
        let mut e = vec![format!(
            "AWS VPC CNI plumbs the pods: {} {VETH_PREFIX}… veth(s), {to} `{TO_POD_RULE_PRIORITY}: to <pod> lookup main` and {from} `{FROM_POD_RULE_PRIORITY}: from <pod>` rule(s){}",
            self.veths,
            if self.snat.chain {
                format!(
                    ", nat {SNAT_CHAIN} in {}",
                    self.snat.backend.as_deref().unwrap_or("iptables")
                )
            } else {
                String::new()
            }
        )];
        if self.felix_dispatches == Some(true) {
            e.push(format!(
                "Felix's cali-FORWARD dispatches -i {VETH_PREFIX}+ (interfacePrefix {VETH_PREFIX}): Felix enforces policy only"
            ));
        }
        e
    }
}

fn eni(obs: &ObservedDataplane, dev: &str, table: u32) -> Eni {
    Eni {
        name: dev.to_string(),
        address: obs.addresses_of(dev).find_map(|a| match a.address {
            IpNet::V4(n) if a.scope == "global" || a.scope.is_empty() => Some(n),
            _ => None,
        }),
        table,
        rp_filter: obs.sysctls.rp_filter.get(dev).copied(),
    }
}

fn lookup(r: &IpRule) -> Option<u32> {
    (r.action == "lookup" && !r.invert).then_some(r.table)
}

fn host(net: Option<IpNet>) -> Option<Ipv4Addr> {
    match net? {
        IpNet::V4(n) if n.prefix_len() == 32 => Some(n.addr()),
        _ => None,
    }
}

/// The values of `-i`/`-o` in an iptables rule (`None` for a negated match).
pub fn iface_match<'a>(spec: &'a str, flag: &str) -> Option<&'a str> {
    let mut words = spec.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "!" && words.peek() == Some(&flag) {
            return None;
        }
        if w == flag {
            return words.next();
        }
    }
    None
}

/// Felix's `cali-FORWARD` has `-i eni+ -j cali-from-wl-dispatch` in some IPv4 dump.
fn felix_dispatches(obs: &ObservedDataplane) -> Option<bool> {
    if !v4_dumps(obs).any(|d| d.felix_chain_count() > 0) {
        return None;
    }
    let prefix = format!("{VETH_PREFIX}+");
    Some(v4_dumps(obs).any(|d| {
        d.table("filter").is_some_and(|t| {
            t.rules_of("cali-FORWARD").any(|r| {
                r.target.as_deref() == Some("cali-from-wl-dispatch")
                    && iface_match(&r.spec, "-i") == Some(prefix.as_str())
            })
        })
    }))
}

fn v4_dumps(obs: &ObservedDataplane) -> impl Iterator<Item = &IptablesDump> {
    obs.iptables.iter().filter(|d| d.family == 4)
}

fn snat(obs: &ObservedDataplane) -> Snat {
    let mut s = Snat::default();
    let Some((dump, nat)) = v4_dumps(obs).find_map(|d| {
        d.table("nat")
            .filter(|t| t.chain(SNAT_CHAIN).is_some())
            .map(|t| (d, t))
    }) else {
        return s;
    };
    s.backend = Some(dump.label());
    s.chain = true;
    s.chain_rules = nat.rules_of(SNAT_CHAIN).count();
    s.hooked = nat
        .rules_of("POSTROUTING")
        .any(|r| r.target.as_deref() == Some(SNAT_CHAIN));
    s.snat_to = nat
        .rules_of(SNAT_CHAIN)
        .find(|r| r.target.as_deref() == Some("SNAT"))
        .and_then(to_source);
    let connmark_hooked = nat.chain(CONNMARK_CHAIN).is_some()
        && nat.rules_of("PREROUTING").any(|r| {
            r.target.as_deref() == Some(CONNMARK_CHAIN)
                && iface_match(&r.spec, "-i") == Some(&format!("{VETH_PREFIX}+"))
        });
    let nft_table = obs.nft.as_ref().is_some_and(|n| {
        n.tables
            .iter()
            .any(|t| t.family == "ip" && t.name == NFT_TABLE)
    });
    s.connmark = if connmark_hooked {
        Some(format!(
            "{CONNMARK_CHAIN} (nat PREROUTING -i {VETH_PREFIX}+)"
        ))
    } else if nft_table {
        Some(format!("nftables table ip {NFT_TABLE}"))
    } else {
        None
    };
    s
}

fn to_source(r: &IptRule) -> Option<String> {
    let mut words = r.spec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--to-source" {
            return words.next().map(str::to_string);
        }
    }
    None
}

impl PodPlumbing {
    /// `10.0.2.21 dev eni…  512 ✓  1536 → 2`, for `diag`.
    pub fn summary(&self) -> String {
        let route = match (&self.veth, self.route_metric) {
            (Some(v), Some(0) | None) => format!("dev {v}"),
            (Some(v), Some(m)) => format!("dev {v} metric {m}"),
            (None, _) => "NO ROUTE".into(),
        };
        let to = if self.to_rule { "yes" } else { "MISSING" };
        let from = match (self.from_tables.as_slice(), self.needs_from_rule) {
            ([], Some(true)) => "MISSING".to_string(),
            ([], Some(false)) => "- (primary ENI)".to_string(),
            ([], None) => "-".to_string(),
            (ts, _) => ts
                .iter()
                .map(|t| format!("table {t}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!(
            "{:<15} {route:<34} {TO_POD_RULE_PRIORITY}: {to:<8} {FROM_POD_RULE_PRIORITY}: {from}",
            IpAddr::V4(self.ip)
        )
    }
}
