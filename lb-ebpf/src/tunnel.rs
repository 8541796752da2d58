//! Layer-3 direct server return (`forwarding = "ipip"` or `"gue"`): a tunnel flow's packet
//! toward its backend leaves inside an outer IP header (and, for GUE, a UDP header) addressed
//! to the backend, which may be any number of routed hops away (see `lb_common::tunnel`).
//!
//! The balancer decides, as for L2 DSR, and leaves the rest to a program of its own: it puts
//! the next hop toward the backend and the backend's address in the scratch area and returns
//! [`ENCAPSULATE`]; its top level then tail-calls the encapsulating program of its hook
//! (`ENCAP_XDP`/`ENCAP_TC`), which [`encapsulate`]s the packet, still described by the scratch
//! area's `pkt`, and sends it. The balancer's own code, at the verifier's limit, only gains a
//! branch, and the tail call is made where no other frame is on the stack.

use core::ptr::write_unaligned;

use aya_ebpf::bindings::{
    BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
    bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED,
};
use aya_ebpf::helpers::bpf_check_mtu;
use lb_common::{
    Addr, FlowAddr, Hop,
    consts::{events, flow_flags, proto},
    csum,
    hash::tuple_hash,
    tunnel::{OUTER_TTL, TunnelConfig, gue_source_port, overhead},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr};

use crate::{
    family::Family,
    forward::transmit,
    frame::{Frame, ptr_at},
    maps::{TUNNEL, count_event},
    packet::Packet,
    scratch::{Scratch, TunnelJob, scratch},
    too_big,
};

/// What the balancer returns, instead of a verdict, for a tunnel flow's packet to encapsulate:
/// its next hop and backend are in the scratch area's [`TunnelJob`]. No hook's verdict has this
/// value.
pub const ENCAPSULATE: u32 = 0xffff_fffb;

/// Size of an Ethernet header without tags: the only frames encapsulated.
const ETH_LEN: usize = 14;
/// `IPPROTO_IPIP`: IPv4 in IPv4.
const PROTO_IPIP: u8 = 4;
/// `IPPROTO_IPV6`: IPv6 in IPv6.
const PROTO_IPV6: u8 = 41;
/// The IPv4 DF bit, in the host-order flags and fragment offset field.
const IPV4_DF: u16 = 0x4000;

/// Sends a packet of a flow toward its backend at `hop`: encapsulated if the flow's `flags`
/// name a tunnel (see [`ENCAPSULATE`]), else as it is. `scratch`: this CPU's scratch area.
#[inline(always)]
pub fn to_backend<F: Frame, A: FlowAddr>(
    frame: &F,
    scratch: *mut Scratch,
    hop: &Hop,
    flags: u8,
    backend: &A,
) -> u32 {
    if flags & flow_flags::TUNNEL == 0 {
        return transmit(frame, hop);
    }
    // SAFETY: this CPU's scratch area, used by nobody else while the program runs.
    let job = unsafe { &mut (*scratch).tunnel };
    job.hop = *hop;
    job.flags = flags;
    job.backend = backend.to_addr();
    ENCAPSULATE
}

/// A new flow's first packet, which `new_flow` recorded and sent (`verdict`) as it sends any
/// flow's: if the flow is a tunnel's, handed to the encapsulation instead, its next hop,
/// backend and flags taken from the entry it was recorded with (in this CPU's `scratch` area).
/// The encapsulating program sends it again, which replaces where `new_flow` sent it. Decided
/// here, at the top level, so that `new_flow`, whose frame is the program's largest, is as it
/// is for every flow.
#[inline(always)]
pub fn after_new_flow<F: Frame, Fam: Family>(scratch: *mut Scratch, verdict: u32) -> u32 {
    if !F::sent(verdict) {
        return verdict;
    }
    // SAFETY: this CPU's scratch area: the entry `new_flow` built, and the job.
    unsafe {
        let entry = &*Fam::areas(scratch).entry;
        if entry.flags & flow_flags::TUNNEL == 0 {
            return verdict;
        }
        let job = &mut (*scratch).tunnel;
        job.hop = entry.to_backend;
        job.flags = entry.flags;
        job.backend = entry.addr.to_addr();
    }
    ENCAPSULATE
}

/// The balancer's top level, for [`ENCAPSULATE`]: the tail call into the hook's encapsulating
/// program, or, if there is none (no daemon filled `ENCAP_XDP`/`ENCAP_TC`), a drop, counted.
#[inline(always)]
pub fn hand_over<F: Frame>(frame: &F) -> u32 {
    frame.encapsulate();
    count_event(events::TUNNEL_FAILED);
    F::DROP
}

