//! ICMP and ICMPv6. Echo requests to a VIP are answered here, so a VIP answers ping like a
//! host. Errors that quote a packet of a balanced flow (destination unreachable, fragmentation
//! needed, packet too big, time exceeded) are translated the way the flow is and sent on, so
//! that path-MTU discovery and unreachable reports reach the client or the backend that sent
//! the quoted packet. Everything else passes to the kernel.

use core::ptr::{read_unaligned, write_unaligned};

use lb_common::{
    Addr, FlowAddr, FlowEntry, VipKey,
    consts::{events, family, flow_flags, proto},
    csum,
    trace::decision,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    clock,
    established::direction_of,
    family::{Family, V4, V6},
    forward::{Route, resolve, send},
    frame::{Frame, ptr_at},
    maps::{VIPS, count_event},
    nat::{AddrChange, End, check_for_addr, decrement_ttl, set_addr, set_ttl, set_u16},
    packet::{
        ICMP_CHECK_OFFSET, ICMP_HEADER, Packet, Quote, TCP_CHECK_OFFSET, UDP_CHECK_OFFSET,
        addr_words,
    },
    reply::backend_flow,
    scratch::{Scratch, scratch},
    trace, tunnel,
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

/// Handles an ICMP or ICMPv6 packet: what it is decides which function of its own (a
/// BPF-to-BPF call) takes it, so that their locals do not add to the stack of the TCP/UDP
/// path.
#[inline(always)]
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
        let answered = if pkt.is_ipv6() {
            echo_reply::<F, V6>(frame, pkt)
        } else {
            echo_reply::<F, V4>(frame, pkt)
        };
        return answered.unwrap_or(F::PASS);
    }
    if error {
        let translated = if pkt.is_ipv6() {
            translate_error::<F, V6>(frame, pkt)
        } else {
            translate_error::<F, V4>(frame, pkt)
        };
        return translated.unwrap_or(F::PASS);
    }
    F::PASS
}

/// Turns an echo request to a VIP into its reply, sent back where it came from. `None`: not
/// for a VIP (or not where the parser said), pass it.
#[inline(never)]
fn echo_reply<F: Frame, Fam: Family>(frame: &F, pkt: &Packet) -> Option<u32> {
    let vip = VipKey {
        addr: pkt.dst,
        family: pkt.family,
        _pad: [0; 3],
    };
    VIPS.get_ptr(&vip)?;
    let eth: *mut EthHdr = ptr_at(frame, 0)?;
    let icmp_check: *mut u16 = ptr_at(frame, pkt.l4() + ICMP_CHECK_OFFSET)?;
    let icmp: *mut [u8; ICMP_HEADER] = ptr_at(frame, pkt.l4())?;
    // Swapping the addresses leaves every checksum's sum unchanged (ICMPv6's pseudo-header
    // included); set_addr updates the IPv4 header checksum for each step anyway.
    set_addr::<F, Fam>(frame, pkt.l3(), End::Source, &pkt.dst)?;
    set_addr::<F, Fam>(frame, pkt.l3(), End::Destination, &pkt.src)?;
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
    Some(frame.transmit(frame.ingress_ifindex(), false))
}

/// Parses the TCP or UDP packet quoted after the ICMP header (at least its first 8 transport
/// bytes, which hold the ports) into `quote`.
#[inline(always)]
fn parse_quote<F: Frame, Fam: Family>(frame: &F, pkt: &Packet, quote: &mut Quote) -> Option<()> {
    let l3 = pkt.l4() + ICMP_HEADER;
    let end = pkt.l3() + pkt.ip_len as usize;
    let l4 = if Fam::FAMILY == family::IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(frame, l3)?;
        // SAFETY: ptr_at checked the header lies inside the frame.
        let ip = unsafe { &*ip };
        quote.proto = ip.next_hdr;
        quote.src = addr_words(&ip.src_addr);
        quote.dst = addr_words(&ip.dst_addr);
        l3 + Ipv6Hdr::LEN
    } else {
        let ip: *const Ipv4Hdr = ptr_at(frame, l3)?;
        // SAFETY: as above.
        let ip = unsafe { &*ip };
        let header_len = ((ip.vihl & 0x0f) as usize) << 2;
        if ip.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return None;
        }
        quote.proto = ip.proto;
        quote.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
        quote.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
        l3 + header_len
    };
    if quote.proto != proto::TCP && quote.proto != proto::UDP {
        return None;
    }
    if l4 + 8 > end {
        return None;
    }
    let ports: *const [u16; 2] = ptr_at(frame, l4)?;
    // SAFETY: ptr_at checked both ports lie inside the frame.
    let ports = unsafe { read_unaligned(ports) };
    quote.l3_offset = l3 as u16;
    quote.l4_offset = l4 as u16;
    quote.end_offset = end as u16;
    quote.sport = ports[0];
    quote.dport = ports[1];
    Some(())
}

