//! A lab EKS node where the AWS VPC CNI plumbs the pods and Calico Felix only enforces policy
//! (shared/reference/vpc-cni-policy-only.md §2–§3), in network namespaces:
//!
//! ```text
//!   <prefix>-inet: 198.51.100.1 ── "internet": routes back only to the node's primary IP
//!        │ 100.64.0.0/30
//!   <prefix>-vpc: the VPC router; 10.0.1.1 on subnet A, 10.0.2.1 on subnet B, 10.0.3.1 (another
//!        │     │  instance); knows which ENI owns each pod IP; drops sources an ENI does not own
//!       eth0  eth1
//!   <prefix>-n (ip-10-0-1-10): eth0 = primary ENI 10.0.1.10/24 (rp_filter 2, main table)
//!                              eth1 = ENI device 1, 10.0.2.10/24, table 2, `32765: from 10.0.2.10`
//!     eni… ── nginx 10.0.1.21, client 10.0.1.22   (pods on eth0: `512: to <pod> lookup main`)
//!     eni… ── redis 10.0.2.21, server 10.0.2.22   (pods on eth1: also `1536: from <pod> lookup 2`)
//!     AWS-SNAT-CHAIN-0, AWS-CONNMARK-CHAIN-0, mangle CONNMARK, `1024: fwmark 0x80/0x80`;
//!     Felix's chains with `-i eni+` dispatch, mangle RETURN, no pools, no host endpoints
//! ```
//!
//! Only namespaces named `<prefix>-…` are created, changed or deleted; [`VpcLab::down`] removes
//! them all, and a failed [`VpcLab::up`] cleans up after itself.

mod rules;

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use calico_conventions::vpc_cni::{
    CONNMARK, ENI_MTU, FROM_ENI_RULE_PRIORITY, FROM_POD_RULE_PRIORITY, FWMARK_RULE_PRIORITY,
    POD_GATEWAY, SNAT_CHAIN, TO_POD_RULE_PRIORITY, eni_table, veth_name,
};
use sha1::{Digest as _, Sha1};

use super::{ip, netns_exists, sysctl};
use crate::sh;

/// The VPC's CIDR: SNAT and connmark RETURN for it.
pub const VPC_CIDR: &str = "10.0.0.0/16";
/// Another instance in the VPC, reached through each pod's own ENI.
pub const VPC_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);
/// A host outside the VPC, reached only through SNAT to the primary ENI's IP.
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const NODE_NAME: &str = "ip-10-0-1-10.ec2.internal";

#[derive(Debug, Clone)]
pub struct VpcNode {
    pub name: String,
    pub netns: String,
    /// Primary ENI first (device 0, main table), then device 1.
    pub enis: Vec<Eni>,
    pub pods: Vec<VpcPod>,
}

#[derive(Debug, Clone)]
pub struct Eni {
    pub name: String,
    pub device: u32,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    pub table: u32,
    /// Its other end, in the VPC namespace.
    pub vpc_port: String,
}

#[derive(Debug, Clone)]
pub struct VpcPod {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// `eni` + 11 hex of sha1("<ns>.<pod>").
    pub veth: String,
    /// The host end's MAC (v1.20.1+ sets a random locally administered one).
    pub veth_mac: String,
    /// Index into [`VpcNode::enis`] of the ENI owning the pod's IP.
    pub eni: usize,
}

/// Faults the VPC CNI lab can inject; [`VpcLab::repair`] undoes them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VpcFault {
    /// Delete the /32 route of the pod `redis` (on the secondary ENI).
    RouteDelete,
    /// Delete `512: to <redis> lookup main`.
    ToRuleDelete,
    /// Delete `1536: from <redis> lookup 2`.
    FromRuleDelete,
    /// Flush table 2, the secondary ENI's.
    TableFlush,
    /// Set the primary ENI's rp_filter to 1 (strict).
    RpFilterStrict,
    /// Delete nat POSTROUTING's jump to AWS-SNAT-CHAIN-0.
    SnatJumpDelete,
    /// Delete the pod `client`'s entry in Felix's cali-from-wl-dispatch.
    DispatchDelete,
}

pub struct VpcLab {
    pub prefix: String,
    pub node: VpcNode,
}

