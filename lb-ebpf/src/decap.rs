//! `xlb decap`'s program, for backends behind `forwarding = "ipip"` or `"gue"` services, on hosts
//! without the kernel's ipip or fou modules. At tc ingress, it strips the outer header of a
//! packet from a balancer (an outer source in `DECAP_SOURCES4`/`DECAP_SOURCES6`) whose inner
//! packet goes to a VIP (`DECAP_VIPS4`/`DECAP_VIPS6`), and hands the inner packet to the stack
//! as if it had arrived so. Every other packet passes untouched. An encapsulated packet that is
//! cut short, whose inner header does not match the outer one (family, length), or that comes
//! from elsewhere or to another address, is dropped and counted (`DECAP_COUNTERS`): never
//! passed on half-stripped. It decides everything before it changes a byte.
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
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use lb_common::tunnel::{DecapConfig, decap_counters};

/// The settings (GUE's port). Written by `xlb decap`; read here.
#[btf_map]
static DECAP_CONFIG: Array<DecapConfig, 1> = Array::new();

/// Per-CPU counts of what the program did (`lb_common::tunnel::decap_counters`). Written
/// here; read by `xlb decap`.
#[btf_map]
static DECAP_COUNTERS: PerCpuArray<u64, { decap_counters::COUNT as usize }> = PerCpuArray::new();

/// The balancers' IPv4 prefixes (`--from`): outer sources whose packets are decapsulated.
/// Written by `xlb decap`; read here.
#[btf_map]
static DECAP_SOURCES4: LpmTrie<[u8; 4], u8, 64> = LpmTrie::new();

/// The balancers' IPv6 prefixes, as `DECAP_SOURCES4`.
#[btf_map]
static DECAP_SOURCES6: LpmTrie<[u8; 16], u8, 64> = LpmTrie::new();

/// The IPv4 VIPs (`--vip`) inner packets may go to. Written by `xlb decap`; read here.
#[btf_map]
static DECAP_VIPS4: HashMap<[u8; 4], u8, 1024> = HashMap::new();

/// The IPv6 VIPs, as `DECAP_VIPS4`.
#[btf_map]
static DECAP_VIPS6: HashMap<[u8; 16], u8, 1024> = HashMap::new();

/// Size of an Ethernet header (tagged frames are not decapsulated: they pass).
const ETH_LEN: usize = 14;
/// IPv4 and IPv6 header sizes (IPv4 with options, and IPv6 with extension headers, pass).
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
/// UDP's header size.
const UDP_LEN: usize = 8;
/// Protocol numbers: IPv4 in IP, IPv6 in IP, UDP.
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const PROTO_UDP: u8 = 17;

/// What became of a packet, before anything changed.
enum Verdict {
    /// Not an encapsulated packet this program decapsulates: untouched.
    Pass,
    /// Strip this many bytes after the Ethernet header.
    Strip(u32),
    /// Encapsulated, but wrong: dropped and counted under this counter.
    Drop(u32),
}

/// Strips a balancer's outer header from packets to the VIPs (see the module's documentation).
#[classifier]
pub fn xlb_decap(ctx: TcContext) -> i32 {
    match inspect(&ctx) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop(counter) => {
            count(counter);
            TC_ACT_SHOT
        }
        Verdict::Strip(len) => {
            if ctx.adjust_room(-(len as i32), BPF_ADJ_ROOM_MAC, 0).is_err() {
                count(decap_counters::MALFORMED);
                return TC_ACT_SHOT;
            }
            count(decap_counters::DECAPSULATED);
            TC_ACT_OK
        }
    }
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(slot) = DECAP_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// `N` bytes of the packet at `offset`, if they lie in its directly accessible data.
#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + offset + N > end {
        return None;
    }
    // SAFETY: the bytes lie inside the packet (checked above); read without alignment.
    Some(unsafe { core::ptr::read_unaligned((data + offset) as *const [u8; N]) })
}

/// The packet's verdict, read without changing it.
#[inline(always)]
fn inspect(ctx: &TcContext) -> Verdict {
    // The outer headers and the inner one must be directly readable.
    let _ = ctx.pull_data((ETH_LEN + IPV6_LEN + UDP_LEN + IPV6_LEN) as u32);
    let Some(eth) = bytes::<ETH_LEN>(ctx, 0) else {
        return Verdict::Pass;
    };
    match [eth[12], eth[13]] {
        [0x08, 0x00] => inspect_ipv4(ctx),
        [0x86, 0xdd] => inspect_ipv6(ctx),
        _ => Verdict::Pass,
    }
}

