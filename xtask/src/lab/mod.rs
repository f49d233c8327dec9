//! A fake Calico node lab in network namespaces, shaped exactly like what Felix and the CNI
//! plugin program on a VXLAN node (shared/reference/calico-dataplane.md §1–§4).
//!
//! ```text
//!   <prefix>-net:  br0 10.99.0.1/24 ── ul-a ─┐           ┌─ ul-b
//!   <prefix>-a (node-a): eth0 10.99.0.11 ────┘           └── eth0 10.99.0.12 (node-b) <prefix>-b
//!       vxlan.calico 10.244.0.0/32 (VNI 4096)               vxlan.calico 10.244.1.0/32
//!       cali… ── <prefix>-a-pod-a1 10.244.0.1               cali… ── <prefix>-b-pod-b1 10.244.1.1
//! ```
//!
//! Only namespaces named `<prefix>-…` are created, changed or deleted; [`Lab::down`] removes
//! them all, and a failed [`Lab::up`] cleans up after itself.
//!
//! In [`LabMode::Bgp`] there is no tunnel: each node runs a real BIRD (`bird.rs`) with
//! calico-node's config, and the pods reach each other over the routes BIRD learns.

pub mod bird;
mod datastore;
pub mod felix_rules;
pub mod spec;
pub mod vpc_cni;

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use ipnet::IpNet;

pub use self::spec::{LabMode, LabSpec, NodeSpec, NodeV6, PodSpec};
use self::spec::{
    POD_GATEWAY_V6, PROTO_CALICO, UNDERLAY_DEV, UNDERLAY_GATEWAY, UNDERLAY_MTU, UNDERLAY_PREFIX,
    UNDERLAY_PREFIX_V6, VNI, VXLAN_DEV, VXLAN_MTU, VXLAN_PORT, VXLAN_V6_DEV, VXLAN_V6_MTU,
    WORKLOAD_HOST_MAC,
};
use crate::sh;

/// Faults the lab can inject into one node; each is undone by [`Lab::repair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Delete the route to a remote node's block.
    RouteDelete,
    /// Point the remote block route at the underlay device instead of the tunnel.
    RouteUnderlay,
    /// Delete the local block's blackhole route.
    BlackholeDelete,
    /// Set vxlan.calico's MTU to 1400 (Felix wants the underlay's minus 50).
    TunnelMtu,
    /// Raise one pod veth's MTU above the tunnel's.
    PodMtu,
    /// Delete the FDB entry for the remote VTEP.
    FdbFlush,
    /// Delete the ARP entry for the remote tunnel address.
    ArpDelete,
    /// Set vxlan.calico down.
    TunnelDown,
    /// Give vxlan.calico an address outside the node's block.
    TunnelAddress,
    /// Delete the tcp:22 rule from cali-failsafe-in.
    FailsafeDelete,
    /// Delete the INPUT -> cali-INPUT jump.
    InputJumpDelete,
    /// BGP lab: this node's BIRD expects the wrong AS from its mesh peers (never establishes).
    BgpWrongAs,
    /// BGP lab: reset this node's mesh sessions once (`birdc restart`, and `birdc6` in the
    /// dual-stack lab); repeat to flap.
    BgpFlap,
    /// BGP lab: this node's BIRD stops advertising (and blackholing) its block.
    BgpWithdraw,
    /// BGP lab: this node's BIRD config lacks the mesh sessions.
    BgpSessionDelete,
    /// BGP lab: this node's BIRD has a session to 10.99.0.99, which nothing configures.
    BgpSessionExtra,
    /// Dual-stack BGP lab: this node's bird6 expects the wrong AS from its IPv6 mesh peers.
    Bgp6WrongAs,
    /// Dual-stack BGP lab: this node's bird6 config lacks the IPv6 mesh sessions.
    Bgp6SessionDelete,
    /// Dual stack: delete the route to a remote node's IPv6 block.
    V6RouteDelete,
    /// Dual stack: point the remote IPv6 block route at a tunnel address no node has.
    V6RouteNexthop,
    /// Dual stack: delete the local IPv6 block's blackhole route.
    V6BlackholeDelete,
    /// Dual stack: set vxlan-v6.calico's MTU to 1400 (Felix wants the underlay's minus 70).
    V6TunnelMtu,
    /// Dual stack: delete the NDP entry for the remote IPv6 VTEP.
    V6NeighDelete,
    /// Dual stack: delete the FDB entry for the remote IPv6 VTEP.
    V6FdbDelete,
    /// Dual stack: delete vxlan-v6.calico's tunnel address.
    V6TunnelAddressDelete,
    /// Dual stack: delete the ip6tables INPUT -> cali-INPUT jump.
    V6InputJumpDelete,
}

