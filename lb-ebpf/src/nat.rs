//! Address and port rewriting with checksum updates, for IPv4 and IPv6: RFC 1624 arithmetic
//! on XDP, the skb checksum helpers on tc (see `frame` for why).

use core::ptr::{read_unaligned, write_unaligned};

use lb_common::{
    Addr, FlowAddr as _,
    consts::{family, proto, tcp_flags},
    csum,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    family::{Family, IPV4_SRC, IPV6_SRC},
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

/// Offset of the payload length in an IPv6 header (followed by next header and hop limit).
const IPV6_PAYLOAD_LEN: usize = 4;
/// Offset of the header checksum in an IPv4 header.
const IPV4_CHECK: usize = 10;

/// One address changed in an IP header: the change's checksum delta (for checksums that
/// cover the address, a pseudo-header's), and for IPv4 the header checksum before and after
/// (so a checksum covering the header, as ICMP's covers a quoted one, can follow).
pub struct AddrChange {
    /// The delta of the address's change ([`csum::apply`] it).
    pub delta: u16,
    /// IPv4 header checksum before and after; equal for IPv6, which has none.
    pub ip_check: (u16, u16),
}

/// Replaces the source or destination address of the IP header at `l3` by `new`, updating
/// the IPv4 header checksum.
#[inline(always)]
pub fn set_addr<F: Frame, Fam: Family>(
    frame: &F,
    l3: usize,
    end: End,
    new: &Addr,
) -> Option<AddrChange> {
    if Fam::FAMILY == family::IPV4 {
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
            let delta = csum::delta32(old, new[0]);
            let old_check = read_unaligned(check);
            let new_check = csum::apply(old_check, delta);
            write_unaligned(check, new_check);
            Some(AddrChange {
                delta,
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
            let mut old = [0u32; 4];
            copy_addr(old.as_mut_ptr().cast::<Addr>(), &*field);
            copy_addr(field, new);
            Some(AddrChange {
                delta: csum::delta128(&old, new),
                ip_check: (0, 0),
            })
        }
    }
}

/// Writes an address into a packet header. A byte-wise copy, not `write_unaligned`: for a
/// 16-byte address LLVM would load all sixteen bytes into registers before it stored any,
/// and spill most of them, a hundred bytes of stack in every function that writes one.
///
/// # Safety
///
/// `field` must point to `size_of::<A>()` writable bytes of the packet.
#[inline(always)]
unsafe fn copy_addr<A>(field: *mut A, addr: &A) {
    // SAFETY: as the caller promises; the address is a plain value of that size.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (addr as *const A).cast::<u8>(),
            field.cast::<u8>(),
            size_of::<A>(),
        )
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
pub fn check_for_addr(check: u16, change: &AddrChange) -> u16 {
    csum::apply(check, change.delta)
}

/// The checksum changes a flow's rewrite makes, worked out when its entry was made (see
/// `FlowEntry::csum_addr`): for the address, and for the port.
#[derive(Clone, Copy)]
pub struct Deltas {
    /// The address's change.
    pub addr: u16,
    /// The port's change.
    pub port: u16,
}

/// A rewrite of one end of a packet of a flow: to `addr:port` (port in network order), whose
/// checksum changes are `deltas`; with `ttl`, the TTL or hop limit is decremented too, as a
/// router does (not when the packet goes to the kernel, which does it when it forwards).
pub struct Rewrite<'a, A> {
    /// Which end.
    pub end: End,
    /// The new address.
    pub addr: &'a A,
    /// The new port, network order.
    pub port: u16,
    /// The checksum changes.
    pub deltas: Deltas,
    /// Decrement the TTL.
    pub ttl: bool,
}

/// Rewrites a TCP/UDP packet of family `Fam` as `rewrite` says. `None` if the headers are no
/// longer where `pkt` says.
#[inline(always)]
pub fn rewrite_flow<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    rewrite: &Rewrite<Fam::Addr>,
) -> Option<()> {
    if F::SKB {
        rewrite_skb::<F, Fam>(frame, pkt, rewrite)
    } else {
        rewrite_frame::<F, Fam>(frame, pkt, rewrite)
    }
}

/// [`rewrite_flow`], but for a DSR flow, whose packets keep their addresses and ports: only the
/// TTL is decremented, if `rewrite.ttl` says so.
#[inline(always)]
pub fn rewrite_unless_dsr<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    dsr: bool,
    rewrite: &Rewrite<Fam::Addr>,
) -> Option<()> {
    if !dsr {
        return rewrite_flow::<F, Fam>(frame, pkt, rewrite);
    }
    if rewrite.ttl {
        decrement_ttl(frame, pkt)?;
    }
    Some(())
}