impl VpcLab {
    pub fn new(prefix: &str) -> Self {
        let netns = format!("{prefix}-n");
        let enis = [(0u32, "eth0"), (1, "eth1")]
            .iter()
            .map(|(device, name)| {
                let third = u8::try_from(device + 1).unwrap_or(1);
                Eni {
                    name: (*name).into(),
                    device: *device,
                    ip: Ipv4Addr::new(10, 0, third, 10),
                    gateway: Ipv4Addr::new(10, 0, third, 1),
                    prefix: 24,
                    table: eni_table(*device),
                    vpc_port: format!("vpc-e{device}"),
                }
            })
            .collect();
        // nginx and redis share the veth's next character (`enic…`): a dispatch child chain.
        let pods = [
            ("nginx", 0, 21),
            ("client", 0, 22),
            ("redis", 1, 21),
            ("server", 1, 22),
        ]
        .iter()
        .map(|(name, eni, host)| {
            let third = u8::try_from(eni + 1).unwrap_or(1);
            VpcPod {
                namespace: "default".into(),
                name: (*name).into(),
                netns: format!("{netns}-{name}"),
                ip: Ipv4Addr::new(10, 0, third, *host),
                veth: veth_name("default", name),
                veth_mac: local_mac(name),
                eni: *eni,
            }
        })
        .collect();
        Self {
            prefix: prefix.into(),
            node: VpcNode {
                name: NODE_NAME.into(),
                netns,
                enis,
                pods,
            },
        }
    }

    fn vpc_netns(&self) -> String {
        format!("{}-vpc", self.prefix)
    }

    fn inet_netns(&self) -> String {
        format!("{}-inet", self.prefix)
    }

