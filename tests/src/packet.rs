//! Building and checking Ethernet/IPv4/TCP|UDP frames for packet tests.
//!
//! A [`Frame`] is described field by field and serialized with checksums computed from scratch,
//! so a test states the packet it expects and compares bytes: an incremental checksum update
//! in the data plane that differs from a full recomputation shows up as a byte mismatch.

use std::{fmt::Write as _, net::SocketAddrV4};

use lb_common::csum;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// IPv4 "more fragments" flag, in the flags/offset field.
pub const IP_MF: u16 = 0x2000;
/// IPv4 "don't fragment" flag.
pub const IP_DF: u16 = 0x4000;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// The transport header of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP with flags and sequence number.
    Tcp { flags: u8, seq: u32 },
    /// UDP; `zero_checksum` sends it without a checksum (allowed over IPv4).
    Udp { zero_checksum: bool },
}

/// A frame, field by field. Start from [`Frame::tcp`] or [`Frame::udp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Destination MAC.
    pub eth_dst: [u8; 6],
    /// Source MAC.
    pub eth_src: [u8; 6],
    /// EtherType.
    pub ether_type: u16,
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub ip_id: u16,
    /// Flags and fragment offset.
    pub ip_frag: u16,
    /// IP options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// Transport header.
    pub transport: Transport,
    /// Payload after the transport header.
    pub payload: Vec<u8>,
    /// Overrides the version nibble (malformed packets).
    pub version: u8,
    /// Overrides the IHL nibble (malformed packets).
    pub ihl_override: Option<u8>,
    /// Overrides the IP total length (malformed packets).
    pub total_length_override: Option<u16>,
    /// Overrides the TCP data offset nibble (malformed packets).
    pub tcp_doff_override: Option<u8>,
}

/// MAC of the client in packet tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// MAC of the balancer's client-side interface in packet tests.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

impl Frame {
    fn new(src: SocketAddrV4, dst: SocketAddrV4, transport: Transport) -> Self {
        Self {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            ether_type: ETH_P_IP,
            src,
            dst,
            ttl: 64,
            ip_id: 0x1234,
            ip_frag: IP_DF,
            ip_options: Vec::new(),
            transport,
            payload: b"xlb test payload".to_vec(),
            version: 4,
            ihl_override: None,
            total_length_override: None,
            tcp_doff_override: None,
        }
    }

    /// A TCP SYN from `src` to `dst`.
    pub fn tcp(src: &str, dst: &str) -> Self {
        Self::new(
            parse(src),
            parse(dst),
            Transport::Tcp {
                flags: TCP_SYN,
                seq: 1_000,
            },
        )
    }

    /// A UDP datagram from `src` to `dst`, with a checksum.
    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(
            parse(src),
            parse(dst),
            Transport::Udp {
                zero_checksum: false,
            },
        )
    }

    /// The same frame with other fields, for fluent construction.
    pub fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self
    }

    /// Serializes the frame with every length and checksum computed.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let proto = match self.transport {
            Transport::Tcp { flags, seq } => {
                l4.extend_from_slice(&self.src.port().to_be_bytes());
                l4.extend_from_slice(&self.dst.port().to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                l4.push(self.tcp_doff_override.unwrap_or(5) << 4);
                l4.push(flags);
                l4.extend_from_slice(&64_240u16.to_be_bytes()); // window
                l4.extend_from_slice(&[0, 0]); // checksum
                l4.extend_from_slice(&[0, 0]); // urgent pointer
                l4.extend_from_slice(&self.payload);
                6
            }
            Transport::Udp { .. } => {
                l4.extend_from_slice(&self.src.port().to_be_bytes());
                l4.extend_from_slice(&self.dst.port().to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                17
            }
        };
        let check_at = if proto == 6 { 16 } else { 6 };
        let skip_l4_checksum = matches!(
            self.transport,
            Transport::Udp {
                zero_checksum: true
            }
        );
        if !skip_l4_checksum {
            let mut check =
                csum::checksum(&l4, pseudo_header_sum(self.src, self.dst, proto, l4.len()));
            if proto == 17 && check == 0 {
                check = 0xffff;
            }
            l4[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());
        }

        let header_len = 20 + self.ip_options.len();
        let mut ip = Vec::with_capacity(header_len);
        let ihl = self.ihl_override.unwrap_or((header_len / 4) as u8);
        ip.push(self.version << 4 | ihl);
        ip.push(0); // TOS
        let total = self
            .total_length_override
            .unwrap_or((header_len + l4.len()) as u16);
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.ip_frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.ip().octets());
        ip.extend_from_slice(&self.dst.ip().octets());
        ip.extend_from_slice(&self.ip_options);
        let check = csum::checksum(&ip, 0);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());

        let mut frame = Vec::with_capacity(14 + ip.len() + l4.len());
        frame.extend_from_slice(&self.eth_dst);
        frame.extend_from_slice(&self.eth_src);
        frame.extend_from_slice(&self.ether_type.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

fn parse(endpoint: &str) -> SocketAddrV4 {
    endpoint
        .parse()
        .unwrap_or_else(|_| panic!("{endpoint:?} is not IPv4:port"))
}

/// The one's-complement sum of the IPv4 pseudo header.
fn pseudo_header_sum(src: SocketAddrV4, dst: SocketAddrV4, proto: u8, l4_len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.push(0);
    pseudo.push(proto);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    csum::sum(&pseudo, 0)
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum of a well-formed frame by
/// recomputing them. A UDP checksum of zero (not computed) passes.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if csum::checksum(&ip[..header_len], 0) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let proto = ip[9];
    let l4 = &ip[header_len..total];
    if proto == 17 && l4[6..8] == [0, 0] {
        return Ok(());
    }
    let src = SocketAddrV4::new([ip[12], ip[13], ip[14], ip[15]].into(), 0);
    let dst = SocketAddrV4::new([ip[16], ip[17], ip[18], ip[19]].into(), 0);
    if csum::checksum(l4, pseudo_header_sum(src, dst, proto, l4.len())) != 0 {
        return Err(format!(
            "bad {} checksum",
            if proto == 6 { "TCP" } else { "UDP" }
        ));
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
        for frame in [
            Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"),
            Frame::udp("198.18.0.2:40000", "198.18.100.1:53"),
            Frame::tcp("198.18.0.2:40000", "198.18.100.1:80")
                .with(|f| f.ip_options = vec![1, 1, 1, 0]),
            Frame::udp("198.18.0.2:1", "198.18.100.1:53").with(|f| f.payload = vec![0xff; 33]),
        ] {
            let bytes = frame.build();
            verify_checksums(&bytes).unwrap_or_else(|e| panic!("{e}: {frame:?}"));
        }
    }

    #[test]
    fn a_corrupted_frame_fails_verification() {
        let mut bytes = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80").build();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(verify_checksums(&bytes), Err("bad TCP checksum".into()));
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
    }

    #[test]
    fn hex_diff_marks_differences() {
        let diff = hex_diff(&[1, 2, 3], &[1, 9, 3]);
        assert!(diff.contains("expected 0000: 01*02 03"), "{diff}");
        assert!(diff.contains("actual   0000: 01*09 03"), "{diff}");
    }
}
