//! The fuzzer's reference parser, written independently of the XDP program: what xlb's
//! documentation says it does with a frame ([`read`]), so the fuzzer can tell which frames the
//! program may rewrite at all.

use std::net::SocketAddr;

use crate::packet::{ether_type, locate, proto};

/// A frame's 5-tuple as the reference parser reads it: (source, destination, protocol).
pub type Tuple = (SocketAddr, SocketAddr, u8);

/// A fragmented datagram, as each of its fragments names it: source, destination, protocol
/// and identification (IPv4's 16 bits, or the 32 of IPv6's fragment header).
pub type Datagram = (std::net::IpAddr, std::net::IpAddr, u8, u32);

/// What a fragment says of its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    id: u32,
    first: bool,
    more: bool,
}

/// What the reference parser makes of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Not something xlb may touch: not IP, tagged, malformed, a fragment of ICMP, TTL too low
    /// to forward, a transport xlb does not handle, or an IPv6 extension header it does not
    /// skip.
    Untouchable,
    /// A well-formed TCP or UDP packet.
    Transport(Tuple),
    /// The first fragment of a TCP or UDP datagram, its transport header whole: handled like a
    /// packet of `tuple` if `forwardable` (TTL to spare), its ports recorded for `datagram` if
    /// `more` fragments follow (whatever the TTL).
    FirstFragment {
        /// The datagram's 5-tuple.
        tuple: Tuple,
        /// The datagram.
        datagram: Datagram,
        /// Its TTL or hop limit leaves room to forward it.
        forwardable: bool,
        /// More fragments follow.
        more: bool,
    },
    /// A later fragment of a TCP or UDP datagram: it follows the flow of the ports its first
    /// fragment recorded, if any; without a record, it is dropped if addressed to a VIP.
    LaterFragment {
        /// The datagram.
        datagram: Datagram,
        /// Its TTL or hop limit leaves room to forward it.
        forwardable: bool,
    },
    /// A well-formed ICMP echo request to this address.
    Echo(std::net::IpAddr),
    /// A well-formed ICMP error quoting this packet (as it was sent), with its addressee.
    IcmpError {
        /// The quoted packet's tuple.
        quoted: Tuple,
        /// Where the error is addressed.
        to: std::net::IpAddr,
    },
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn ip_at(bytes: &[u8], at: usize, v6: bool) -> Option<std::net::IpAddr> {
    Some(if v6 {
        let octets: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
        octets.into()
    } else {
        let octets: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        octets.into()
    })
}

/// Reads a frame as xlb's documentation says it treats frames.
pub fn read(frame: &[u8]) -> Reading {
    read_frame(frame).unwrap_or(Reading::Untouchable)
}

/// The destination address of a well-formed TCP or UDP packet or fragment, whatever its TTL
/// (one with no TTL to spare reads as untouchable, yet to a VIP for no service it is dropped;
/// so is a later fragment whose first fragment was).
pub fn transport_destination(frame: &[u8]) -> Option<std::net::IpAddr> {
    let v6 = match u16_at(frame, 12)? {
        ether_type::IPV4 => false,
        ether_type::IPV6 => true,
        _ => return None,
    };
    let (l4, end, proto, _, dst, _, piece) = ip_header(frame, 14, v6)?;
    if proto != proto::TCP && proto != proto::UDP {
        return None;
    }
    match piece {
        None => transport_ok(&frame[l4..end], proto, v6, true)?,
        Some(piece) if piece.first => transport_ok(&frame[l4..end], proto, v6, !piece.more)?,
        Some(_) => {}
    }
    Some(dst)
}

