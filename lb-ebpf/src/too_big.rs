//! The answer to a client's packet that a tunnel's outer header would make too big for the
//! next hop toward the backend: ICMP fragmentation-needed (IPv4) or packet-too-big (IPv6)
//! naming the MTU that fits, from the VIP to the client, out of the interface the packet came
//! in by. The client's TCP lowers its segment size, and the next packets fit; a UDP sender's
//! kernel keeps the path MTU and fragments its next datagrams to it (Linux does so even for
//! datagrams without DF, which is why they are answered too).
//!
//! The answer is the packet itself, cut to its first [`QUOTE`] bytes (which the error quotes)
//! with an IP and an ICMP header put in front, as Katran builds its own.

use core::ptr::{read_unaligned, write_unaligned};

use lb_common::{Addr, consts::proto, csum, tunnel::OUTER_TTL};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    frame::{Frame, ptr_at},
    packet::Packet,
};

/// Bytes of the client's packet the error quotes: its IP header and the start of its TCP or
/// UDP header (RFC 792 asks for 8 bytes past the IP header; RFC 4443 for as much as fits).
const QUOTE: usize = 64;
/// Size of an Ethernet header without tags.
const ETH_LEN: usize = 14;
/// Size of an ICMP header (type, code, checksum, four bytes of the type's).
const ICMP_LEN: usize = 8;
/// The smallest MTU an IPv6 link may have, and so the smallest an IPv6 error may name.
const IPV6_MIN_MTU: u32 = 1280;

/// Answers the client's packet `pkt` with an ICMP error naming `mtu` as the path's MTU, and
/// returns the verdict that sends it back where it came from. An ICMP packet is not answered
/// (an error about an error would loop); it is dropped, as a packet that does not fit is.
#[inline(always)]
pub fn answer<F: Frame>(frame: &F, pkt: &Packet, mtu: u32) -> u32 {
    if pkt.proto != proto::TCP && pkt.proto != proto::UDP {
        return F::DROP;
    }
    match build(frame, pkt, mtu) {
        Some(()) => frame.transmit(frame.ingress_ifindex(), false),
        None => F::DROP,
    }
}

/// Turns the frame into the error (see [`answer`]). `None` if the kernel refused to resize it.
#[inline(always)]
fn build<F: Frame>(frame: &F, pkt: &Packet, mtu: u32) -> Option<()> {
    let eth: *const EthHdr = ptr_at(frame, 0)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    let (to_mac, from_mac, ether_type) =
        unsafe { ((*eth).src_addr, (*eth).dst_addr, (*eth).ether_type) };
    let (client, vip) = (pkt.src, pkt.dst);
    let ipv6 = pkt.is_ipv6();
    let headers = if ipv6 { Ipv6Hdr::LEN } else { Ipv4Hdr::LEN } + ICMP_LEN;
    frame.truncate(ETH_LEN + QUOTE)?;
    frame.grow_head(headers as u32, 0)?;
    frame.pull(ETH_LEN + headers + QUOTE);
    let eth: *mut EthHdr = ptr_at(frame, 0)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe {
        (*eth).dst_addr = to_mac;
        (*eth).src_addr = from_mac;
        (*eth).ether_type = ether_type;
    }
    if ipv6 {
        write_ipv6(frame, &vip, &client, mtu)
    } else {
        write_ipv4(frame, vip[0], client[0], mtu)
    }
}

/// The IPv4 header and the fragmentation-needed message (type 3, code 4) with its checksum.
#[inline(always)]
fn write_ipv4<F: Frame>(frame: &F, vip: u32, client: u32, mtu: u32) -> Option<()> {
    let len = Ipv4Hdr::LEN + ICMP_LEN + QUOTE;
    let mut header = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len: (len as u16).to_be_bytes(),
        id: [0; 2],
        frags: 0x4000u16.to_be_bytes(),
        ttl: OUTER_TTL,
        proto: proto::ICMP,
        check: [0; 2],
        src_addr: vip.to_ne_bytes(),
        dst_addr: client.to_ne_bytes(),
    };
    // SAFETY: a 20-byte header is ten 16-bit words.
    let words = unsafe { read_unaligned((&raw const header).cast::<[u16; 10]>()) };
    header.check = (!csum::fold(csum::sum_words(&words))).to_ne_bytes();
    let ip: *mut Ipv4Hdr = ptr_at(frame, ETH_LEN)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe { write_unaligned(ip, header) };
    let mtu = (mtu.min(u32::from(u16::MAX)) as u16).to_be_bytes();
    let icmp = [3, 4, 0, 0, 0, 0, mtu[0], mtu[1]];
    write_icmp(frame, ETH_LEN + Ipv4Hdr::LEN, icmp, 0)
}

/// The IPv6 header and the packet-too-big message (type 2) with its checksum (over the
/// pseudo-header too).
#[inline(always)]
fn write_ipv6<F: Frame>(frame: &F, vip: &Addr, client: &Addr, mtu: u32) -> Option<()> {
    let payload = (ICMP_LEN + QUOTE) as u16;
    let header = Ipv6Hdr {
        vcf: [0x60, 0, 0, 0],
        payload_len: payload.to_be_bytes(),
        next_hdr: proto::ICMPV6,
        hop_limit: OUTER_TTL,
        // SAFETY: four words in network order are sixteen bytes in network order.
        src_addr: unsafe { core::mem::transmute::<Addr, [u8; 16]>(*vip) },
        // SAFETY: as above.
        dst_addr: unsafe { core::mem::transmute::<Addr, [u8; 16]>(*client) },
    };
    let ip: *mut Ipv6Hdr = ptr_at(frame, ETH_LEN)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    unsafe { write_unaligned(ip, header) };
    // The pseudo-header: both addresses, the length and the next header.
    let mut pseudo = u32::from(payload.to_be()) + u32::from(u16::from(proto::ICMPV6).to_be());
    for i in 0..4 {
        pseudo += (vip[i] & 0xffff) + (vip[i] >> 16) + (client[i] & 0xffff) + (client[i] >> 16);
    }
    let mtu = mtu.max(IPV6_MIN_MTU).to_be_bytes();
    let icmp = [2, 0, 0, 0, mtu[0], mtu[1], mtu[2], mtu[3]];
    write_icmp(frame, ETH_LEN + Ipv6Hdr::LEN, icmp, pseudo)
}

/// The ICMP header `icmp` at `offset`, its checksum over itself, the quote after it and
/// `initial` (the pseudo-header's sum, for ICMPv6).
#[inline(always)]
fn write_icmp<F: Frame>(frame: &F, offset: usize, icmp: [u8; 8], initial: u32) -> Option<()> {
    let at: *mut [u8; ICMP_LEN] = ptr_at(frame, offset)?;
    let quote: *const [u16; QUOTE / 2] = ptr_at(frame, offset + ICMP_LEN)?;
    // SAFETY: ptr_at checked the header and the quote lie inside the frame.
    unsafe {
        write_unaligned(at, icmp);
        let header = read_unaligned(at.cast::<[u16; ICMP_LEN / 2]>());
        let sum = initial + csum::sum_words(&header) + csum::sum_words(&read_unaligned(quote));
        let check = (!csum::fold(sum)).to_ne_bytes();
        (*at)[2] = check[0];
        (*at)[3] = check[1];
    }
    Some(())
}
