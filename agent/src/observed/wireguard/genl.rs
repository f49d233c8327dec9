//! A kernel WireGuard device over generic netlink: `WG_CMD_GET_DEVICE` with `NLM_F_DUMP`.
//!
//! The kernel splits a large device across messages, and one peer's allowed IPs may continue
//! in the next message under the same public key: peers are merged by key.
//!
//! The socket is a plain blocking one, and not genetlink's async connection, for two reasons:
//! it lives in the calling thread's network namespace, and netlink-proto logs every received
//! message's raw bytes at trace level, which here would include the device's private key.
//! Each reply is decoded into the crate's types and the `PrivateKey` attribute is dropped
//! right there, never stored or printed.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use netlink_packet_core::{
    ErrorMessage, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_generic::{
    GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_packet_wireguard::{
    WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd, WireguardMessage,
    WireguardPeerAttribute,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use nix::errno::Errno;

use super::{WgDevice, WgPeer, fwmark_text, merge_peer};

#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    #[error("reading WireGuard devices needs CAP_NET_ADMIN in this network namespace")]
    Permission(#[source] std::io::Error),
    #[error("the kernel has no WireGuard generic netlink family (wireguard module not loaded)")]
    NoFamily(#[source] std::io::Error),
    #[error("no kernel WireGuard device {0}")]
    NoDevice(String),
    #[error("could not {what} the generic netlink socket")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel answered {what} with an error")]
    Kernel {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not decode the {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    #[error("the kernel did not say which id its WireGuard family has")]
    NoFamilyId,
}

const SEQUENCE: u32 = 1;
/// The kernel sizes dump datagrams at most 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// Reads device `name` from the calling thread's network namespace.
pub fn get(name: &str) -> Result<WgDevice, GenlError> {
    let socket = open()?;
    let family = family_id(&socket)?;
    let mut request = GenlMessage::from_payload(WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(name.to_string())],
    });
    request.set_resolved_family_id(family);
    send(&socket, request, NLM_F_REQUEST | NLM_F_DUMP)?;
    let mut device: Option<WgDevice> = None;
    receive::<GenlMessage<WireguardMessage>>(&socket, "the device dump", |payload| {
        if let NetlinkPayload::InnerMessage(m) = payload {
            fold(&mut device, m.payload);
        }
    })
    .map_err(|e| match e {
        GenlError::Kernel { source, .. } if errno(&source) == Some(Errno::ENODEV) => {
            GenlError::NoDevice(name.to_string())
        }
        e => e,
    })?;
    device.ok_or_else(|| GenlError::NoDevice(name.to_string()))
}

fn open() -> Result<Socket, GenlError> {
    let socket_err = |what| move |source| GenlError::Socket { what, source };
    let mut socket = Socket::new(NETLINK_GENERIC).map_err(socket_err("open"))?;
    socket.bind_auto().map_err(socket_err("bind"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(socket_err("connect"))?;
    Ok(socket)
}

/// `CTRL_CMD_GETFAMILY wireguard`: generic netlink families get their ids at load time.
fn family_id(socket: &Socket) -> Result<u16, GenlError> {
    let request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
    });
    send(socket, request, NLM_F_REQUEST)?;
    let mut id = None;
    receive::<GenlMessage<GenlCtrl>>(socket, "the family lookup", |payload| {
        if let NetlinkPayload::InnerMessage(m) = payload {
            id = id.or_else(|| {
                m.payload.nlas.iter().find_map(|a| match a {
                    GenlCtrlAttrs::FamilyId(id) => Some(*id),
                    _ => None,
                })
            });
        }
    })
    .map_err(|e| match e {
        GenlError::Kernel { source, .. } if errno(&source) == Some(Errno::ENOENT) => {
            GenlError::NoFamily(source)
        }
        e => e,
    })?;
    id.ok_or(GenlError::NoFamilyId)
}

fn send<T: NetlinkSerializable + std::fmt::Debug>(
    socket: &Socket,
    payload: T,
    flags: u16,
) -> Result<(), GenlError>
where
    NetlinkPayload<T>: From<T>,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = SEQUENCE;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    message.finalize();
    let mut out = vec![0; message.buffer_len()];
    message.serialize(&mut out);
    socket.send(&out, 0).map_err(|e| match errno(&e) {
        Some(Errno::EPERM | Errno::EACCES) => GenlError::Permission(e),
        _ => GenlError::Socket {
            what: "send on",
            source: e,
        },
    })?;
    Ok(())
}

/// Reads datagrams until the answer is complete (DONE for a dump, the ACK or one message for
/// a plain request), handing each data message to `each`.
fn receive<T: NetlinkDeserializable + std::fmt::Debug>(
    socket: &Socket,
    what: &'static str,
    mut each: impl FnMut(NetlinkPayload<T>),
) -> Result<(), GenlError> {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let len = match socket.recv(&mut &mut buf[..], 0) {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(GenlError::Socket {
                    what: "receive on",
                    source,
                });
            }
        };
        let Some(datagram) = buf.get(..len) else {
            return Err(GenlError::Socket {
                what: "receive on",
                source: std::io::Error::other("datagram longer than the buffer"),
            });
        };
        if decode_datagram(datagram, what, &mut each)? {
            return Ok(());
        }
    }
}