/// The encapsulating program: the packet the scratch area describes, behind an outer header
/// to the backend, sent to the next hop; answered with ICMP if the encapsulation would not
/// fit the next hop's MTU (see `too_big`); dropped, counted, if it cannot be encapsulated.
#[inline(always)]
pub fn encapsulate<F: Frame>(frame: &F) -> u32 {
    let (Some(scratch), Some(config)) = (scratch(), TUNNEL.get(0)) else {
        return failed::<F>();
    };
    // SAFETY: this CPU's scratch area, filled by the balancer before its tail call into this
    // program (on the same CPU, for the same packet).
    let (pkt, job) = unsafe { (&(*scratch).pkt, &(*scratch).tunnel) };
    let ipv6 = pkt.is_ipv6();
    let gue = job.flags & flow_flags::GUE != 0;
    let added = overhead(ipv6, gue);
    if pkt.l3() != ETH_LEN {
        // A VLAN tag: the outer header would go between the tag and the packet.
        return failed::<F>();
    }
    if let Some(mtu) = fits_not(frame, job.hop.ifindex, added) {
        count_event(events::TUNNEL_TOO_BIG);
        return too_big::answer(frame, pkt, mtu.saturating_sub(u32::from(added)));
    }
    let Some(first) = inner_words(frame, pkt) else {
        return failed::<F>();
    };
    let flags = u64::from(if ipv6 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    }) | if gue {
        u64::from(BPF_F_ADJ_ROOM_ENCAP_L4_UDP)
    } else {
        0
    };
    if frame.grow_head(u32::from(added), flags).is_none() {
        return failed::<F>();
    }
    let written = if ipv6 {
        write_ipv6(frame, pkt, job, config, first[0], gue)
    } else {
        write_ipv4(frame, pkt, job, config, first, gue)
    };
    if written.is_none() {
        return failed::<F>();
    }
    transmit(frame, &job.hop)
}

/// A packet that cannot be encapsulated: dropped, counted.
#[inline(always)]
fn failed<F: Frame>() -> u32 {
    count_event(events::TUNNEL_FAILED);
    F::DROP
}

/// The MTU of interface `ifindex`, if the frame, `added` bytes longer, would not fit it
/// (`bpf_check_mtu`; a GSO packet fits: its segments are cut to the MTU when encapsulated).
#[inline(always)]
fn fits_not<F: Frame>(frame: &F, ifindex: u32, added: u16) -> Option<u32> {
    let mut mtu: u32 = 0;
    // SAFETY: the helper reads the context and writes `mtu`.
    let rc = unsafe { bpf_check_mtu(frame.raw(), ifindex, &mut mtu, i32::from(added), 0) };
    (rc == BPF_MTU_CHK_RET_FRAG_NEEDED as i64).then_some(mtu)
}

/// The inner header's words the outer one copies, as they are on the wire: its first (IPv4:
/// version, TOS and length; IPv6: version, traffic class and flow label) and, for IPv4, its
/// second (identification, flags and fragment offset).
#[inline(always)]
fn inner_words<F: Frame>(frame: &F, pkt: &Packet) -> Option<[u32; 2]> {
    let words: *const [u32; 2] = ptr_at(frame, pkt.l3())?;
    // SAFETY: ptr_at checked the words lie inside the frame.
    Some(unsafe { core::ptr::read_unaligned(words) })
}

/// The Ethernet header toward `hop`, at the (moved) start of the frame.
#[inline(always)]
fn write_eth<F: Frame>(frame: &F, hop: &Hop, ether_type: u16) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(frame, 0)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        (*eth).dst_addr = hop.dst_mac;
        (*eth).src_addr = hop.src_mac;
        (*eth).ether_type = ether_type;
    }
    Some(())
}

/// GUE's UDP header at `offset`: from a port of the inner flow's hash, to GUE's port, for
/// `inner_len` bytes of inner packet. Its checksum is zero (RFC 6935 allows it for tunnels
/// over IPv6; `xlb decap` accepts it). Returns the header's one's-complement sum.
#[inline(always)]
fn write_udp<F: Frame>(
    frame: &F,
    offset: usize,
    pkt: &Packet,
    config: &TunnelConfig,
    inner_len: u16,
) -> Option<u32> {
    let udp: *mut UdpHdr = ptr_at(frame, offset)?;
    let hash = tuple_hash(
        &pkt.src,
        &pkt.dst,
        u32::from(pkt.sport) | u32::from(pkt.dport) << 16,
        u32::from(pkt.proto),
        0,
    );
    let (source, len) = (gue_source_port(hash).to_be(), (inner_len + 8).to_be());
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        (*udp).src = source.to_ne_bytes();
        (*udp).dst = config.gue_port.to_ne_bytes();
        (*udp).len = len.to_ne_bytes();
        (*udp).check = [0; 2];
    }
    Some(u32::from(source) + u32::from(config.gue_port) + u32::from(len))
}

