//! Types that cross the eBPF/userspace boundary. Everything here is `#[repr(C)]` with explicit
//! padding and a size assertion, because the kernel copies these as raw bytes.
#![no_std]

use core::mem::size_of;

/// Traffic direction as seen by the TC hook the packet passed through.
pub mod direction {
    pub const INGRESS: u32 = 0;
    pub const EGRESS: u32 = 1;
}

/// What an interface is to Calico; drops are counted per class.
pub mod iface_class {
    /// Not attached by the agent (or the skb had no device): the host's own.
    pub const HOST: u8 = 0;
    pub const TUNNEL: u8 = 1;
    pub const UNDERLAY: u8 = 2;
    pub const WORKLOAD: u8 = 3;
    /// Attached on request (`--iface`) without being a Calico device.
    pub const OTHER: u8 = 4;
    pub const COUNT: u32 = 5;
}

/// Names of the observe-only TC classifiers in the object.
pub const PROG_TC_INGRESS: &str = "dp_tc_ingress";
pub const PROG_TC_EGRESS: &str = "dp_tc_egress";
/// Does nothing but return `TC_ACT_UNSPEC`: `cargo xtask bench` attaches it to measure what
/// running any TC program costs on this machine (the floor under our own programs' cost).
pub const PROG_TC_NOOP: &str = "dp_tc_noop";

/// Name of the array of [`IfaceConfig`] indexed by `ifindex % IFACE_CONFIG_SLOTS`; an entry
/// applies only when its `ifindex` matches (an array lookup is inlined by the verifier, where
/// a hash lookup is a helper call on every packet).
pub const IFACE_CONFIG_MAP: &str = "IFACE_CONFIG";
pub const IFACE_CONFIG_SLOTS: u32 = 65536;
/// Name of the per-CPU array of [`IfaceState`], two entries (ingress, egress) per counter
/// slot; userspace hands out slots as it attaches.
pub const IFACE_STATE_MAP: &str = "IFACE_STATE";
/// Interfaces counted at once; Calico nodes rarely carry more than a few hundred workloads.
pub const IFACE_SLOTS: u32 = 1024;

/// Per-interface settings written by userspace when it attaches.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IfaceConfig {
    /// The interface this entry is for (0: the slot is free).
    pub ifindex: u32,
    /// Inode number of its network namespace: interface indexes are per namespace, and the
    /// drop tracepoint sees every namespace's packets.
    pub netns: u32,
    /// The MTU packets are compared against (the device's own, or the tunnel's for workloads).
    pub mtu: u32,
    /// Index of this interface's counters: entries `2 * slot + direction`.
    pub counter_slot: u16,
    /// An [`iface_class`] value.
    pub class: u8,
    /// 1 when the device carries bare IP packets (tunl0, wireguard, tun): no Ethernet header.
    pub l3: u8,
}

/// Packets and bytes seen, and MTU signals; one instance per CPU, summed in userspace.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Packets that cannot pass the MTU from [`IfaceConfig`] and will be dropped with
    /// "fragmentation needed" / "packet too big": IPv4 with DF set and IPv6, longer than the
    /// MTU (GSO super-packets by the length of their segments).
    pub df_oversize: u64,
    /// ICMP "fragmentation needed" and ICMPv6 "packet too big" messages seen.
    pub icmp_frag_needed: u64,
}

/// A flow's 5-tuple as seen on one interface (a forwarded packet crosses two: each counts it
/// once). Addresses and ports in network byte order as on the wire; for ICMP the ports hold
/// type and code.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Per-CPU flow state: summed (counts), min'd (first seen), max'd (last seen) and OR'd
/// (flags) across CPUs by userspace.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    /// `jiffies` (`bpf_jiffies64`) of the first and last packet on this CPU (0 = none): a
    /// plain load, where every kernel clock helper costs tens of nanoseconds per packet.
    /// Userspace converts them to monotonic nanoseconds with [`CLOCK_MAP`].
    pub first_jiffies: u64,
    pub last_jiffies: u64,
    /// Packets of this flow the kernel dropped (`kfree_skb`) while they were on this
    /// interface.
    pub drops: u32,
    /// The drop reason of the last such drop (an `enum skb_drop_reason` value, clamped).
    pub last_drop_reason: u16,
    /// TCP flags seen (OR of the flags byte).
    pub tcp_flags: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
}

