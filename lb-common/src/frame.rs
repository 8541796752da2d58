//! Building and checking Ethernet / IPv4 or IPv6 / TCP, UDP or ICMP frames, in userspace
//! (feature `user`): the packet tests state the frames they send and expect with it, and
//! `xlb simulate` builds the packet it runs through the program.
//!
//! A [`Frame`] is described field by field and serialized with checksums computed from scratch,
//! so a test states the packet it expects and compares bytes: an incremental checksum update
//! in the data plane that differs from a full recomputation shows up as a byte mismatch.
//! A built frame is cut into fragments, and fragments put back together, by [`fragment()`] and
//! [`reassemble`] (module `fragment`).

use core::{fmt::Write as _, net::SocketAddr};
use std::{format, prelude::rust_2024::*, vec};

use crate::{
    consts::{ether_type, proto, tcp_flags},
    csum,
};

mod fragment;

pub use self::fragment::{fragment, reassemble};

/// IPv4 "more fragments" flag, in the flags/offset field.
pub const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag.
pub const IP_DF: u16 = 0x4000;

/// The transport header of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with flags and sequence number.
    Tcp {
        /// TCP flags ([`tcp_flags::SYN`], ...).
        flags: u8,
        /// Sequence number.
        seq: u32,
    },
    /// UDP; `zero_checksum` sends it without a checksum (allowed over IPv4 only).
    Udp {
        /// Send without a checksum (allowed over IPv4 only).
        zero_checksum: bool,
    },
    /// ICMP (over IPv4) or ICMPv6 (over IPv6): type, code and the four bytes after the
    /// checksum; the message body is the frame's payload.
    Icmp {
        /// ICMP type.
        kind: u8,
        /// ICMP code.
        code: u8,
        /// The four bytes after the checksum.
        rest: [u8; 4],
    },
}

/// A frame, field by field. Start from [`Frame::tcp`], [`Frame::udp`] or [`Frame::icmp`];
/// addresses decide IPv4 or IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// An 802.1Q tag (VLAN id), if any.
    pub vlan: Option<u16>,
    /// Overrides the EtherType.
    pub ether_type_override: Option<u16>,
    /// Source address and port (the port is ignored for ICMP).
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Time to live, or hop limit.
    pub ttl: u8,
    /// IPv4 identification.
    pub ip_id: u16,
    /// IPv4 flags and fragment offset.
    pub ip_frag: u16,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv6 extension headers, in order: (type, body after the next-header and length bytes;
    /// padded to a multiple of 8 bytes with the two).
    pub ipv6_extensions: Vec<(u8, Vec<u8>)>,
    /// Transport header.
    pub transport: Transport,
    /// Payload after the transport header.
    pub payload: Vec<u8>,
    /// Overrides the version nibble (malformed packets).
    pub version: Option<u8>,
    /// Overrides the IPv4 IHL nibble (malformed packets).
    pub ihl_override: Option<u8>,
    /// Overrides the IPv4 total length or the IPv6 payload length (malformed packets).
    pub total_length_override: Option<u16>,
    /// Overrides the TCP data offset nibble (malformed packets).
    pub tcp_doff_override: Option<u8>,
    /// TCP acknowledgement number (0 unless set).
    pub tcp_ack: u32,
}

/// MAC of the client in packet tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// MAC of the balancer's client-side interface in packet tests.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

impl Frame {
    /// A frame from `src` to `dst` with `transport` and the defaults of the other fields.
    pub fn between(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one address family per frame");
        Self {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            vlan: None,
            ether_type_override: None,
            src,
            dst,
            ttl: 64,
            ip_id: 0x1234,
            ip_frag: IP_DF,
            ip_options: Vec::new(),
            ipv6_extensions: Vec::new(),
            transport,
            payload: b"xlb test payload".to_vec(),
            version: None,
            ihl_override: None,
            total_length_override: None,
            tcp_doff_override: None,
            tcp_ack: 0,
        }
    }

    /// A TCP SYN from `src` to `dst`.
    pub fn tcp(src: &str, dst: &str) -> Self {
        Self::between(
            parse(src),
            parse(dst),
            Transport::Tcp {
                flags: tcp_flags::SYN,
                seq: 1_000,
            },
        )
    }

    /// A UDP datagram from `src` to `dst`, with a checksum.
    pub fn udp(src: &str, dst: &str) -> Self {
        Self::between(
            parse(src),
            parse(dst),
            Transport::Udp {
                zero_checksum: false,
            },
        )
    }