/// Rewrites a fragment after the first of a flow's datagram as `rewrite` says, as far as the
/// fragment carries what it changes: the address (with the IPv4 header checksum) and the TTL or
/// hop limit. It has no transport header: the port, and the transport checksum's change for
/// the address, went with the first fragment, whose checksum covers the whole datagram. A DSR
/// flow's fragment keeps its addresses, as its other packets do. `None` if the header is no
/// longer where `pkt` says.
#[inline(always)]
pub fn rewrite_later_fragment<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    dsr: bool,
    rewrite: &Rewrite<Fam::Addr>,
) -> Option<()> {
    if dsr {
        if rewrite.ttl {
            decrement_ttl(frame, pkt)?;
        }
        return Some(());
    }
    let offset = pkt.l3() + addr_offset::<Fam>(rewrite.end);
    if Fam::FAMILY == family::IPV4 {
        let field: *mut Fam::Addr = ptr_at(frame, offset)?;
        let ip: *mut Ipv4Hdr = ptr_at(frame, pkt.l3())?;
        // SAFETY: ptr_at checked the address and the header lie inside the frame. The IPv4
        // header checksum is never partial, at either hook: arithmetic is right for it.
        unsafe {
            copy_addr(field, rewrite.addr);
            if rewrite.ttl {
                (*ip).ttl = pkt.ttl - 1;
            }
            let check = u16::from_ne_bytes((*ip).check);
            (*ip).check = csum::apply(check, ipv4_delta(rewrite)).to_ne_bytes();
        }
    } else if F::SKB {
        // As in `rewrite_skb`: no checksum in the packet covers the IPv6 address, so a
        // `CHECKSUM_COMPLETE` skb's sum must follow it.
        frame.skb_store_recompute(offset, &rewrite.addr.to_addr(), size_of::<Fam::Addr>())?;
        if rewrite.ttl {
            decrement_ttl(frame, pkt)?;
        }
    } else {
        let field: *mut Fam::Addr = ptr_at(frame, offset)?;
        let ip: *mut Ipv6Hdr = ptr_at(frame, pkt.l3())?;
        // SAFETY: as above.
        unsafe {
            copy_addr(field, rewrite.addr);
            if rewrite.ttl {
                (*ip).hop_limit = pkt.ttl - 1;
            }
        }
    }
    Some(())
}

/// The IPv4 header checksum's delta for a rewrite: the address's, and the TTL's if it goes.
#[inline(always)]
fn ipv4_delta<A>(rewrite: &Rewrite<A>) -> u16 {
    if rewrite.ttl {
        csum::add(rewrite.deltas.addr, csum::TTL_DECREMENT_DELTA)
    } else {
        rewrite.deltas.addr
    }
}

/// Offset of the port [`rewrite_flow`] changes, from the start of the L4 header.
#[inline(always)]
fn port_offset(end: End) -> usize {
    match end {
        End::Source => 0,
        End::Destination => 2,
    }
}

/// Offset of the address [`rewrite_flow`] changes, from the start of the IP header.
#[inline(always)]
fn addr_offset<Fam: Family>(end: End) -> usize {
    Fam::SRC_OFFSET
        + match end {
            End::Source => 0,
            End::Destination => size_of::<Fam::Addr>(),
        }
}

/// [`rewrite_flow`] on XDP: every checksum in the frame is complete, so the deltas apply as
/// RFC 1624 says; the IPv4 header checksum takes the address's delta and the TTL's at once.
#[inline(always)]
fn rewrite_frame<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    rewrite: &Rewrite<Fam::Addr>,
) -> Option<()> {
    let (end, deltas) = (rewrite.end, rewrite.deltas);
    let check_ptr: *mut u16 = ptr_at(frame, pkt.l4_check_offset())?;
    let addr_ptr: *mut Fam::Addr = ptr_at(frame, pkt.l3() + addr_offset::<Fam>(end))?;
    let port_ptr: *mut u16 = ptr_at(frame, pkt.l4() + port_offset(end))?;
    // SAFETY: ptr_at checked every field lies inside the frame; unaligned accesses because
    // packet headers have no alignment guarantee.
    unsafe {
        copy_addr(addr_ptr, rewrite.addr);
        write_unaligned(port_ptr, rewrite.port);
        let l4_check = read_unaligned(check_ptr);
        // An IPv4 UDP checksum of zero means "not computed" (RFC 768): it stays zero. (Over
        // IPv6 the parser refused it.)
        if !(pkt.proto == proto::UDP && l4_check == 0) {
            let mut updated = csum::apply(l4_check, csum::add(deltas.addr, deltas.port));
            // A computed UDP checksum of zero is sent as all ones (RFC 768).
            if pkt.proto == proto::UDP && updated == 0 {
                updated = 0xffff;
            }
            write_unaligned(check_ptr, updated);
        }
    }
    if Fam::FAMILY == family::IPV4 {
        let ip: *mut Ipv4Hdr = ptr_at(frame, pkt.l3())?;
        // SAFETY: ptr_at checked the header lies inside the frame.
        unsafe {
            if rewrite.ttl {
                (*ip).ttl = pkt.ttl - 1;
            }
            let check = u16::from_ne_bytes((*ip).check);
            (*ip).check = csum::apply(check, ipv4_delta(rewrite)).to_ne_bytes();
        }
    } else if rewrite.ttl {
        let ip: *mut Ipv6Hdr = ptr_at(frame, pkt.l3())?;
        // SAFETY: as above.
        unsafe { (*ip).hop_limit = pkt.ttl - 1 };
    }
    Some(())
}