/// Translates an ICMP error that quotes a packet of a balanced flow and sends it on.
///
/// The quoted packet went the other way. Quoting a reply that xlb sent from the VIP (the client
/// side answers), the quote's reverse is the flow's key, and the error goes toward the
/// backend: the quote's source becomes the backend, and the error, addressed to the VIP, goes
/// to the backend. Quoting a packet xlb sent to a backend (the backend side answers), the flow
/// is found as the backend's packets find it (`reply`), and the error goes toward the client:
/// the quote's destination becomes the VIP again, and the error goes on to the client; if the
/// backend itself reported, it reports as the VIP.
/// Not inlined: one copy per family, each with its own stack frame; its steps are inlined.
#[inline(never)]
fn translate_error<F: Frame, Fam: Family>(frame: &F, pkt: &Packet) -> Option<u32> {
    let scratch = scratch()?;
    // SAFETY: this CPU's scratch area; the quote is not otherwise borrowed on this path.
    let quote = unsafe { &mut (*scratch).quote };
    parse_quote::<F, Fam>(frame, pkt, quote)?;
    let quote: &Quote = quote;
    let (entry, toward_backend) = quoted_entry::<Fam>(scratch, quote)?;
    // SAFETY: a valid map value; the fields used here never change once written. The key is
    // this CPU's scratch area's: the flow's.
    let (entry, key) = unsafe { (&*entry, &*Fam::areas(scratch).key) };
    // What the quote's rewritten end becomes: the backend, or the VIP.
    let (entry_addr, entry_port): (Addr, u16) = if toward_backend {
        (entry.addr.to_addr(), entry.port)
    } else {
        (Fam::dst(key).to_addr(), Fam::dst_port(key))
    };

    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return Some(F::PASS);
    }
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
            dst: &entry_addr,
            sport: 0,
            dport: 0,
            dsr: true,
        };
        return Some(match resolve(frame, pkt, &route) {
            Ok(hop) if entry.flags & flow_flags::TUNNEL != 0 => match decrement_ttl(frame, pkt) {
                Some(()) => tunnel::to_backend(frame, scratch, &hop, entry.flags, &entry_addr),
                None => F::PASS,
            },
            Ok(hop) => send(frame, pkt, &hop),
            Err(verdict) => verdict,
        });
    }
    let icmp_check: *mut u16 = ptr_at(frame, pkt.l4() + ICMP_CHECK_OFFSET)?;
    // SAFETY: ptr_at checked the field lies inside the frame.
    let mut check = unsafe { read_unaligned(icmp_check) };
    let end = (&entry_addr, entry_port);
    translate_quote::<F, Fam>(frame, quote, end, toward_backend, &mut check)?;
    let outer =
        translate_outer::<F, Fam>(frame, pkt, quote, &entry_addr, toward_backend, &mut check)?;
    // SAFETY: ptr_at checked the field lies inside the frame.
    unsafe { write_unaligned(icmp_check, nonzero(check)) };
    count_event(events::ICMP_ERROR_TRANSLATED);
    trace_translated(pkt, quote, entry, toward_backend);

    // The error's addresses as they now are.
    let (mut src, mut dst) = (pkt.src, pkt.dst);
    match outer {
        Some(End::Source) => src = entry_addr,
        Some(End::Destination) => dst = entry_addr,
        None => {}
    }
    let route = Route {
        src: &src,
        dst: &dst,
        sport: 0,
        dport: 0,
        dsr: false,
    };
    Some(forward_error(frame, pkt, &route))
}

/// The entry of the flow the quote belongs to, and whether the error goes toward the backend:
/// the one stored under the quote's reverse (a packet xlb sent from the VIP), established or
/// half-open; or the one a packet from the quote's destination would find (a packet xlb sent
/// to a backend, see `reply`). The flow's key is left in this CPU's `scratch` area. `None`:
/// the quote is of no flow.
#[inline(always)]
fn quoted_entry<Fam: Family>(
    scratch: *mut Scratch,
    quote: &Quote,
) -> Option<(*const FlowEntry<Fam::Addr>, bool)> {
    // SAFETY: this CPU's scratch area; the key is not otherwise borrowed on this path.
    let key = unsafe { &mut *Fam::areas(scratch).key };
    *key = Fam::key(
        Fam::Addr::in_addr(&quote.dst),
        Fam::Addr::in_addr(&quote.src),
        quote.dport,
        quote.sport,
        quote.proto,
    );
    let key: &Fam::Key = key;
    if let Some(entry) = Fam::flows().get_ptr(key) {
        return Some((entry, true));
    }
    if let Some(entry) = Fam::half_open().get_ptr(key) {
        return Some((entry, true));
    }
    let (entry, _) = backend_flow::<Fam>(
        scratch,
        &quote.dst,
        quote.dport,
        &quote.src,
        quote.sport,
        quote.proto,
    )?;
    Some((entry, false))
}

