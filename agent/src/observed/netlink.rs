//! Links, addresses, routes (all tables), neighbours, bridge FDB and ip rules through rtnetlink.
//!
//! Each dump converts kernel messages into the plain types of [`super::model`]; attributes we do
//! not need are ignored, and one undecodable message is reported without losing the others.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressMessage},
        link::{
            InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
        },
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteProtocol,
            RouteScope, RouteType as NlRouteType,
        },
        rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
        tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption},
    },
};

use super::model::{Address, FdbEntry, IpRule, Link, Neighbour, Route, RouteType, VxlanInfo};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("could not open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink {what} dump failed")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Link events (devices added, changed, removed) in the current thread's network namespace.
/// They only say that something changed; the caller reads the links again, so a lost or
/// coalesced event costs nothing but a later read.
pub struct LinkEvents {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkEvents {
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let (conn, _handle, messages) =
            rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
                .map_err(NetlinkError::Socket)?;
        Ok(Self {
            messages,
            task: tokio::spawn(conn),
        })
    }

    /// Waits for the next event and swallows the ones already queued behind it (a pod start
    /// brings several). `None` when the subscription ended.
    pub async fn changed(&mut self) -> Option<()> {
        use futures::StreamExt as _;
        self.messages.next().await?;
        while self.messages.try_recv().is_ok() {}
        Some(())
    }
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An open rtnetlink connection in the current thread's network namespace.
pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let task = tokio::spawn(conn);
        Ok(Self { handle, task })
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "link",
                source,
            })?;
        let mut links: Vec<Link> = msgs.iter().map(link_from).collect();
        // The VXLAN parent is an index; name it once every link is known.
        let names: Vec<(u32, String)> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        for l in &mut links {
            if let Some(vx) = l.vxlan.as_mut() {
                vx.parent_name = vx.parent_index.and_then(|i| {
                    names
                        .iter()
                        .find(|(idx, _)| *idx == i)
                        .map(|(_, n)| n.clone())
                });
            }
        }
        Ok(links)
    }

    pub async fn addresses(&self, links: &[Link]) -> Result<Vec<Address>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "address",
                source,
            })?;
        Ok(msgs.iter().filter_map(|m| address_from(m, links)).collect())
    }

    /// Routes of every table and both families. The builder defaults to table main and
    /// protocol static, so both are reset to "any" explicitly.
    pub async fn routes(&self, links: &[Link]) -> Result<Vec<Route>, NetlinkError> {
        let mut out = Vec::new();
        let requests = [
            RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(0)
                .protocol(RouteProtocol::Unspec)
                .build(),
            RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(0)
                .protocol(RouteProtocol::Unspec)
                .build(),
        ];
        for mut msg in requests {
            msg.header.scope = RouteScope::Universe;
            msg.header.kind = NlRouteType::Unspec;
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(|source| NetlinkError::Dump {
                    what: "route",
                    source,
                })?;
            out.extend(msgs.iter().filter_map(|m| route_from(m, links)));
        }
        Ok(out)
    }

    /// IPv4/IPv6 neighbours (ARP/NDP).
    pub async fn neighbours(&self, links: &[Link]) -> Result<Vec<Neighbour>, NetlinkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "neighbour",
                source,
            })?;
        Ok(msgs
            .iter()
            .filter_map(|m| neighbour_from(m, links))
            .collect())
    }

    /// The bridge-family neighbour table, i.e. `bridge fdb`.
    pub async fn fdb(&self, links: &[Link]) -> Result<Vec<FdbEntry>, NetlinkError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Dump {
                what: "fdb",
                source,
            })?;
        Ok(msgs.iter().filter_map(|m| fdb_from(m, links)).collect())
    }

    pub async fn rules(&self) -> Result<Vec<IpRule>, NetlinkError> {
        let mut out = Vec::new();
        for (v, family) in [(IpVersion::V4, 4), (IpVersion::V6, 6)] {
            let msgs: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(v)
                .execute()
                .try_collect()
                .await
                .map_err(|source| NetlinkError::Dump {
                    what: "rule",
                    source,
                })?;
            out.extend(msgs.iter().map(|m| rule_from(m, family)));
        }
        Ok(out)
    }

    /// Felix's TC (clsact) programs: `tc/<iface>_<hook>` for each hook of the first interface
    /// where one is attached, recognised as Felix recognises its own (`felix/bpf/tc/attach.go`
    /// `ListAttachedPrograms`: a bpf filter whose name holds `cali_tc_preambl`). Host
    /// interfaces are looked at first; one interface is evidence enough, so a node with many
    /// workloads costs few requests. An interface without a clsact qdisc answers with an error,
    /// which only means no program there.
    pub async fn felix_tc_programs(&self, links: &[Link]) -> Vec<String> {
        let mut order: Vec<&Link> = links.iter().collect();
        order.sort_by_key(|l| calico_conventions::is_workload_iface(&l.name));
        for l in order {
            let Ok(index) = i32::try_from(l.index) else {
                continue;
            };
            let mut found = Vec::new();
            for hook in ["ingress", "egress"] {
                let mut tf = self.handle.traffic_filter(index);
                let req = tf.get();
                let req = if hook == "ingress" {
                    req.ingress()
                } else {
                    req.egress()
                };
                let Ok(msgs) = req.execute().try_collect::<Vec<TcMessage>>().await else {
                    continue;
                };
                if msgs.iter().any(felix_preamble) {
                    found.push(format!("tc/{}_{hook}", l.name));
                }
            }
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }
}