/// Decodes one datagram; true when the answer is complete.
fn decode_datagram<T: NetlinkDeserializable + std::fmt::Debug>(
    datagram: &[u8],
    what: &'static str,
    each: &mut impl FnMut(NetlinkPayload<T>),
) -> Result<bool, GenlError> {
    let mut rest = datagram;
    let mut done = false;
    while !rest.is_empty() {
        let buffer = NetlinkBuffer::new_checked(rest).map_err(|source| GenlError::Decode {
            what: "netlink header",
            source,
        })?;
        let len = buffer.length() as usize;
        let multi = buffer.flags() & netlink_packet_core::NLM_F_MULTIPART != 0;
        if buffer.sequence_number() == SEQUENCE {
            let message = NetlinkMessage::<T>::deserialize(&rest[..len])
                .map_err(|source| GenlError::Decode { what, source })?;
            match message.payload {
                NetlinkPayload::Done(d) if d.code < 0 => return Err(kernel(what, d.code)),
                NetlinkPayload::Done(_) => done = true,
                NetlinkPayload::Error(ErrorMessage {
                    code: Some(code), ..
                }) => return Err(kernel(what, code.get())),
                NetlinkPayload::Error(_) => done = true,
                p @ NetlinkPayload::InnerMessage(_) => {
                    each(p);
                    // A plain request's answer is one message, without DONE.
                    done |= !multi;
                }
                _ => {}
            }
        }
        let next = len.next_multiple_of(4).min(rest.len());
        rest = &rest[next..];
    }
    Ok(done)
}

fn kernel(what: &'static str, code: i32) -> GenlError {
    let source = std::io::Error::from_raw_os_error(code.saturating_abs());
    match errno(&source) {
        Some(Errno::EPERM | Errno::EACCES) => GenlError::Permission(source),
        _ => GenlError::Kernel { what, source },
    }
}

