//! Observe-only programs. The TC classifiers count packets, bytes and MTU signals per interface
//! and direction, and keep flows in a per-interface last-flow cache in front of a bounded
//! per-CPU LRU flow table; they always return `TC_ACT_UNSPEC` (next program / default action)
//! and never change a packet. The `kfree_skb` raw tracepoint counts drops per kernel drop
//! reason and class of the packet's device, and marks the flow the packet belonged to.
#![no_std]
#![no_main]

use agent_common::{
    DROP_REASONS_MAX, FLOWS_DEFAULT_MAX, FlowCacheEntry, FlowKey, FlowValue, IFACE_CONFIG_SLOTS,
    IFACE_SLOTS, IfaceConfig, IfaceState, KernelOffsets, direction, flow_flags, iface_class,
};
use aya_ebpf::{
    EbpfContext,
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{classifier, map, raw_tracepoint},
    maps::{Array, LruPerCpuHashMap, PerCpuArray},
    programs::{RawTracePointContext, TcContext},
};

#[map(name = "IFACE_CONFIG")]
static IFACE_CONFIG: Array<IfaceConfig> = Array::with_max_entries(IFACE_CONFIG_SLOTS, 0);

#[map(name = "IFACE_STATE")]
static IFACE_STATE: PerCpuArray<IfaceState> = PerCpuArray::with_max_entries(IFACE_SLOTS * 2, 0);

/// Resized by userspace at load time (`--flow-table-size`).
#[map(name = "FLOWS")]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> =
    LruPerCpuHashMap::with_max_entries(FLOWS_DEFAULT_MAX, 0);

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(DROP_REASONS_MAX * iface_class::COUNT, 0);

/// Set by userspace from the kernel's BTF before loading (read-only data).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    valid: 0,
    skb_dev: 0,
    skb_head: 0,
    skb_network_header: 0,
    dev_ifindex: 0,
    dev_net: 0,
    net_inum: 0,
};

/// Rare events worth a log line in userspace (aya-log), each at most once per
/// [`LOG_INTERVAL_JIFFIES`] per CPU: a flood of malformed packets must not become a flood of
/// log records.
mod rare {
    pub const FLOW_INSERT_FAILED: u32 = 0;
    pub const BAD_IPV4_HEADER: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// 1 s at HZ=1000, 4 s at HZ=250.
const LOG_INTERVAL_JIFFIES: u64 = 1000;

#[map(name = "LOG_LIMIT")]
static LOG_LIMIT: PerCpuArray<u64> = PerCpuArray::with_max_entries(rare::COUNT, 0);

/// Whether a rare event of `kind` may be logged now (and notes that it is).
#[inline(always)]
fn may_log(kind: u32) -> bool {
    let Some(last) = LOG_LIMIT.get_ptr_mut(kind) else {
        return false;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_jiffies64() };
    // SAFETY: per-CPU array slot, valid until the program returns.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < LOG_INTERVAL_JIFFIES {
            return false;
        }
        *last = now;
    }
    true
}

// The log calls live in functions of their own (BPF subprograms), out of the per-packet path:
// inlined, their stack and registers cost every packet about 12 ns (tc_cost).
#[inline(never)]
fn log_insert_failed(ctx: &impl EbpfContext, error: i32) {
    if may_log(rare::FLOW_INSERT_FAILED) {
        aya_log_ebpf::warn!(ctx, "flow table insert failed: error {}", error);
    }
}

