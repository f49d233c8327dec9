//! Per-protocol and per-TCP-state counts of the connection tracking table, from a ctnetlink dump
//! (`NETLINK_NETFILTER`, `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`).
//!
//! `nf_conntrack_count` says how full the table is; these counts say what fills it (a flood of
//! half-open TCP, UDP that never replies, TIME_WAIT pile-ups), which is what a
//! `conntrack.pressure` finding needs to be actionable.
//!
//! Tables can hold millions of entries, so the dump is streamed: each datagram is decoded and
//! counted as it arrives, and no entry outlives its datagram. The socket is a plain blocking
//! one on purpose: a network namespace belongs to a thread, and the socket is created in the
//! calling thread's namespace, so the caller picks the table by picking the thread.

use std::collections::BTreeMap;

use netlink_packet_core::{
    ErrorMessage, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// What the table holds, by protocol of the original direction and, for TCP, by state.
/// Only protocols and states that occur are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackCounts {
    /// Every entry dumped, including any whose attributes could not be decoded (those are in no
    /// other count, and are logged).
    pub total: u64,
    /// `tcp`, `udp`, `icmp` (ICMP and ICMPv6) and `other`.
    pub by_protocol: BTreeMap<String, u64>,
    /// TCP entries by state, named as the kernel names them (`ESTABLISHED`, `SYN_SENT`,
    /// `TIME_WAIT`, …); `UNKNOWN` for a state number newer than this list.
    pub tcp_states: BTreeMap<String, u64>,
    /// False when the kernel dropped part of the dump (ENOBUFS, overrun, or an interrupted
    /// dump): the counts are then a lower bound.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("reading the conntrack table needs CAP_NET_ADMIN in this network namespace")]
    Permission(#[source] std::io::Error),
    #[error(
        "the conntrack table is not in use: this kernel has no nf_conntrack (or no \
         nf_conntrack_netlink to read it)"
    )]
    NotInUse(#[source] std::io::Error),
    #[error("could not {what} the netfilter netlink socket")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel failed the conntrack dump")]
    Dump(#[source] std::io::Error),
    #[error("malformed conntrack dump: {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: netlink_packet_core::DecodeError,
    },
    #[error("a {len}-byte netlink datagram did not fit the {cap}-byte receive buffer")]
    Oversized { len: usize, cap: usize },
}

/// Dumps the conntrack table of the calling thread's network namespace (all address families)
/// and counts it. Needs CAP_NET_ADMIN in that namespace.
pub fn dump_counts() -> Result<ConntrackCounts, ConntrackError> {
    let socket = open()?;
    socket.send(&dump_request(SEQUENCE), 0).map_err(|e| {
        classify(e, |source| ConntrackError::Socket {
            what: "send on",
            source,
        })
    })?;
    // MSG_TRUNC makes recv return the datagram's real length, so a datagram larger than the
    // buffer is reported instead of silently cut.
    stream(|buf| socket.recv(&mut &mut buf[..], nix::libc::MSG_TRUNC))
}

