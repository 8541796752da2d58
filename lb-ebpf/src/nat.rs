//! Address and port rewriting with incremental checksum updates (RFC 1624).

use core::ptr::{read_unaligned, write_unaligned};

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, consts::proto, csum};
use network_types::ip::Ipv4Hdr;

use crate::packet::{Packet, ptr_at};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Source address and port (the reply path: backend -> VIP).
    Source,
    /// Destination address and port (the forward path: VIP -> backend).
    Destination,
}

/// Rewrites one end of an IPv4 TCP/UDP packet to `addr:port` (port in network order) and
/// updates the IP and L4 checksums. `None` if the headers are no longer where `pkt` says.
#[inline(always)]
pub fn rewrite_ipv4(
    ctx: &XdpContext,
    pkt: &Packet,
    end: End,
    addr: &Addr,
    port: u16,
) -> Option<()> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3)?;
    let port_offset = match end {
        End::Source => 0,
        End::Destination => 2,
    };
    let port_ptr: *mut u16 = ptr_at(ctx, pkt.l4 + port_offset)?;
    let check_ptr: *mut u16 = ptr_at(ctx, pkt.l4_check_offset())?;
    let new_addr = addr[0];

    // SAFETY: ptr_at checked each field lies inside the frame; unaligned accesses because
    // packet headers have no alignment guarantee.
    unsafe {
        let addr_field = match end {
            End::Source => &mut (*ip).src_addr,
            End::Destination => &mut (*ip).dst_addr,
        };
        let old_addr = u32::from_ne_bytes(*addr_field);
        *addr_field = new_addr.to_ne_bytes();
        let ip_check = u16::from_ne_bytes((*ip).check);
        (*ip).check = csum::replace32(ip_check, old_addr, new_addr).to_ne_bytes();

        let old_port = read_unaligned(port_ptr);
        write_unaligned(port_ptr, port);

        let l4_check = read_unaligned(check_ptr);
        // An IPv4 UDP checksum of zero means "not computed" (RFC 768): it stays zero.
        if pkt.proto == proto::UDP && l4_check == 0 {
            return Some(());
        }
        let mut updated = csum::replace32(l4_check, old_addr, new_addr);
        updated = csum::replace16(updated, old_port, port);
        // A computed UDP checksum of zero is sent as all ones (RFC 768).
        if pkt.proto == proto::UDP && updated == 0 {
            updated = 0xffff;
        }
        write_unaligned(check_ptr, updated);
    }
    Some(())
}

/// Decrements the IPv4 TTL, updating the header checksum, as a router does when it forwards.
#[inline(always)]
pub fn decrement_ttl_ipv4(ctx: &XdpContext, pkt: &Packet) -> Option<()> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, pkt.l3)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        let ttl = (*ip).ttl;
        // TTL shares a 16-bit word with the protocol: (ttl << 8 | proto) in wire order.
        let old_word = u16::from_ne_bytes([ttl, (*ip).proto]);
        let new_word = u16::from_ne_bytes([ttl.wrapping_sub(1), (*ip).proto]);
        (*ip).ttl = ttl.wrapping_sub(1);
        let check = u16::from_ne_bytes((*ip).check);
        (*ip).check = csum::replace16(check, old_word, new_word).to_ne_bytes();
    }
    Some(())
}