#[inline(never)]
fn log_bad_ipv4(ctx: &TcContext, ifindex: u32, first_byte: u8) {
    if may_log(rare::BAD_IPV4_HEADER) {
        aya_log_ebpf::warn!(
            ctx,
            "unparsable IPv4 header on ifindex {}: first byte {}",
            ifindex,
            first_byte
        );
    }
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
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

#[classifier]
pub fn dp_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[map(name = "CLOCK")]
static CLOCK: Array<u64> = Array::with_max_entries(2, 0);

/// Samples jiffies and the monotonic clock together, for userspace to convert flow times.
#[classifier]
pub fn dp_clock(_ctx: TcContext) -> i32 {
    // SAFETY: no preconditions.
    let (jiffies, ns) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
    for (slot, v) in [(0, jiffies), (1, ns)] {
        if let Some(p) = CLOCK.get_ptr_mut(slot) {
            // SAFETY: array slot, valid until the program returns; only this program, run
            // by userspace one call at a time, writes it.
            unsafe { *p = v };
        }
    }
    TC_ACT_UNSPEC
}

/// This interface's settings: (MTU, counter slot or `u32::MAX`, L3 device, class), if
/// userspace registered it.
/// Plain values, not an Option of the struct: the verifier rejects a spilled register that is
/// unset on one path, which that compiles into.
#[inline(always)]
fn iface_config(ifindex: u32, netns: u32) -> (u32, u32, bool, u8) {
    match IFACE_CONFIG.get(ifindex % IFACE_CONFIG_SLOTS) {
        Some(c) if c.ifindex == ifindex && (netns == 0 || c.netns == netns) => {
            (c.mtu, u32::from(c.counter_slot), c.l3 != 0, c.class)
        }
        _ => (0, u32::MAX, false, iface_class::HOST),
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: u32) {
    // SAFETY: the context pointer is valid for the program's run; ifindex is a plain
    // __sk_buff field readable by every TC program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // A TC program runs only on the devices userspace attached it to: no namespace check.
    let (mtu, slot, l3, _) = iface_config(ifindex, 0);
    if slot == u32::MAX {
        return;
    }
    let len = ctx.len();
    let ip = parse_ipv4(ctx, ifindex, l3);
    let (oversize, frag_needed) = match &ip {
        Some(p) => (
            mtu > 0
                && p.dont_fragment
                && p.total_len > mtu
                && segment_len(ctx, p.total_len, p.headers_len) > mtu,
            p.key.proto == IPPROTO_ICMP && p.key.sport == 3 && p.key.dport == 4,
        ),
        None => ipv6_mtu_signals(ctx, l3, mtu),
    };
    let Some(state) = IFACE_STATE.get_ptr_mut(slot * 2 + dir) else {
        return;
    };
    // SAFETY: per-CPU array slot: no other CPU writes it, and the pointer is valid until the
    // program returns.
    let state = unsafe { &mut *state };
    let c = &mut state.counters;
    c.packets += 1;
    c.bytes += u64::from(len);
    c.df_oversize += u64::from(oversize);
    c.icmp_frag_needed += u64::from(frag_needed);
    if let Some(p) = ip {
        add_flow(
            ctx,
            &mut state.flow,
            &p.key,
            u64::from(len),
            p.tcp_flags,
            if oversize { flow_flags::DF_OVERSIZE } else { 0 },
        );
    }
}

#[inline(always)]
fn add_flow(
    ctx: &TcContext,
    c: &mut FlowCacheEntry,
    key: &FlowKey,
    len: u64,
    tcp_flags: u8,
    flags: u8,
) {
    // SAFETY: no preconditions. Tick resolution is enough for first/last seen, and jiffies
    // is a plain load where the kernel's clock helpers cost ~45 ns a packet on a busy VM.
    let now = unsafe { bpf_jiffies64() };
    let v = &mut c.value;
    if v.packets > 0 && same_flow(&c.key, key) {
        v.packets += 1;
        v.bytes += len;
        v.last_jiffies = now;
        v.tcp_flags |= tcp_flags;
        v.flags |= flags;
        return;
    }
    if v.packets > 0 || v.drops > 0 {
        flush(ctx, &c.key, v);
    }
    c.key = *key;
    *v = FlowValue {
        packets: 1,
        bytes: len,
        first_jiffies: now,
        last_jiffies: now,
        drops: 0,
        last_drop_reason: 0,
        tcp_flags,
        flags,
    };
}

/// Field by field: the padding bytes are not compared.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    a.src == b.src
        && a.dst == b.dst
        && a.ifindex == b.ifindex
        && a.sport == b.sport
        && a.dport == b.dport
        && a.proto == b.proto
}

/// Adds a flow's cached counts to its entry in the flow table, creating it if needed.
#[inline(always)]
fn flush(ctx: &impl EbpfContext, key: &FlowKey, c: &FlowValue) {
    match FLOWS.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: per-CPU LRU value, valid until the program returns.
            unsafe {
                // Another CPU created the entry: this CPU's slot starts zeroed.
                if (*v).first_jiffies == 0 {
                    (*v).first_jiffies = c.first_jiffies;
                }
                (*v).packets += c.packets;
                (*v).bytes += c.bytes;
                (*v).last_jiffies = c.last_jiffies;
                (*v).drops += c.drops;
                if c.drops > 0 {
                    (*v).last_drop_reason = c.last_drop_reason;
                }
                (*v).tcp_flags |= c.tcp_flags;
                (*v).flags |= c.flags;
            }
        }
        None => {
            // The LRU evicts the least recently used flow when full: memory stays bounded.
            // An insert still fails when the kernel cannot take a free node (memory pressure):
            // the flow's counts are lost, which userspace should hear about.
            if let Err(e) = FLOWS.insert(key, c, 0) {
                log_insert_failed(ctx, e);
            }
        }
    }
}

