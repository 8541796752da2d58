//! The fuzzer's two halves that need no kernel: a deterministic generator of hostile frames
//! (valid packets of every kind xlb handles, some sent in fragments, then mutated: truncated,
//! lengths and header fields set to absurd values, bytes flipped, or random bytes throughout),
//! and a reference parser, written independently of the XDP program, that says which frames
//! the program may rewrite at all (in `reference`, its items re-exported here).

use std::net::SocketAddr;

use crate::packet::{Frame, Transport, ether_type, fragment, locate, proto, tcp_flags};

mod reference;

pub use self::reference::{Datagram, Reading, Tuple, ipv4_header_ok, read, transport_destination};

/// A small, fast, seedable generator (xorshift64*), so a failing case can be replayed from
/// its seed and index.
pub struct Rng(u64);

impl Rng {
    /// A generator for case `index` of the run seeded with `seed`.
    pub fn for_case(seed: u64, index: u64) -> Self {
        let mut rng = Self((seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
        rng.bits();
        rng
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `bound` (at least 1).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.bits() % bound.max(1)
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the fuzzer's world looks like: the services of the config the program runs, as
/// (VIP:port, protocol) pairs, and the backends, client and routers that packets come from.
pub struct World {
    /// Services: listen address and protocol number.
    pub services: Vec<(SocketAddr, u8)>,
    /// Backend addresses (both families).
    pub backends: Vec<SocketAddr>,
}

/// The endpoints of the packet-test network (see `packet_net`) and a config to match.
pub const WORLD_CONFIG: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]

[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.13:5353" } ]

[[service]]
name = "web6"
listen = "[fd00:100::1]:80"
protocol = "tcp"
backends = [ { address = "[fd00:1::11]:8080" }, { address = "[fd00:1::12]:8080" } ]

[[service]]
name = "dns6"
listen = "[fd00:100::1]:53"
protocol = "udp"
backends = [ { address = "[fd00:1::13]:5353" } ]
"#;

impl World {
    /// The world of [`WORLD_CONFIG`].
    pub fn packet_net() -> Self {
        let parse = |s: &str| s.parse::<SocketAddr>().expect("valid address");
        Self {
            services: vec![
                (parse("198.18.100.1:80"), proto::TCP),
                (parse("198.18.100.1:53"), proto::UDP),
                (parse("[fd00:100::1]:80"), proto::TCP),
                (parse("[fd00:100::1]:53"), proto::UDP),
            ],
            backends: [
                "198.18.1.11:8080",
                "198.18.1.12:8080",
                "198.18.1.13:5353",
                "[fd00:1::11]:8080",
                "[fd00:1::12]:8080",
                "[fd00:1::13]:5353",
            ]
            .into_iter()
            .map(parse)
            .collect(),
        }
    }
}

/// A client endpoint of the family of `like`, from a small pool (so flows repeat and
/// established-flow paths get exercised).
fn client(rng: &mut Rng, like: SocketAddr) -> String {
    let port = 40_000 + rng.below(64) as u16;
    if like.is_ipv4() {
        format!("198.18.0.{}:{port}", 2 + rng.below(3))
    } else {
        format!("[fd00::{}]:{port}", 2 + rng.below(3))
    }
}

/// A valid frame of one of the kinds xlb meets.
fn valid_frame(rng: &mut Rng, world: &World) -> Frame {
    let (service, protocol) = *rng.pick(&world.services);
    let client = client(rng, service);
    let tcp_flags = *rng.pick(&[
        tcp_flags::SYN,
        tcp_flags::ACK,
        tcp_flags::ACK,
        tcp_flags::FIN | tcp_flags::ACK,
        tcp_flags::RST,
        0x3f,
    ]);
    let transport = |protocol: u8, rng: &mut Rng| {
        if protocol == proto::TCP {
            Transport::Tcp {
                flags: tcp_flags,
                seq: rng.bits() as u32,
            }
        } else {
            Transport::Udp {
                zero_checksum: service.is_ipv4() && rng.chance(10),
            }
        }
    };
    let payload_len = *rng.pick(&[0usize, 1, 16, 100, 1_000]);
    let mut frame = match rng.below(8) {
        // To a service.
        0..=2 => Frame::tcp(&client, &service.to_string()),
        // A backend's reply to a client.
        3 => {
            let backend = *rng.pick(&world.backends);
            let client = self::client(rng, backend);
            Frame::tcp(&backend.to_string(), &client)
        }
        // Elsewhere: another port, address or protocol.
        4 => {
            let mut other = service;
            other.set_port(*rng.pick(&[22u16, 81, 443, 0, 65_535]));
            Frame::tcp(&client, &other.to_string())
        }
        // ICMP echo, to the VIP or elsewhere.
        5 => {
            let vip = service.ip().to_string();
            let to = if rng.chance(70) {
                vip
            } else if service.is_ipv4() {
                "198.18.100.9".into()
            } else {
                "fd00:100::9".into()
            };
            let from = client
                .rsplit_once(':')
                .map(|(ip, _)| ip.trim_matches(['[', ']']).to_owned());
            let kind = if service.is_ipv4() { 8 } else { 128 };
            return Frame::icmp(&from.unwrap(), &to, kind, vec![0x5a; payload_len]);
        }
        // An ICMP error quoting a reply from the VIP, or a request to a backend.
        _ => {
            let quoted = if rng.chance(50) {
                Frame::tcp(&service.to_string(), &client)
            } else {
                let same_family: Vec<SocketAddr> = world
                    .backends
                    .iter()
                    .copied()
                    .filter(|b| b.is_ipv4() == service.is_ipv4())
                    .collect();
                let backend = *rng.pick(&same_family);
                let client = self::client(rng, backend);
                Frame::tcp(&client, &backend.to_string())
            }
            .with(|f| f.transport = transport(protocol, rng));
            let mut quote = quoted.ip_packet();
            quote.truncate(*rng.pick(&[quote.len(), 28, 48, 60]));
            let router = if service.is_ipv4() {
                "198.18.0.254"
            } else {
                "fd00::fe"
            };
            let to = quoted.src.ip().to_string();
            let kind = if service.is_ipv4() {
                *rng.pick(&[3u8, 11, 5, 12])
            } else {
                *rng.pick(&[1u8, 2, 3, 4])
            };
            return Frame::icmp(router, &to, kind, quote);
        }
    };
    let protocol = if rng.chance(85) {
        protocol
    } else {
        proto::TCP + proto::UDP - protocol
    };
    frame.transport = transport(protocol, rng);
    frame.payload = (0..payload_len).map(|i| i as u8).collect();
    if frame.is_ipv6() && rng.chance(15) {
        let kind = *rng.pick(&[0u8, 60, 43, 44, 0, 60]);
        frame.ipv6_extensions.push((kind, vec![1, 4, 0, 0, 0, 0]));
    }
    if !frame.is_ipv6() && rng.chance(10) {
        frame.ip_options = vec![1, 1, 1, 0];
    }
    if rng.chance(3) {
        frame.vlan = Some(rng.below(4_096) as u16);
    }
    frame.ttl = *rng.pick(&[64u8, 64, 1, 0, 255]);
    frame
}

/// Frame `index` of the run seeded with `seed`: a valid frame, often mutated.
pub fn frame(seed: u64, index: u64, world: &World) -> Vec<u8> {
    let mut rng = Rng::for_case(seed, index);
    let mut frame = valid_frame(&mut rng, world);
    let mutation = rng.below(12);
    // Header fields with absurd values, through the builder (checksums still right).
    match mutation {
        0 => frame.ihl_override = Some(rng.below(16) as u8),
        1 => frame.total_length_override = Some(rng.bits() as u16),
        2 => frame.tcp_doff_override = Some(rng.below(16) as u8),
        3 => frame.version = Some(rng.below(16) as u8),
        4 => frame.ip_frag = rng.bits() as u16,
        5 => {
            frame.ether_type_override = Some(*rng.pick(&[
                ether_type::IPV4,
                ether_type::IPV6,
                0x0806,
                ether_type::VLAN_8021AD,
            ]))
        }
        _ => {}
    }
    let mut bytes = frame.build();
    // One fragment of the datagram, as a host would send it in pieces. A handful of
    // identifications, and the small pools of clients and ports, make the fragments of one
    // datagram (first, later, before and after each other) meet across cases.
    // (ICMP messages are not balanced in fragments: the packet tests pass a few.)
    let icmp = matches!(frame.transport, Transport::Icmp { .. });
    if mutation > 5 && !icmp && frame.vlan.is_none() && locate(&bytes).is_some() && rng.chance(30) {
        let chunk = *rng.pick(&[8usize, 16, 24, 64, 504]);
        let id = 0x0a00 + rng.below(4) as u32;
        let mut pieces = fragment(&bytes, chunk, id);
        let first = rng.chance(50);
        let index = if first {
            0
        } else {
            rng.below(pieces.len() as u64) as usize
        };
        bytes = pieces.swap_remove(index);
    }
    // Byte-level damage: truncation, flips, and random bytes.
    match rng.below(10) {
        0..=1 => {
            let len = 14 + rng.below(bytes.len().saturating_sub(14) as u64 + 1) as usize;
            bytes.truncate(len);
        }
        2..=3 => {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        4 => {
            let len = 14 + rng.below(200) as usize;
            bytes = (0..len).map(|_| rng.bits() as u8).collect();
            if rng.chance(50) {
                bytes[12..14].copy_from_slice(
                    &rng.pick(&[ether_type::IPV4, ether_type::IPV6])
                        .to_be_bytes(),
                );
            }
        }
        5 => bytes.extend((0..rng.below(64)).map(|_| rng.bits() as u8)),
        _ => {}
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::verify_checksums;

    #[test]
    fn the_same_seed_gives_the_same_frames() {
        let world = World::packet_net();
        for index in 0..100 {
            assert_eq!(frame(7, index, &world), frame(7, index, &world));
        }
        assert_ne!(frame(7, 1, &world), frame(8, 1, &world));
    }

    #[test]
    fn the_generator_covers_every_kind_of_frame() {
        let world = World::packet_net();
        let (mut transport, mut echo, mut errors, mut untouchable, mut valid) = (0, 0, 0, 0, 0);
        let (mut first, mut later) = (0, 0);
        for index in 0..5_000 {
            let bytes = frame(1, index, &world);
            match read(&bytes) {
                Reading::Transport(_) => transport += 1,
                Reading::FirstFragment { .. } => first += 1,
                Reading::LaterFragment { .. } => later += 1,
                Reading::Echo(_) => echo += 1,
                Reading::IcmpError { .. } => errors += 1,
                Reading::Untouchable => untouchable += 1,
            }
            valid += usize::from(verify_checksums(&bytes).is_ok());
        }
        for (kind, count) in [
            ("transport", transport),
            ("echo", echo),
            ("ICMP error", errors),
            ("untouchable", untouchable),
            ("checksum-valid", valid),
        ] {
            assert!(count > 250, "only {count} {kind} frames in 5,000");
        }
        for (kind, count) in [("first fragment", first), ("later fragment", later)] {
            assert!(count > 50, "only {count} {kind}s in 5,000");
        }
    }
}
