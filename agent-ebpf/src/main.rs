//! Observe-only TC classifiers: count packets and bytes per interface and direction, always let
//! the packet continue (`TC_ACT_UNSPEC` = next program / default action), never change it.
#![no_std]
#![no_main]

use agent_common::{IFACE_COUNTERS_MAX, IfaceCounters, IfaceKey, direction};
use aya_ebpf::{
    bindings::TC_ACT_UNSPEC, macros::classifier, macros::map, maps::PerCpuHashMap,
    programs::TcContext,
};

#[map(name = "IFACE_COUNTERS")]
static IFACE_COUNTERS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_COUNTERS_MAX, 0);

#[classifier]
pub fn dp_tc_ingress(ctx: TcContext) -> i32 {
    count(&ctx, direction::INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dp_tc_egress(ctx: TcContext) -> i32 {
    count(&ctx, direction::EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, dir: u32) {
    // SAFETY: the context pointer is valid for the program's run; ifindex and len are plain
    // __sk_buff fields readable by every TC program.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let key = IfaceKey {
        ifindex,
        direction: dir,
    };
    match IFACE_COUNTERS.get_ptr_mut(&key) {
        Some(c) => {
            // SAFETY: per-CPU value: no other CPU writes this slot, and the pointer is valid
            // until the program returns.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += u64::from(len);
            }
        }
        None => {
            let first = IfaceCounters {
                packets: 1,
                bytes: u64::from(len),
            };
            // A full map only loses this interface's counts; the packet is never affected.
            let _ = IFACE_COUNTERS.insert(&key, &first, 0);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