    /// An ICMP (or ICMPv6, for IPv6 addresses) message of `kind` from `src` to `dst` (bare
    /// addresses), with `body` after its 8-byte header.
    pub fn icmp(src: &str, dst: &str, kind: u8, body: Vec<u8>) -> Self {
        let address = |text: &str| -> SocketAddr {
            SocketAddr::new(
                text.parse()
                    .unwrap_or_else(|_| core::panic!("{text:?} is not an IP address")),
                0,
            )
        };
        Self::between(
            address(src),
            address(dst),
            Transport::Icmp {
                kind,
                code: 0,
                rest: [0; 4],
            },
        )
        .with(|f| f.payload = body)
    }

    /// The same frame with other fields, for fluent construction.
    pub fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }

    /// Whether the frame is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// The IP packet alone (no Ethernet header), every length and checksum computed: what an
    /// ICMP error quotes.
    pub fn ip_packet(&self) -> Vec<u8> {
        let built = self.build();
        built[self.l3_offset()..].to_vec()
    }

    fn l3_offset(&self) -> usize {
        14 + if self.vlan.is_some() { 4 } else { 0 }
    }

    /// Serializes the frame with every length and checksum computed.
    pub fn build(&self) -> Vec<u8> {
        let v6 = self.is_ipv6();
        let mut l4 = Vec::new();
        let proto = match self.transport {
            Transport::Tcp { flags, seq } => {
                l4.extend_from_slice(&self.src.port().to_be_bytes());
                l4.extend_from_slice(&self.dst.port().to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&self.tcp_ack.to_be_bytes());
                l4.push(self.tcp_doff_override.unwrap_or(5) << 4);
                l4.push(flags);
                l4.extend_from_slice(&64_240u16.to_be_bytes()); // window
                l4.extend_from_slice(&[0, 0]); // checksum
                l4.extend_from_slice(&[0, 0]); // urgent pointer
                l4.extend_from_slice(&self.payload);
                proto::TCP
            }
            Transport::Udp { .. } => {
                l4.extend_from_slice(&self.src.port().to_be_bytes());
                l4.extend_from_slice(&self.dst.port().to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                proto::UDP
            }
            Transport::Icmp { kind, code, rest } => {
                l4.extend_from_slice(&[kind, code, 0, 0]);
                l4.extend_from_slice(&rest);
                l4.extend_from_slice(&self.payload);
                if v6 { proto::ICMPV6 } else { proto::ICMP }
            }
        };
        let check_at = match proto {
            proto::TCP => 16,
            proto::UDP => 6,
            _ => 2,
        };
        let skip_l4_checksum = matches!(
            self.transport,
            Transport::Udp {
                zero_checksum: true
            }
        );
        if !skip_l4_checksum {
            let pseudo = if proto == proto::ICMP {
                0
            } else {
                pseudo_header_sum(&ip_bytes(self.src), &ip_bytes(self.dst), proto, l4.len())
            };
            let mut check = csum::checksum(&l4, pseudo);
            if proto == proto::UDP && check == 0 {
                check = 0xffff;
            }
            l4[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());
        }

        let ip = if v6 {
            self.ipv6_header(proto, l4.len())
        } else {
            self.ipv4_header(proto, l4.len())
        };
        let mut frame = Vec::with_capacity(18 + ip.len() + l4.len());
        frame.extend_from_slice(&self.eth_dst);
        frame.extend_from_slice(&self.eth_src);
        if let Some(vlan) = self.vlan {
            frame.extend_from_slice(&ether_type::VLAN_8021Q.to_be_bytes());
            frame.extend_from_slice(&vlan.to_be_bytes());
        }
        let ether_type = self.ether_type_override.unwrap_or(if v6 {
            ether_type::IPV6
        } else {
            ether_type::IPV4
        });
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }

    fn ipv4_header(&self, proto: u8, l4_len: usize) -> Vec<u8> {
        let header_len = 20 + self.ip_options.len();
        let mut ip = Vec::with_capacity(header_len);
        let ihl = self.ihl_override.unwrap_or((header_len / 4) as u8);
        ip.push(self.version.unwrap_or(4) << 4 | ihl);
        ip.push(0); // TOS
        let total = self
            .total_length_override
            .unwrap_or((header_len + l4_len) as u16);
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.ip_frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&ip_bytes(self.src));
        ip.extend_from_slice(&ip_bytes(self.dst));
        ip.extend_from_slice(&self.ip_options);
        let check = csum::checksum(&ip, 0);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
        ip
    }

    fn ipv6_header(&self, proto: u8, l4_len: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        for (i, (_, body)) in self.ipv6_extensions.iter().enumerate() {
            let next = self
                .ipv6_extensions
                .get(i + 1)
                .map_or(proto, |(kind, _)| *kind);
            let mut header = vec![next, 0];
            header.extend_from_slice(body);
            while header.len() % 8 != 0 {
                header.push(0);
            }
            header[1] = (header.len() / 8 - 1) as u8;
            extensions.extend_from_slice(&header);
        }
        let first = self
            .ipv6_extensions
            .first()
            .map_or(proto, |(kind, _)| *kind);
        let mut ip = Vec::with_capacity(40 + extensions.len());
        ip.extend_from_slice(&[self.version.unwrap_or(6) << 4, 0, 0, 0]);
        let payload = self
            .total_length_override
            .unwrap_or((extensions.len() + l4_len) as u16);
        ip.extend_from_slice(&payload.to_be_bytes());
        ip.push(first);
        ip.push(self.ttl);
        ip.extend_from_slice(&ip_bytes(self.src));
        ip.extend_from_slice(&ip_bytes(self.dst));
        ip.extend_from_slice(&extensions);
        ip
    }
}

