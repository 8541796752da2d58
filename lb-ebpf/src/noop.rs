//! The reference programs: they count a packet and pass it, nothing else, at XDP and at tc.
//! Benchmarks measure the balancer against them, and tests attach the XDP one to the far end of
//! veth links prepared for native XDP, because a veth hands XDP_TX frames to its peer promptly
//! only when the peer runs an XDP program. A third, the floor, does what any balancer that
//! keeps flows must do for a packet and no more: one lookup of a 16-byte key in an LRU hash map
//! and a redirect (the benchmarks show how much of the balancer's cost that is).
#![no_std]
#![no_main]
#![allow(
    missing_docs,
    reason = "aya's program macros generate undocumented entry points"
)]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values go to map helpers by reference, so they are not copied onto the \
              512-byte BPF stack"
)]

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    btf_maps::{DevMapHash, LruHashMap, PerCpuArray},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Packets seen, per CPU, at index 0. Written by the program; read by benchmarks.
#[btf_map]
static PACKETS: PerCpuArray<u64, 1> = PerCpuArray::new();

/// The floor's flows: 16 bytes of the frame from its source address (IPv4 addresses, ports,
/// sequence number) -> the interface to redirect to; as large as xlb's default flow table.
/// Written by userspace (benchmarks) and by `xlb_floor` (new flows); read by `xlb_floor`.
#[btf_map]
static FLOOR_FLOWS: LruHashMap<[u32; 4], u32, 524_288> = LruHashMap::new();

/// Where the floor may redirect. Written by userspace (benchmarks); read by `xlb_floor`.
#[btf_map]
static FLOOR_PORTS: DevMapHash<8> = DevMapHash::new();

/// Offset of an IPv4 frame's source address (Ethernet header, then 12 bytes of IPv4 header).
const FLOOR_KEY_OFFSET: usize = 26;

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

/// Counts the packet, looks its key up (see `FLOOR_FLOWS`) and redirects it where the entry
/// says. A key without an entry is a new flow: the program looks up the entry of the all-zero
/// key (a service, as it were), records two entries (the flow's two directions) with its
/// interface, and redirects there; a frame too short, or a new flow with no all-zero entry, is
/// passed.
#[xdp]
pub fn xlb_floor(ctx: XdpContext) -> u32 {
    count();
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + FLOOR_KEY_OFFSET + 16 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 16 bytes lie inside the frame (checked above); read without alignment.
    let key: [u32; 4] =
        unsafe { core::ptr::read_unaligned((data + FLOOR_KEY_OFFSET) as *const [u32; 4]) };
    // SAFETY: a valid map value, read at once.
    let ifindex = match unsafe { FLOOR_FLOWS.get(&key) } {
        Some(ifindex) => *ifindex,
        // SAFETY: as above.
        None => match unsafe { FLOOR_FLOWS.get(&[0u32; 4]) } {
            Some(ifindex) => {
                let ifindex = *ifindex;
                let reply = [key[1], key[0], key[2].rotate_left(16), key[3]];
                if FLOOR_FLOWS.insert(&key, &ifindex, 0).is_err()
                    || FLOOR_FLOWS.insert(&reply, &ifindex, 0).is_err()
                {
                    return xdp_action::XDP_PASS;
                }
                ifindex
            }
            None => return xdp_action::XDP_PASS,
        },
    };
    FLOOR_PORTS
        .redirect(ifindex, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
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
