//! Fragments of TCP and UDP datagrams (RFC 791, RFC 8200 §4.5). Only a datagram's first
//! fragment carries the transport header, and so the ports that find its flow; every fragment
//! carries the addresses, the protocol and the datagram's identification (IPv4's 16 bits, the
//! 32 bits of IPv6's fragment header). So the first fragment's ports are recorded under those
//! (`FRAGMENTS4`, `FRAGMENTS6`), and the later fragments take them from there, as Cilium's
//! fragment tracking does:
//!
//! - The first fragment (offset 0) is read like a whole packet (its UDP length counts the
//!   fragments to come; its transport header must be whole in it), recorded if more follow,
//!   and handed back to `balance::process`, which handles it like any packet of its flow,
//!   established or new. It gets the flow's whole rewrite, the transport checksum's change
//!   for the address and port included: that checksum covers the whole datagram, and only
//!   this fragment holds it.
//! - A later fragment whose datagram has a record and whose flow has an entry follows the
//!   entry: only its IP header is rewritten (the address, the TTL or hop limit, the IPv4 header
//!   checksum), and it goes to the entry's next hop (`fragment_followed`).
//! - A later fragment whose datagram has a record but no flow (its first fragment was of no
//!   flow) goes as its first fragment went: dropped if addressed to a VIP on a port the host
//!   does not answer (`vip_unserved`), passed otherwise (`fragment`).
//! - A later fragment without a record, addressed to a VIP, came before its first fragment,
//!   through another instance, or after its record was evicted: nothing says which backend
//!   its datagram went to, so it is dropped (`fragment_unmatched`). Addressed elsewhere, it may
//!   be the host's own or a backend's answer whose first fragment is still to come; it passes
//!   (`fragment`).
//!
//! All of it is [`process`], a function of its own that the program's top level calls for
//! fragments only: a whole packet pays nothing for it but the parser's test of the fragment
//! bits, which it always had.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    FlowAddr, FlowEntry, FragmentPorts, VipKey,
    consts::{events, family, flow_flags, proto},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    clock,
    counters::count_traffic,
    established::{direction_of, flow_rewrite, for_kernel, found, hop_of, trace_established},
    family::{Family, V4, V6, packet_key},
    forward::transmit,
    frame::{Frame, ptr_at},
    maps::{VIPS, count_event},
    nat::rewrite_later_fragment,
    packet::{Packet, addr_words, parse_l4},
    reply::backend_flow,
    scratch::Scratch,
    tunnel, unserved,
};

/// What [`process`] returns, instead of a verdict, for a first fragment: `pkt` holds it as it
/// holds a whole packet, and `balance::process` goes on with it. No hook's verdict has this
/// value.
pub const FIRST_FRAGMENT: u32 = 0xffff_fffc;

/// The fragment offset of IPv4's flags/offset field (in 8-byte units), and "more fragments".
const IPV4_OFFSET: u16 = 0x1fff;
const IPV4_MORE: u16 = 0x2000;
/// The fragment offset of IPv6's fragment header (in bytes, a multiple of 8), and "more
/// fragments" (the M flag).
const IPV6_OFFSET: u16 = 0xfff8;
const IPV6_MORE: u16 = 0x0001;
/// Size of IPv6's fragment header.
const IPV6_FRAGMENT_LEN: usize = 8;

/// A fragment's place in its datagram.
struct Piece {
    /// The datagram's identification, as in the packet (IPv4: the low 16 bits).
    id: u32,
    /// Offset 0: the fragment with the transport header.
    first: bool,
    /// More fragments follow this one.
    more: bool,
}

/// Handles a fragment of a TCP or UDP datagram that `packet::parse` found (see the module
/// documentation): its verdict, or [`FIRST_FRAGMENT`]. Not inlined, so that only fragments
/// pay for it; called from the top level, so its frame is never on the stack with the frames
/// of the balancer's deeper functions. It reads on from where the parser stopped, trusting
/// what the parser checked: the IP header's version, lengths and protocol.
#[inline(never)]
pub fn process<F: Frame>(frame: &F, pkt: &mut Packet, scratch: *mut Scratch) -> u32 {
    let verdict = if pkt.family == family::IPV4 {
        fragment::<F, V4>(frame, pkt, scratch)
    } else {
        fragment::<F, V6>(frame, pkt, scratch)
    };
    verdict.unwrap_or(F::PASS)
}