fn felix_preamble(m: &TcMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        TcAttribute::Options(opts) => opts.iter().any(|o| {
            matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n.contains("cali_tc_preambl"))
        }),
        _ => false,
    })
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn address_from(m: &AddressMessage, links: &[Link]) -> Option<Address> {
    // IFA_LOCAL is the interface's own address on point-to-point links; prefer it.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    Some(Address {
        ifindex: m.header.index,
        ifname: name_of(links, m.header.index),
        address: IpNet::new(addr?, m.header.prefix_len).ok()?,
        scope: super::model::scope_name(u8::from(m.header.scope)),
    })
}

/// An ARP/NDP entry; `None` for other families (the bridge FDB is [`fdb_from`]).
pub(super) fn neighbour_from(m: &NeighbourMessage, links: &[Link]) -> Option<Neighbour> {
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut dst = None;
    let mut lladdr = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(a) => dst = neigh_addr(a),
            NeighbourAttribute::LinkLayerAddress(mac) => lladdr = Some(mac_string(mac)),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: m.header.ifindex,
        dev: name_of(links, m.header.ifindex),
        destination: dst?,
        lladdr,
        state: nud_name(m.header.state),
    })
}

/// A bridge-family neighbour: one `bridge fdb` entry.
pub(super) fn fdb_from(m: &NeighbourMessage, links: &[Link]) -> Option<FdbEntry> {
    let mut e = FdbEntry {
        ifindex: m.header.ifindex,
        dev: name_of(links, m.header.ifindex),
        mac: String::new(),
        destination: None,
        vni: None,
        port: None,
        controller: None,
        self_entry: m.header.flags.contains(NeighbourFlags::Own),
        state: nud_name(m.header.state),
    };
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(mac) => e.mac = mac_string(mac),
            NeighbourAttribute::Destination(a) => e.destination = neigh_addr(a),
            NeighbourAttribute::Vni(v) => e.vni = Some(*v),
            NeighbourAttribute::Port(p) => e.port = Some(*p),
            NeighbourAttribute::Controller(c) => e.controller = Some(name_of(links, *c)),
            _ => {}
        }
    }
    (!e.mac.is_empty()).then_some(e)
}