impl Fault {
    /// Whether the fault can be injected into `lab`: its mode, and IPv6 faults only into a
    /// dual-stack lab.
    pub fn applies_to(self, lab: &LabSpec) -> bool {
        self.mode().is_none_or(|m| m == lab.mode) && (!self.needs_ipv6() || lab.is_dual_stack())
    }

    /// The lab mode the fault applies to; `None` for any. (In the BGP lab BIRD re-installs a
    /// deleted route or blackhole on its next kernel scan, so those are VXLAN faults.)
    fn mode(self) -> Option<LabMode> {
        match self {
            Self::BgpWrongAs
            | Self::BgpFlap
            | Self::BgpWithdraw
            | Self::BgpSessionDelete
            | Self::BgpSessionExtra
            | Self::Bgp6WrongAs
            | Self::Bgp6SessionDelete => Some(LabMode::Bgp),
            Self::PodMtu | Self::FailsafeDelete | Self::InputJumpDelete => None,
            Self::RouteDelete
            | Self::RouteUnderlay
            | Self::BlackholeDelete
            | Self::TunnelMtu
            | Self::FdbFlush
            | Self::ArpDelete
            | Self::TunnelDown
            | Self::TunnelAddress
            | Self::V6RouteDelete
            | Self::V6RouteNexthop
            | Self::V6BlackholeDelete
            | Self::V6TunnelMtu
            | Self::V6NeighDelete
            | Self::V6FdbDelete
            | Self::V6TunnelAddressDelete
            | Self::V6InputJumpDelete => Some(LabMode::Vxlan),
        }
    }

    /// Whether the fault needs a dual-stack lab.
    pub fn needs_ipv6(self) -> bool {
        matches!(
            self,
            Self::V6RouteDelete
                | Self::V6RouteNexthop
                | Self::V6BlackholeDelete
                | Self::V6TunnelMtu
                | Self::V6NeighDelete
                | Self::V6FdbDelete
                | Self::V6TunnelAddressDelete
                | Self::V6InputJumpDelete
                | Self::Bgp6WrongAs
                | Self::Bgp6SessionDelete
        )
    }
}

pub struct Lab {
    pub spec: LabSpec,
}

impl Lab {
    pub fn new(prefix: &str) -> Self {
        Self::with_mode(prefix, LabMode::Vxlan)
    }

    pub fn with_mode(prefix: &str, mode: LabMode) -> Self {
        Self {
            spec: LabSpec::with_mode(prefix, mode),
        }
    }

    /// The VXLAN lab with an IPv6 side on every node (`vxlan-v6.calico`, /122 blocks).
    pub fn dual_stack(prefix: &str) -> Self {
        Self::dual_stack_with_mode(prefix, LabMode::Vxlan)
    }

    /// The lab shaped like `mode` with an IPv6 side on every node: in the BGP lab each node
    /// also runs `bird6` with the IPv6 mesh, which learns the IPv6 blocks.
    pub fn dual_stack_with_mode(prefix: &str, mode: LabMode) -> Self {
        Self {
            spec: LabSpec::dual_stack_with_mode(prefix, mode),
        }
    }

    /// The lab with this prefix as it was brought up: BGP when its nodes have BIRD's files
    /// (dual stack with bird6's), dual stack when its first node has `vxlan-v6.calico`.
    pub fn existing(prefix: &str) -> Self {
        let bgp = Self::with_mode(prefix, LabMode::Bgp);
        if bgp.spec.nodes.iter().any(|n| bird::socket6(n).exists()) {
            return Self::dual_stack_with_mode(prefix, LabMode::Bgp);
        }
        if bgp.spec.nodes.iter().any(|n| bird::dir(n).exists()) {
            return bgp;
        }
        let dual = Self::dual_stack(prefix);
        let first = &dual.spec.nodes[0].netns;
        if netns_exists(first) && ip(first, &["link", "show", VXLAN_V6_DEV]).is_ok() {
            dual
        } else {
            Self::new(prefix)
        }
    }

