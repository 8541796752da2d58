//! Bounds-checked parsing of Ethernet / IPv4 / TCP|UDP into a [`Packet`].
//!
//! Anything that is not a well-formed TCP or UDP packet over IPv4 yields `None` and is passed to
//! the kernel untouched: xlb never rewrites a packet it did not fully understand.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr,
    consts::{events, family, proto},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::maps::count_event;

/// EtherType of IPv4, as it is on the wire.
const ETH_P_IP_WIRE: u16 = 0x0800u16.to_be();
/// IPv4 flags/fragment-offset bits that mark a fragment: MF and the 13-bit offset.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// Smallest IPv4 header, in bytes.
const IPV4_MIN_HEADER: usize = 20;
/// Offset of the checksum in a TCP header.
pub const TCP_CHECK_OFFSET: usize = 16;
/// Offset of the checksum in a UDP header.
pub const UDP_CHECK_OFFSET: usize = 6;

/// What the balancer needs to know about one packet. Ports are in network byte order.
pub struct Packet {
    /// Offset of the IP header from the start of the frame.
    pub l3: usize,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// `family::IPV4` (IPv6 comes later).
    pub family: u8,
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// IP total length in bytes (header and payload), host order.
    pub ip_len: u16,
    /// Source address (IPv4: the first word).
    pub src: Addr,
    /// Destination address (IPv4: the first word).
    pub dst: Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Packet {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_check_offset(&self) -> usize {
        self.l4
            + if self.proto == proto::TCP {
                TCP_CHECK_OFFSET
            } else {
                UDP_CHECK_OFFSET
            }
    }
}

/// The start of the frame. The context fields are read with volatile loads: the verifier
/// accepts only loads of exactly their 32 bits, and LLVM may otherwise merge `data` and
/// `data_end` into one 64-bit load.
#[inline(always)]
pub fn data(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` points to the program's context for the whole run.
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data) as usize }
}

/// The end of the frame (see [`data`]).
#[inline(always)]
pub fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: as in `data`.
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize }
}

/// The index of the interface the frame arrived on (see [`data`]).
#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: as in `data`.
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).ingress_ifindex) }
}

/// A pointer to a `T` at `offset` in the frame, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = data(ctx);
    if start + offset + size_of::<T>() > data_end(ctx) {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Parses the frame. `None`: not a TCP/UDP-over-IPv4 packet xlb can handle.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Option<Packet> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the frame.
    if unsafe { (*eth).ether_type } != ETH_P_IP_WIRE {
        return None;
    }
    parse_ipv4(ctx, EthHdr::LEN)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Option<Packet> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) << 2;
    let ip_len = u16::from_be_bytes(ip.tot_len);
    let frame_len = data_end(ctx) - data(ctx);
    if ip.vihl >> 4 != 4
        || header_len < IPV4_MIN_HEADER
        || (ip_len as usize) < header_len
        || l3 + ip_len as usize > frame_len
    {
        count_event(events::MALFORMED);
        return None;
    }
    if ip.proto != proto::TCP && ip.proto != proto::UDP {
        return None;
    }
    if u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_MASK != 0 {
        count_event(events::FRAGMENT);
        return None;
    }

    let l4 = l3 + header_len;
    let l4_len = ip_len as usize - header_len;
    let (sport, dport) = if ip.proto == proto::TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4)?;
        // SAFETY: ptr_at checked the fixed TCP header.
        let tcp = unsafe { &*tcp };
        let tcp_header_len = (tcp.doff() as usize) << 2;
        if tcp_header_len < TcpHdr::LEN || tcp_header_len > l4_len {
            count_event(events::MALFORMED);
            return None;
        }
        (u16::from_ne_bytes(tcp.source), u16::from_ne_bytes(tcp.dest))
    } else {
        let udp: *const UdpHdr = ptr_at(ctx, l4)?;
        // SAFETY: ptr_at checked the UDP header.
        let udp = unsafe { &*udp };
        let udp_len = u16::from_be_bytes(udp.len) as usize;
        if udp_len < UdpHdr::LEN || udp_len > l4_len {
            count_event(events::MALFORMED);
            return None;
        }
        (u16::from_ne_bytes(udp.src), u16::from_ne_bytes(udp.dst))
    };

    let src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    let dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    Some(Packet {
        l3,
        l4,
        family: family::IPV4,
        proto: ip.proto,
        ttl: ip.ttl,
        ip_len,
        src,
        dst,
        sport,
        dport,
    })
}
