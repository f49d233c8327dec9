//! Types that cross the eBPF/userspace boundary. Everything here is `#[repr(C)]` with explicit
//! padding and a size assertion, because the kernel copies these as raw bytes.
#![no_std]

use core::mem::size_of;

/// Traffic direction as seen by the TC hook the packet passed through.
pub mod direction {
    pub const INGRESS: u32 = 0;
    pub const EGRESS: u32 = 1;
}

/// Name of the per-CPU hash map keyed by [`IfaceKey`] with [`IfaceCounters`] values.
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";
/// Names of the observe-only TC classifiers in the object.
pub const PROG_TC_INGRESS: &str = "dp_tc_ingress";
pub const PROG_TC_EGRESS: &str = "dp_tc_egress";
/// Upper bound of interfaces tracked at once; Calico nodes rarely carry more than a few
/// hundred workload veths.
pub const IFACE_COUNTERS_MAX: u32 = 4096;

/// Key of the per-interface counters: kernel ifindex and direction.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct IfaceKey {
    pub ifindex: u32,
    pub direction: u32,
}

/// Packets and bytes seen, and MTU signals; one instance per CPU, summed in userspace.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
    /// IPv4 packets with DF set whose total length exceeds the interface's MTU (from
    /// [`IfaceConfig`]): they will be dropped with "fragmentation needed".
    pub df_oversize: u64,
    /// ICMP "destination unreachable, fragmentation needed" messages seen.
    pub icmp_frag_needed: u64,
}

/// Per-interface settings written by userspace when it attaches.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IfaceConfig {
    /// The MTU packets are compared against (the device's own).
    pub mtu: u32,
    /// 1 when the device carries bare IP packets (tunl0, wireguard, tun): no Ethernet header.
    pub l3: u32,
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
    /// `bpf_ktime_get_coarse_ns` of the first and last packet on this CPU (0 = none).
    pub first_ns: u64,
    pub last_ns: u64,
    /// TCP flags seen (OR of the flags byte).
    pub tcp_flags: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 6],
}

pub mod flow_flags {
    /// A packet of this flow was larger than its interface's MTU with DF set.
    pub const DF_OVERSIZE: u8 = 1;
}

/// Name of the per-CPU LRU flow table; its size is set by userspace at load time.
pub const FLOWS_MAP: &str = "FLOWS";
pub const FLOWS_DEFAULT_MAX: u32 = 65536;
/// Name of the hash of [`IfaceConfig`] keyed by ifindex.
pub const IFACE_CONFIG_MAP: &str = "IFACE_CONFIG";
/// Name of the per-CPU array of drop counts indexed by `enum skb_drop_reason` value.
pub const DROPS_MAP: &str = "DROPS";
pub const DROP_REASONS_MAX: u32 = 1024;
/// Name of the per-CPU single-slot counter of TCP retransmissions.
pub const RETRANSMITS_MAP: &str = "RETRANSMITS";
/// Name of the `tcp_retransmit_skb` raw tracepoint program.
pub const PROG_TCP_RETRANSMIT: &str = "dp_tcp_retransmit";
/// Name of the `kfree_skb` raw tracepoint program (its third argument is the drop reason
/// since Linux 5.17; attaching fails cleanly on older kernels).
pub const PROG_KFREE_SKB: &str = "dp_kfree_skb";

const _: () = assert!(size_of::<IfaceKey>() == 8);
const _: () = assert!(size_of::<IfaceCounters>() == 32);
const _: () = assert!(size_of::<IfaceConfig>() == 8);
const _: () = assert!(size_of::<FlowKey>() == 20);
const _: () = assert!(size_of::<FlowValue>() == 40);

#[cfg(feature = "user")]
// SAFETY: both types are repr(C), contain only integers and have no padding (asserted above).
unsafe impl aya::Pod for IfaceKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for IfaceCounters {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for IfaceConfig {}
#[cfg(feature = "user")]
// SAFETY: as above; the explicit `_pad` fields leave no implicit padding.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
