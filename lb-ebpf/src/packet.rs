//! Bounds-checked parsing of Ethernet / IPv4 or IPv6 / TCP, UDP or ICMP into a [`Packet`].
//!
//! Anything xlb cannot handle is passed to the kernel untouched: frames that are not IP
//! (VLAN-tagged ones included), fragments of ICMP messages, IPv6 packets with a routing or
//! unknown extension header, and malformed headers. xlb never rewrites a packet it did not
//! fully understand. A fragment of a TCP or UDP datagram is only recognised here; `fragment`
//! reads it, apart from the unfragmented packets' path.

use lb_common::{
    Addr,
    consts::{ether_type, events, family, proto},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    frame::{Frame, ptr_at},
    maps::count_event,
};

/// EtherType of IPv4, as it is on the wire.
const ETH_P_IP_WIRE: u16 = ether_type::IPV4.to_be();
/// EtherType of IPv6, as it is on the wire.
const ETH_P_IPV6_WIRE: u16 = ether_type::IPV6.to_be();
/// EtherTypes of 802.1Q and 802.1ad tags, as they are on the wire.
const ETH_P_8021Q_WIRE: u16 = ether_type::VLAN_8021Q.to_be();
const ETH_P_8021AD_WIRE: u16 = ether_type::VLAN_8021AD.to_be();
/// IPv4 flags/fragment-offset bits that mark a fragment: MF and the 13-bit offset.
const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// IPv6's fragment header (RFC 8200 §4.5).
const IPV6_FRAGMENT: u8 = 44;
/// Smallest IPv4 header, in bytes.
const IPV4_MIN_HEADER: usize = 20;
/// IPv6 extension headers xlb skips: hop-by-hop options and destination options. Neither
/// changes where the packet goes or how its ports are read.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_DEST_OPTIONS: u8 = 60;
/// At most this many skippable extension headers are followed; more are passed.
const MAX_IPV6_EXTENSIONS: usize = 4;
/// Bytes made directly accessible, on tc, for packets whose header lengths [`pull_headers`]
/// does not work out: IPv6 with extension headers, and ICMP errors with their quotes.
const HEADERS_PULLED: usize = 192;
/// Bytes of a TCP header xlb reads (ports, sequence numbers, flags, checksum); UDP's header is
/// shorter.
const TCP_FIXED: usize = 20;
/// Offset of the checksum in a TCP header.
pub const TCP_CHECK_OFFSET: usize = 16;
/// Offset of the checksum in a UDP header.
pub const UDP_CHECK_OFFSET: usize = 6;
/// Offset of the checksum in an ICMP or ICMPv6 header.
pub const ICMP_CHECK_OFFSET: usize = 2;
/// Size of the ICMP header (type, code, checksum, four bytes that depend on the type).
pub const ICMP_HEADER: usize = 8;

/// Offsets of headers fit in these bits (see [`Packet::l3`]).
const OFFSET_MASK: u16 = 0x3fff;

/// What the balancer needs to know about one packet. Ports are in network byte order. It lives
/// in the per-CPU scratch area (`maps::SCRATCH`), not on the stack.
#[repr(C)]
pub struct Packet {
    /// Offset of the IP header from the start of the frame (see [`Packet::l3`]).
    pub l3_offset: u16,
    /// Offset of the TCP/UDP/ICMP header (see [`Packet::l4`]).
    pub l4_offset: u16,
    /// `family::IPV4` or `family::IPV6`.
    pub family: u8,
    /// `proto::TCP`, `proto::UDP`, `proto::ICMP` or `proto::ICMPV6`.
    pub proto: u8,
    /// Time to live, or hop limit.
    pub ttl: u8,
    /// TCP flags; 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP type; 0 for other protocols.
    pub icmp_type: u8,
    /// Bytes from the IP header to the end of the IP payload, host order.
    pub ip_len: u16,
    /// Source address (IPv4: the first word, the rest zero).
    pub src: Addr,
    /// Destination address (IPv4: the first word, the rest zero).
    pub dst: Addr,
    /// Source port (0 for ICMP).
    pub sport: u16,
    /// Destination port (0 for ICMP).
    pub dport: u16,
    /// A new flow's: the backend its client persists on (`persist::sticky`: or
    /// `NO_BACKEND_ID`, or `NOT_PERSISTENT`). Set by `balance::place` before the flow is
    /// placed, read when its backend is chosen and when it is remembered (from here, the
    /// packet's own memory, no value is kept across the choice on the stack).
    pub sticky: core::cell::Cell<u32>,
}

