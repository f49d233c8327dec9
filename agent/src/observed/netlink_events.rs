//! Netlink change notifications (what `ip monitor` prints) applied to an [`ObservedDataplane`],
//! so the daemon re-verifies within milliseconds of a change instead of re-reading everything.
//!
//! Routes, addresses, neighbours, FDB entries and rules are applied message by message. A link
//! event cannot be: when a device goes down or away the kernel drops its IPv4 routes without
//! sending RTM_DELROUTE, so a link change asks for a re-read of the netlink state instead. An
//! overrun (ENOBUFS: the kernel dropped notifications because the socket buffer was full)
//! means the snapshot can no longer be trusted: the caller re-reads everything.

use futures::StreamExt as _;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{
    MulticastGroup,
    packet_route::{AddressFamily, RouteNetlinkMessage},
};

use super::{
    ObservedDataplane,
    netlink::{NetlinkError, address_from, fdb_from, neighbour_from, route_from, rule_from},
};

/// What one notification means for the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Applied to the snapshot.
    Applied,
    /// A link changed: re-read the netlink state (routes may have vanished silently).
    Relist,
    /// Notifications were lost: re-read everything.
    Overrun,
    /// Nothing the agent keeps.
    Ignored,
}

/// One notification as the kernel sent it.
pub type Notification = NetlinkMessage<RouteNetlinkMessage>;

type Messages = futures::channel::mpsc::UnboundedReceiver<(Notification, netlink_sys::SocketAddr)>;

/// A subscription to link, address, route, neighbour (incl. FDB) and rule notifications of
/// both families in the calling thread's network namespace.
pub struct NetlinkEvents {
    messages: Messages,
    task: tokio::task::JoinHandle<()>,
}

impl NetlinkEvents {
    /// `rx_buffer` sets the socket's receive buffer (bytes); the kernel's default
    /// (`net.core.rmem_default`) holds a few hundred notifications.
    pub fn subscribe(rx_buffer: Option<usize>) -> Result<Self, NetlinkError> {
        let (mut conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Rule,
            MulticastGroup::Ipv6Rule,
        ])
        .map_err(NetlinkError::Socket)?;
        if let Some(size) = rx_buffer {
            conn.socket_mut()
                .socket_mut()
                .set_rx_buf_sz(size)
                .map_err(NetlinkError::Socket)?;
        }
        Ok(Self {
            messages,
            task: tokio::spawn(conn),
        })
    }

    /// The next notification; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Notification> {
        self.messages.next().await.map(|(m, _)| m)
    }

    /// A notification already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Notification> {
        self.messages.try_recv().ok().map(|(m, _)| m)
    }
}

impl Drop for NetlinkEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies one notification to `obs`.
pub fn apply(obs: &mut ObservedDataplane, msg: &Notification) -> Change {
    let m = match &msg.payload {
        NetlinkPayload::Overrun(_) => return Change::Overrun,
        NetlinkPayload::InnerMessage(m) => m,
        _ => return Change::Ignored,
    };
    match m {
        // Rare outside pod churn, which the caller debounces.
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => Change::Relist,
        RouteNetlinkMessage::NewAddress(a) => {
            upsert(&mut obs.addresses, address_from(a, &obs.links), |x, y| {
                x.ifindex == y.ifindex && x.address == y.address
            })
        }
        RouteNetlinkMessage::DelAddress(a) => {
            remove(&mut obs.addresses, address_from(a, &obs.links), |x, y| {
                x.ifindex == y.ifindex && x.address == y.address
            })
        }
        RouteNetlinkMessage::NewRoute(r) => {
            upsert(&mut obs.routes, route_from(r, &obs.links), |x, y| {
                x.table == y.table && x.destination == y.destination && x.metric == y.metric
            })
        }
        RouteNetlinkMessage::DelRoute(r) => {
            remove(&mut obs.routes, route_from(r, &obs.links), |x, y| {
                x.table == y.table && x.destination == y.destination && x.metric == y.metric
            })
        }
        RouteNetlinkMessage::NewNeighbour(n) if n.header.family == AddressFamily::Bridge => {
            upsert(&mut obs.fdb, fdb_from(n, &obs.links), same_fdb)
        }
        RouteNetlinkMessage::DelNeighbour(n) if n.header.family == AddressFamily::Bridge => {
            remove(&mut obs.fdb, fdb_from(n, &obs.links), same_fdb)
        }
        RouteNetlinkMessage::NewNeighbour(n) => upsert(
            &mut obs.neighbours,
            neighbour_from(n, &obs.links),
            |x, y| x.ifindex == y.ifindex && x.destination == y.destination,
        ),
        RouteNetlinkMessage::DelNeighbour(n) => remove(
            &mut obs.neighbours,
            neighbour_from(n, &obs.links),
            |x, y| x.ifindex == y.ifindex && x.destination == y.destination,
        ),
        RouteNetlinkMessage::NewRule(r) => {
            let rule = rule_from(r, family_number(r.header.family));
            upsert(&mut obs.rules, Some(rule), |x, y| x == y)
        }
        RouteNetlinkMessage::DelRule(r) => {
            let rule = rule_from(r, family_number(r.header.family));
            remove(&mut obs.rules, Some(rule), |x, y| x == y)
        }
        _ => Change::Ignored,
    }
}

fn family_number(f: AddressFamily) -> u8 {
    if f == AddressFamily::Inet6 { 6 } else { 4 }
}

fn same_fdb(x: &super::FdbEntry, y: &super::FdbEntry) -> bool {
    x.ifindex == y.ifindex && x.mac == y.mac && x.destination == y.destination
}

fn upsert<T>(items: &mut Vec<T>, item: Option<T>, same: impl Fn(&T, &T) -> bool) -> Change {
    let Some(item) = item else {
        return Change::Ignored;
    };
    match items.iter_mut().find(|x| same(x, &item)) {
        Some(x) => *x = item,
        None => items.push(item),
    }
    Change::Applied
}

fn remove<T>(items: &mut Vec<T>, item: Option<T>, same: impl Fn(&T, &T) -> bool) -> Change {
    let Some(item) = item else {
        return Change::Ignored;
    };
    items.retain(|x| !same(x, &item));
    Change::Applied
}