    /// Every namespace of the lab, pods first.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v: Vec<String> = self.node.pods.iter().map(|p| p.netns.clone()).collect();
        v.extend([self.node.netns.clone(), self.vpc_netns(), self.inet_netns()]);
        v
    }

    pub fn pod(&self, name: &str) -> anyhow::Result<&VpcPod> {
        self.node
            .pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no VPC lab pod named {name:?}"))
    }

    /// Creates the lab from scratch (removing a previous one with the same prefix first).
    pub fn up(&self) -> anyhow::Result<()> {
        self.down();
        if let Err(e) = self.create().and_then(|()| self.program()) {
            self.down();
            return Err(e.context("bringing the VPC CNI lab up (cleaned up again)"));
        }
        Ok(())
    }

    /// Deletes every namespace of this lab. Idempotent.
    pub fn down(&self) {
        for ns in self.all_netns() {
            if netns_exists(&ns) {
                let _ = sh::run(&["ip", "netns", "del", &ns]);
            }
        }
    }

    /// Re-applies what the VPC CNI and Felix keep in place: undoes any injected fault.
    pub fn repair(&self) -> anyhow::Result<()> {
        self.program()
    }

    fn create(&self) -> anyhow::Result<()> {
        let (vpc, inet, ns) = (self.vpc_netns(), self.inet_netns(), &self.node.netns);
        for n in [&vpc, &inet, ns] {
            sh::run(&["ip", "netns", "add", n])?;
            ip(n, &["link", "set", "lo", "up"])?;
        }
        // The VPC router: one leg per ENI subnet, one towards the internet.
        sysctl(&vpc, "net.ipv4.ip_forward", "1")?;
        for eni in &self.node.enis {
            ip(
                &vpc,
                &[
                    "link",
                    "add",
                    &eni.vpc_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &eni.name,
                    "netns",
                    ns,
                ],
            )?;
            ip(
                &vpc,
                &[
                    "link",
                    "set",
                    &eni.vpc_port,
                    "mtu",
                    &ENI_MTU.to_string(),
                    "up",
                ],
            )?;
            ip(
                &vpc,
                &[
                    "addr",
                    "add",
                    &format!("{}/{}", eni.gateway, eni.prefix),
                    "dev",
                    &eni.vpc_port,
                ],
            )?;
            // EC2's source/destination check, by subnet: an ENI may only send its own addresses.
            for chain in ["INPUT", "FORWARD"] {
                sh::run(&[
                    "ip",
                    "netns",
                    "exec",
                    &vpc,
                    "iptables-nft",
                    "-A",
                    chain,
                    "-i",
                    &eni.vpc_port,
                    "!",
                    "-s",
                    &format!("{}/{}", eni.gateway, eni.prefix),
                    "-j",
                    "DROP",
                ])?;
            }
        }
        ip(
            &vpc,
            &["addr", "add", &format!("{VPC_HOST}/32"), "dev", "lo"],
        )?;
        ip(
            &vpc,
            &[
                "link", "add", "vpc-inet", "type", "veth", "peer", "name", "eth0", "netns", &inet,
            ],
        )?;
        ip(&vpc, &["addr", "add", "100.64.0.1/30", "dev", "vpc-inet"])?;
        ip(&vpc, &["link", "set", "vpc-inet", "up"])?;
        ip(
            &vpc,
            &[
                "route",
                "add",
                &format!("{INTERNET_HOST}/32"),
                "via",
                "100.64.0.2",
            ],
        )?;
        // The VPC delivers each secondary IP to the ENI it is assigned to.
        for pod in &self.node.pods {
            let eni = &self.node.enis[pod.eni];
            ip(
                &vpc,
                &[
                    "route",
                    "add",
                    &pod.ip.to_string(),
                    "via",
                    &eni.ip.to_string(),
                    "dev",
                    &eni.vpc_port,
                ],
            )?;
        }
        ip(&inet, &["addr", "add", "100.64.0.2/30", "dev", "eth0"])?;
        ip(&inet, &["link", "set", "eth0", "up"])?;
        ip(
            &inet,
            &["addr", "add", &format!("{INTERNET_HOST}/32"), "dev", "lo"],
        )?;
        // Only the node's primary IP is reachable from the internet (an IGW maps nothing else).
        let primary = &self.node.enis[0];
        ip(
            &inet,
            &["route", "add", &primary.ip.to_string(), "via", "100.64.0.1"],
        )?;

        for eni in &self.node.enis {
            ip(
                ns,
                &["link", "set", &eni.name, "mtu", &ENI_MTU.to_string(), "up"],
            )?;
            ip(
                ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/{}", eni.ip, eni.prefix),
                    "dev",
                    &eni.name,
                ],
            )?;
        }
        ip(
            ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &primary.gateway.to_string(),
                "dev",
                &primary.name,
            ],
        )?;
        for pod in &self.node.pods {
            sh::run(&["ip", "netns", "add", &pod.netns])?;
            ip(
                ns,
                &[
                    "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns",
                    &pod.netns,
                ],
            )?;
            ip(ns, &["link", "set", &pod.veth, "address", &pod.veth_mac])?;
            let p = &pod.netns;
            ip(p, &["link", "set", "lo", "up"])?;
            ip(
                p,
                &["link", "set", "eth0", "mtu", &ENI_MTU.to_string(), "up"],
            )?;
            ip(
                p,
                &["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"],
            )?;
            ip(
                p,
                &["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"],
            )?;
            ip(
                p,
                &["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"],
            )?;
            // `createVethPairContext.run`: a permanent neighbour for the gateway, so the pod
            // never ARPs for it.
            ip(
                p,
                &[
                    "neigh",
                    "add",
                    POD_GATEWAY,
                    "dev",
                    "eth0",
                    "lladdr",
                    &pod.veth_mac,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        Ok(())
    }

    /// Everything ipamd, the CNI plugin and Felix keep in place on the node; idempotent.
    fn program(&self) -> anyhow::Result<()> {
        let ns = self.node.netns.as_str();
        sysctl(ns, "net.ipv4.ip_forward", "1")?;
        sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
        let primary = &self.node.enis[0];
        // aws-vpc-cni-init: loose on the primary ENI; nothing on the others (distro default).
        sysctl(
            ns,
            &format!("net.ipv4.conf.{}.rp_filter", primary.name),
            "2",
        )?;
        for eni in &self.node.enis[1..] {
            sysctl(ns, &format!("net.ipv4.conf.{}.rp_filter", eni.name), "1")?;
            let table = eni.table.to_string();
            let subnet = format!(
                "{}/{}",
                ipnet::Ipv4Net::new(eni.ip, eni.prefix)?.trunc(),
                eni.prefix
            );
            // `setupENINetwork`: the connected route leaves main; the ENI's table gets its own.
            let _ = sh::run(&[
                "ip", "-n", ns, "route", "del", &subnet, "dev", &eni.name, "table", "main",
            ]);
            let gw = eni.gateway.to_string();
            ip(
                ns,
                &[
                    "route", "replace", &gw, "dev", &eni.name, "scope", "link", "table", &table,
                ],
            )?;
            ip(
                ns,
                &[
                    "route", "replace", "default", "via", &gw, "dev", &eni.name, "table", &table,
                ],
            )?;
            rule(
                ns,
                FROM_ENI_RULE_PRIORITY,
                &["from", &eni.ip.to_string()],
                &table,
            )?;
        }
        // `SetupHostNetwork`: connmarked traffic uses main, i.e. leaves through the primary ENI.
        rule(
            ns,
            FWMARK_RULE_PRIORITY,
            &["fwmark", &format!("{CONNMARK:#x}/{CONNMARK:#x}")],
            "main",
        )?;
        for pod in &self.node.pods {
            let v = &pod.veth;
            ip(ns, &["link", "set", v, "mtu", &ENI_MTU.to_string(), "up"])?;
            // Felix's per-workload sysctls (`configureProcSysForInterface`).
            for (key, value) in [
                (format!("net.ipv4.conf.{v}.proxy_arp"), "1"),
                (format!("net.ipv4.neigh.{v}.proxy_delay"), "0"),
                (format!("net.ipv4.conf.{v}.forwarding"), "1"),
                (format!("net.ipv4.conf.{v}.route_localnet"), "1"),
                (format!("net.ipv4.conf.{v}.rp_filter"), "1"),
            ] {
                sysctl(ns, &key, value)?;
            }
            let ip_s = pod.ip.to_string();
            // `setupVeth` (metric 0, proto boot); Felix ≤ v3.31 wants the same route.
            ip(
                ns,
                &[
                    "route", "replace", &ip_s, "dev", v, "scope", "link", "proto", "boot",
                ],
            )?;
            rule(ns, TO_POD_RULE_PRIORITY, &["to", &ip_s], "main")?;
            let eni = &self.node.enis[pod.eni];
            if eni.table != eni_table(0) {
                rule(
                    ns,
                    FROM_POD_RULE_PRIORITY,
                    &["from", &ip_s],
                    &eni.table.to_string(),
                )?;
            }
        }
        sh::run_with_input(
            &["ip", "netns", "exec", ns, "iptables-nft-restore"],
            Some(&rules::iptables_restore(&self.node)),
        )?;
        Ok(())
    }

    /// Injects `fault` into the node.
    pub fn fault(&self, fault: VpcFault) -> anyhow::Result<()> {
        let ns = self.node.netns.as_str();
        let redis = self.pod("redis")?;
        let redis_ip = redis.ip.to_string();
        let secondary = self.node.enis.get(1).context("one ENI only")?;
        match fault {
            VpcFault::RouteDelete => ip(ns, &["route", "del", &redis_ip, "dev", &redis.veth])?,
            VpcFault::ToRuleDelete => ip(
                ns,
                &[
                    "rule",
                    "del",
                    "priority",
                    &TO_POD_RULE_PRIORITY.to_string(),
                    "to",
                    &redis_ip,
                ],
            )?,
            VpcFault::FromRuleDelete => ip(
                ns,
                &[
                    "rule",
                    "del",
                    "priority",
                    &FROM_POD_RULE_PRIORITY.to_string(),
                    "from",
                    &redis_ip,
                ],
            )?,
            VpcFault::TableFlush => ip(
                ns,
                &["route", "flush", "table", &secondary.table.to_string()],
            )?,
            VpcFault::RpFilterStrict => sysctl(
                ns,
                &format!("net.ipv4.conf.{}.rp_filter", self.node.enis[0].name),
                "1",
            )?,
            VpcFault::SnatJumpDelete => {
                let n = rules::position(&self.node, "nat", "POSTROUTING", SNAT_CHAIN)
                    .context("no SNAT jump in the lab's rules")?;
                iptables_delete(ns, "nat", "POSTROUTING", n)?;
            }
            VpcFault::DispatchDelete => {
                let veth = &self.pod("client")?.veth;
                let chain = rules::dispatch_chain_of(&self.node, veth)
                    .context("client has no dispatch entry")?;
                let n = rules::position(&self.node, "filter", &chain, &format!("-i {veth} "))
                    .context("client has no dispatch entry")?;
                iptables_delete(ns, "filter", &chain, n)?;
            }
        }
        Ok(())
    }

    /// Writes the lab's datastore (FelixConfiguration with `interfacePrefix: eni`, the node; no
    /// IP pools or blocks: the VPC CNI does IPAM) into `dir`; returns the file.
    pub fn write_datastore(&self, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("vpc-lab.yaml");
        let yaml = format!(
            "# FelixConfiguration as the operator leaves it for cni.type AmazonVPC, with the\n# prefix set in the resource rather than by FELIX_INTERFACEPREFIX\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata:\n  name: default\nspec:\n  interfacePrefix: eni\n  defaultEndpointToHostAction: ACCEPT\n  routeTableRange:\n    min: 65\n    max: 99\n  healthPort: 9099\n  vxlanVNI: 4096\n---\n# kubectl get node {name} -o yaml (IP=none: no Calico address annotations)\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    topology.kubernetes.io/zone: eu-west-1a\n",
            name = self.node.name
        );
        std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    /// Pings `to` from the pod `from`; true when a reply came back.
    pub fn ping(&self, from: &str, to: Ipv4Addr) -> anyhow::Result<bool> {
        Ok(super::ping_in(&self.pod(from)?.netns, to.into()))
    }

    /// Every pod reaches every other pod (also across ENIs), the VPC host through its own ENI,
    /// and the internet host through SNAT on the primary ENI.
    pub fn check_connectivity(&self) -> anyhow::Result<()> {
        for from in &self.node.pods {
            let targets = self
                .node
                .pods
                .iter()
                .filter(|p| p.name != from.name)
                .map(|p| (p.ip, p.name.as_str()))
                .chain([
                    (VPC_HOST, "the VPC host"),
                    (INTERNET_HOST, "the internet host"),
                ]);
            for (to, what) in targets {
                if !self.ping(&from.name, to)? {
                    bail!("{} ({}) cannot reach {what} ({to})", from.name, from.ip);
                }
            }
        }
        Ok(())
    }
}

fn rule(ns: &str, priority: u32, selector: &[&str], table: &str) -> anyhow::Result<()> {
    let prio = priority.to_string();
    let mut del = vec!["rule", "del", "priority", &prio];
    del.extend_from_slice(selector);
    // Replace, never duplicate: `ip rule add` adds the same rule twice.
    while sh::ok(&[&["ip", "-n", ns][..], &del[..]].concat()) {}
    let mut add = vec!["rule", "add", "priority", &prio];
    add.extend_from_slice(selector);
    add.extend_from_slice(&["lookup", table]);
    ip(ns, &add)
}

fn iptables_delete(ns: &str, table: &str, chain: &str, n: usize) -> anyhow::Result<()> {
    sh::run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "iptables-nft",
        "-t",
        table,
        "-D",
        chain,
        &n.to_string(),
    ])
    .map(drop)
}

/// A stable, locally administered unicast MAC (as `generateRandomMAC` makes them).
fn local_mac(seed: &str) -> String {
    let h = Sha1::digest(format!("vpc-cni-host-veth-{seed}").as_bytes());
    calico_conventions::mac(0x02, &h[..5])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_is_shaped_like_the_reference() {
        let lab = VpcLab::new("t");
        assert_eq!(lab.node.enis[0].table, 254);
        assert_eq!(lab.node.enis[1].table, 2);
        let nginx = lab.pod("nginx").expect("pod");
        assert_eq!(nginx.veth, "enic440f455693");
        assert_eq!(lab.all_netns().len(), 7);
        let text = rules::iptables_restore(&lab.node);
        assert!(
            text.contains("-A cali-FORWARD -m comment --comment \"cali:"),
            "{text}"
        );
        assert!(text.contains(
            "-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0"
        ));
        assert!(text.contains(":cali-from-wl-dispatch-c - [0:0]"));
        assert_eq!(
            rules::position(&lab.node, "nat", "POSTROUTING", SNAT_CHAIN),
            Some(2)
        );
    }
}