impl Packet {
    /// Offset of the IP header. The mask changes no offset the parser stores (headers are near
    /// the start of a frame) but gives the verifier the value's bounds when it is loaded back
    /// from the scratch map, so offsets computed from it are never negative and packet
    /// pointers made with them can be bounds-checked.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        (self.l3_offset & OFFSET_MASK) as usize
    }

    /// Offset of the TCP/UDP/ICMP header (masked as [`Packet::l3`]).
    #[inline(always)]
    pub fn l4(&self) -> usize {
        (self.l4_offset & OFFSET_MASK) as usize
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_check_offset(&self) -> usize {
        self.l4()
            + match self.proto {
                proto::TCP => TCP_CHECK_OFFSET,
                proto::UDP => UDP_CHECK_OFFSET,
                _ => ICMP_CHECK_OFFSET,
            }
    }

    /// Whether this is an IPv6 packet.
    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        self.family == family::IPV6
    }
}

/// The packet an ICMP error quotes: its IP header, transport protocol, addresses and ports
/// (offsets held and masked as in [`Packet`]). It lives in the scratch area.
#[repr(C)]
pub struct Quote {
    /// Offset of the quoted IP header.
    pub l3_offset: u16,
    /// Offset of the quoted transport header.
    pub l4_offset: u16,
    /// Where the quoted IP packet ends, as far as the ICMP message holds it.
    pub end_offset: u16,
    /// The quoted packet's protocol.
    pub proto: u8,
    /// Its source address.
    pub src: Addr,
    /// Its destination address.
    pub dst: Addr,
    /// Its source port, network order.
    pub sport: u16,
    /// Its destination port, network order.
    pub dport: u16,
}

impl Quote {
    /// Offset of the quoted IP header.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        (self.l3_offset & OFFSET_MASK) as usize
    }

    /// Offset of the quoted transport header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        (self.l4_offset & OFFSET_MASK) as usize
    }

    /// Where the quoted IP packet ends.
    #[inline(always)]
    pub fn end(&self) -> usize {
        (self.end_offset & OFFSET_MASK) as usize
    }
}

/// What [`parse`] found.
pub enum Parsed {
    /// A whole TCP, UDP, ICMP or ICMPv6 packet, in `pkt`.
    Packet,
    /// A fragment: of a TCP or UDP datagram over IPv4; over IPv6, a packet with a fragment
    /// header (after its options, if any), whose protocol `fragment` checks. `pkt` holds its
    /// family and the offset of its IP header, and for IPv6 the offset of its fragment header
    /// as `l4_offset`; `fragment` reads the rest.
    Fragment,
    /// Nothing xlb handles (see the module documentation): `pkt` holds nothing meaningful.
    Neither,
}

/// Parses the frame into `pkt`.
#[inline(always)]
pub fn parse<F: Frame>(frame: &F, pkt: &mut Packet) -> Parsed {
    pull_headers(frame);
    let Some(eth) = ptr_at::<F, EthHdr>(frame, 0) else {
        return Parsed::Neither;
    };
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let ether_type = unsafe { (*eth).ether_type };
    pkt.tcp_flags = 0;
    pkt.icmp_type = 0;
    pkt.sport = 0;
    pkt.dport = 0;
    let parsed = if ether_type == ETH_P_IP_WIRE {
        parse_ipv4(frame, EthHdr::LEN, pkt)
    } else if ether_type == ETH_P_IPV6_WIRE {
        parse_ipv6(frame, EthHdr::LEN, pkt)
    } else {
        if ether_type == ETH_P_8021Q_WIRE || ether_type == ETH_P_8021AD_WIRE {
            count_event(events::VLAN);
        }
        None
    };
    parsed.unwrap_or(Parsed::Neither)
}