/// [`rewrite_flow`] on tc: the L4 checksum may be partial, so it changes only through
/// `bpf_l4_csum_replace`, which knows the skb's checksum state. The address's delta goes in as
/// a pseudo-header change (a partial checksum covers only the pseudo-header, so only that part
/// moves; a complete one moves as RFC 1624 says); the port's as a change of the data (which a
/// partial checksum does not yet cover, so the helper leaves it alone). An IPv6 address is
/// stored through `bpf_skb_store_bytes` with `BPF_F_RECOMPUTE_CSUM`: on a `CHECKSUM_COMPLETE`
/// packet the pseudo-header update takes the change out of `skb->csum` as if an IPv4 header
/// checksum had absorbed it, and IPv6 has none, so the store puts it back (Linux 6.16 added
/// `BPF_F_IPV6` for this; the store works on every kernel).
#[inline(always)]
fn rewrite_skb<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    rewrite: &Rewrite<Fam::Addr>,
) -> Option<()> {
    let (end, deltas) = (rewrite.end, rewrite.deltas);
    let udp = pkt.proto == proto::UDP;
    let check = pkt.l4_check_offset();
    let offset = pkt.l3() + addr_offset::<Fam>(end);
    frame.skb_l4_csum_replace(check, 0, deltas.addr as u64, l4_csum_flags(0, udp, true))?;
    if Fam::FAMILY == family::IPV4 {
        let field: *mut Fam::Addr = ptr_at(frame, offset)?;
        let ip: *mut Ipv4Hdr = ptr_at(frame, pkt.l3())?;
        // SAFETY: ptr_at checked the address and the header lie inside the frame. The IPv4
        // header checksum is never partial: arithmetic is right for it.
        unsafe {
            copy_addr(field, rewrite.addr);
            if rewrite.ttl {
                (*ip).ttl = pkt.ttl - 1;
            }
            let ip_check = u16::from_ne_bytes((*ip).check);
            (*ip).check = csum::apply(ip_check, ipv4_delta(rewrite)).to_ne_bytes();
        }
    } else {
        frame.skb_store_recompute(offset, &rewrite.addr.to_addr(), size_of::<Fam::Addr>())?;
        if rewrite.ttl {
            decrement_ttl(frame, pkt)?;
        }
    }
    let port_ptr: *mut u16 = ptr_at(frame, pkt.l4() + port_offset(end))?;
    // SAFETY: ptr_at checked the port lies inside the frame.
    unsafe { write_unaligned(port_ptr, rewrite.port) };
    frame.skb_l4_csum_replace(check, 0, deltas.port as u64, l4_csum_flags(0, udp, false))
}

/// The TCP header's 16-bit word that holds the flags (with the data offset before them).
const TCP_FLAGS_WORD: usize = 12;

/// Makes a TCP packet a reset: its RST flag set, everything else kept (its sequence number is
/// the one its receiver expects next, so the receiver takes it), its checksum changed for the
/// flag: by arithmetic at XDP, by the helper at tc (which knows a partial checksum, whose
/// header part is not summed yet). `None` if the header is not where `pkt` says.
#[inline(always)]
pub fn set_rst<F: Frame>(frame: &F, pkt: &Packet) -> Option<()> {
    let word: *mut u16 = ptr_at(frame, pkt.l4() + TCP_FLAGS_WORD)?;
    // SAFETY: ptr_at checked the word lies inside the frame; unaligned, as headers are.
    let (old, new) = unsafe {
        let old = read_unaligned(word);
        let new = old | u16::from_ne_bytes([0, tcp_flags::RST]);
        write_unaligned(word, new);
        (old, new)
    };
    let check = pkt.l4_check_offset();
    if F::SKB {
        return frame.skb_l4_csum_replace(
            check,
            u64::from(old),
            u64::from(new),
            l4_csum_flags(2, false, false),
        );
    }
    let check: *mut u16 = ptr_at(frame, check)?;
    // SAFETY: as above.
    unsafe {
        write_unaligned(
            check,
            csum::apply(read_unaligned(check), csum::delta16(old, new)),
        )
    };
    Some(())
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
        let ip: *mut Ipv6Hdr = ptr_at(frame, pkt.l3())?;
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
            return frame.skb_store_recompute(pkt.l3() + IPV6_PAYLOAD_LEN, &word, 4);
        }
        // SAFETY: ptr_at checked the header lies inside the frame.
        unsafe { (*ip).hop_limit = ttl };
        return Some(());
    }
    let ip: *mut Ipv4Hdr = ptr_at(frame, pkt.l3())?;
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
