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

/// Packets and bytes seen; one instance per CPU, summed in userspace.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(size_of::<IfaceKey>() == 8);
const _: () = assert!(size_of::<IfaceCounters>() == 16);

#[cfg(feature = "user")]
// SAFETY: both types are repr(C), contain only integers and have no padding (asserted above).
unsafe impl aya::Pod for IfaceKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for IfaceCounters {}