    /// Creates the lab from scratch (removing a previous one with the same prefix first).
    pub fn up(&self) -> anyhow::Result<()> {
        self.down();
        if let Err(e) = self
            .create()
            .and_then(|()| self.program_all())
            .and_then(|()| self.start_bgp())
        {
            self.down();
            return Err(e.context("bringing the lab up (cleaned up again)"));
        }
        Ok(())
    }

    /// BGP lab: a BIRD per node, then wait until the mesh is up and the routes are learned.
    fn start_bgp(&self) -> anyhow::Result<()> {
        if self.spec.mode != LabMode::Bgp {
            return Ok(());
        }
        for node in &self.spec.nodes {
            bird::start(&self.spec, node)?;
        }
        bird::wait_converged(&self.spec, std::time::Duration::from_secs(30))
    }

    /// Deletes every namespace of this lab; interfaces inside go with them, BIRD processes are
    /// killed first (whatever the mode: `down` also cleans up after a lab of the other mode).
    /// Idempotent.
    pub fn down(&self) {
        for node in &self.spec.nodes {
            if netns_exists(&node.netns) {
                bird::stop(node);
            }
            let _ = std::fs::remove_dir_all(bird::dir(node));
        }
        for ns in self.spec.all_netns() {
            if netns_exists(&ns) {
                let _ = sh::run(&["ip", "netns", "del", &ns]);
            }
        }
    }

    /// Re-applies Felix's (and in the BGP lab, confd's) intended state on every node: undoes
    /// any injected fault.
    pub fn repair(&self) -> anyhow::Result<()> {
        self.program_all()?;
        if self.spec.mode == LabMode::Bgp {
            for node in &self.spec.nodes {
                for family in bird::families(&self.spec, node) {
                    bird::reconfigure_family(&self.spec, node, family, bird::Deviation::default())?;
                }
            }
            bird::wait_converged(&self.spec, std::time::Duration::from_secs(30))?;
        }
        Ok(())
    }