/// [`process`] for family `Fam`. `None`: pass the fragment (malformed, counted so).
#[inline(always)]
fn fragment<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &mut Packet,
    scratch: *mut Scratch,
) -> Option<u32> {
    let piece = if Fam::FAMILY == family::IPV4 {
        read_ipv4(frame, pkt)?
    } else {
        read_ipv6(frame, pkt)?
    };
    // SAFETY: this CPU's scratch area; the fragment key is used on this path only.
    let key = unsafe { &mut *Fam::areas(scratch).fragment };
    *key = Fam::fragment_key(
        Fam::Addr::in_addr(&pkt.src),
        Fam::Addr::in_addr(&pkt.dst),
        piece.id,
        pkt.proto,
    );
    if piece.first {
        if piece.more {
            let ports = FragmentPorts {
                src_port: pkt.sport,
                dst_port: pkt.dport,
            };
            // A failed insert leaves the later fragments unmatched, as an evicted record does.
            let _ = Fam::fragments().insert(&*key, &ports, BPF_ANY as u64);
        }
        return Some(FIRST_FRAGMENT);
    }
    Some(later::<F, Fam>(frame, pkt, scratch, key))
}

/// Reads an IPv4 fragment, whose header `packet::parse` checked, into `pkt` (and a first
/// fragment's transport header). `None`: malformed (counted).
#[inline(always)]
fn read_ipv4<F: Frame>(frame: &F, pkt: &mut Packet) -> Option<Piece> {
    let l3 = pkt.l3();
    let ip: *const Ipv4Hdr = ptr_at(frame, l3)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) << 2;
    let ip_len = u16::from_be_bytes(ip.tot_len);
    let field = u16::from_be_bytes(ip.frags);
    let piece = Piece {
        id: u16::from_ne_bytes(ip.id) as u32,
        first: field & IPV4_OFFSET == 0,
        more: field & IPV4_MORE != 0,
    };
    pkt.l4_offset = (l3 + header_len) as u16;
    pkt.proto = ip.proto;
    pkt.ttl = ip.ttl;
    pkt.ip_len = ip_len;
    pkt.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    pkt.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    if piece.first {
        // (The parser checked the header length against the total length.)
        let l4_len = (ip_len as usize).checked_sub(header_len)?;
        parse_l4(frame, pkt, l4_len, !piece.more)?;
    }
    Some(piece)
}

/// Reads an IPv6 fragment, whose fixed header `packet::parse` checked and whose fragment
/// header is at `pkt.l4()` (after the options, if any), into `pkt` (and a first fragment's
/// transport header, which must follow the fragment header directly). `None`: pass it
/// (malformed, or not TCP or UDP; counted).
#[inline(always)]
fn read_ipv6<F: Frame>(frame: &F, pkt: &mut Packet) -> Option<Piece> {
    let (l3, at) = (pkt.l3(), pkt.l4());
    let ip: *const Ipv6Hdr = ptr_at(frame, l3)?;
    let header: *const [u8; IPV6_FRAGMENT_LEN] = ptr_at(frame, at)?;
    // SAFETY: ptr_at checked that both headers lie inside the frame.
    let (ip, header) = unsafe { (&*ip, *header) };
    let end = l3 + Ipv6Hdr::LEN + u16::from_be_bytes(ip.payload_len) as usize;
    let l4 = at + IPV6_FRAGMENT_LEN;
    if l4 > end {
        count_event(events::MALFORMED);
        return None;
    }
    let next = header[0];
    if next != proto::TCP && next != proto::UDP {
        count_event(events::FRAGMENT);
        return None;
    }
    let field = u16::from_be_bytes([header[2], header[3]]);
    let piece = Piece {
        id: u32::from_ne_bytes([header[4], header[5], header[6], header[7]]),
        first: field & IPV6_OFFSET == 0,
        more: field & IPV6_MORE != 0,
    };
    pkt.l4_offset = l4 as u16;
    pkt.proto = next;
    pkt.ttl = ip.hop_limit;
    pkt.ip_len = (end - l3) as u16;
    pkt.src = addr_words(&ip.src_addr);
    pkt.dst = addr_words(&ip.dst_addr);
    if piece.first {
        parse_l4(frame, pkt, end - l4, !piece.more)?;
    }
    Some(piece)
}

