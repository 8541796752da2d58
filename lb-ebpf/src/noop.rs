//! The reference XDP program: it counts a packet and passes it, nothing else. Benchmarks
//! measure the balancer against it, and tests attach it to the far end of veth links, because
//! a veth hands XDP_TX frames to its peer promptly only when the peer runs an XDP program.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::PerCpuArray,
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// Packets seen, per CPU, at index 0. Written by the program; read by benchmarks.
#[btf_map]
static PACKETS: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Counts the packet and passes it to the kernel.
#[xdp]
pub fn xlb_noop(_ctx: XdpContext) -> u32 {
    if let Some(counter) = PACKETS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