/// The bytes of an address: 4 for IPv4, 16 for IPv6.
pub fn ip_bytes(address: SocketAddr) -> Vec<u8> {
    match address {
        SocketAddr::V4(v4) => v4.ip().octets().to_vec(),
        SocketAddr::V6(v6) => v6.ip().octets().to_vec(),
    }
}

/// Parses `IPv4:port` or `[IPv6]:port`.
pub fn parse(endpoint: &str) -> SocketAddr {
    endpoint
        .parse()
        .unwrap_or_else(|_| core::panic!("{endpoint:?} is not IP:port"))
}

/// The one's-complement sum of the IPv4 or IPv6 pseudo header (4- or 16-byte addresses).
fn pseudo_header_sum(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    if src.len() == 4 {
        pseudo.push(0);
        pseudo.push(proto);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    }
    csum::sum(&pseudo, 0)
}

/// Where a frame's parts are, as far as it parses: for checking outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// End of the IP packet.
    pub end: usize,
    /// Transport protocol.
    pub proto: u8,
    /// Source and destination addresses (4 or 16 bytes).
    pub src: Vec<u8>,
    /// Destination address.
    pub dst: Vec<u8>,
}

/// Finds the IP and transport headers of an untagged Ethernet / IPv4 (with options) or IPv6
/// (without extension headers) frame; `None` if it does not parse.
pub fn locate(frame: &[u8]) -> Option<Parsed> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let parsed = locate_ip(frame.get(14..)?)?;
    let family_matches = match ether_type {
        ether_type::IPV4 => parsed.src.len() == 4,
        ether_type::IPV6 => parsed.src.len() == 16,
        _ => false,
    };
    family_matches.then(|| Parsed {
        l3: 14,
        l4: 14 + parsed.l4,
        end: 14 + parsed.end,
        ..parsed
    })
}

/// [`locate`] for an IP packet without a link header (as a TUN device gives them): IPv4 (with
/// options) or IPv6 (without extension headers), by its version; `None` if it does not parse.
pub fn locate_ip(ip: &[u8]) -> Option<Parsed> {
    match ip.first()? >> 4 {
        4 => {
            let header_len = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
            if header_len < 20 || total < header_len || total > ip.len() {
                return None;
            }
            Some(Parsed {
                l3: 0,
                l4: header_len,
                end: total,
                proto: ip[9],
                src: ip[12..16].to_vec(),
                dst: ip[16..20].to_vec(),
            })
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes(ip.get(4..6)?.try_into().ok()?));
            if 40 + payload > ip.len() {
                return None;
            }
            Some(Parsed {
                l3: 0,
                l4: 40,
                end: 40 + payload,
                proto: ip[6],
                src: ip[8..24].to_vec(),
                dst: ip[24..40].to_vec(),
            })
        }
        _ => None,
    }
}

/// Checks the IPv4 header checksum and the TCP, UDP or ICMP checksum of a well-formed frame by
/// recomputing them. A UDP checksum of zero over IPv4 (not computed) passes.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let parsed = locate(frame).ok_or("the frame does not parse")?;
    if parsed.src.len() == 4 && csum::checksum(&frame[parsed.l3..parsed.l4], 0) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let l4 = &frame[parsed.l4..parsed.end];
    let name = match parsed.proto {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::ICMP => "ICMP",
        proto::ICMPV6 => "ICMPv6",
        _ => return Ok(()),
    };
    if parsed.proto == proto::UDP && parsed.src.len() == 4 && l4.get(6..8) == Some(&[0, 0]) {
        return Ok(());
    }
    let pseudo = if parsed.proto == proto::ICMP {
        0
    } else {
        pseudo_header_sum(&parsed.src, &parsed.dst, parsed.proto, l4.len())
    };
    if csum::checksum(l4, pseudo) != 0 {
        return Err(format!("bad {name} checksum"));
    }
    Ok(())
}