fn read_frame(frame: &[u8]) -> Option<Reading> {
    let ether_type = u16_at(frame, 12)?;
    if ether_type == ether_type::VLAN_8021Q {
        return None;
    }
    let v6 = match ether_type {
        ether_type::IPV4 => false,
        ether_type::IPV6 => true,
        _ => return None,
    };
    let (l4, end, proto, src, dst, ttl, piece) = ip_header(frame, 14, v6)?;
    let segment = &frame[l4..end];
    // Packets xlb forwards must have TTL to spare; an echo request is answered, not forwarded.
    let forwardable = ttl > 1;
    if let Some(piece) = piece {
        if proto != proto::TCP && proto != proto::UDP {
            return None;
        }
        let datagram = (src, dst, proto, piece.id);
        if !piece.first {
            return Some(Reading::LaterFragment {
                datagram,
                forwardable,
            });
        }
        transport_ok(segment, proto, v6, !piece.more)?;
        let ports = (u16_at(segment, 0)?, u16_at(segment, 2)?);
        return Some(Reading::FirstFragment {
            tuple: (
                SocketAddr::new(src, ports.0),
                SocketAddr::new(dst, ports.1),
                proto,
            ),
            datagram,
            forwardable,
            more: piece.more,
        });
    }
    match proto {
        proto::TCP | proto::UDP if forwardable => {
            transport_ok(segment, proto, v6, true)?;
            let sport = u16_at(segment, 0)?;
            let dport = u16_at(segment, 2)?;
            Some(Reading::Transport((
                SocketAddr::new(src, sport),
                SocketAddr::new(dst, dport),
                proto,
            )))
        }
        proto::ICMP | proto::ICMPV6 if (proto == proto::ICMPV6) == v6 => {
            if segment.len() < 8 {
                return None;
            }
            let kind = segment[0];
            let echo = if v6 { 128 } else { 8 };
            if kind == echo {
                return Some(Reading::Echo(dst));
            }
            let errors: &[u8] = if v6 { &[1, 2, 3] } else { &[3, 11] };
            if !errors.contains(&kind) || !forwardable {
                return None;
            }
            let quote = &segment[8..];
            let (q_l4, q_proto, q_src, q_dst) = quoted_header(quote, v6)?;
            if q_proto != proto::TCP && q_proto != proto::UDP {
                return None;
            }
            let sport = u16_at(quote, q_l4)?;
            let dport = u16_at(quote, q_l4 + 2)?;
            if quote.len() < q_l4 + 8 {
                return None;
            }
            Some(Reading::IcmpError {
                quoted: (
                    SocketAddr::new(q_src, sport),
                    SocketAddr::new(q_dst, dport),
                    q_proto,
                ),
                to: dst,
            })
        }
        _ => None,
    }
}

/// The parts of an IP header [`ip_header`] reads.
type IpHeader = (
    usize,
    usize,
    u8,
    std::net::IpAddr,
    std::net::IpAddr,
    u8,
    Option<Piece>,
);

/// Validates the IP header at `l3`: (transport offset, end of packet, protocol, source,
/// destination, TTL, and for a fragment its place in its datagram). A fragment's transport
/// offset is where its part of the datagram starts (in a first fragment, the transport
/// header), and its protocol the datagram's.
fn ip_header(frame: &[u8], l3: usize, v6: bool) -> Option<IpHeader> {
    let ip = frame.get(l3..)?;
    if v6 {
        if ip.len() < 40 || ip[0] >> 4 != 6 {
            return None;
        }
        let payload = usize::from(u16_at(ip, 4)?);
        if payload == 0 || 40 + payload > ip.len() {
            return None;
        }
        let (mut next, mut at) = (ip[6], 40);
        for _ in 0..4 {
            if next != 0 && next != 60 {
                break;
            }
            next = *ip.get(at)?;
            at += (usize::from(*ip.get(at + 1)?) + 1) * 8;
        }
        let mut piece = None;
        if next == 44 {
            // The fragment header: next header, reserved, offset and M, identification.
            let header = ip.get(at..at + 8)?;
            let field = u16::from_be_bytes([header[2], header[3]]);
            piece = Some(Piece {
                id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
                first: field & 0xfff8 == 0,
                more: field & 1 != 0,
            });
            next = header[0];
            at += 8;
        }
        if at > 40 + payload {
            return None;
        }
        Some((
            l3 + at,
            l3 + 40 + payload,
            next,
            ip_at(ip, 8, true)?,
            ip_at(ip, 24, true)?,
            ip[7],
            piece,
        ))
    } else {
        let header = usize::from(*ip.first()? & 0x0f) * 4;
        let total = usize::from(u16_at(ip, 2)?);
        if ip[0] >> 4 != 4 || header < 20 || total < header || total > ip.len() {
            return None;
        }
        let field = u16_at(ip, 6)?;
        let piece = (field & 0x3fff != 0).then(|| Piece {
            id: u32::from(u16::from_be_bytes([ip[4], ip[5]])),
            first: field & 0x1fff == 0,
            more: field & 0x2000 != 0,
        });
        Some((
            l3 + header,
            l3 + total,
            ip[9],
            ip_at(ip, 12, false)?,
            ip_at(ip, 16, false)?,
            ip[8],
            piece,
        ))
    }
}