/// An IPv4 packet: IPIP, or GUE to the configured port.
#[inline(always)]
fn inspect_ipv4(ctx: &TcContext) -> Verdict {
    let Some(outer) = bytes::<IPV4_LEN>(ctx, ETH_LEN) else {
        return Verdict::Pass;
    };
    // Options, or a fragment: not ours to take apart (the kernel reassembles fragments).
    if outer[0] != 0x45 || u16::from_be_bytes([outer[6], outer[7]]) & 0x3fff != 0 {
        return Verdict::Pass;
    }
    let total = usize::from(u16::from_be_bytes([outer[2], outer[3]]));
    let Some(udp) = tunnel_kind(ctx, outer[9], PROTO_IPIP, ETH_LEN + IPV4_LEN) else {
        return Verdict::Pass;
    };
    let header = IPV4_LEN + if udp { UDP_LEN } else { 0 };
    let source = [outer[12], outer[13], outer[14], outer[15]];
    // SAFETY: a lookup by a key on the stack; only presence is read.
    if DECAP_SOURCES4.get(&Key::new(32, source)).is_none() {
        return Verdict::Drop(decap_counters::FOREIGN);
    }
    // (A frame may carry padding after the packet, never less than the packet.)
    if total < header + IPV4_LEN || (ctx.len() as usize) < ETH_LEN + total {
        return Verdict::Drop(decap_counters::MALFORMED);
    }
    let Some(inner) = bytes::<IPV4_LEN>(ctx, ETH_LEN + header) else {
        return Verdict::Drop(decap_counters::MALFORMED);
    };
    // Same family only (xlb's tunnels are IPv4 in IPv4 and IPv6 in IPv6), and the inner
    // length must be what the outer header leaves.
    let inner_total = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
    if inner[0] >> 4 != 4 || inner_total != total - header {
        return Verdict::Drop(decap_counters::MALFORMED);
    }
    let vip = [inner[16], inner[17], inner[18], inner[19]];
    // SAFETY: a lookup by a key on the stack; only presence is read.
    if unsafe { DECAP_VIPS4.get(&vip) }.is_none() {
        return Verdict::Drop(decap_counters::FOREIGN);
    }
    Verdict::Strip(header as u32)
}

/// An IPv6 packet: IPv6 in IPv6, or GUE to the configured port.
#[inline(always)]
fn inspect_ipv6(ctx: &TcContext) -> Verdict {
    let Some(outer) = bytes::<IPV6_LEN>(ctx, ETH_LEN) else {
        return Verdict::Pass;
    };
    let payload = usize::from(u16::from_be_bytes([outer[4], outer[5]]));
    let Some(udp) = tunnel_kind(ctx, outer[6], PROTO_IPV6, ETH_LEN + IPV6_LEN) else {
        return Verdict::Pass;
    };
    let header = IPV6_LEN + if udp { UDP_LEN } else { 0 };
    let mut source = [0u8; 16];
    source.copy_from_slice(&outer[8..24]);
    if DECAP_SOURCES6.get(&Key::new(128, source)).is_none() {
        return Verdict::Drop(decap_counters::FOREIGN);
    }
    let inner_room = payload.wrapping_sub(header - IPV6_LEN);
    if payload < header || (ctx.len() as usize) < ETH_LEN + IPV6_LEN + payload {
        return Verdict::Drop(decap_counters::MALFORMED);
    }
    let Some(inner) = bytes::<IPV6_LEN>(ctx, ETH_LEN + header) else {
        return Verdict::Drop(decap_counters::MALFORMED);
    };
    let inner_payload = usize::from(u16::from_be_bytes([inner[4], inner[5]]));
    if inner[0] >> 4 != 6 || inner_payload + IPV6_LEN != inner_room {
        return Verdict::Drop(decap_counters::MALFORMED);
    }
    let mut vip = [0u8; 16];
    vip.copy_from_slice(&inner[24..40]);
    // SAFETY: a lookup by a key on the stack; only presence is read.
    if unsafe { DECAP_VIPS6.get(&vip) }.is_none() {
        return Verdict::Drop(decap_counters::FOREIGN);
    }
    Verdict::Strip(header as u32)
}

/// Whether an outer header's protocol `proto` is a tunnel's: `Some(false)` for the family's
/// IP in IP (`ip_in_ip`: IPv4 in IPv4, or IPv6 in IPv6), `Some(true)` for UDP to GUE's port
/// (whose header is at `udp_offset`), `None` otherwise (6in4 and the like pass).
#[inline(always)]
fn tunnel_kind(ctx: &TcContext, proto: u8, ip_in_ip: u8, udp_offset: usize) -> Option<bool> {
    match proto {
        _ if proto == ip_in_ip => Some(false),
        PROTO_UDP => {
            let port = DECAP_CONFIG.get(0)?.gue_port;
            let udp = bytes::<UDP_LEN>(ctx, udp_offset)?;
            (port != 0 && u16::from_ne_bytes([udp[2], udp[3]]) == port).then_some(true)
        }
        _ => None,
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
