//! Types and constants shared by the xlb XDP program (`lb-ebpf`) and its daemon (`lb-userspace`).
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: map sizes and
//! names ([`consts`]), the `#[repr(C)]` keys and values of every map ([`maps`]) and the pure
//! checksum arithmetic both sides use ([`csum`]), and the flow hash both compute ([`hash`]). The crate is `no_std` so the XDP program can
//! use it; the `user` feature adds `aya::Pod` implementations for userspace.
#![no_std]

pub mod consts;
pub mod csum;
pub mod hash;
pub mod maps;

pub use maps::*;