fn name_of(links: &[Link], index: u32) -> String {
    links
        .iter()
        .find(|l| l.index == index)
        .map_or_else(|| format!("if{index}"), |l| l.name.clone())
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The NUD state's most significant bit, named as iproute2 does. States can combine bits
/// (VXLAN FDB entries are PERMANENT|NOARP), so they are tested in order of importance.
fn nud_name(state: NeighbourState) -> String {
    const NAMES: [(u16, &str); 9] = [
        (0x80, "PERMANENT"),
        (0x40, "NOARP"),
        (0x02, "REACHABLE"),
        (0x04, "STALE"),
        (0x08, "DELAY"),
        (0x10, "PROBE"),
        (0x20, "FAILED"),
        (0x01, "INCOMPLETE"),
        (0x00, "NONE"),
    ];
    let bits = u16::from(state);
    NAMES
        .iter()
        .find(|(bit, _)| bits & bit != 0 || (*bit == 0 && bits == 0))
        .map_or_else(|| format!("0x{bits:x}"), |(_, n)| (*n).to_string())
}

/// Bridge-family messages carry the VTEP address untyped; its length says the family.
fn neigh_addr(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn link_from(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        admin_up: m.header.flags.contains(LinkFlags::Up),
        oper_state: "unknown".into(),
        mac: None,
        link_index: None,
        controller: None,
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(mac) => link.mac = Some(mac_string(mac)),
            LinkAttribute::Link(i) => link.link_index = Some(*i),
            LinkAttribute::Controller(i) => link.controller = Some(*i),
            LinkAttribute::OperState(s) => link.oper_state = oper_name(*s),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(kind_name(k)),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(vxlan_from(attrs))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(k: &InfoKind) -> String {
    k.to_string()
}

fn oper_name(s: State) -> String {
    match s {
        State::Up => "up",
        State::Down => "down",
        State::LowerLayerDown => "lowerlayerdown",
        State::NotPresent => "notpresent",
        State::Testing => "testing",
        State::Dormant => "dormant",
        _ => "unknown",
    }
    .to_string()
}

fn vxlan_from(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: None,
        local: None,
        port: None,
        parent_index: None,
        parent_name: None,
        learning: false,
        external: false,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = Some(*id),
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Port(p) => v.port = Some(*p),
            InfoVxlan::Link(i) => v.parent_index = Some(*i),
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::CollectMetadata(c) => v.external = *c,
            _ => {}
        }
    }
    v
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

pub(super) fn route_from(m: &RouteMessage, links: &[Link]) -> Option<Route> {
    let h = &m.header;
    let (zero, max): (IpAddr, u8) = match h.address_family {
        AddressFamily::Inet => (IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 32),
        AddressFamily::Inet6 => (IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 128),
        _ => return None,
    };
    let mut dst = zero;
    let mut r = Route {
        table: u32::from(h.table),
        destination: IpNet::new(zero, 0).ok()?,
        kind: RouteType::from_kernel(u8::from(h.kind)),
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        gateway: None,
        oif: None,
        dev: None,
        onlink: h.flags.contains(RouteFlags::Onlink),
        metric: 0,
        mtu: None,
        prefsrc: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d).unwrap_or(zero),
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            RouteAttribute::PrefSource(p) => r.prefsrc = route_addr(p),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.metric = *p,
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Metrics(ms) => {
                r.mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    if h.kind == NlRouteType::Unspec {
        return None;
    }
    r.destination = IpNet::new(dst, h.destination_prefix_length.min(max)).ok()?;
    r.dev = r.oif.map(|i| name_of(links, i));
    Some(r)
}

pub(super) fn rule_from(m: &RuleMessage, family: u8) -> IpRule {
    let h = &m.header;
    let mut r = IpRule {
        family,
        priority: 0,
        invert: h.flags.contains(RuleFlags::Invert),
        source: None,
        destination: None,
        fwmark: None,
        fwmask: None,
        iif: None,
        oif: None,
        table: u32::from(h.table),
        action: match h.action {
            RuleAction::ToTable => "lookup",
            RuleAction::Goto => "goto",
            RuleAction::Nop => "nop",
            RuleAction::Blackhole => "blackhole",
            RuleAction::Unreachable => "unreachable",
            RuleAction::Prohibit => "prohibit",
            _ => "unspec",
        }
        .to_string(),
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Source(ip) => r.source = IpNet::new(*ip, h.src_len).ok(),
            RuleAttribute::Destination(ip) => r.destination = IpNet::new(*ip, h.dst_len).ok(),
            RuleAttribute::FwMark(v) => r.fwmark = Some(*v),
            RuleAttribute::FwMask(v) => r.fwmask = Some(*v),
            RuleAttribute::Iifname(n) => r.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => r.oif = Some(n.clone()),
            RuleAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    r
}
