//! Address and port rewriting with checksum updates, for IPv4 and IPv6: RFC 1624 arithmetic
//! on XDP, the skb checksum helpers on tc (see `frame` for why).

use core::ptr::{read_unaligned, write_unaligned};

use lb_common::{
    Addr,
    consts::{family, proto},
    csum,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    frame::{Frame, l4_csum_flags, ptr_at},
    packet::Packet,
};

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Source address and port (the reply path: backend -> VIP).
    Source,
    /// Destination address and port (the forward path: VIP -> backend).
    Destination,
}

/// Offset of the source address in an IPv4 header (the destination follows it).
const IPV4_SRC: usize = 12;
/// Offset of the source address in an IPv6 header (the destination follows it).
const IPV6_SRC: usize = 8;
/// Offset of the payload length in an IPv6 header (followed by next header and hop limit).
const IPV6_PAYLOAD_LEN: usize = 4;
/// Offset of the header checksum in an IPv4 header.
const IPV4_CHECK: usize = 10;

/// One address changed in an IP header: the old and new address, and for IPv4 the header
/// checksum before and after (so a checksum covering the header, as ICMP's covers a quoted
/// one, can follow).
pub struct AddrChange {
    /// The address before.
    pub old: Addr,
    /// The address after.
    pub new: Addr,
    /// IPv4 header checksum before and after; equal for IPv6, which has none.
    pub ip_check: (u16, u16),
}

/// Replaces the source or destination address of the IP header at `l3` by `new`, updating
/// the IPv4 header checksum.
#[inline(always)]
pub fn set_addr<F: Frame>(
    frame: &F,
    l3: usize,
    ip_family: u8,
    end: End,
    new: &Addr,
) -> Option<AddrChange> {
    if ip_family == family::IPV4 {
        let offset = l3
            + IPV4_SRC
            + match end {
                End::Source => 0,
                End::Destination => 4,
            };
        let field: *mut u32 = ptr_at(frame, offset)?;
        let check: *mut u16 = ptr_at(frame, l3 + IPV4_CHECK)?;
        // Make sure the whole fixed header is there (it is, for parsed packets).
        ptr_at::<F, Ipv4Hdr>(frame, l3)?;
        // SAFETY: ptr_at checked both fields lie inside the frame; unaligned accesses because
        // packet headers have no alignment guarantee.
        unsafe {
            let old = read_unaligned(field);
            write_unaligned(field, new[0]);
            let old_check = read_unaligned(check);
            let new_check = csum::replace32(old_check, old, new[0]);
            write_unaligned(check, new_check);
            Some(AddrChange {
                old: [old, 0, 0, 0],
                new: *new,
                ip_check: (old_check, new_check),
            })
        }
    } else {
        let offset = l3
            + IPV6_SRC
            + match end {
                End::Source => 0,
                End::Destination => 16,
            };
        ptr_at::<F, Ipv6Hdr>(frame, l3)?;
        let field: *mut Addr = ptr_at(frame, offset)?;
        // SAFETY: as above.
        unsafe {
            let old = read_unaligned(field);
            write_unaligned(field, *new);
            Some(AddrChange {
                old,
                new: *new,
                ip_check: (0, 0),
            })
        }
    }
}

/// Replaces the 16-bit field at `offset` (a port) by `new`; returns the old value.
#[inline(always)]
pub fn set_u16<F: Frame>(frame: &F, offset: usize, new: u16) -> Option<u16> {
    let field: *mut u16 = ptr_at(frame, offset)?;
    // SAFETY: ptr_at checked the field lies inside the frame.
    unsafe {
        let old = read_unaligned(field);
        write_unaligned(field, new);
        Some(old)
    }
}

/// A checksum that covers an address (a pseudo-header's) updated for its change.
#[inline(always)]
pub fn check_for_addr(check: u16, ip_family: u8, change: &AddrChange) -> u16 {
    if ip_family == family::IPV4 {
        csum::replace32(check, change.old[0], change.new[0])
    } else {
        csum::replace128(check, &change.old, &change.new)
    }
}

/// Rewrites one end of a TCP/UDP packet to `addr:port` (port in network order) and updates
/// the IP and L4 checksums. `None` if the headers are no longer where `pkt` says.
#[inline(always)]
pub fn rewrite<F: Frame>(frame: &F, pkt: &Packet, end: End, addr: &Addr, port: u16) -> Option<()> {
    if F::SKB {
        rewrite_skb(frame, pkt, end, addr, port)
    } else {
        rewrite_frame(frame, pkt, end, addr, port)
    }
}

/// Offset of the port [`rewrite`] changes, from the start of the L4 header.
#[inline(always)]
fn port_offset(end: End) -> usize {
    match end {
        End::Source => 0,
        End::Destination => 2,
    }
}