/// The quoted packet's header: (transport offset within the quote, protocol, source,
/// destination). Quotes may be cut short, so only the header itself must be whole.
fn quoted_header(
    quote: &[u8],
    v6: bool,
) -> Option<(usize, u8, std::net::IpAddr, std::net::IpAddr)> {
    if v6 {
        if quote.len() < 40 {
            return None;
        }
        Some((
            40,
            quote[6],
            ip_at(quote, 8, true)?,
            ip_at(quote, 24, true)?,
        ))
    } else {
        let header = usize::from(*quote.first()? & 0x0f) * 4;
        if quote[0] >> 4 != 4 || header < 20 || quote.len() < header {
            return None;
        }
        Some((
            header,
            quote[9],
            ip_at(quote, 12, false)?,
            ip_at(quote, 16, false)?,
        ))
    }
}

/// Whether the TCP or UDP header that starts `segment` is well formed; the segment is the
/// whole datagram if `whole`, else its first fragment (which must hold the whole header, and
/// whose UDP length counts the fragments to come).
fn transport_ok(segment: &[u8], proto: u8, v6: bool, whole: bool) -> Option<()> {
    if proto == proto::TCP {
        let header = usize::from(*segment.get(12)? >> 4) * 4;
        (header >= 20 && header <= segment.len()).then_some(())
    } else {
        let len = usize::from(u16_at(segment, 4)?);
        let zero_checksum = u16_at(segment, 6)? == 0;
        let fits = if whole {
            len <= segment.len()
        } else {
            segment.len() >= 8 && len >= segment.len()
        };
        (len >= 8 && fits && !(v6 && zero_checksum)).then_some(())
    }
}

/// Whether a frame is an untagged IPv4 packet whose header checksum is right (a fragment's
/// transport checksum covers the whole datagram, so this is all of it that can be checked).
pub fn ipv4_header_ok(frame: &[u8]) -> bool {
    let Some(parsed) = locate(frame) else {
        return false;
    };
    parsed.src.len() == 4 && lb_common::csum::checksum(&frame[parsed.l3..parsed.l4], 0) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Frame;

    #[test]
    fn the_reference_reads_built_frames() {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80").build();
        assert_eq!(
            read(&syn),
            Reading::Transport((
                "198.18.0.2:40000".parse().unwrap(),
                "198.18.100.1:80".parse().unwrap(),
                proto::TCP
            ))
        );
        let mut truncated = syn.clone();
        truncated.truncate(40);
        assert_eq!(read(&truncated), Reading::Untouchable);
        let tagged = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80")
            .with(|f| f.vlan = Some(3))
            .build();
        assert_eq!(read(&tagged), Reading::Untouchable);
        let routed = Frame::tcp("[fd00::2]:1", "[fd00:100::1]:80")
            .with(|f| f.ipv6_extensions = vec![(43, vec![0, 0])])
            .build();
        assert_eq!(read(&routed), Reading::Untouchable);
        let quoted = Frame::tcp("198.18.100.1:80", "198.18.0.2:40000");
        let error = Frame::icmp("198.18.0.254", "198.18.100.1", 3, quoted.ip_packet()).build();
        assert!(matches!(read(&error), Reading::IcmpError { .. }));
    }
}