/// Reads datagrams with `recv` (which returns each one's full length) until the dump is done,
/// counting each as it arrives.
fn stream(
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> Result<ConntrackCounts, ConntrackError> {
    let mut buf = vec![0u8; RECV_BUF];
    let mut tally = Tally::default();
    loop {
        let len = match recv(&mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // The socket's receive queue overflowed and the kernel dropped data: what was
            // counted so far is still true, just not everything.
            Err(e) if errno(&e) == Some(Errno::ENOBUFS) => {
                tracing::warn!("conntrack dump incomplete: receive buffer overrun (ENOBUFS)");
                tally.incomplete = true;
                break;
            }
            Err(e) => {
                return Err(classify(e, |source| ConntrackError::Socket {
                    what: "receive from",
                    source,
                }));
            }
        };
        if len > buf.len() {
            return Err(ConntrackError::Oversized {
                len,
                cap: buf.len(),
            });
        }
        if count_datagram(&buf[..len], SEQUENCE, &mut tally)? == Step::Done {
            break;
        }
    }
    Ok(tally.into_counts())
}

/// The socket is ours alone, so one fixed sequence number tells our replies apart from
/// anything else (nothing else should arrive).
const SEQUENCE: u32 = 1;

/// Larger than any dump datagram: the kernel sizes those at most 32 KiB (netlink_dump caps
/// them at the largest buffer a reader has offered, up to 32 KiB).
const RECV_BUF: usize = 64 * 1024;

/// SO_RCVBUF asked for (the kernel caps it at `net.core.rmem_max`). A dump is flow-controlled
/// (the kernel fills the queue only as we read it), so this mostly guards against bursts.
const SOCKET_RCVBUF: i32 = 4 << 20;

fn open() -> Result<Socket, ConntrackError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| {
        classify(e, |source| ConntrackError::Socket {
            what: "open",
            source,
        })
    })?;
    if let Err(e) = socket.set_rx_buf_sz(SOCKET_RCVBUF) {
        tracing::debug!("conntrack socket: SO_RCVBUF not raised: {e}");
    }
    socket
        .bind_auto()
        .map_err(|source| ConntrackError::Socket {
            what: "bind",
            source,
        })?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|source| ConntrackError::Socket {
            what: "connect",
            source,
        })?;
    Ok(socket)
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for every address family (AF_UNSPEC: the kernel then
/// filters on nothing).
fn dump_request(sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Get(vec![]),
        )),
    );
    message.finalize();
    // `serialize` needs exactly `buffer_len` bytes, which is what it gets.
    let mut out = vec![0; message.buffer_len()];
    message.serialize(&mut out);
    out
}

fn errno(e: &std::io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// Turns an errno into the error a reader can act on; `other` wraps the rest.
fn classify(
    e: std::io::Error,
    other: impl FnOnce(std::io::Error) -> ConntrackError,
) -> ConntrackError {
    match errno(&e) {
        Some(Errno::EPERM | Errno::EACCES) => ConntrackError::Permission(e),
        // EPROTONOSUPPORT: no nfnetlink at all (socket creation). EINVAL: nfnetlink has no
        // ctnetlink subsystem, which is how it answers our fixed, valid request then.
        // ENOENT/EOPNOTSUPP: what older or modular kernels say for the same.
        Some(Errno::EPROTONOSUPPORT | Errno::EINVAL | Errno::ENOENT | Errno::EOPNOTSUPP) => {
            ConntrackError::NotInUse(e)
        }
        _ => other(e),
    }
}

/// Kernel `tcp_conntrack_names[]`, indexed by `enum tcp_conntrack`.
const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "other"];

/// Running counts, in fixed arrays: a dump of millions of entries makes no allocation per entry.
#[derive(Debug, Default)]
struct Tally {
    total: u64,
    protocols: [u64; PROTOCOLS.len()],
    /// By `enum tcp_conntrack`; the last slot is for numbers beyond [`TCP_STATES`].
    states: [u64; TCP_STATES.len() + 1],
    undecoded: u64,
    incomplete: bool,
}

impl Tally {
    fn entry(&mut self, attributes: &[ConntrackAttribute]) {
        self.total += 1;
        let protocol = original_protocol(attributes);
        let slot = match protocol {
            Some(Protocol::Tcp) => 0,
            Some(Protocol::Udp) => 1,
            Some(Protocol::Icmp | Protocol::Ipv6Icmp) => 2,
            _ => 3,
        };
        self.protocols[slot] += 1;
        if protocol == Some(Protocol::Tcp)
            && let Some(state) = tcp_state(attributes)
        {
            self.states[usize::from(state).min(TCP_STATES.len())] += 1;
        }
    }

