//! Layer-3 direct server return: a tunnel flow's packets leave inside an outer header (IPIP,
//! or GUE's IP and UDP) to the backend, behind a gateway, with the inner packet as it would
//! have left with L2 DSR; a packet the outer header would make too big for the interface
//! draws an ICMP error with the MTU that fits. Expected frames are built here from scratch.

use lb_common::{csum, hash::tuple_hash, tunnel::gue_source_port};
use xlb_tests::packet::{IP_DF, ip_bytes};

use super::*;

/// Services over both tunnels, both families, to backends behind the gateway 198.18.1.2 /
/// fd00:1::2 (whose MAC is `backend_mac(0x02)`).
const TUNNELS: &str = r#"
interfaces = ["c0", "s0"]

[tunnel]
source = "198.18.1.1"
source_ipv6 = "fd00:1::1"

[[service]]
name = "ipip"
listen = "198.18.100.7:80"
protocol = "tcp"
forwarding = "ipip"
backends = [ { address = "198.18.50.11:80" } ]

[[service]]
name = "gue"
listen = "198.18.100.7:53"
protocol = "udp"
forwarding = "gue"
backends = [ { address = "198.18.50.12:53" } ]

[[service]]
name = "ipip6"
listen = "[fd00:100::7]:80"
protocol = "tcp"
forwarding = "ipip"
backends = [ { address = "[fd00:50::11]:80" } ]

[[service]]
name = "gue6"
listen = "[fd00:100::7]:53"
protocol = "udp"
forwarding = "gue"
backends = [ { address = "[fd00:50::12]:53" } ]
"#;

/// The gateway's MAC address.
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

/// The frame `input` becomes through the tunnel to `backend` (an address): its IP packet, TTL
/// decremented, behind an outer header from this instance's `source`, with GUE's UDP header
/// if `gue`, to the gateway's MAC from s0's.
pub(super) fn encapsulated(input: &Frame, source: &str, backend: &str, gue: bool) -> Vec<u8> {
    let inner = input.clone().with(|f| f.ttl -= 1).ip_packet();
    let v6 = input.is_ipv6();
    let (src, dst) = (ip_of(source), ip_of(backend));
    let mut udp = Vec::new();
    if gue {
        let hash = tuple_hash(
            &addr_field(input.src.ip()),
            &addr_field(input.dst.ip()),
            u32::from(input.src.port().to_be()) | u32::from(input.dst.port().to_be()) << 16,
            u32::from(if matches!(input.transport, Transport::Udp { .. }) {
                17u8
            } else {
                6
            }),
            0,
        );
        udp.extend_from_slice(&gue_source_port(hash).to_be_bytes());
        udp.extend_from_slice(&6080u16.to_be_bytes());
        udp.extend_from_slice(&(inner.len() as u16 + 8).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
    }
    let mut frame = Vec::new();
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&S0_MAC);
    if v6 {
        frame.extend_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(&inner[..4]);
        frame.extend_from_slice(&((inner.len() + udp.len()) as u16).to_be_bytes());
        frame.push(if gue { 17 } else { 41 });
        frame.push(64);
    } else {
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut header = vec![0x45, inner[1]];
        header.extend_from_slice(&((20 + udp.len() + inner.len()) as u16).to_be_bytes());
        header.extend_from_slice(&inner[4..6]);
        header.extend_from_slice(&(u16::from_be_bytes([inner[6], inner[7]]) & IP_DF).to_be_bytes());
        header.extend_from_slice(&[64, if gue { 17 } else { 4 }, 0, 0]);
        header.extend_from_slice(&src);
        header.extend_from_slice(&dst);
        let check = csum::checksum(&header, 0);
        header[10..12].copy_from_slice(&check.to_ne_bytes());
        frame.extend_from_slice(&header);
    }
    if v6 {
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
    }
    frame.extend_from_slice(&udp);
    frame.extend_from_slice(&inner);
    frame
}

/// An address's bytes on the wire.
fn ip_of(address: &str) -> Vec<u8> {
    ip_bytes(SocketAddr::new(address.parse().unwrap(), 0))
}

/// The ICMP error the balancer answers the too-big `input` with (its IP packet quoted as the
/// encapsulation found it, TTL decremented): from the VIP to the client, naming `mtu`.
fn too_big(input: &Frame, mtu: u32) -> Vec<u8> {
    let quoted = input.clone().with(|f| f.ttl -= 1).ip_packet()[..64].to_vec();
    let (vip, client) = (ip_bytes(input.dst), ip_bytes(input.src));
    let mut icmp = if input.is_ipv6() {
        let mut header = vec![2, 0, 0, 0];
        header.extend_from_slice(&mtu.to_be_bytes());
        header
    } else {
        vec![3, 4, 0, 0, 0, 0, (mtu >> 8) as u8, mtu as u8]
    };
    icmp.extend_from_slice(&quoted);
    let mut frame = Vec::new();
    frame.extend_from_slice(&input.eth_src);
    frame.extend_from_slice(&input.eth_dst);
    if input.is_ipv6() {
        let mut pseudo = vip.clone();
        pseudo.extend_from_slice(&client);
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        let check = csum::checksum(&icmp, csum::sum(&pseudo, 0));
        icmp[2..4].copy_from_slice(&check.to_ne_bytes());
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[58, 64]);
        frame.extend_from_slice(&vip);
        frame.extend_from_slice(&client);
    } else {
        let check = csum::checksum(&icmp, 0);
        icmp[2..4].copy_from_slice(&check.to_ne_bytes());
        let mut header = vec![0x45, 0];
        header.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        header.extend_from_slice(&vip);
        header.extend_from_slice(&client);
        let check = csum::checksum(&header, 0);
        header[10..12].copy_from_slice(&check.to_ne_bytes());
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&header);
    }
    frame.extend_from_slice(&icmp);
    frame
}