/// The outer IPv4 header (and GUE's UDP header): from the configured source to the backend;
/// TOS, identification and DF copied from the inner header (`first`), TTL [`OUTER_TTL`].
#[inline(always)]
fn write_ipv4<F: Frame>(
    frame: &F,
    pkt: &Packet,
    job: &TunnelJob,
    config: &TunnelConfig,
    first: [u32; 2],
    gue: bool,
) -> Option<()> {
    write_eth(frame, &job.hop, 0x0800u16.to_be())?;
    let inner = first.map(u32::to_ne_bytes);
    let tos = inner[0][1];
    let id = [inner[1][0], inner[1][1]];
    let df = u16::from_be_bytes([inner[1][2], inner[1][3]]) & IPV4_DF;
    let added = overhead(false, gue);
    let header = Ipv4Hdr {
        vihl: 0x45,
        tos,
        tot_len: (pkt.ip_len + added).to_be_bytes(),
        id,
        frags: df.to_be_bytes(),
        ttl: OUTER_TTL,
        proto: if gue { proto::UDP } else { PROTO_IPIP },
        check: [0; 2],
        src_addr: config.source4.to_ne_bytes(),
        dst_addr: job.backend[0].to_ne_bytes(),
    };
    let check = ipv4_checksum(&header);
    let ip: *mut Ipv4Hdr = ptr_at(frame, ETH_LEN)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        write_unaligned(ip, header);
        (*ip).check = check.to_ne_bytes();
    }
    // The header's own sum is zero (its checksum makes it so): only UDP's changes `csum`.
    if gue {
        let udp = write_udp(frame, ETH_LEN + Ipv4Hdr::LEN, pkt, config, pkt.ip_len)?;
        frame.csum_added(udp);
    }
    Some(())
}

/// The outer IPv6 header (and GUE's UDP header): from the configured source to the backend;
/// traffic class and flow label copied from the inner header's first word, hop limit
/// [`OUTER_TTL`].
#[inline(always)]
fn write_ipv6<F: Frame>(
    frame: &F,
    pkt: &Packet,
    job: &TunnelJob,
    config: &TunnelConfig,
    first: u32,
    gue: bool,
) -> Option<()> {
    write_eth(frame, &job.hop, 0x86ddu16.to_be())?;
    let payload = pkt.ip_len + if gue { 8 } else { 0 };
    let header = Ipv6Hdr {
        vcf: first.to_ne_bytes(),
        payload_len: payload.to_be_bytes(),
        next_hdr: if gue { proto::UDP } else { PROTO_IPV6 },
        hop_limit: OUTER_TTL,
        src_addr: addr_bytes(&config.source6),
        dst_addr: addr_bytes(&job.backend),
    };
    // SAFETY: a 40-byte header is twenty 16-bit words.
    let mut sum = csum::sum_words(unsafe { &*(&raw const header).cast::<[u16; 20]>() });
    let ip: *mut Ipv6Hdr = ptr_at(frame, ETH_LEN)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe { write_unaligned(ip, header) };
    if gue {
        sum += write_udp(frame, ETH_LEN + Ipv6Hdr::LEN, pkt, config, pkt.ip_len)?;
    }
    frame.csum_added(u32::from(csum::fold(sum)));
    Some(())
}

/// An address's 16 bytes as they are on the wire.
#[inline(always)]
fn addr_bytes(addr: &Addr) -> [u8; 16] {
    // SAFETY: four words in network order are sixteen bytes in network order.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(*addr) }
}

/// The checksum of an IPv4 header of 20 bytes whose checksum field is zero, as it goes on the
/// wire (in memory order).
#[inline(always)]
fn ipv4_checksum(header: &Ipv4Hdr) -> u16 {
    // SAFETY: a 20-byte header is ten 16-bit words.
    !csum::fold(csum::sum_words(unsafe {
        &*(header as *const Ipv4Hdr).cast::<[u16; 10]>()
    }))
}