struct Ipv4 {
    key: FlowKey,
    total_len: u32,
    /// IP and transport header lengths: with `gso_size`, a GSO super-packet's segment length.
    headers_len: u32,
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
    if ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        // EtherType (or skb->protocol) says IPv4 but the header is not one.
        log_bad_ipv4(ctx, ifindex, ip[0]);
        return None;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let l4 = off + ihl;
    // Only the first fragment carries the transport header.
    let (ports, tcp_flags, l4_hdr) = match ip[9] {
        _ if frag & 0x1fff != 0 => ([0; 4], 0, 0),
        IPPROTO_TCP => match read::<[u8; 14]>(ctx, l4) {
            Some(t) => ([t[0], t[1], t[2], t[3]], t[13], u32::from(t[12] >> 4) * 4),
            None => ([0; 4], 0, 0),
        },
        IPPROTO_UDP => (read::<[u8; 4]>(ctx, l4).unwrap_or([0; 4]), 0, 8),
        IPPROTO_ICMP => (read::<[u8; 4]>(ctx, l4).unwrap_or([0; 4]), 0, 0),
        _ => ([0; 4], 0, 0),
    };
    Some(Ipv4 {
        key: flow_key(&ip, ifindex, ports),
        total_len: u32::from(u16::from_be_bytes([ip[2], ip[3]])),
        headers_len: ihl as u32 + l4_hdr,
        dont_fragment: frag & 0x4000 != 0,
        tcp_flags,
    })
}

/// The length of the IP packets a packet of `total_len` becomes on the wire: its own, or for
/// a GSO super-packet that of the segments it will be cut into. Only asked of packets longer
/// than the MTU: `gso_size` lives in the skb's shared info, a cache line the packet's usual
/// path never touches.
#[inline(always)]
fn segment_len(ctx: &TcContext, total_len: u32, headers_len: u32) -> u32 {
    // SAFETY: the context pointer is valid for the program's run; gso_size is a plain
    // __sk_buff field (Linux ≥ 5.9).
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        total_len
    } else {
        headers_len + gso_size
    }
}

/// For an IPv6 packet: (larger than `mtu`, an ICMPv6 Packet Too Big). IPv6 is never
/// fragmented on the way, so any packet above the MTU is dropped with Packet Too Big; a GSO
/// super-packet is judged by its segments instead (40-byte header + `gso_size`, extension and
/// transport headers left out, so a near miss is not counted). IPv6 traffic is counted, not
/// kept as flows.
#[inline(always)]
fn ipv6_mtu_signals(ctx: &TcContext, l3: bool, mtu: u32) -> (bool, bool) {
    let off = if l3 {
        if u16::from_be(ctx.skb.protocol() as u16) != ETH_P_IPV6 {
            return (false, false);
        }
        0
    } else {
        match read::<[u8; ETH_HLEN]>(ctx, 0) {
            Some(eth) if u16::from_be_bytes([eth[12], eth[13]]) == ETH_P_IPV6 => ETH_HLEN,
            _ => return (false, false),
        }
    };
    let Some(h) = read::<[u8; 40]>(ctx, off) else {
        return (false, false);
    };
    if h[0] >> 4 != 6 {
        return (false, false);
    }
    let total_len = 40 + u32::from(u16::from_be_bytes([h[4], h[5]]));
    // ICMPv6 right after the fixed header (no extension headers), type 2.
    let ptb = h[6] == IPPROTO_ICMPV6
        && read::<[u8; 4]>(ctx, off + 40).is_some_and(|t| t[0] == ICMPV6_PACKET_TOO_BIG);
    (
        mtu > 0 && total_len > mtu && segment_len(ctx, total_len, 40) > mtu,
        ptb,
    )
}

/// The flow key of an IPv4 header and the first four bytes of its transport header (ports, or
/// ICMP type and code), the same whether read by the TC programs or the drop tracepoint.
#[inline(always)]
fn flow_key(ip: &[u8; 20], ifindex: u32, l4: [u8; 4]) -> FlowKey {
    let proto = ip[9];
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            u16::from_ne_bytes([l4[0], l4[1]]),
            u16::from_ne_bytes([l4[2], l4[3]]),
        ),
        IPPROTO_ICMP => (u16::from(l4[0]), u16::from(l4[1])),
        _ => (0, 0),
    };
    FlowKey {
        src: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        dst: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        ifindex,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    }
}