/// On tc, makes the headers xlb reads directly accessible when the skb keeps part of them in
/// its pages, and no more: pulling copies bytes into the skb's head (and may reallocate it),
/// so a super-packet's payload is left where it is. XDP frames are linear already.
#[inline(always)]
fn pull_headers<F: Frame>(frame: &F) {
    if !F::SKB || frame.data_end() - frame.data() >= frame.len() {
        return;
    }
    // Ethernet, and the IP header's first ten bytes: IHL (IPv4), next header (IPv6), protocol.
    let need = match ptr_at::<F, [u8; 24]>(frame, 0) {
        None => HEADERS_PULLED,
        // SAFETY: ptr_at checked the bytes lie inside the frame.
        Some(head) => match unsafe { *head } {
            h if [h[12], h[13]] == [0x08, 0x00] => {
                let ip_header = ((h[14] & 0x0f) as usize) << 2;
                match h[23] {
                    proto::TCP => EthHdr::LEN + ip_header + TCP_FIXED,
                    proto::UDP => EthHdr::LEN + ip_header + UdpHdr::LEN,
                    _ => HEADERS_PULLED,
                }
            }
            h if [h[12], h[13]] == [0x86, 0xdd] => match h[20] {
                proto::TCP => EthHdr::LEN + Ipv6Hdr::LEN + TCP_FIXED,
                proto::UDP => EthHdr::LEN + Ipv6Hdr::LEN + UdpHdr::LEN,
                _ => HEADERS_PULLED,
            },
            _ => 0,
        },
    };
    frame.pull(need);
}

#[inline(always)]
fn parse_ipv4<F: Frame>(frame: &F, l3: usize, pkt: &mut Packet) -> Option<Parsed> {
    let ip: *const Ipv4Hdr = ptr_at(frame, l3)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let ip = unsafe { &*ip };
    let header_len = ((ip.vihl & 0x0f) as usize) << 2;
    let ip_len = u16::from_be_bytes(ip.tot_len);
    let frame_len = frame.len();
    if ip.vihl >> 4 != 4
        || header_len < IPV4_MIN_HEADER
        || (ip_len as usize) < header_len
        || l3 + ip_len as usize > frame_len
    {
        count_event(events::MALFORMED);
        return None;
    }
    if ip.proto != proto::TCP && ip.proto != proto::UDP && ip.proto != proto::ICMP {
        return None;
    }
    if u16::from_be_bytes(ip.frags) & IPV4_FRAGMENT_MASK != 0 {
        if ip.proto == proto::ICMP {
            count_event(events::FRAGMENT);
            return None;
        }
        pkt.l3_offset = l3 as u16;
        pkt.family = family::IPV4;
        return Some(Parsed::Fragment);
    }
    pkt.l3_offset = l3 as u16;
    pkt.l4_offset = (l3 + header_len) as u16;
    pkt.family = family::IPV4;
    pkt.proto = ip.proto;
    pkt.ttl = ip.ttl;
    pkt.ip_len = ip_len;
    pkt.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    pkt.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    parse_l4(frame, pkt, ip_len as usize - header_len, true)?;
    Some(Parsed::Packet)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(frame: &F, l3: usize, pkt: &mut Packet) -> Option<Parsed> {
    let ip: *const Ipv6Hdr = ptr_at(frame, l3)?;
    // SAFETY: ptr_at checked that the fixed header lies inside the frame.
    let ip = unsafe { &*ip };
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let frame_len = frame.len();
    // A payload length of zero means a jumbogram, which xlb does not handle.
    if ip.vcf[0] >> 4 != 6 || payload_len == 0 || l3 + Ipv6Hdr::LEN + payload_len > frame_len {
        count_event(events::MALFORMED);
        return None;
    }
    let mut next = ip.next_hdr;
    let mut l4 = l3 + Ipv6Hdr::LEN;
    let end = l4 + payload_len;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        if next != IPV6_HOP_BY_HOP && next != IPV6_DEST_OPTIONS {
            break;
        }
        // Every extension header starts with (next header, length in 8-byte units - 1).
        let ext: *const [u8; 2] = ptr_at(frame, l4)?;
        // SAFETY: ptr_at checked both bytes lie inside the frame.
        let ext = unsafe { *ext };
        next = ext[0];
        l4 += (ext[1] as usize + 1) * 8;
    }
    if next != proto::TCP && next != proto::UDP && next != proto::ICMPV6 {
        if next == IPV6_FRAGMENT {
            pkt.l3_offset = l3 as u16;
            pkt.l4_offset = l4 as u16;
            pkt.family = family::IPV6;
            return Some(Parsed::Fragment);
        }
        // Routing (43) headers, more options than we follow, anything else.
        count_event(events::IPV6_EXTENSION);
        return None;
    }
    if l4 > end {
        count_event(events::MALFORMED);
        return None;
    }
    pkt.l3_offset = l3 as u16;
    pkt.l4_offset = l4 as u16;
    pkt.family = family::IPV6;
    pkt.proto = next;
    pkt.ttl = ip.hop_limit;
    pkt.ip_len = (Ipv6Hdr::LEN + payload_len) as u16;
    pkt.src = addr_words(&ip.src_addr);
    pkt.dst = addr_words(&ip.dst_addr);
    parse_l4(frame, pkt, end - l4, true)?;
    Some(Parsed::Packet)
}

