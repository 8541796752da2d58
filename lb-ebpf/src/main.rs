//! xlb's data plane. It parses a packet, looks up the service or the flow it belongs to,
//! rewrites addresses and ports (NAT) and forwards it; everything else passes to the kernel.
//! All decisions that can be made ahead of time (tables, weights, health) are made in
//! userspace and arrive here through the maps in `maps.rs`. The same code runs at two hooks,
//! XDP and tc ingress (see `frame.rs`), as two programs sharing every map.
#![no_std]
#![no_main]
// The round-robin cursor needs an atomic fetch-and-add (see choose::round_robin).
#![allow(
    internal_features,
    reason = "the atomic intrinsics, as explained above"
)]
#![allow(
    missing_docs,
    reason = "aya's program macros generate undocumented entry points"
)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference, so they are not copied onto the \
              512-byte BPF stack"
)]
#![feature(core_intrinsics)]

mod adopt;
mod balance;
mod choose;
mod clock;
mod counters;
mod established;
mod family;
mod flows;
mod forward;
mod fragment;
mod frame;
mod icmp;
mod maps;
mod nat;
mod new_flow;
mod packet;
mod passive;
mod persist;
mod reply;
mod scratch;
mod share;
mod too_big;
mod trace;
mod tunnel;
mod unserved;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::frame::{TcFrame, XdpFrame};

/// The balancer at the XDP hook (native or generic mode).
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let frame = XdpFrame(ctx);
    match balance::process(&frame) {
        tunnel::ENCAPSULATE => tunnel::hand_over(&frame),
        verdict => verdict,
    }
}

/// The balancer at the tc ingress hook (`xdp_mode = "tc"`).
#[classifier]
pub fn xlb_tc(ctx: TcContext) -> i32 {
    let frame = TcFrame(ctx);
    (match balance::process(&frame) {
        tunnel::ENCAPSULATE => tunnel::hand_over(&frame),
        verdict => verdict,
    }) as i32
}

/// The encapsulation of a tunnel flow's packet at XDP, which the balancer tail-calls
/// (`ENCAP_XDP`, see `tunnel`).
#[xdp]
pub fn xlb_encap(ctx: XdpContext) -> u32 {
    tunnel::encapsulate(&XdpFrame(ctx))
}

/// The encapsulation of a tunnel flow's packet at tc (`ENCAP_TC`).
#[classifier]
pub fn xlb_tc_encap(ctx: TcContext) -> i32 {
    tunnel::encapsulate(&TcFrame(ctx)) as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