    fn into_counts(self) -> ConntrackCounts {
        if self.undecoded > 0 {
            tracing::warn!(
                "conntrack dump: {} entries could not be decoded; counted in the total only",
                self.undecoded
            );
        }
        let named = |names: &[&str], counts: &[u64]| -> BTreeMap<String, u64> {
            counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (names.get(i).copied().unwrap_or("UNKNOWN").to_string(), *n))
                .collect()
        };
        ConntrackCounts {
            total: self.total,
            by_protocol: named(&PROTOCOLS, &self.protocols),
            tcp_states: named(&TCP_STATES, &self.states),
            complete: !self.incomplete,
        }
    }
}

/// `CTA_TUPLE_ORIG` → `CTA_TUPLE_PROTO` → `CTA_PROTO_NUM`.
fn original_protocol(attributes: &[ConntrackAttribute]) -> Option<Protocol> {
    attributes.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(tuples) => tuples.iter().find_map(|t| match t {
            Tuple::Proto(proto) => proto.iter().find_map(|p| match p {
                ProtoTuple::Protocol(p) => Some(*p),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// `CTA_PROTOINFO` → `CTA_PROTOINFO_TCP` → `CTA_PROTOINFO_TCP_STATE`.
fn tcp_state(attributes: &[ConntrackAttribute]) -> Option<u8> {
    attributes.iter().find_map(|a| match a {
        ConntrackAttribute::CtaProtoInfo(infos) => infos.iter().find_map(|i| match i {
            ProtoInfo::TCP(tcp) => tcp.iter().find_map(|t| match t {
                ProtoInfoTCP::State(s) => Some(*s),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
}

/// Control messages (NOOP, ERROR, DONE, OVERRUN) are below this type; data messages above.
const NLMSG_MIN_TYPE: u16 = 0x10;

/// Counts the entries of one datagram (one or more netlink messages of the dump) into `tally`.
fn count_datagram(
    datagram: &[u8],
    sequence: u32,
    tally: &mut Tally,
) -> Result<Step, ConntrackError> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let buffer = NetlinkBuffer::new_checked(rest).map_err(|source| ConntrackError::Decode {
            what: "netlink header",
            source,
        })?;
        // new_checked guarantees 16 <= length <= rest.len(), so this slice is in bounds and the
        // loop always advances.
        let len = buffer.length() as usize;
        let message_type = buffer.message_type();
        if buffer.flags() & NLM_F_DUMP_INTR != 0 {
            // The table changed under the dump in a way the kernel could not hide.
            tally.incomplete = true;
        }
        if buffer.sequence_number() == sequence {
            match NetlinkMessage::<NetfilterMessage>::deserialize(&rest[..len]) {
                Ok(message) => {
                    if handle(message.payload, tally)? == Step::Done {
                        return Ok(Step::Done);
                    }
                }
                // One entry the crate cannot decode costs its details, not the whole dump.
                Err(e) if message_type >= NLMSG_MIN_TYPE => {
                    if tally.undecoded == 0 {
                        tracing::debug!("conntrack entry not decoded: {e}");
                    }
                    tally.undecoded += 1;
                    tally.total += 1;
                }
                Err(source) => {
                    return Err(ConntrackError::Decode {
                        what: "netlink control message",
                        source,
                    });
                }
            }
        }
        // Messages are padded to 4 bytes; the last one may not be.
        let next = len.next_multiple_of(4).min(rest.len());
        rest = &rest[next..];
    }
    Ok(Step::More)
}

fn handle(
    payload: NetlinkPayload<NetfilterMessage>,
    tally: &mut Tally,
) -> Result<Step, ConntrackError> {
    match payload {
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner:
                NetfilterMessageInner::Conntrack(
                    ConntrackMessage::New(attributes) | ConntrackMessage::Get(attributes),
                ),
            ..
        }) => tally.entry(&attributes),
        NetlinkPayload::Done(done) if done.code < 0 => {
            return Err(kernel_error(done.code));
        }
        NetlinkPayload::Done(_) => return Ok(Step::Done),
        NetlinkPayload::Error(ErrorMessage {
            code: Some(code), ..
        }) => return Err(kernel_error(code.get())),
        NetlinkPayload::Overrun(_) => tally.incomplete = true,
        // ACKs (errors with code 0), NOOPs, other subsystems: nothing to count.
        _ => {}
    }
    Ok(Step::More)
}

/// A negative errno from NLMSG_ERROR or NLMSG_DONE.
fn kernel_error(code: i32) -> ConntrackError {
    classify(
        std::io::Error::from_raw_os_error(code.saturating_abs()),
        ConntrackError::Dump,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams of a real dump (see the file's header for what the table held).
    const DUMP: &str = include_str!("testdata/conntrack-dump.hex");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn datagrams() -> Vec<Vec<u8>> {
        DUMP.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(unhex)
            .collect()
    }

    fn map(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect()
    }

    #[test]
    fn the_request_is_a_dump_of_every_family() {
        assert_eq!(
            dump_request(1),
            unhex("1400000001010103010000000000000000000000"),
            "len 20, type CT_GET (subsys 1 << 8 | 1), flags REQUEST|DUMP, seq 1, AF_UNSPEC"
        );
    }

    #[test]
    fn counts_a_captured_dump() {
        let mut tally = Tally::default();
        let steps: Vec<Step> = datagrams()
            .iter()
            .map(|d| count_datagram(d, 1, &mut tally).expect("datagram"))
            .collect();
        assert_eq!(steps, [Step::More, Step::Done]);
        assert_eq!(
            tally.into_counts(),
            ConntrackCounts {
                total: 5,
                by_protocol: map(&[("tcp", 2), ("udp", 1), ("icmp", 2)]),
                tcp_states: map(&[("ESTABLISHED", 1), ("SYN_SENT", 1)]),
                complete: true,
            }
        );
    }

    #[test]
    fn decodes_the_attributes_of_a_captured_entry() {
        let first = &datagrams()[0];
        let len = NetlinkBuffer::new_checked(&first[..])
            .expect("header")
            .length() as usize;
        let message =
            NetlinkMessage::<NetfilterMessage>::deserialize(&first[..len]).expect("message");
        let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
            ..
        }) = message.payload
        else {
            panic!("not a conntrack entry: {message:?}");
        };
        assert_eq!(original_protocol(&attributes), Some(Protocol::Tcp));
        assert_eq!(tcp_state(&attributes), Some(1), "SYN_SENT");
        let source = attributes.iter().find_map(|a| match a {
            ConntrackAttribute::CtaTupleOrig(t) => t.iter().find_map(|t| match t {
                Tuple::Ip(ip) => ip.iter().find_map(|i| match i {
                    netlink_packet_netfilter::conntrack::IPTuple::SourceAddress(a) => Some(*a),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        });
        assert_eq!(source, Some("fd00::1".parse().expect("ip")));
        // CTA_USE, CTA_ID, CTA_TIMESTAMP…: not modelled by the crate, kept as raw attributes.
        assert!(
            attributes
                .iter()
                .any(|a| matches!(a, ConntrackAttribute::Other(_))),
            "{attributes:?}"
        );
    }

    /// Feeds `script` to [`stream`] as the socket's successive answers.
    fn stream_of(script: Vec<std::io::Result<Vec<u8>>>) -> Result<ConntrackCounts, ConntrackError> {
        let mut script = script.into_iter();
        stream(|buf| match script.next() {
            Some(Ok(d)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(d.len())
            }
            Some(Err(e)) => Err(e),
            None => panic!("read past the end of the dump"),
        })
    }

    #[test]
    fn the_stream_retries_interrupts_and_stops_at_done() {
        let d = datagrams();
        let counts = stream_of(vec![
            Err(std::io::Error::from(std::io::ErrorKind::Interrupted)),
            Ok(d[0].clone()),
            Ok(d[1].clone()),
        ])
        .expect("counts");
        assert_eq!(counts.total, 5);
        assert!(counts.complete);
    }

    #[test]
    fn enobufs_returns_what_was_counted() {
        let counts = stream_of(vec![
            Ok(datagrams()[0].clone()),
            Err(std::io::Error::from_raw_os_error(Errno::ENOBUFS as i32)),
        ])
        .expect("partial counts");
        assert_eq!(counts.total, 5);
        assert_eq!(counts.by_protocol.get("tcp"), Some(&2));
        assert!(!counts.complete);
    }

    #[test]
    fn an_oversized_datagram_is_an_error() {
        let err = stream_of(vec![Ok(vec![0; RECV_BUF + 1])]).expect_err("oversized");
        assert!(matches!(err, ConntrackError::Oversized { .. }), "{err:?}");
    }

    #[test]
    fn messages_of_another_sequence_are_ignored() {
        let mut tally = Tally::default();
        let steps: Vec<Step> = datagrams()
            .iter()
            .map(|d| count_datagram(d, 2, &mut tally).expect("datagram"))
            .collect();
        assert_eq!(steps, [Step::More, Step::More]);
        assert_eq!(tally.total, 0);
    }

    #[test]
    fn a_refused_dump_says_which_capability() {
        // The kernel's answer to the same request from a process without CAP_NET_ADMIN.
        let eperm = unhex(
            "28000000020000000100000069580000ffffffff1400000001010103010000000000000000000000",
        );
        let err = count_datagram(&eperm, 1, &mut Tally::default()).expect_err("EPERM");
        assert!(matches!(err, ConntrackError::Permission(_)), "{err:?}");
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    }

    #[test]
    fn errors_are_classified() {
        for (code, check) in [
            (-(Errno::EINVAL as i32), "not in use"),
            (-(Errno::EPROTONOSUPPORT as i32), "not in use"),
            (-(Errno::EPERM as i32), "CAP_NET_ADMIN"),
            (-(Errno::ENOMEM as i32), "failed the conntrack dump"),
        ] {
            let err = kernel_error(code);
            assert!(err.to_string().contains(check), "{code}: {err}");
        }
    }

    #[test]
    fn interrupted_and_failed_dumps() {
        let datagrams = datagrams();
        // NLM_F_DUMP_INTR on the first entry: counted, but the dump is marked incomplete.
        let mut first = datagrams[0].clone();
        first[6] |= NLM_F_DUMP_INTR as u8;
        let mut tally = Tally::default();
        count_datagram(&first, 1, &mut tally).expect("datagram");
        assert_eq!(tally.total, 5);
        assert!(!tally.into_counts().complete);

        // NLMSG_DONE carrying an error.
        let mut done = datagrams[1].clone();
        done[16..20].copy_from_slice(&(-(Errno::ENOMEM as i32)).to_le_bytes());
        let err = count_datagram(&done, 1, &mut Tally::default()).expect_err("error");
        assert!(matches!(err, ConntrackError::Dump(_)), "{err:?}");
    }

    #[test]
    fn an_undecodable_entry_is_counted_but_not_attributed() {
        let mut datagram = datagrams()[0].clone();
        // The first entry's first attribute (CTA_TUPLE_ORIG, nested) gets a length running past
        // its message: the crate rejects the entry, the other four still count.
        datagram[20..22].copy_from_slice(&0x0fffu16.to_le_bytes());
        let mut tally = Tally::default();
        count_datagram(&datagram, 1, &mut tally).expect("datagram");
        let counts = tally.into_counts();
        assert_eq!(counts.total, 5);
        assert_eq!(counts.by_protocol.values().sum::<u64>(), 4);
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        let good = datagrams()[0].clone();
        for len in 0..good.len() {
            // Either a clean error or fewer entries; never a panic.
            let _ = count_datagram(&good[..len], 1, &mut Tally::default());
        }
        assert!(count_datagram(&good[..10], 1, &mut Tally::default()).is_err());
        // xorshift64 mutations over the whole datagram, through the crate's decoder too.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut step = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut d = good.clone();
            for _ in 0..=(step() % 4) {
                let at = (step() % d.len() as u64) as usize;
                d[at] = step() as u8;
            }
            let _ = count_datagram(&d, 1, &mut Tally::default());
        }
    }
}
