//! Observe-only programs. The TC classifiers count packets, bytes and MTU signals per interface
//! and direction, and keep a bounded per-CPU LRU flow table; they always return
//! `TC_ACT_UNSPEC` (next program / default action) and never change a packet. The `skb:kfree_skb`
//! raw tracepoint counts drops per kernel drop reason.
#![no_std]
#![no_main]

use agent_common::{
    DROP_REASONS_MAX, FLOWS_DEFAULT_MAX, FlowKey, FlowValue, IFACE_COUNTERS_MAX, IfaceConfig,
    IfaceCounters, IfaceKey, direction, flow_flags,
};
use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map, raw_tracepoint},
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TcContext},
};

#[map(name = "IFACE_COUNTERS")]
static IFACE_COUNTERS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_COUNTERS_MAX, 0);

#[map(name = "IFACE_CONFIG")]
static IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::with_max_entries(IFACE_COUNTERS_MAX, 0);

/// Resized by userspace at load time (`--flow-table-size`).
#[map(name = "FLOWS")]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> =
    LruPerCpuHashMap::with_max_entries(FLOWS_DEFAULT_MAX, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS_MAX, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[classifier]
pub fn dp_tc_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, direction::INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dp_tc_egress(ctx: TcContext) -> i32 {
    observe(&ctx, direction::EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: u32) {
    // SAFETY: the context pointer is valid for the program's run; ifindex is a plain
    // __sk_buff field readable by every TC program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();
    // Both values are always initialised: the verifier rejects a spilled register that is
    // unset on one path, which an Option<IfaceConfig> compiles into.
    let (mtu, l3) = match IFACE_CONFIG.get_ptr(ifindex) {
        // SAFETY: a hash map value pointer stays valid for the program's run.
        Some(c) => unsafe { ((*c).mtu, (*c).l3 != 0) },
        None => (0, false),
    };
    let ip = parse_ipv4(ctx, ifindex, l3);
    let mut delta = IfaceCounters {
        packets: 1,
        bytes: u64::from(len),
        ..IfaceCounters::default()
    };
    let mut oversize = false;
    if let Some(p) = &ip {
        oversize = mtu > 0 && u32::from(p.total_len) > mtu && p.dont_fragment;
        delta.df_oversize = u64::from(oversize);
        delta.icmp_frag_needed =
            u64::from(p.key.proto == IPPROTO_ICMP && p.key.sport == 3 && p.key.dport == 4);
    }
    add_iface(
        IfaceKey {
            ifindex,
            direction: dir,
        },
        &delta,
    );
    if let Some(p) = ip {
        add_flow(
            &p.key,
            u64::from(len),
            p.tcp_flags,
            if oversize { flow_flags::DF_OVERSIZE } else { 0 },
        );
    }
}

#[inline(always)]
fn add_iface(key: IfaceKey, d: &IfaceCounters) {
    match IFACE_COUNTERS.get_ptr_mut(&key) {
        Some(c) => {
            // SAFETY: per-CPU value: no other CPU writes this slot, and the pointer is valid
            // until the program returns.
            unsafe {
                (*c).packets += d.packets;
                (*c).bytes += d.bytes;
                (*c).df_oversize += d.df_oversize;
                (*c).icmp_frag_needed += d.icmp_frag_needed;
            }
        }
        None => {
            // A full map only loses this interface's counts; the packet is never affected.
            let _ = IFACE_COUNTERS.insert(&key, d, 0);
        }
    }
}

#[inline(always)]
fn add_flow(key: &FlowKey, len: u64, tcp_flags: u8, flags: u8) {
    // SAFETY: no preconditions. The coarse clock (tick resolution) is enough for first/last
    // seen and costs far less per packet.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match FLOWS.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: per-CPU LRU value, valid until the program returns.
            unsafe {
                // Another CPU created the entry: this CPU's slot starts zeroed.
                if (*v).first_ns == 0 {
                    (*v).first_ns = now;
                }
                (*v).packets += 1;
                (*v).bytes += len;
                (*v).last_ns = now;
                (*v).tcp_flags |= tcp_flags;
                (*v).flags |= flags;
            }
        }
        None => {
            let v = FlowValue {
                packets: 1,
                bytes: len,
                first_ns: now,
                last_ns: now,
                tcp_flags,
                flags,
                _pad: [0; 6],
            };
            // The LRU evicts the least recently used flow when full: memory stays bounded.
            let _ = FLOWS.insert(key, &v, 0);
        }
    }
}