/// `kfree_skb(skb, location, reason, …)`: a raw tracepoint needs no tracefs, and its
/// arguments are the kernel function's, so the reason is argument 2 on every kernel that has it.
/// The drop is counted per reason and per class of the device the packet was on; when that
/// device is one of ours, the packet's flow is marked with the drop.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn dp_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let max = u64::from(DROP_REASONS_MAX - 1);
    let reason = if reason < max {
        reason as u32
    } else {
        DROP_REASONS_MAX - 1
    };
    // SAFETY: a read-only global set before loading; volatile so the compiler does not fold
    // the placeholder value in.
    let offs = unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) };
    let mut class = iface_class::HOST;
    if offs.valid != 0 {
        let (ifindex, netns) = skb_device(skb, &offs);
        let (_, slot, _, c) = iface_config(ifindex, netns);
        if slot != u32::MAX {
            class = c;
            mark_dropped_flow(skb, &offs, ifindex, slot, reason);
        }
    }
    if let Some(count) = DROPS.get_ptr_mut(u32::from(class) * DROP_REASONS_MAX + reason) {
        // SAFETY: per-CPU array slot, valid until the program returns.
        unsafe { *count += 1 };
    }
    0
}

/// `skb->dev->ifindex` and the inode of the device's namespace; (0, 0) when the skb has no
/// device or a read fails.
#[inline(always)]
fn skb_device(skb: *const u8, offs: &KernelOffsets) -> (u32, u32) {
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting; the
    // offsets come from this kernel's BTF.
    unsafe {
        let Ok(dev) = bpf_probe_read_kernel(skb.add(offs.skb_dev as usize) as *const *const u8)
        else {
            return (0, 0);
        };
        if dev.is_null() {
            return (0, 0);
        }
        let ifindex =
            bpf_probe_read_kernel(dev.add(offs.dev_ifindex as usize) as *const u32).unwrap_or(0);
        let Ok(net) = bpf_probe_read_kernel(dev.add(offs.dev_net as usize) as *const *const u8)
        else {
            return (0, 0);
        };
        if net.is_null() {
            return (0, 0);
        }
        match bpf_probe_read_kernel(net.add(offs.net_inum as usize) as *const u32) {
            Ok(inum) if inum != 0 => (ifindex, inum),
            _ => (0, 0),
        }
    }
}

/// Adds the drop to the flow of the IPv4 packet in `skb` as our TC program keyed it on
/// `ifindex`, when the table holds that flow.
#[inline(always)]
fn mark_dropped_flow(skb: *const u8, offs: &KernelOffsets, ifindex: u32, slot: u32, reason: u32) {
    let l4: *const u8;
    // SAFETY: as in skb_device: every read goes through bpf_probe_read_kernel.
    let ip: [u8; 20] = unsafe {
        let Ok(head) = bpf_probe_read_kernel(skb.add(offs.skb_head as usize) as *const *const u8)
        else {
            return;
        };
        let Ok(nh) = bpf_probe_read_kernel(skb.add(offs.skb_network_header as usize) as *const u16)
        else {
            return;
        };
        if head.is_null() {
            return;
        }
        let l3 = head.add(usize::from(nh));
        let Ok(ip) = bpf_probe_read_kernel(l3 as *const [u8; 20]) else {
            return;
        };
        if ip[0] >> 4 != 4 {
            return;
        }
        l4 = l3.add(usize::from(ip[0] & 0x0f) * 4);
        ip
    };
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let ports = if frag & 0x1fff == 0 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(l4 as *const [u8; 4]) }.unwrap_or([0; 4])
    } else {
        [0; 4]
    };
    let key = flow_key(&ip, ifindex, ports);
    // The flow is in this CPU's cache of the interface (either direction) or in the table.
    for dir in [direction::INGRESS, direction::EGRESS] {
        if let Some(state) = IFACE_STATE.get_ptr_mut(slot * 2 + dir) {
            // SAFETY: per-CPU array slot, valid until the program returns.
            let c = unsafe { &mut (*state).flow };
            if c.value.packets > 0 && same_flow(&c.key, &key) {
                c.value.drops += 1;
                c.value.last_drop_reason = reason as u16;
                return;
            }
        }
    }
    if let Some(v) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: per-CPU LRU value, valid until the program returns. The drop may run on
        // another CPU than the TC program did: this CPU's slot may be all zeroes.
        unsafe {
            (*v).drops += 1;
            (*v).last_drop_reason = reason as u16;
        }
    }
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
