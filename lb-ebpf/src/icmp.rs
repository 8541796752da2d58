//! ICMP and ICMPv6. Echo requests to a VIP are answered here, so a VIP answers ping like a
//! host. Errors that quote a packet of a balanced flow (destination unreachable, fragmentation
//! needed, packet too big, time exceeded) are translated the way the flow is and sent on, so
//! that path-MTU discovery and unreachable reports reach the client or the backend that sent
//! the quoted packet. Everything else passes to the kernel.

use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    Addr, FlowEntry, FlowKey, VipKey,
    consts::{events, family, flow_flags, proto},
    csum, direction,
    trace::decision,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    forward::{Route, resolve, send},
    frame::{Frame, ptr_at},
    maps::{FLOWS, HALF_OPEN, VIPS, count_event},
    nat::{End, check_for_addr, set_addr, set_ttl, set_u16},
    packet::{
        ICMP_CHECK_OFFSET, ICMP_HEADER, Packet, TCP_CHECK_OFFSET, UDP_CHECK_OFFSET, addr_words,
    },
    scratch::scratch,
    trace,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// TTL (hop limit) of echo replies, as Linux sends them.
const ECHO_REPLY_TTL: u8 = 64;

/// An updated ICMP checksum as it is stored: 0x0000 and 0xffff are the same one's-complement
/// value, but only 0xffff is accepted when everything else in the message is zero (an
/// incremental update can yield 0x0000 there, a full computation never does).
#[inline(always)]
fn nonzero(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

/// Handles an ICMP or ICMPv6 packet. A function of its own (a BPF-to-BPF call), so that its
/// locals do not add to the stack of the TCP/UDP path.
#[inline(never)]
pub fn process<F: Frame>(frame: &F, pkt: &Packet) -> u32 {
    let (echo, error) = if pkt.is_ipv6() {
        (
            pkt.icmp_type == ICMPV6_ECHO_REQUEST,
            matches!(
                pkt.icmp_type,
                ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED
            ),
        )
    } else {
        (
            pkt.icmp_type == ICMP_ECHO_REQUEST,
            matches!(pkt.icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED),
        )
    };
    if echo {
        return echo_reply(frame, pkt).unwrap_or(F::PASS);
    }
    if error {
        return translate_error(frame, pkt).unwrap_or(F::PASS);
    }
    F::PASS
}

/// Turns an echo request to a VIP into its reply, sent back where it came from. `None`: not
/// for a VIP (or not where the parser said), pass it.
#[inline(always)]
fn echo_reply<F: Frame>(frame: &F, pkt: &Packet) -> Option<u32> {
    let vip = VipKey {
        addr: pkt.dst,
        family: pkt.family,
        _pad: [0; 3],
    };
    VIPS.get_ptr(&vip)?;
    let eth: *mut EthHdr = ptr_at(frame, 0)?;
    let icmp_check: *mut u16 = ptr_at(frame, pkt.l4 + ICMP_CHECK_OFFSET)?;
    let icmp: *mut [u8; ICMP_HEADER] = ptr_at(frame, pkt.l4)?;
    // Swapping the addresses leaves every checksum's sum unchanged (ICMPv6's pseudo-header
    // included); set_addr updates the IPv4 header checksum for each step anyway.
    set_addr(frame, pkt.l3, pkt.family, End::Source, &pkt.dst)?;
    set_addr(frame, pkt.l3, pkt.family, End::Destination, &pkt.src)?;
    let reply = if pkt.is_ipv6() {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    // SAFETY: ptr_at checked each field lies inside the frame.
    unsafe {
        // The type shares a 16-bit word with the code: (type << 8 | code) in wire order.
        let code = (*icmp)[1];
        let old_word = u16::from_ne_bytes([(*icmp)[0], code]);
        let new_word = u16::from_ne_bytes([reply, code]);
        (*icmp)[0] = reply;
        let check = read_unaligned(icmp_check);
        write_unaligned(
            icmp_check,
            nonzero(csum::replace16(check, old_word, new_word)),
        );
        core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr);
    }
    // Last: on tc, setting an IPv6 hop limit goes through a helper, after which the pointers
    // above are no longer valid.
    set_ttl(frame, pkt, ECHO_REPLY_TTL)?;
    count_event(events::ICMP_ECHO_ANSWERED);
    Some(frame.transmit(frame.ingress_ifindex()))
}

/// The packet an ICMP error quotes: its IP header, transport protocol, addresses and ports.
struct Quote {
    l3: usize,
    l4: usize,
    /// Where the quoted IP packet ends, as far as the ICMP message holds it.
    end: usize,
    proto: u8,
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
}

/// Parses the TCP or UDP packet quoted after the ICMP header (at least its first 8 transport
/// bytes, which hold the ports).
#[inline(always)]
fn parse_quote<F: Frame>(frame: &F, pkt: &Packet) -> Option<Quote> {
    let l3 = pkt.l4 + ICMP_HEADER;
    let end = pkt.l3 + pkt.ip_len as usize;
    let (l4, quoted_proto, src, dst) = if pkt.is_ipv6() {
        let ip: *const Ipv6Hdr = ptr_at(frame, l3)?;
        // SAFETY: ptr_at checked the header lies inside the frame.
        let ip = unsafe { &*ip };
        (
            l3 + Ipv6Hdr::LEN,
            ip.next_hdr,
            addr_words(&ip.src_addr),
            addr_words(&ip.dst_addr),
        )
    } else {
        let ip: *const Ipv4Hdr = ptr_at(frame, l3)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        let header_len = ((ip.vihl & 0x0f) as usize) << 2;
        if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return None;
        }
        (
            l3 + header_len,
            ip.proto,
            [u32::from_ne_bytes(ip.src_addr), 0, 0, 0],
            [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0],
        )
    };
    if quoted_proto != proto::TCP && quoted_proto != proto::UDP {
        return None;
    }
    if l4 + 8 > end {
        return None;
    }
    let ports: *const [u16; 2] = ptr_at(frame, l4)?;
    // SAFETY: ptr_at checked both ports lie inside the frame.
    let ports = unsafe { read_unaligned(ports) };
    Some(Quote {
        l3,
        l4,
        end,
        proto: quoted_proto,
        src,
        dst,
        sport: ports[0],
        dport: ports[1],
    })
}