/// A readable comparison of two frames: both in hex, differing bytes marked.
pub fn hex_diff(expected: &[u8], actual: &[u8]) -> String {
    let mut out = String::new();
    let len = expected.len().max(actual.len());
    for row in (0..len).step_by(16) {
        for (label, bytes) in [("expected", expected), ("actual  ", actual)] {
            let _ = write!(out, "{label} {row:04x}:");
            for i in row..(row + 16).min(len) {
                let mark = if expected.get(i) != actual.get(i) {
                    '*'
                } else {
                    ' '
                };
                match bytes.get(i) {
                    Some(b) => {
                        let _ = write!(out, "{mark}{b:02x}");
                    }
                    None => out.push_str(" --"),
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        let quote = Frame::tcp("198.18.100.1:80", "198.18.0.2:40000").ip_packet();
        let quote6 = Frame::tcp("[fd00:100::1]:80", "[fd00::2]:40000").ip_packet();
        for frame in [
            Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"),
            Frame::udp("198.18.0.2:40000", "198.18.100.1:53"),
            Frame::tcp("198.18.0.2:40000", "198.18.100.1:80")
                .with(|f| f.ip_options = vec![1, 1, 1, 0]),
            Frame::udp("198.18.0.2:1", "198.18.100.1:53").with(|f| f.payload = vec![0xff; 33]),
            Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80"),
            Frame::udp("[fd00::2]:40000", "[fd00:100::1]:53").with(|f| f.payload = vec![7; 5]),
            Frame::icmp("198.18.0.2", "198.18.100.1", 8, vec![1, 2, 3]),
            Frame::icmp("198.18.5.5", "198.18.100.1", 3, quote),
            Frame::icmp("fd00::5", "fd00:100::1", 2, quote6),
        ] {
            let bytes = frame.build();
            verify_checksums(&bytes).unwrap_or_else(|e| core::panic!("{e}: {frame:?}"));
        }
    }

    #[test]
    fn a_corrupted_frame_fails_verification() {
        for frame in [
            Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"),
            Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80"),
        ] {
            let mut bytes = frame.build();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            assert_eq!(verify_checksums(&bytes), Err("bad TCP checksum".into()));
        }
    }

    #[test]
    fn layout_matches_the_wire_format() {
        let bytes = Frame::udp("198.18.0.2:4660", "198.18.100.1:53")
            .with(|f| f.payload = vec![])
            .build();
        assert_eq!(bytes.len(), 14 + 20 + 8);
        assert_eq!(&bytes[12..14], &[0x08, 0x00]);
        assert_eq!(bytes[14], 0x45);
        assert_eq!(&bytes[16..18], &28u16.to_be_bytes());
        assert_eq!(bytes[23], 17);
        assert_eq!(&bytes[26..30], &[198, 18, 0, 2]);
        assert_eq!(&bytes[34..36], &4660u16.to_be_bytes());
        assert_eq!(&bytes[38..40], &8u16.to_be_bytes());

        let bytes = Frame::udp("[fd00::2]:4660", "[fd00:100::1]:53")
            .with(|f| {
                f.payload = vec![];
                f.ipv6_extensions = vec![(0, vec![1, 4, 0, 0, 0, 0])];
            })
            .build();
        assert_eq!(bytes.len(), 14 + 40 + 8 + 8);
        assert_eq!(&bytes[12..14], &[0x86, 0xdd]);
        assert_eq!(bytes[14] >> 4, 6);
        assert_eq!(&bytes[18..20], &16u16.to_be_bytes(), "payload length");
        assert_eq!(bytes[20], 0, "next header: hop-by-hop");
        assert_eq!(&bytes[54..56], &[17, 0], "then UDP, 8 bytes of options");
        assert_eq!(&bytes[62..64], &4660u16.to_be_bytes());
    }

    #[test]
    fn hex_diff_marks_differences() {
        let diff = hex_diff(&[1, 2, 3], &[1, 9, 3]);
        assert!(diff.contains("expected 0000: 01*02 03"), "{diff}");
        assert!(diff.contains("actual   0000: 01*09 03"), "{diff}");
    }
}