fn errno(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// Folds one message of the dump into `device`. The private key is matched and dropped here.
fn fold(device: &mut Option<WgDevice>, message: WireguardMessage) {
    let d = device.get_or_insert_with(WgDevice::default);
    for attr in message.attributes {
        match attr {
            WireguardAttribute::IfName(n) => d.name = n,
            WireguardAttribute::PublicKey(k) => d.public_key = Some(BASE64.encode(k)),
            WireguardAttribute::ListenPort(p) => d.listen_port = Some(p),
            WireguardAttribute::Fwmark(m) => d.fwmark = Some(fwmark_text(m)),
            WireguardAttribute::Peers(peers) => {
                for p in peers {
                    if let Some(peer) = peer(&p) {
                        merge_peer(&mut d.peers, peer);
                    }
                }
            }
            WireguardAttribute::PrivateKey(_) => {}
            _ => {}
        }
    }
}

fn peer(attrs: &[WireguardPeerAttribute]) -> Option<WgPeer> {
    let mut p = WgPeer::default();
    let mut key = None;
    for a in attrs {
        match a {
            WireguardPeerAttribute::PublicKey(k) => key = Some(BASE64.encode(k)),
            WireguardPeerAttribute::Endpoint(e) => p.endpoint = Some(e.to_string()),
            WireguardPeerAttribute::PersistentKeepalive(k) => {
                p.persistent_keepalive = (*k != 0).then_some(u32::from(*k));
            }
            WireguardPeerAttribute::LastHandshake(t) => {
                p.latest_handshake = u64::try_from(t.seconds).ok().filter(|s| *s != 0);
            }
            WireguardPeerAttribute::RxBytes(b) => p.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => p.tx_bytes = *b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                p.allowed_ips.extend(ips.iter().filter_map(|ip| {
                    let addr = ip.iter().find_map(|a| match a {
                        WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
                        _ => None,
                    })?;
                    let cidr = ip.iter().find_map(|a| match a {
                        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
                        _ => None,
                    })?;
                    Some(format!("{addr}/{cidr}"))
                }));
            }
            // The preshared key is as secret as the private key.
            _ => {}
        }
    }
    p.public_key = key?;
    Some(p)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, NLM_F_MULTIPART};
    use netlink_packet_wireguard::{
        WireguardAddressFamily, WireguardAllowedIp, WireguardPeer, WireguardTimeSpec,
    };

    use super::*;

    const FAMILY: u16 = 0x1c;

    fn allowed(ip: &str, cidr: u8) -> WireguardAllowedIp {
        WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
            WireguardAllowedIpAttr::IpAddr(ip.parse().expect("ip")),
            WireguardAllowedIpAttr::Cidr(cidr),
        ])
    }

    fn message(attributes: Vec<WireguardAttribute>) -> Vec<u8> {
        let mut genl = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes,
        });
        genl.set_resolved_family_id(FAMILY);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_MULTIPART;
        header.sequence_number = SEQUENCE;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(genl));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn done() -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_MULTIPART;
        header.sequence_number = SEQUENCE;
        let mut m: NetlinkMessage<GenlMessage<WireguardMessage>> =
            NetlinkMessage::new(header, NetlinkPayload::Done(DoneMessage::default()));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    const PRIVATE: [u8; 32] = [0x5a; 32];

    /// A dump as the kernel sends a device whose peer B does not fit one message: B's allowed
    /// IPs continue in the second message under its key alone.
    fn split_dump() -> Vec<Vec<u8>> {
        let key_a = [1u8; 32];
        let key_b = [2u8; 32];
        let first = message(vec![
            WireguardAttribute::IfIndex(7),
            WireguardAttribute::IfName("wireguard.cali".into()),
            WireguardAttribute::PrivateKey(PRIVATE),
            WireguardAttribute::PublicKey([3u8; 32]),
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Fwmark(0x20_0000),
            WireguardAttribute::Peers(vec![
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(key_a),
                    WireguardPeerAttribute::Endpoint("192.168.50.2:51820".parse().expect("sa")),
                    WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                        seconds: 1_700_000_000,
                        nano_seconds: 5,
                    }),
                    WireguardPeerAttribute::AllowedIps(vec![allowed("10.244.1.0", 26)]),
                ]),
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(key_b),
                    WireguardPeerAttribute::Endpoint("192.168.50.3:51820".parse().expect("sa")),
                    WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
                    WireguardPeerAttribute::AllowedIps(vec![allowed("10.244.2.0", 26)]),
                ]),
            ]),
        ]);
        let second = message(vec![
            WireguardAttribute::IfIndex(7),
            WireguardAttribute::IfName("wireguard.cali".into()),
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key_b),
                WireguardPeerAttribute::AllowedIps(vec![
                    allowed("10.244.2.64", 26),
                    allowed("10.244.2.1", 32),
                ]),
            ])]),
        ]);
        vec![first, [second, done()].concat()]
    }

    #[test]
    fn peers_split_across_messages_are_merged_by_key_and_the_private_key_is_dropped() {
        let mut device = None;
        let mut finished = Vec::new();
        for d in split_dump() {
            let complete =
                decode_datagram::<GenlMessage<WireguardMessage>>(&d, "the device dump", &mut |p| {
                    if let NetlinkPayload::InnerMessage(m) = p {
                        fold(&mut device, m.payload);
                    }
                })
                .expect("decodes");
            finished.push(complete);
        }
        assert_eq!(finished, [false, true], "complete only at DONE");
        let d = device.expect("a device");
        assert_eq!(d.name, "wireguard.cali");
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(d.fwmark.as_deref(), Some("0x200000"));
        assert_eq!(d.public_key, Some(BASE64.encode([3u8; 32])));
        assert_eq!(d.peers.len(), 2, "{d:?}");
        let b = &d.peers[1];
        assert_eq!(b.public_key, BASE64.encode([2u8; 32]));
        assert_eq!(
            b.allowed_ips,
            ["10.244.2.0/26", "10.244.2.64/26", "10.244.2.1/32"]
        );
        assert_eq!(b.endpoint.as_deref(), Some("192.168.50.3:51820"));
        assert_eq!(b.latest_handshake, None, "a zero handshake is none");
        assert_eq!(d.peers[0].latest_handshake, Some(1_700_000_000));
        let shown = format!("{d:?} {}", serde_json::to_string(&d).expect("json"));
        assert!(!shown.contains(&BASE64.encode(PRIVATE)), "{shown}");
        assert!(!shown.contains("90, 90, 90"), "{shown}");
    }

    #[test]
    fn kernel_errors_are_typed() {
        let mut header = NetlinkHeader::default();
        header.sequence_number = SEQUENCE;
        let mut err = ErrorMessage::default();
        err.code = std::num::NonZeroI32::new(-1);
        let mut m: NetlinkMessage<GenlMessage<WireguardMessage>> =
            NetlinkMessage::new(header, NetlinkPayload::Error(err));
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        let e =
            decode_datagram::<GenlMessage<WireguardMessage>>(&out, "the device dump", &mut |_| {})
                .expect_err("EPERM");
        assert!(matches!(e, GenlError::Permission(_)), "{e:?}");
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
    }
}