/// [`rewrite`] on XDP: every checksum in the frame is complete, so RFC 1624 updates apply.
#[inline(always)]
fn rewrite_frame<F: Frame>(
    frame: &F,
    pkt: &Packet,
    end: End,
    addr: &Addr,
    port: u16,
) -> Option<()> {
    let check_ptr: *mut u16 = ptr_at(frame, pkt.l4_check_offset())?;
    let change = set_addr(frame, pkt.l3, pkt.family, end, addr)?;
    let old_port = set_u16(frame, pkt.l4 + port_offset(end), port)?;
    // SAFETY: ptr_at checked the checksum field lies inside the frame.
    unsafe {
        let l4_check = read_unaligned(check_ptr);
        // An IPv4 UDP checksum of zero means "not computed" (RFC 768): it stays zero. (Over
        // IPv6 the parser refused it.)
        if pkt.proto == proto::UDP && l4_check == 0 {
            return Some(());
        }
        let mut updated = check_for_addr(l4_check, pkt.family, &change);
        updated = csum::replace16(updated, old_port, port);
        // A computed UDP checksum of zero is sent as all ones (RFC 768).
        if pkt.proto == proto::UDP && updated == 0 {
            updated = 0xffff;
        }
        write_unaligned(check_ptr, updated);
    }
    Some(())
}

/// [`rewrite`] on tc: the L4 checksum may be partial, so it changes only through
/// `bpf_l4_csum_replace`, which knows the skb's checksum state. The address change goes in as a
/// pseudo-header change (a partial checksum covers only the pseudo-header, so only that part
/// moves; a complete one moves as RFC 1624 says); the port change as a change of the data
/// (which a partial checksum does not yet cover, so the helper leaves it alone). An IPv6
/// address is stored through `bpf_skb_store_bytes` with `BPF_F_RECOMPUTE_CSUM`: on a
/// `CHECKSUM_COMPLETE` packet the pseudo-header update takes the change out of `skb->csum` as
/// if an IPv4 header checksum had absorbed it, and IPv6 has none, so the store puts it back
/// (Linux 6.16 added `BPF_F_IPV6` for this; the store works on every kernel).
#[inline(always)]
fn rewrite_skb<F: Frame>(frame: &F, pkt: &Packet, end: End, addr: &Addr, port: u16) -> Option<()> {
    let udp = pkt.proto == proto::UDP;
    let check = pkt.l4_check_offset();
    if pkt.is_ipv6() {
        let offset = pkt.l3 + IPV6_SRC + if end == End::Source { 0 } else { 16 };
        let field: *const Addr = ptr_at(frame, offset)?;
        // SAFETY: ptr_at checked the address lies inside the frame.
        let old = unsafe { read_unaligned(field) };
        let diff = csum::diff128(&old, addr);
        frame.skb_l4_csum_replace(check, 0, diff as u64, l4_csum_flags(0, udp, true))?;
        frame.skb_store_recompute(offset, addr, 16)?;
    } else {
        let change = set_addr(frame, pkt.l3, pkt.family, end, addr)?;
        frame.skb_l4_csum_replace(
            check,
            change.old[0] as u64,
            change.new[0] as u64,
            l4_csum_flags(4, udp, true),
        )?;
    }
    let old_port = set_u16(frame, pkt.l4 + port_offset(end), port)?;
    frame.skb_l4_csum_replace(
        check,
        old_port as u64,
        port as u64,
        l4_csum_flags(2, udp, false),
    )
}

/// Decrements the IPv4 TTL or the IPv6 hop limit, as a router does when it forwards.
#[inline(always)]
pub fn decrement_ttl<F: Frame>(frame: &F, pkt: &Packet) -> Option<()> {
    set_ttl(frame, pkt, pkt.ttl.wrapping_sub(1))
}

/// Sets the IPv4 TTL (updating the header checksum) or the IPv6 hop limit to `ttl`.
#[inline(always)]
pub fn set_ttl<F: Frame>(frame: &F, pkt: &Packet, ttl: u8) -> Option<()> {
    if pkt.is_ipv6() {
        let ip: *mut Ipv6Hdr = ptr_at(frame, pkt.l3)?;
        if F::SKB {
            // No checksum covers the hop limit, so on a `CHECKSUM_COMPLETE` skb `skb->csum`
            // must follow it: store the word that holds it (payload length, next header, hop
            // limit) with `BPF_F_RECOMPUTE_CSUM`.
            // SAFETY: ptr_at checked the header lies inside the frame.
            let mut word = unsafe { read_unaligned(ip.cast::<[u8; 8]>()) };
            word[7] = ttl;
            let word = [
                u32::from_ne_bytes([word[4], word[5], word[6], word[7]]),
                0,
                0,
                0,
            ];
            return frame.skb_store_recompute(pkt.l3 + IPV6_PAYLOAD_LEN, &word, 4);
        }
        // SAFETY: ptr_at checked the header lies inside the frame.
        unsafe { (*ip).hop_limit = ttl };
        return Some(());
    }
    let ip: *mut Ipv4Hdr = ptr_at(frame, pkt.l3)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        // TTL shares a 16-bit word with the protocol: (ttl << 8 | proto) in wire order.
        let old_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        let new_word = u16::from_ne_bytes([ttl, (*ip).proto]);
        (*ip).ttl = ttl;
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = csum::replace16(check, old_word, new_word).to_ne_bytes();
    }
    Some(())
}