/// A fragment after the first, of the datagram whose key is `key` (in this CPU's `scratch`
/// area): it follows the flow its first fragment recorded, or passes, or is dropped (see the
/// module documentation).
#[inline(always)]
fn later<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &mut Packet,
    scratch: *mut Scratch,
    key: &Fam::FragmentKey,
) -> u32 {
    let Some(ports) = Fam::fragments().get_ptr(key) else {
        return unmatched::<F>(pkt);
    };
    // SAFETY: a valid map value, read at once.
    let ports = unsafe { *ports };
    pkt.sport = ports.src_port;
    pkt.dport = ports.dst_port;
    if let Some((entry, half_open)) =
        backend_flow::<Fam>(scratch, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto)
    {
        return follow::<F, Fam>(
            frame,
            pkt,
            scratch,
            entry,
            found::table(half_open) | found::BACKEND,
        );
    }
    // SAFETY: this CPU's scratch area; the flow key is not otherwise borrowed on this path.
    let flow_key = unsafe { &mut *Fam::areas(scratch).key };
    packet_key::<Fam>(pkt, flow_key);
    let (entry, half_open) = if let Some(entry) = Fam::flows().get_ptr_mut(&*flow_key) {
        (entry, false)
    } else if pkt.proto == proto::TCP
        && let Some(entry) = Fam::half_open().get_ptr_mut(&*flow_key)
    {
        (entry, true)
    } else {
        // As its first fragment was: dropped if to a VIP's port the host does not answer.
        return match unserved::not_served::<F>(pkt) {
            verdict if verdict == F::PASS => {
                count_event(events::FRAGMENT);
                F::PASS
            }
            verdict => verdict,
        };
    };
    follow::<F, Fam>(frame, pkt, scratch, entry, found::table(half_open))
}

/// A later fragment without a record of its first fragment: dropped if it is addressed to a
/// VIP, passed otherwise (see the module documentation).
#[inline(always)]
fn unmatched<F: Frame>(pkt: &Packet) -> u32 {
    let vip = VipKey {
        addr: pkt.dst,
        family: pkt.family,
        _pad: [0; 3],
    };
    if VIPS.get_ptr(&vip).is_some() {
        count_event(events::FRAGMENT_UNMATCHED);
        F::DROP
    } else {
        count_event(events::FRAGMENT);
        F::PASS
    }
}

/// Sends a later fragment where its flow's entry `entry`, found as `how` says (see
/// `established::found`), sends the flow's packets of its direction, its IP header rewritten
/// as the entry says. The entry is neither refreshed nor re-resolved: the datagram's first
/// fragment, an instant before, did both. Without a next hop the fragment goes to the kernel
/// (a DSR fragment, which the kernel could not forward, is dropped), as its first fragment did.
#[inline(always)]
fn follow<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    how: u32,
) -> u32 {
    if for_kernel(frame, pkt) {
        return F::PASS;
    }
    // SAFETY: a valid map value; only read here. The key is this CPU's scratch area's.
    let (flow, key) = unsafe { (&*entry, &*Fam::areas(scratch).key) };
    let dsr = flow.flags & flow_flags::DSR != 0;
    let to_backend = how & found::BACKEND == 0;
    let hop = hop_of(flow, to_backend);
    let resolved = hop.resolved();
    let rewrite = flow_rewrite::<Fam>(flow, key, to_backend, resolved);
    if rewrite_later_fragment::<F, Fam>(frame, pkt, dsr, &rewrite).is_none() {
        return F::PASS;
    }
    count_traffic(
        flow.service_id,
        flow.backend_id,
        pkt.ip_len,
        direction_of(to_backend),
    );
    count_event(events::FRAGMENT_FOLLOWED);
    let half_open = how & found::HALF_OPEN != 0;
    trace_established(pkt, flow, to_backend, half_open, clock::now_in(scratch));
    if !resolved {
        return if dsr { F::DROP } else { F::PASS };
    }
    if to_backend {
        return tunnel::to_backend(frame, scratch, hop, flow.flags, &flow.addr);
    }
    transmit(frame, hop)
}