/// Both checks below share one lab (each program loaded once per hook: loading and
/// verifying them is most of a packet test's time).
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn tunnel_flows_leave_encapsulated_and_packets_too_big_are_answered() {
    with_lab_config(TUNNELS, |lab| {
        tunnel_flows_leave_encapsulated_to_their_backend_behind_a_gateway(lab);
        a_packet_too_big_for_the_tunnel_is_answered_with_the_mtu_that_fits(lab);
    });
}

/// The first and the next packet of an IPIP and a GUE flow of each family leave inside the
/// outer header, to the backend behind a gateway; each flow is one entry.
fn tunnel_flows_leave_encapsulated_to_their_backend_behind_a_gateway(lab: &mut PacketLab) {
    let cases = [
        (
            "IPIP",
            "198.18.0.2:40001",
            "198.18.100.7:80",
            "198.18.1.1",
            "198.18.50.11",
            false,
        ),
        (
            "GUE",
            "198.18.0.2:40002",
            "198.18.100.7:53",
            "198.18.1.1",
            "198.18.50.12",
            true,
        ),
        (
            "IPIP6",
            "[fd00::2]:40003",
            "[fd00:100::7]:80",
            "fd00:1::1",
            "fd00:50::11",
            false,
        ),
        (
            "GUE6",
            "[fd00::2]:40004",
            "[fd00:100::7]:53",
            "fd00:1::1",
            "fd00:50::12",
            true,
        ),
    ];
    for (what, client, vip, source, backend, gue) in cases {
        let first = if gue {
            Frame::udp(client, vip)
        } else {
            Frame::tcp(client, vip).with(|f| f.ip_id = 0x4242)
        };
        let out = encapsulated(&first, source, backend, gue);
        lab.expect_bytes(
            &format!("{what}: first packet"),
            &first.build(),
            lab.c0,
            XDP_REDIRECT,
            &out,
        );
        // The flow's next packet takes the established path, and the same tunnel.
        let next = if gue {
            first
                .clone()
                .with(|f| f.payload = b"the second datagram".to_vec())
        } else {
            ack_of(&first).with(|f| f.ip_frag = 0)
        };
        let out = encapsulated(&next, source, backend, gue);
        lab.expect_bytes(
            &format!("{what}: next packet"),
            &next.build(),
            lab.c0,
            XDP_REDIRECT,
            &out,
        );
    }
    // Every flow is one entry, with the tunnel's flags.
    let flows = lab.dataplane.maps.flows.all().unwrap();
    assert_eq!(flows.len(), 4);
    for (_, entry, _) in &flows {
        assert_ne!(entry.flags & flow_flags::DSR, 0);
        assert_ne!(entry.flags & flow_flags::TUNNEL, 0);
    }
    assert_eq!(lab.event(events::TUNNEL_FAILED), 0);
}

/// A full-size packet of each flow, which the outer header would make too big, is answered
/// with an ICMP error naming the MTU that fits; the largest packet that fits goes through.
fn a_packet_too_big_for_the_tunnel_is_answered_with_the_mtu_that_fits(lab: &mut PacketLab) {
    // Interfaces have the default MTU, 1500: a full-size packet has no room for the
    // outer header (20 bytes for IPIP over IPv4, 28 for GUE, 40 and 48 over IPv6).
    let cases = [
        (
            "IPIP",
            "198.18.0.2:40011",
            "198.18.100.7:80",
            1480,
            "198.18.1.1",
            "198.18.50.11",
        ),
        (
            "GUE",
            "198.18.0.2:40012",
            "198.18.100.7:53",
            1472,
            "198.18.1.1",
            "198.18.50.12",
        ),
        (
            "IPIP6",
            "[fd00::2]:40013",
            "[fd00:100::7]:80",
            1460,
            "fd00:1::1",
            "fd00:50::11",
        ),
        (
            "GUE6",
            "[fd00::2]:40014",
            "[fd00:100::7]:53",
            1452,
            "fd00:1::1",
            "fd00:50::12",
        ),
    ];
    for (what, client, vip, mtu, source, backend) in cases {
        let gue = what.starts_with("GUE");
        let first = if gue {
            Frame::udp(client, vip)
        } else {
            Frame::tcp(client, vip)
        };
        assert_eq!(lab.run(&first.build(), lab.c0).0, XDP_REDIRECT, "{what}");
        let next = if gue { first.clone() } else { ack_of(&first) };
        let headers = next.ip_packet().len() - next.payload.len();
        let full = next.with(|f| f.payload = vec![0x5a; 1500 - headers]);
        assert_eq!(full.ip_packet().len(), 1500, "{what}");
        lab.expect_bytes(
            &format!("{what}: full-size packet"),
            &full.build(),
            lab.c0,
            XDP_TX,
            &too_big(&full, mtu),
        );
        // One that fits goes through.
        let fits = full
            .clone()
            .with(|f| f.payload.truncate(1500 - headers - (1500 - mtu as usize)));
        let out = encapsulated(&fits, source, backend, gue);
        assert_eq!(out.len(), 1514, "{what}");
        lab.expect_bytes(
            &format!("{what}: the largest packet that fits"),
            &fits.build(),
            lab.c0,
            XDP_REDIRECT,
            &out,
        );
    }
    assert_eq!(lab.event(events::TUNNEL_TOO_BIG), 4);
}
