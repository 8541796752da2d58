//! The reference programs: they count a packet and pass it, nothing else, at XDP and at tc.
//! Benchmarks measure the balancer against them, and tests attach the XDP one to the far end of
//! veth links prepared for native XDP, because a veth hands XDP_TX frames to its peer promptly
//! only when the peer runs an XDP program.
#![no_std]
#![no_main]
#![allow(
    missing_docs,
    reason = "aya's program macros generate undocumented entry points"
)]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    btf_maps::PerCpuArray,
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Packets seen, per CPU, at index 0. Written by the program; read by benchmarks.
#[btf_map]
static PACKETS: PerCpuArray<u64, 1> = PerCpuArray::new();

#[inline(always)]
fn count() {
    if let Some(counter) = PACKETS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Counts the packet and passes it to the kernel.
#[xdp]
pub fn xlb_noop(_ctx: XdpContext) -> u32 {
    count();
    xdp_action::XDP_PASS
}

/// The same at tc ingress.
#[classifier]
pub fn xlb_noop_tc(_ctx: TcContext) -> i32 {
    count();
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