/// Rewrites the quote: the end that xlb rewrote (the source toward the backend, the
/// destination toward the client) gets back the address and port `end` (what the flow's
/// other side sees), and the quote's own checksums follow. `check`, the ICMP checksum,
/// follows every change. `None`: the quote is no longer where the parser said.
#[inline(always)]
fn translate_quote<F: Frame, Fam: Family>(
    frame: &F,
    quote: &Quote,
    (entry_addr, entry_port): (&Addr, u16),
    toward_backend: bool,
    check: &mut u16,
) -> Option<()> {
    let end = if toward_backend {
        End::Source
    } else {
        End::Destination
    };
    let change = set_addr::<F, Fam>(frame, quote.l3(), end, entry_addr)?;
    *check = check_for_addr(*check, &change);
    *check = csum::replace16(*check, change.ip_check.0, change.ip_check.1);
    let port_offset = quote.l4() + if toward_backend { 0 } else { 2 };
    let old_port = set_u16(frame, port_offset, entry_port)?;
    *check = csum::replace16(*check, old_port, entry_port);
    translate_quote_check(frame, quote, &change, old_port, entry_port, check);
    Some(())
}

/// Updates the quote's own transport checksum for its changed address and port, if the quote
/// is long enough to hold it (a UDP checksum of zero, not computed, stays so); `check`, the
/// ICMP checksum, follows.
#[inline(always)]
fn translate_quote_check<F: Frame>(
    frame: &F,
    quote: &Quote,
    change: &AddrChange,
    old_port: u16,
    new_port: u16,
    check: &mut u16,
) {
    let quote_check_offset = quote.l4()
        + if quote.proto == proto::TCP {
            TCP_CHECK_OFFSET
        } else {
            UDP_CHECK_OFFSET
        };
    if quote_check_offset + 2 <= quote.end()
        && let Some(field) = ptr_at::<F, u16>(frame, quote_check_offset)
    {
        // SAFETY: ptr_at checked the field lies inside the frame.
        unsafe {
            let old = read_unaligned(field);
            if !(quote.proto == proto::UDP && old == 0) {
                let mut new = check_for_addr(old, change);
                new = csum::replace16(new, old_port, new_port);
                if quote.proto == proto::UDP && new == 0 {
                    new = 0xffff;
                }
                write_unaligned(field, new);
                *check = csum::replace16(*check, old, new);
            }
        }
    }
}

/// Readdresses the error itself: toward the backend, to the backend (`entry_addr`); toward the
/// client, from the VIP if the backend itself reported. ICMPv6's checksum (`check`) covers its
/// addresses (a pseudo-header), ICMP's not. Returns the end it readdressed, if any. `None`:
/// the header is no longer where the parser said.
#[inline(always)]
fn translate_outer<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    quote: &Quote,
    entry_addr: &Addr,
    toward_backend: bool,
    check: &mut u16,
) -> Option<Option<End>> {
    let end = if toward_backend {
        End::Destination
    } else if pkt.src == quote.dst {
        End::Source
    } else {
        return Some(None);
    };
    let change = set_addr::<F, Fam>(frame, pkt.l3(), end, entry_addr)?;
    if pkt.family == family::IPV6 {
        *check = check_for_addr(*check, &change);
    }
    Some(Some(end))
}

/// Traces the translated error, as a packet of its flow's client.
#[inline(always)]
fn trace_translated<A: FlowAddr>(
    pkt: &Packet,
    quote: &Quote,
    entry: &FlowEntry<A>,
    toward_backend: bool,
) {
    let client = if toward_backend {
        (&quote.dst, quote.dport)
    } else {
        (&quote.src, quote.sport)
    };
    let now = clock::now();
    trace::record(now, entry.service_id, pkt, client, |event| {
        event.decision = decision::ICMP_TRANSLATED;
        event.direction = direction_of(toward_backend);
        event.backend_id = entry.backend_id;
        event.proto = quote.proto;
    });
}

/// Sends a translated error on to `route`'s destination, through the next hop the FIB gives;
/// or, if it gives none, returns the verdict that says where the error goes instead.
#[inline(always)]
fn forward_error<F: Frame>(frame: &F, pkt: &Packet, route: &Route) -> u32 {
    match resolve(frame, pkt, route) {
        Ok(hop) => send(frame, pkt, &hop),
        Err(verdict) => verdict,
    }
}
