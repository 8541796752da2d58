//! The data plane's clock: the kernel's coarse monotonic time (`bpf_ktime_get_coarse_ns`), the
//! clock userspace compares the maps' timestamps with. Reading it costs a helper call (about
//! 15 ns here: the kernel converts a timespec each time), so each CPU keeps the last reading
//! with the jiffies count it was taken at, and reads the clock again only when jiffies have
//! moved on. `bpf_jiffies64` is inlined by the verifier (a single load on 64-bit kernels), and
//! the coarse clock advances only at the tick that advances jiffies, so a cached reading is at
//! most one tick older than a fresh one.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::scratch::{Scratch, scratch};

/// One CPU's last reading of the clock (kept in its scratch area between packets).
#[repr(C)]
pub struct ClockCache {
    /// Jiffies when the clock was read.
    jiffies: u64,
    /// What it read, in nanoseconds.
    ns: u64,
}

/// The coarse monotonic time, in nanoseconds.
#[inline(always)]
pub fn now() -> u64 {
    match scratch() {
        Some(scratch) => now_in(scratch),
        // SAFETY: the helper takes no arguments and only reads the clock.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// [`now`], for a caller that has this CPU's scratch area at hand (each lookup of it is a
/// few instructions more).
#[inline(always)]
pub fn now_in(scratch: *mut Scratch) -> u64 {
    // SAFETY: this CPU's scratch area; its clock cache is used by nothing else.
    let cache = unsafe { &mut (*scratch).clock };
    // SAFETY: the helper takes no arguments and only reads the jiffies counter.
    let jiffies = unsafe { bpf_jiffies64() };
    if cache.jiffies != jiffies {
        cache.jiffies = jiffies;
        // SAFETY: as above.
        cache.ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    cache.ns
}
