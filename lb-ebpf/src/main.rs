//! xlb's XDP program. It parses a frame, looks up the service or the flow it belongs to,
//! rewrites addresses and ports (NAT) and forwards it; everything else passes to the kernel.
//! All decisions that can be made ahead of time (tables, weights, health) are made in
//! userspace and arrive here through the maps in `maps.rs`.
#![no_std]
#![no_main]
// The round-robin cursor needs an atomic fetch-and-add (see balance::next_backend).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod balance;
mod forward;
mod icmp;
mod maps;
mod nat;
mod packet;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// The balancer, attached to every interface named in the config.
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    balance::process(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