    fn create(&self) -> anyhow::Result<()> {
        let sw = self.spec.switch_netns();
        sh::run(&["ip", "netns", "add", &sw])?;
        ip(&sw, &["link", "add", "br0", "type", "bridge"])?;
        ip(
            &sw,
            &[
                "addr",
                "add",
                &format!("{UNDERLAY_GATEWAY}/{UNDERLAY_PREFIX}"),
                "dev",
                "br0",
            ],
        )?;
        ip(&sw, &["link", "set", "br0", "up"])?;
        ip(&sw, &["link", "set", "lo", "up"])?;
        for node in &self.spec.nodes {
            sh::run(&["ip", "netns", "add", &node.netns])?;
            ip(&node.netns, &["link", "set", "lo", "up"])?;
            if node.v6.is_some() {
                // Addresses usable at once: duplicate address detection would hold every
                // new IPv6 address (pod gateways included) tentative for a second or more.
                no_dad(&node.netns)?;
            }
            ip(
                &sw,
                &[
                    "link",
                    "add",
                    &node.switch_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    UNDERLAY_DEV,
                    "netns",
                    &node.netns,
                ],
            )?;
            ip(
                &sw,
                &["link", "set", &node.switch_port, "master", "br0", "up"],
            )?;
            ip(
                &node.netns,
                &[
                    "link",
                    "set",
                    UNDERLAY_DEV,
                    "mtu",
                    &UNDERLAY_MTU.to_string(),
                    "up",
                ],
            )?;
            ip(
                &node.netns,
                &[
                    "addr",
                    "add",
                    &format!("{}/{UNDERLAY_PREFIX}", node.ip),
                    "dev",
                    UNDERLAY_DEV,
                ],
            )?;
            // Proxy ARP for 169.254.1.1 only answers when the node has a route to it.
            ip(
                &node.netns,
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &UNDERLAY_GATEWAY.to_string(),
                    "dev",
                    UNDERLAY_DEV,
                ],
            )?;
            if let Some(v6) = &node.v6 {
                self.create_v6(node, v6)?;
            }
            if self.spec.mode == LabMode::Vxlan {
                ip(
                    &node.netns,
                    &[
                        "link",
                        "add",
                        VXLAN_DEV,
                        "type",
                        "vxlan",
                        "id",
                        &VNI.to_string(),
                        "dstport",
                        &VXLAN_PORT.to_string(),
                        "local",
                        &node.ip.to_string(),
                        "dev",
                        UNDERLAY_DEV,
                        "nolearning",
                    ],
                )?;
                // The MAC can only change while the device is down, so it is set once, here.
                ip(
                    &node.netns,
                    &["link", "set", VXLAN_DEV, "address", &node.vtep_mac],
                )?;
            }
            for pod in &node.pods {
                sh::run(&["ip", "netns", "add", &pod.netns])?;
                if pod.ip6.is_some() {
                    no_dad(&pod.netns)?;
                }
                ip(
                    &node.netns,
                    &[
                        "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns",
                        &pod.netns,
                    ],
                )?;
                ip(
                    &node.netns,
                    &["link", "set", &pod.veth, "address", WORKLOAD_HOST_MAC],
                )?;
                ip(&pod.netns, &["link", "set", "lo", "up"])?;
                ip(
                    &pod.netns,
                    &[
                        "link",
                        "set",
                        "eth0",
                        "address",
                        &pod.mac,
                        "mtu",
                        &self.spec.pod_mtu().to_string(),
                        "up",
                    ],
                )?;
                ip(
                    &pod.netns,
                    &["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"],
                )?;
                ip(
                    &pod.netns,
                    &[
                        "route",
                        "add",
                        "169.254.1.1",
                        "dev",
                        "eth0",
                        "scope",
                        "link",
                    ],
                )?;
                ip(
                    &pod.netns,
                    &[
                        "route",
                        "add",
                        "default",
                        "via",
                        "169.254.1.1",
                        "dev",
                        "eth0",
                    ],
                )?;
                if let Some(ip6) = pod.ip6 {
                    // The CNI plugin's IPv6 pod: a /128 and a default route via the host
                    // veth's link-local address (from its MAC ee:ee:ee:ee:ee:ee).
                    ip(
                        &pod.netns,
                        &[
                            "-6",
                            "addr",
                            "add",
                            &format!("{ip6}/128"),
                            "dev",
                            "eth0",
                            "nodad",
                        ],
                    )?;
                    ip(
                        &pod.netns,
                        &[
                            "-6",
                            "route",
                            "add",
                            "default",
                            "via",
                            POD_GATEWAY_V6,
                            "dev",
                            "eth0",
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    fn program_all(&self) -> anyhow::Result<()> {
        for node in &self.spec.nodes {
            self.program(node)
                .with_context(|| format!("programming {}", node.name))?;
        }
        Ok(())
    }

    /// Everything Felix and the CNI plugin keep in sync on a node; idempotent.
    fn program(&self, node: &NodeSpec) -> anyhow::Result<()> {
        let ns = &node.netns;
        sysctl(ns, "net.ipv4.ip_forward", "1")?;
        // BGP lab: no tunnel; BIRD programs the blackhole and the remote blocks (bird.rs).
        if self.spec.mode == LabMode::Vxlan {
            let remotes = self.spec.remotes_of(node).map(Vtep::v4);
            program_vxlan(ns, VXLAN_DEV, VXLAN_MTU, &Vtep::v4(node), remotes)?;
        }
        for pod in &node.pods {
            let v = &pod.veth;
            let mtu = self.spec.pod_mtu().to_string();
            ip(ns, &["link", "set", v, "mtu", &mtu, "up"])?;
            for (key, value) in [
                (format!("net.ipv4.conf.{v}.proxy_arp"), "1"),
                (format!("net.ipv4.neigh.{v}.proxy_delay"), "0"),
                (format!("net.ipv4.conf.{v}.forwarding"), "1"),
                (format!("net.ipv4.conf.{v}.route_localnet"), "1"),
            ] {
                sysctl(ns, &key, value)?;
            }
            // Felix v3.32+: workload route with metric 1024, proto boot, scope link.
            ip(
                ns,
                &[
                    "route",
                    "replace",
                    &pod.ip.to_string(),
                    "dev",
                    v,
                    "scope",
                    "link",
                    "proto",
                    "boot",
                    "metric",
                    "1024",
                ],
            )?;
            ip(
                ns,
                &[
                    "neigh",
                    "replace",
                    &pod.ip.to_string(),
                    "dev",
                    v,
                    "lladdr",
                    &pod.mac,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        let ipsets = felix_rules::ipset_restore(&self.spec, node);
        sh::run_with_input(
            &["ip", "netns", "exec", ns, "ipset", "restore"],
            Some(&ipsets),
        )?;
        let rules = felix_rules::iptables_restore(node);
        sh::run_with_input(
            &["ip", "netns", "exec", ns, "iptables-nft-restore"],
            Some(&rules),
        )?;
        if let Some(v6) = &node.v6 {
            self.program_v6(node, v6)?;
        }
        Ok(())
    }

    /// The underlay's IPv6 address and, in the VXLAN lab, `vxlan-v6.calico` (same VNI and
    /// port as IPv4, bound to the underlay with the node's IPv6 as source: `vxlan_mgr.go`).
    fn create_v6(&self, node: &NodeSpec, v6: &NodeV6) -> anyhow::Result<()> {
        let ns = &node.netns;
        ip(
            ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/{UNDERLAY_PREFIX_V6}", v6.ip),
                "dev",
                UNDERLAY_DEV,
                "nodad",
            ],
        )?;
        if self.spec.mode == LabMode::Bgp {
            return Ok(());
        }
        ip(
            ns,
            &[
                "link",
                "add",
                VXLAN_V6_DEV,
                "type",
                "vxlan",
                "id",
                &VNI.to_string(),
                "dstport",
                &VXLAN_PORT.to_string(),
                "local",
                &v6.ip.to_string(),
                "dev",
                UNDERLAY_DEV,
                "nolearning",
            ],
        )?;
        ip(ns, &["link", "set", VXLAN_V6_DEV, "address", &v6.vtep_mac])
    }

    /// What Felix keeps in sync for IPv6 (reference §1.9): no static neighbours for pods,
    /// metric 1024 on every route (the kernel's IPv6 default), NDP + FDB per remote VTEP.
    fn program_v6(&self, node: &NodeSpec, v6: &NodeV6) -> anyhow::Result<()> {
        let ns = node.netns.as_str();
        sysctl(ns, "net.ipv6.conf.all.forwarding", "1")?;
        // BGP lab: no tunnel; bird6 programs the blackhole and the remote blocks (bird.rs).
        if self.spec.mode == LabMode::Vxlan {
            let remotes = self
                .spec
                .remotes_of(node)
                .filter_map(|r| r.v6.as_ref().map(Vtep::v6));
            program_vxlan(ns, VXLAN_V6_DEV, VXLAN_V6_MTU, &Vtep::v6(v6), remotes)?;
        }
        self.program_v6_workloads(node)
    }

    /// The IPv6 pods' routes and NDP proxying, and Felix's ip6tables hooks: in either mode.
    fn program_v6_workloads(&self, node: &NodeSpec) -> anyhow::Result<()> {
        let ns = node.netns.as_str();
        for pod in &node.pods {
            let Some(ip6) = pod.ip6 else { continue };
            sysctl(ns, &format!("net.ipv6.conf.{}.proxy_ndp", pod.veth), "1")?;
            ip(
                ns,
                &[
                    "-6",
                    "route",
                    "replace",
                    &ip6.to_string(),
                    "dev",
                    &pod.veth,
                    "proto",
                    "boot",
                    "metric",
                    "1024",
                ],
            )?;
        }
        sh::run_with_input(
            &["ip", "netns", "exec", ns, "ip6tables-nft-restore"],
            Some(&felix_rules::ip6tables_hooks()),
        )?;
        Ok(())
    }

    /// Injects `fault` into `node`.
    pub fn fault(&self, node: &str, fault: Fault) -> anyhow::Result<()> {
        let node = self.spec.node(node)?;
        let remote = self
            .spec
            .remotes_of(node)
            .next()
            .context("lab has a single node")?;
        let ns = node.netns.as_str();
        if let Some(mode) = fault.mode().filter(|m| *m != self.spec.mode) {
            bail!(
                "fault {fault:?} needs the {mode:?} lab; this one is {:?}",
                self.spec.mode
            );
        }
        let bird_with = |dev: bird::Deviation| bird::reconfigure(&self.spec, node, dev);
        let bird6_with = |dev: bird::Deviation| {
            if node.v6.is_none() {
                bail!(
                    "fault {fault:?} needs the dual-stack BGP lab (`cargo xtask lab up --mode bgp --dual-stack`)"
                );
            }
            bird::reconfigure_family(&self.spec, node, bird::Family::V6, dev)
        };
        match fault {
            Fault::BgpWrongAs => bird_with(bird::Deviation {
                peer_as: Some(datastore::LAB_AS + 1),
                ..Default::default()
            })?,
            Fault::BgpFlap => {
                let bird6 = bird::families(&self.spec, node).contains(&bird::Family::V6);
                for r in self.spec.remotes_of(node) {
                    bird::birdc(node, &["restart", &bird::mesh_name(r)])?;
                    if let Some(name) = bird::mesh_name6(r).filter(|_| bird6) {
                        bird::birdc_family(node, bird::Family::V6, &["restart", &name])?;
                    }
                }
            }
            Fault::BgpWithdraw => bird_with(bird::Deviation {
                no_block: true,
                ..Default::default()
            })?,
            Fault::BgpSessionDelete => bird_with(bird::Deviation {
                no_mesh: true,
                ..Default::default()
            })?,
            Fault::BgpSessionExtra => bird_with(bird::Deviation {
                extra_peer: Some(std::net::Ipv4Addr::new(10, 99, 0, 99).into()),
                ..Default::default()
            })?,
            Fault::Bgp6WrongAs => bird6_with(bird::Deviation {
                peer_as: Some(datastore::LAB_AS + 1),
                ..Default::default()
            })?,
            Fault::Bgp6SessionDelete => bird6_with(bird::Deviation {
                no_mesh: true,
                ..Default::default()
            })?,
            Fault::RouteDelete => ip(ns, &["route", "del", &remote.block.to_string()])?,
            Fault::RouteUnderlay => ip(
                ns,
                &[
                    "route",
                    "replace",
                    &remote.block.to_string(),
                    "via",
                    &remote.ip.to_string(),
                    "dev",
                    UNDERLAY_DEV,
                ],
            )?,
            Fault::BlackholeDelete => {
                ip(ns, &["route", "del", "blackhole", &node.block.to_string()])?
            }
            // The kernel refuses a VXLAN MTU above its parent's minus the overhead, so the
            // drift an operator meets is a lower one (someone "fixing" fragmentation).
            Fault::TunnelMtu => ip(ns, &["link", "set", VXLAN_DEV, "mtu", "1400"])?,
            Fault::PodMtu => {
                let pod = node.pods.first().context("node without pods")?;
                ip(
                    ns,
                    &["link", "set", &pod.veth, "mtu", &UNDERLAY_MTU.to_string()],
                )?;
            }
            Fault::FdbFlush => {
                sh::run(&[
                    "bridge",
                    "-n",
                    ns,
                    "fdb",
                    "del",
                    &remote.vtep_mac,
                    "dev",
                    VXLAN_DEV,
                    "dst",
                    &remote.ip.to_string(),
                    "self",
                ])?;
            }
            Fault::ArpDelete => ip(
                ns,
                &[
                    "neigh",
                    "del",
                    &remote.tunnel_ip.to_string(),
                    "dev",
                    VXLAN_DEV,
                ],
            )?,
            Fault::TunnelDown => ip(ns, &["link", "set", VXLAN_DEV, "down"])?,
            Fault::TunnelAddress => {
                // Add before deleting: removing a device's last IPv4 address makes the kernel
                // flush every route and ARP entry through it, which would be a different fault.
                ip(ns, &["addr", "add", "10.244.200.1/32", "dev", VXLAN_DEV])?;
                ip(
                    ns,
                    &[
                        "addr",
                        "del",
                        &format!("{}/32", node.tunnel_ip),
                        "dev",
                        VXLAN_DEV,
                    ],
                )?;
            }
            Fault::FailsafeDelete => {
                sh::run(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "iptables-nft",
                    "-t",
                    "filter",
                    "-D",
                    "cali-failsafe-in",
                    "1",
                ])?;
            }
            Fault::V6RouteDelete
            | Fault::V6RouteNexthop
            | Fault::V6BlackholeDelete
            | Fault::V6TunnelMtu
            | Fault::V6NeighDelete
            | Fault::V6FdbDelete
            | Fault::V6TunnelAddressDelete
            | Fault::V6InputJumpDelete => self.fault_v6(node, remote, fault)?,
            Fault::InputJumpDelete => {
                sh::run(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "iptables-nft",
                    "-t",
                    "filter",
                    "-D",
                    "INPUT",
                    "1",
                ])?;
            }
        }
        Ok(())
    }

    fn fault_v6(&self, node: &NodeSpec, remote: &NodeSpec, fault: Fault) -> anyhow::Result<()> {
        let (Some(v6), Some(r6)) = (&node.v6, &remote.v6) else {
            bail!("fault {fault:?} needs the dual-stack lab (`cargo xtask lab up --dual-stack`)");
        };
        let ns = node.netns.as_str();
        match fault {
            Fault::V6RouteDelete => ip(ns, &["-6", "route", "del", &r6.block.to_string()]),
            Fault::V6RouteNexthop => ip(
                ns,
                &[
                    "-6",
                    "route",
                    "replace",
                    &r6.block.to_string(),
                    "via",
                    "fd00:244::49",
                    "dev",
                    VXLAN_V6_DEV,
                    "onlink",
                    "proto",
                    "boot",
                    "mtu",
                    &VXLAN_V6_MTU.to_string(),
                ],
            ),
            Fault::V6BlackholeDelete => ip(
                ns,
                &["-6", "route", "del", "blackhole", &v6.block.to_string()],
            ),
            Fault::V6TunnelMtu => ip(ns, &["link", "set", VXLAN_V6_DEV, "mtu", "1400"]),
            Fault::V6NeighDelete => ip(
                ns,
                &[
                    "-6",
                    "neigh",
                    "del",
                    &r6.tunnel_ip.to_string(),
                    "dev",
                    VXLAN_V6_DEV,
                ],
            ),
            Fault::V6FdbDelete => sh::run(&[
                "bridge",
                "-n",
                ns,
                "fdb",
                "del",
                &r6.vtep_mac,
                "dev",
                VXLAN_V6_DEV,
                "dst",
                &r6.ip.to_string(),
                "self",
            ])
            .map(drop),
            Fault::V6TunnelAddressDelete => ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "del",
                    &format!("{}/128", v6.tunnel_ip),
                    "dev",
                    VXLAN_V6_DEV,
                ],
            ),
            Fault::V6InputJumpDelete => sh::run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "ip6tables-nft",
                "-t",
                "filter",
                "-D",
                "INPUT",
                "1",
            ])
            .map(drop),
            other => bail!("{other:?} is not an IPv6 fault"),
        }
    }

    /// Writes the lab's datastore YAML into `dir` (created if needed); returns the file.
    pub fn write_datastore(&self, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("lab.yaml");
        std::fs::write(&file, self.spec.datastore_yaml())
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    /// Pings `to` (either family) from the pod `from` (by pod name); true when a reply came
    /// back.
    pub fn ping(&self, from: &str, to: impl Into<IpAddr>) -> anyhow::Result<bool> {
        Ok(ping_in(&self.pod(from)?.netns, to.into()))
    }

    pub fn pod(&self, name: &str) -> anyhow::Result<&PodSpec> {
        self.spec
            .nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .with_context(|| format!("no lab pod named {name:?}"))
    }

    /// Checks that every pod reaches every pod on the other node through the tunnel.
    pub fn check_connectivity(&self) -> anyhow::Result<()> {
        for node in &self.spec.nodes {
            for remote in self.spec.remotes_of(node) {
                for (from, to) in node.pods.iter().zip(&remote.pods) {
                    if !self.ping(&from.name, to.ip)? {
                        bail!(
                            "{} ({}) cannot reach {} ({}) across the {:?} lab",
                            from.name,
                            from.ip,
                            to.name,
                            to.ip,
                            self.spec.mode
                        );
                    }
                    if let (Some(from6), Some(to6)) = (from.ip6, to.ip6)
                        && !self.ping(&from.name, to6)?
                    {
                        bail!(
                            "{} ({from6}) cannot reach {} ({to6}) across the {:?} lab over IPv6",
                            from.name,
                            to.name,
                            self.spec.mode
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// `ip -n <ns> <args…>`.
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    sh::run(&argv).map(drop)
}

/// One family's side of a node's VXLAN tunnel: what Felix programs for it on other nodes.
struct Vtep<'a> {
    node_ip: IpAddr,
    block: IpNet,
    tunnel_ip: IpAddr,
    mac: &'a str,
}

impl<'a> Vtep<'a> {
    fn v4(node: &'a NodeSpec) -> Self {
        Self {
            node_ip: node.ip.into(),
            block: node.block.into(),
            tunnel_ip: node.tunnel_ip.into(),
            mac: &node.vtep_mac,
        }
    }

    fn v6(v6: &'a NodeV6) -> Self {
        Self {
            node_ip: v6.ip.into(),
            block: v6.block.into(),
            tunnel_ip: v6.tunnel_ip.into(),
            mac: &v6.vtep_mac,
        }
    }
}

/// Felix's VXLAN for one family (`vxlan_mgr.go`, reference §1.5 and §1.9): the device up at
/// its MTU with only the node's tunnel address (IPv6 keeps its link-local one), the local
/// block blackholed, and per remote VTEP its block routed through the tunnel, its ARP (NDP)
/// entry and its FDB entry.
fn program_vxlan<'a>(
    ns: &str,
    dev: &str,
    mtu: u32,
    local: &Vtep,
    remotes: impl Iterator<Item = Vtep<'a>>,
) -> anyhow::Result<()> {
    let v6 = local.tunnel_ip.is_ipv6();
    let family = if v6 { "-6" } else { "-4" };
    let mtu = mtu.to_string();
    ip(ns, &["link", "set", dev, "mtu", &mtu, "up"])?;
    // IPv4 as the lab always had it: no address but the tunnel's, link-local included.
    let flush: &[&str] = if v6 {
        &["-6", "addr", "flush", "dev", dev, "scope", "global"]
    } else {
        &["addr", "flush", "dev", dev]
    };
    ip(ns, flush)?;
    let address = IpNet::from(local.tunnel_ip).to_string();
    let no_dad: &[&str] = if v6 { &["nodad"] } else { &[] };
    ip(
        ns,
        &[&[family, "addr", "add", &address, "dev", dev], no_dad].concat(),
    )?;
    let proto = PROTO_CALICO.to_string();
    let block = local.block.to_string();
    ip(
        ns,
        &[
            family,
            "route",
            "replace",
            "blackhole",
            &block,
            "proto",
            &proto,
        ],
    )?;
    for r in remotes {
        let (block, via) = (r.block.to_string(), r.tunnel_ip.to_string());
        ip(
            ns,
            &[
                family, "route", "replace", &block, "via", &via, "dev", dev, "onlink", "proto",
                "boot", "mtu", &mtu,
            ],
        )?;
        ip(
            ns,
            &[
                "neigh",
                "replace",
                &via,
                "dev",
                dev,
                "lladdr",
                r.mac,
                "nud",
                "permanent",
            ],
        )?;
        let node_ip = r.node_ip.to_string();
        sh::run(&[
            "bridge",
            "-n",
            ns,
            "fdb",
            "replace",
            r.mac,
            "dev",
            dev,
            "dst",
            &node_ip,
            "self",
            "permanent",
        ])?;
    }
    Ok(())
}

/// One ping from `ns` to `to`, two seconds to answer; true when a reply came back.
pub(crate) fn ping_in(ns: &str, to: IpAddr) -> bool {
    sh::ok(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &to.to_string(),
    ])
}

/// `sysctl -w key=value` inside `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    sh::run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ])
    .map(drop)
}

/// Turns duplicate address detection off for every interface `ns` gets from now on.
fn no_dad(ns: &str) -> anyhow::Result<()> {
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/var/run/netns").join(name).exists()
}
