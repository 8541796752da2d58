//! Types and constants shared by the xlb XDP program (`lb-ebpf`) and its daemon (`lb-userspace`).
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: map sizes and
//! names ([`consts`]), the `#[repr(C)]` keys and values of every map ([`maps`]) and the pure
//! checksum arithmetic both sides use ([`csum`]), the flow hash both compute ([`hash`]), the
//! handshake guard's decisions ([`guard`]), where a table lives ([`tables`]) and what `xlb trace`
//! records ([`trace`]), and what instances of a fleet share of their flows ([`share`]). The crate is
//! `no_std` so the programs can use it; the `user` feature adds, for userspace, `aya::Pod`
//! implementations and a builder of test frames ([`frame`]).
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod consts;
pub mod csum;
pub mod flow;
#[cfg(feature = "user")]
pub mod frame;
pub mod guard;
pub mod hash;
pub mod hop;
pub mod maps;
pub mod passive;
pub mod reply;
pub mod share;
pub mod tables;
pub mod trace;
pub mod tunnel;

pub use flow::*;
pub use hop::{BackendHop, Hop};
pub use maps::*;
pub use reply::{BackendVipKey, BackendVips, LoneVip, VipPort};