struct Ipv4 {
    key: FlowKey,
    total_len: u16,
    dont_fragment: bool,
    tcp_flags: u8,
}

/// A pointer to a `T` at `off` in the packet's linear data, if it lies entirely inside it.
/// Direct packet access costs a bounds check, where bpf_skb_load_bytes costs a helper call.
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet; the read is unaligned
    // because packet headers carry no alignment guarantee.
    ptr_at::<T>(ctx, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Reads the IPv4 and transport headers from the linear data (headers not in it: no flow).
/// Headers are read as whole byte arrays: a one-byte bounds check is compiled into a form the
/// verifier does not accept.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, ifindex: u32, l3: bool) -> Option<Ipv4> {
    let off = if l3 {
        // On L3 devices skb->protocol says what the packet is; there is no Ethernet header.
        if u16::from_be(ctx.skb.protocol() as u16) != ETH_P_IP {
            return None;
        }
        0
    } else {
        let eth: [u8; ETH_HLEN] = read(ctx, 0)?;
        if u16::from_be_bytes([eth[12], eth[13]]) != ETH_P_IP {
            return None;
        }
        ETH_HLEN
    };
    let ip: [u8; 20] = read(ctx, off)?;
    if ip[0] >> 4 != 4 {
        return None;
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let proto = ip[9];
    let src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let l4 = off + usize::from(ip[0] & 0x0f) * 4;
    // Only the first fragment carries the transport header.
    let first_fragment = frag & 0x1fff == 0;
    let (sport, dport, tcp_flags) = match proto {
        IPPROTO_TCP if first_fragment => match read::<[u8; 14]>(ctx, l4) {
            Some(t) => (
                u16::from_ne_bytes([t[0], t[1]]),
                u16::from_ne_bytes([t[2], t[3]]),
                t[13],
            ),
            None => (0, 0, 0),
        },
        IPPROTO_UDP if first_fragment => match read::<[u8; 4]>(ctx, l4) {
            Some(u) => (
                u16::from_ne_bytes([u[0], u[1]]),
                u16::from_ne_bytes([u[2], u[3]]),
                0,
            ),
            None => (0, 0, 0),
        },
        IPPROTO_ICMP if first_fragment => match read::<[u8; 2]>(ctx, l4) {
            Some(c) => (u16::from(c[0]), u16::from(c[1]), 0),
            None => (0, 0, 0),
        },
        _ => (0, 0, 0),
    };
    Some(Ipv4 {
        key: FlowKey {
            src,
            dst,
            ifindex,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        },
        total_len,
        dont_fragment: frag & 0x4000 != 0,
        tcp_flags,
    })
}

/// `kfree_skb(skb, location, reason, …)`: a raw tracepoint needs no tracefs, and its
/// arguments are the kernel function's, so the reason is argument 2 on every kernel that has it.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn dp_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(2);
    let max = u64::from(DROP_REASONS_MAX - 1);
    let slot = if reason < max {
        reason as u32
    } else {
        DROP_REASONS_MAX - 1
    };
    if let Some(count) = DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU array slot, valid until the program returns.
        unsafe { *count += 1 };
    }
    0
}

#[map(name = "RETRANSMITS")]
static RETRANSMITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Every TCP retransmission on the node (`tcp_retransmit_skb(sk, skb)`).
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn dp_tcp_retransmit(_ctx: RawTracePointContext) -> i32 {
    if let Some(count) = RETRANSMITS.get_ptr_mut(0) {
        // SAFETY: per-CPU array slot, valid until the program returns.
        unsafe { *count += 1 };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