/// Translates an ICMP error that quotes a packet of a balanced flow and sends it on.
///
/// The quoted packet went the other way, so its reverse is the key of one of the flow's
/// entries. Quoting a reply that xlb sent from the VIP (the client side answers), the entry is
/// the client's, toward the backend: the quote's source becomes the backend, and the error,
/// addressed to the VIP, goes to the backend. Quoting a packet xlb sent to a backend (the
/// backend side answers), the entry is the backend's, toward the client: the quote's
/// destination becomes the VIP again, and the error goes on to the client; if the backend
/// itself reported, it reports as the VIP.
#[inline(always)]
fn translate_error<F: Frame>(frame: &F, pkt: &Packet) -> Option<u32> {
    let quote = parse_quote(frame, pkt)?;
    let scratch = scratch()?;
    // SAFETY: this CPU's scratch area; the key is not otherwise borrowed on this path.
    let key = unsafe { &mut (*scratch).key };
    key.src_addr = quote.dst;
    key.dst_addr = quote.src;
    key.src_port = quote.dport;
    key.dst_port = quote.sport;
    key.proto = quote.proto;
    key.family = pkt.family;
    key._pad = [0; 2];
    let key: &FlowKey = key;
    let entry: *const FlowEntry = match FLOWS.get_ptr(key) {
        Some(entry) => entry,
        None => HALF_OPEN.get_ptr(key)?,
    };
    // SAFETY: a valid map value; the fields used here never change once written.
    let entry = unsafe { &*entry };
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return Some(F::PASS);
    }
    let toward_backend = entry.direction == direction::TO_BACKEND;
    // An error toward the backend must be addressed to the VIP the quote came from.
    if toward_backend && pkt.dst != quote.src {
        return None;
    }
    if entry.flags & flow_flags::DSR != 0 {
        // A DSR backend holds the VIP and sent the quoted packet itself: it takes the error
        // as it is (path MTU discovery of its replies); only the MACs change.
        count_event(events::ICMP_ERROR_TRANSLATED);
        let route = Route {
            src: &pkt.src,
            dst: &entry.addr,
            sport: 0,
            dport: 0,
            dsr: true,
        };
        return Some(match resolve(frame, pkt, &route) {
            Ok(hop) => send(frame, pkt, &hop),
            Err(verdict) => verdict,
        });
    }
    let icmp_check: *mut u16 = ptr_at(frame, pkt.l4 + ICMP_CHECK_OFFSET)?;
    // SAFETY: ptr_at checked the field lies inside the frame.
    let mut check = unsafe { read_unaligned(icmp_check) };

    // The quote: the end that xlb rewrote gets back what the other direction's entry says.
    let end = if toward_backend {
        End::Source
    } else {
        End::Destination
    };
    let change = set_addr(frame, quote.l3, pkt.family, end, &entry.addr)?;
    check = check_for_addr(check, pkt.family, &change);
    check = csum::replace16(check, change.ip_check.0, change.ip_check.1);
    let port_offset = quote.l4 + if toward_backend { 0 } else { 2 };
    let old_port = set_u16(frame, port_offset, entry.port)?;
    check = csum::replace16(check, old_port, entry.port);
    // The quote's own transport checksum, if the quote is long enough to hold it.
    let quote_check_offset = quote.l4
        + if quote.proto == proto::TCP {
            TCP_CHECK_OFFSET
        } else {
            UDP_CHECK_OFFSET
        };
    if quote_check_offset + 2 <= quote.end
        && let Some(field) = ptr_at::<F, u16>(frame, quote_check_offset)
    {
        // SAFETY: ptr_at checked the field lies inside the frame.
        unsafe {
            let old = read_unaligned(field);
            if !(quote.proto == proto::UDP && old == 0) {
                let mut new = check_for_addr(old, pkt.family, &change);
                new = csum::replace16(new, old_port, entry.port);
                if quote.proto == proto::UDP && new == 0 {
                    new = 0xffff;
                }
                write_unaligned(field, new);
                check = csum::replace16(check, old, new);
            }
        }
    }

    // The outer header. ICMPv6's checksum covers its addresses (a pseudo-header), ICMP's not.
    let (mut src, mut dst) = (pkt.src, pkt.dst);
    let outer = if toward_backend {
        dst = entry.addr;
        Some(set_addr(
            frame,
            pkt.l3,
            pkt.family,
            End::Destination,
            &entry.addr,
        )?)
    } else if pkt.src == quote.dst {
        src = entry.addr;
        Some(set_addr(
            frame,
            pkt.l3,
            pkt.family,
            End::Source,
            &entry.addr,
        )?)
    } else {
        None
    };
    if let Some(change) = outer
        && pkt.family == family::IPV6
    {
        check = check_for_addr(check, pkt.family, &change);
    }
    // SAFETY: ptr_at checked the field lies inside the frame.
    unsafe { write_unaligned(icmp_check, nonzero(check)) };
    count_event(events::ICMP_ERROR_TRANSLATED);
    let client = if toward_backend {
        (&key.src_addr, key.src_port)
    } else {
        (&key.dst_addr, key.dst_port)
    };
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    trace::record(now, entry.service_id, pkt, client, |event| {
        event.decision = decision::ICMP_TRANSLATED;
        event.direction = entry.direction;
        event.backend_id = entry.backend_id;
        event.proto = quote.proto;
    });

    let route = Route {
        src: &src,
        dst: &dst,
        sport: 0,
        dport: 0,
        dsr: false,
    };
    Some(match resolve(frame, pkt, &route) {
        Ok(hop) => send(frame, pkt, &hop),
        Err(verdict) => verdict,
    })
}