/// The 16 bytes of an IPv6 address as an [`Addr`] (four native-order words).
#[inline(always)]
pub fn addr_words(bytes: &[u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        u32::from_ne_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    ]
}

/// Reads ports and flags (TCP, UDP) or the type (ICMP) of the transport header at `pkt.l4()`,
/// which with its payload spans `l4_len` bytes: the whole segment or datagram if `whole`,
/// else the first fragment of it (whose UDP length counts the fragments to come; the header
/// itself must be whole in it, RFC 1858).
#[inline(always)]
pub fn parse_l4<F: Frame>(frame: &F, pkt: &mut Packet, l4_len: usize, whole: bool) -> Option<()> {
    match pkt.proto {
        proto::TCP => {
            let tcp: *const TcpHdr = ptr_at(frame, pkt.l4())?;
            // SAFETY: ptr_at checked the fixed TCP header.
            let tcp = unsafe { &*tcp };
            let tcp_header_len = (tcp.doff() as usize) << 2;
            if tcp_header_len < TcpHdr::LEN || tcp_header_len > l4_len {
                count_event(events::MALFORMED);
                return None;
            }
            pkt.sport = u16::from_ne_bytes(tcp.source);
            pkt.dport = u16::from_ne_bytes(tcp.dest);
            // The flags are byte 13 of the header (read through the checked header pointer: a
            // one-byte bounds check of its own would compile to a form the verifier rejects).
            // SAFETY: inside the TCP header checked above.
            pkt.tcp_flags = unsafe { *(tcp as *const TcpHdr as *const u8).add(13) };
        }
        proto::UDP => {
            let udp: *const UdpHdr = ptr_at(frame, pkt.l4())?;
            // SAFETY: ptr_at checked the UDP header.
            let udp = unsafe { &*udp };
            let udp_len = u16::from_be_bytes(udp.len) as usize;
            let beyond = if whole {
                udp_len > l4_len
            } else {
                l4_len < UdpHdr::LEN || udp_len < l4_len
            };
            // Over IPv6 the UDP checksum is mandatory (RFC 8200 §8.1): zero is malformed.
            if udp_len < UdpHdr::LEN || beyond || (pkt.is_ipv6() && udp.check == [0, 0]) {
                count_event(events::MALFORMED);
                return None;
            }
            pkt.sport = u16::from_ne_bytes(udp.src);
            pkt.dport = u16::from_ne_bytes(udp.dst);
        }
        _ => {
            if l4_len < ICMP_HEADER {
                count_event(events::MALFORMED);
                return None;
            }
            let icmp: *const [u8; ICMP_HEADER] = ptr_at(frame, pkt.l4())?;
            // SAFETY: ptr_at checked the header lies inside the frame.
            pkt.icmp_type = unsafe { (*icmp)[0] };
        }
    }
    Some(())
}