pub mod flow_flags {
    /// A packet of this flow was larger than its interface's MTU with DF set.
    pub const DF_OVERSIZE: u8 = 1;
}

/// The last flow seen per interface, direction and CPU, counted here while packets keep
/// coming from it: a bulk flow then costs an array lookup and a key compare per packet
/// instead of a hash lookup. A packet of another flow moves the cached one into the flow
/// table; userspace reads both.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowCacheEntry {
    pub key: FlowKey,
    pub _pad: u32,
    /// `packets == 0 && drops == 0`: empty.
    pub value: FlowValue,
}

/// What a TC program updates per packet for its interface and direction, in one map value:
/// one lookup, and memory that is close together.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IfaceState {
    pub counters: IfaceCounters,
    pub flow: FlowCacheEntry,
}

/// Name of the two-slot array `dp_clock` fills with `jiffies` and `bpf_ktime_get_ns` read at
/// the same moment (userspace runs it with `BPF_PROG_TEST_RUN`).
pub const CLOCK_MAP: &str = "CLOCK";
/// Name of the TC program that samples both clocks; it is never attached.
pub const PROG_CLOCK: &str = "dp_clock";

/// Name of the per-CPU LRU flow table; its size is set by userspace at load time.
pub const FLOWS_MAP: &str = "FLOWS";
pub const FLOWS_DEFAULT_MAX: u32 = 65536;
/// Name of the per-CPU array of drop counts, entry `class * DROP_REASONS_MAX + reason`.
pub const DROPS_MAP: &str = "DROPS";
/// Reasons at or above the last slot are counted in it.
pub const DROP_REASONS_MAX: u32 = 1024;
/// Name of the per-CPU single-slot counter of TCP retransmissions.
pub const RETRANSMITS_MAP: &str = "RETRANSMITS";
/// Name of the `tcp_retransmit_skb` raw tracepoint program.
pub const PROG_TCP_RETRANSMIT: &str = "dp_tcp_retransmit";
/// Name of the `kfree_skb` raw tracepoint program (its third argument is the drop reason
/// since Linux 5.17; attaching fails cleanly on older kernels).
pub const PROG_KFREE_SKB: &str = "dp_kfree_skb";

/// Name of the global holding [`KernelOffsets`], set by userspace before loading.
pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";

/// Byte offsets of the kernel structure fields the drop tracepoint reads, from the running
/// kernel's BTF (they move between releases and configs). `valid == 0` when BTF was
/// unavailable: drops are then counted per reason only.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KernelOffsets {
    pub valid: u32,
    /// `struct sk_buff`: `dev`, `head`, `network_header`.
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    /// `struct net_device`: `ifindex`, `nd_net.net`.
    pub dev_ifindex: u32,
    pub dev_net: u32,
    /// `struct net`: `ns.inum` (the namespace's inode number).
    pub net_inum: u32,
}

const _: () = assert!(size_of::<IfaceConfig>() == 16);
const _: () = assert!(size_of::<IfaceCounters>() == 32);
const _: () = assert!(size_of::<FlowKey>() == 20);
const _: () = assert!(size_of::<FlowValue>() == 40);
const _: () = assert!(size_of::<KernelOffsets>() == 28);
const _: () = assert!(size_of::<FlowCacheEntry>() == 64);
const _: () = assert!(size_of::<IfaceState>() == 96);

#[cfg(feature = "user")]
// SAFETY: all these types are repr(C), contain only integers and have no implicit padding
// (sizes asserted above; FlowKey's padding is the explicit `_pad`).
unsafe impl aya::Pod for IfaceConfig {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for IfaceCounters {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for KernelOffsets {}
#[cfg(feature = "user")]
// SAFETY: as above; the explicit `_pad` keeps `value` 8-byte aligned without implicit padding.
unsafe impl aya::Pod for FlowCacheEntry {}
#[cfg(feature = "user")]
// SAFETY: two Pod structs whose sizes are multiples of 8: no padding (size asserted above).
unsafe impl aya::Pod for IfaceState {}
