//! Tier 2: the balancer's programs through BPF_PROG_TEST_RUN. A crafted frame goes in; the
//! verdict and the exact frame that comes out are checked against a frame built from scratch
//! (so checksums are verified by recomputation). Needs root: run with `cargo xtask test`.
//!
//! Every test runs twice, at the XDP hook and at the tc hook: the two programs share their
//! code, and must agree on every frame. A tc verdict is reported as its XDP equivalent (a
//! redirect back out of the interface the frame came in on is `XDP_TX`), so cases state one
//! expectation.
//!
//! Each run builds the namespace of `xlb_tests::packet_net` (fixed routes and neighbours).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_common::{
    BackendTable, FlowKey,
    consts::{events, flow_flags},
    hash::flow_hash,
};
use xlb::{
    config::Config,
    control::{Balancer, DataplaneMaps as _, ServiceSpec, table_index},
    dataplane::{Dataplane, handshake_budget},
    flows::FlowTimeouts,
    netif,
    table::smooth_weighted_sequence,
    wire::{addr_field, port_field},
};
use xlb_tests::{
    packet::{
        CLIENT_MAC, Frame, IP_MF, LB_MAC, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Transport, hex_diff,
        verify_checksums,
    },
    packet_net,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn verdict_name(verdict: u32) -> &'static str {
    [
        "XDP_ABORTED",
        "XDP_DROP",
        "XDP_PASS",
        "XDP_TX",
        "XDP_REDIRECT",
    ]
    .get(verdict as usize)
    .copied()
    .unwrap_or("unknown verdict")
}

const S0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, last]
}

const CONFIG: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353" }, { address = "198.18.1.12:5353" } ]

[[service]]
name = "local"
listen = "198.18.100.2:80"
protocol = "tcp"
backends = [ { address = "198.18.0.21:8080" } ]

[[service]]
name = "unresolved"
listen = "198.18.100.3:80"
protocol = "tcp"
backends = [ { address = "198.18.1.99:8080" } ]

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

/// The hook a packet test runs the balancer at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

/// tc actions, as BPF_PROG_TEST_RUN returns them.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The program loaded with [`CONFIG`] applied, in a namespace built as the module says.
struct PacketLab {
    dataplane: Dataplane,
    balancer: Balancer,
    hook: Hook,
    c0: u32,
    s0: u32,
}

/// Builds the namespace (see `xlb_tests::packet_net`), then runs `test` inside it, once per
/// hook, each time with fresh maps: FIB lookups happen in the caller's namespace.
fn with_lab(test: impl Fn(&mut PacketLab) + Send + Sync) {
    with_lab_config(CONFIG, test);
}

/// [`with_lab`] with another config (which must name the interfaces c0 and s0).
fn with_lab_config(config: &str, test: impl Fn(&mut PacketLab) + Send + Sync) {
    for hook in [Hook::Xdp, Hook::Tc] {
        eprintln!("--- at the {hook:?} hook");
        with_lab_at(config, hook, &test);
    }
}

fn with_lab_at(config: &str, hook: Hook, test: &(impl Fn(&mut PacketLab) + Send + Sync)) {
    let ns = packet_net::build().expect("creating the namespace");
    ns.enter(|| {
        let config = Config::parse(config).expect("valid config");
        let mut dataplane = Dataplane::load(config.flow_table_size).expect("loading the program");
        let mut balancer = Balancer::new();
        balancer
            .apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)
            .expect("applying the config");
        let c0 = netif::index("c0").unwrap();
        let s0 = netif::index("s0").unwrap();
        dataplane.maps.add_egress_port(c0).unwrap();
        dataplane.maps.add_egress_port(s0).unwrap();
        let mut lab = PacketLab {
            dataplane,
            balancer,
            hook,
            c0,
            s0,
        };
        test(&mut lab);
    })
    .expect("entering the namespace");
}

impl PacketLab {
    /// Runs the program once on `frame` as if it arrived on `ifindex`; the verdict in XDP's
    /// terms (see the module documentation).
    fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        match self.hook {
            Hook::Xdp => {
                let result = packet_net::run(self.dataplane.program(), frame, ifindex, 1).unwrap();
                (result.verdict, result.frame)
            }
            Hook::Tc => {
                let result =
                    packet_net::run_tc(self.dataplane.tc_program(), frame, ifindex, 1).unwrap();
                (
                    self.xdp_verdict(result.verdict, ifindex, &result.frame),
                    result.frame,
                )
            }
        }
    }

    /// The shortest prefix of `frame` BPF_PROG_TEST_RUN takes at this hook: an Ethernet
    /// header at XDP; at tc (Linux 6.18) also the fixed IPv4 or IPv6 header, or the kernel
    /// refuses to build the skb (EINVAL). Shorter frames are tested at XDP only.
    fn shortest_frame(&self, frame: &[u8]) -> usize {
        match self.hook {
            Hook::Xdp => 14,
            Hook::Tc if frame[12..14] == [0x86, 0xdd] => 14 + 40,
            Hook::Tc => 14 + 20,
        }
    }

    /// The XDP verdict a tc verdict stands for: a redirect whose frame leaves with the source
    /// MAC of the interface it came in on went back out of it, which XDP calls `XDP_TX`.
    fn xdp_verdict(&self, tc_verdict: u32, ingress: u32, frame: &[u8]) -> u32 {
        let ingress_mac = if ingress == self.c0 { LB_MAC } else { S0_MAC };
        match tc_verdict {
            TC_ACT_UNSPEC => XDP_PASS,
            TC_ACT_SHOT => XDP_DROP,
            TC_ACT_REDIRECT if frame.get(6..12) == Some(&ingress_mac[..]) => XDP_TX,
            TC_ACT_REDIRECT => XDP_REDIRECT,
            other => 100 + other,
        }
    }

    /// Runs `input` and asserts the exact verdict and output frame.
    fn expect(&self, case: &str, input: &Frame, ifindex: u32, verdict: u32, output: &Frame) {
        self.expect_bytes(case, &input.build(), ifindex, verdict, &output.build());
    }

    fn expect_bytes(&self, case: &str, input: &[u8], ifindex: u32, verdict: u32, expected: &[u8]) {
        let (actual_verdict, actual) = self.run(input, ifindex);
        assert_eq!(
            verdict_name(actual_verdict),
            verdict_name(verdict),
            "{case} ({:?} hook): verdict",
            self.hook
        );
        assert!(
            actual == expected,
            "{case} ({:?} hook): output frame differs\n{}",
            self.hook,
            hex_diff(expected, &actual)
        );
    }

    /// Runs `input`, expects it passed to the kernel untouched.
    fn expect_untouched(&self, case: &str, input: &[u8], ifindex: u32) {
        self.expect_bytes(case, input, ifindex, XDP_PASS, input);
    }

    fn service_new_flows(&self, name: &str) -> u64 {
        let service = self
            .balancer
            .services()
            .iter()
            .find(|s| s.name == name)
            .unwrap();
        self.dataplane
            .maps
            .service_counters(service.id)
            .unwrap()
            .new_flows
    }

    fn event(&self, event: u32) -> u64 {
        self.dataplane.maps.events().unwrap()[event as usize]
    }
}

fn endpoint(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The frame `input` becomes on its way to a backend: destination rewritten, TTL decremented,
/// MACs from the FIB.
fn to_backend(input: &Frame, backend: &str, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Frame {
    input.clone().with(|f| {
        f.dst = endpoint(backend);
        f.ttl -= 1;
        f.eth_dst = dst_mac;
        f.eth_src = src_mac;
    })
}

/// The frame a backend's `input` becomes on its way to the client: source rewritten to the
/// VIP, TTL decremented, MACs from the FIB.
fn to_client(input: &Frame, vip: &str) -> Frame {
    input.clone().with(|f| {
        f.src = endpoint(vip);
        f.ttl -= 1;
        f.eth_dst = CLIENT_MAC;
        f.eth_src = LB_MAC;
    })
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn new_flows_take_backends_in_turn_and_established_flows_stay() {
    with_lab(|lab| {
        let first = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let expected = to_backend(&first, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("new flow", &first, lab.c0, XDP_REDIRECT, &expected);
        verify_checksums(&expected.build()).unwrap();

        // Five more flows continue the rotation exactly: .12 .13 .11 .12 .13.
        for (i, backend) in [12, 13, 11, 12, 13].into_iter().enumerate() {
            let input = Frame::tcp(&format!("198.18.0.2:{}", 40_001 + i), "198.18.100.1:80");
            // Backend 198.18.1.N has MAC 02:00:00:00:01:N (N written in hex).
            let mac = backend_mac(0x10 + backend - 10);
            let output = to_backend(&input, &format!("198.18.1.{backend}:8080"), mac, S0_MAC);
            lab.expect(
                &format!("new flow {}", i + 2),
                &input,
                lab.c0,
                XDP_REDIRECT,
                &output,
            );
        }

        // Later packets of the first flow stay on its backend, whatever the cursor says.
        for seq in 1..4 {
            let later = first.clone().with(|f| {
                f.transport = Transport::Tcp {
                    flags: TCP_ACK,
                    seq: 1_000 + seq,
                };
                f.payload = vec![seq as u8; 100 * seq as usize];
            });
            let output = to_backend(&later, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
            lab.expect(
                &format!("established packet {seq}"),
                &later,
                lab.c0,
                XDP_REDIRECT,
                &output,
            );
        }
        assert_eq!(lab.service_new_flows("web"), 6);
        let flows = lab.dataplane.maps.flows.all().unwrap();
        assert_eq!(flows.len(), 6, "one flow-table entry per flow");
        let half_open: Vec<u16> = flows
            .iter()
            .filter(|(_, _, half_open)| *half_open)
            .map(|(key, _, _)| u16::from_be(key.src_port))
            .collect();
        assert_eq!(
            half_open.len(),
            5,
            "flows that sent only a SYN are half-open: {half_open:?}"
        );
        assert!(
            !half_open.contains(&40_000),
            "the flow whose client answered is established"
        );
        assert_eq!(lab.event(events::FLOW_PROMOTED), 1);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn gso_super_packets_are_forwarded_whole_at_tc_and_passed_counted_at_xdp() {
    with_lab(|lab| {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        let ack = syn.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_ACK,
                seq: 1_001,
            };
            f.payload = Vec::new();
        });
        assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        // Two full segments merged: 2,896 bytes of payload, more than the 1,500-byte MTU.
        let merged = ack.clone().with(|f| f.payload = vec![0x5a; 2 * 1_448]);
        let input = merged.build();
        match lab.hook {
            Hook::Tc => {
                let result = packet_net::run_tc_gso(
                    lab.dataplane.tc_program(),
                    &input,
                    lab.c0,
                    1,
                    Some((2, 1_448)),
                )
                .unwrap();
                let expected = to_backend(&merged, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
                assert_eq!(
                    lab.xdp_verdict(result.verdict, lab.c0, &result.frame),
                    XDP_REDIRECT,
                    "the super-packet is forwarded whole; the kernel segments it"
                );
                assert!(
                    result.frame == expected.build(),
                    "{}",
                    hex_diff(&expected.build(), &result.frame)
                );
                assert_eq!(lab.event(events::OVERSIZED_PASSED), 0);
            }
            Hook::Xdp => {
                // Generic XDP would see this frame; it cannot update a partial checksum or
                // redirect the frame, so it hands it to the kernel untouched, and counts it.
                lab.expect_untouched("super-packet at XDP", &input, lab.c0);
                assert_eq!(lab.event(events::OVERSIZED_PASSED), 1);
                // A full-size frame is still balanced.
                let full = ack.clone().with(|f| f.payload = vec![0x5a; 1_448]);
                let expected = to_backend(&full, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
                lab.expect(
                    "full-size frame at XDP",
                    &full,
                    lab.c0,
                    XDP_REDIRECT,
                    &expected,
                );
            }
        }
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn replies_are_translated_back_to_the_vip() {
    with_lab(|lab| {
        let request = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let (verdict, _) = lab.run(&request.build(), lab.c0);
        assert_eq!(verdict, XDP_REDIRECT);

        let reply = Frame::tcp("198.18.1.11:8080", "198.18.0.2:40000").with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_ACK | 0x02,
                seq: 77,
            };
            f.eth_dst = S0_MAC;
            f.eth_src = backend_mac(0x11);
        });
        let expected = to_client(&reply, "198.18.100.1:80");
        lab.expect("reply", &reply, lab.s0, XDP_REDIRECT, &expected);

        // A backend packet to the client that belongs to no flow is not ours.
        let stray = reply.clone().with(|f| f.dst = endpoint("198.18.0.2:40999"));
        lab.expect_untouched("reply of an unknown flow", &stray.build(), lab.s0);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn udp_flows_are_balanced_and_a_zero_checksum_stays_zero() {
    with_lab(|lab| {
        let first = Frame::udp("198.18.0.2:5000", "198.18.100.1:53");
        let output = to_backend(&first, "198.18.1.11:5353", backend_mac(0x11), S0_MAC);
        lab.expect("udp new flow", &first, lab.c0, XDP_REDIRECT, &output);

        let unchecked = Frame::udp("198.18.0.2:5001", "198.18.100.1:53").with(|f| {
            f.transport = Transport::Udp {
                zero_checksum: true,
            }
        });
        let output = to_backend(&unchecked, "198.18.1.12:5353", backend_mac(0x12), S0_MAC);
        let built = output.build();
        assert_eq!(
            &built[40..42],
            &[0, 0],
            "the expected frame keeps a zero checksum"
        );
        lab.expect(
            "udp without checksum",
            &unchecked,
            lab.c0,
            XDP_REDIRECT,
            &output,
        );

        // Ethernet padding after the IP packet is carried along untouched.
        let mut padded = Frame::udp("198.18.0.2:5002", "198.18.100.1:53").build();
        padded.extend_from_slice(&[0xee; 10]);
        let mut expected = to_backend(
            &Frame::udp("198.18.0.2:5002", "198.18.100.1:53"),
            "198.18.1.11:5353",
            backend_mac(0x11),
            S0_MAC,
        )
        .build();
        expected.extend_from_slice(&[0xee; 10]);
        lab.expect_bytes("padded frame", &padded, lab.c0, XDP_REDIRECT, &expected);
        assert_eq!(lab.service_new_flows("dns"), 3);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn forwarding_follows_the_fib() {
    with_lab(|lab| {
        // The backend is behind the interface the packet came in on: XDP_TX.
        let input = Frame::tcp("198.18.0.2:40000", "198.18.100.2:80");
        let output = to_backend(&input, "198.18.0.21:8080", [0x02, 0, 0, 0, 0, 0x21], LB_MAC);
        lab.expect(
            "backend on the ingress interface",
            &input,
            lab.c0,
            XDP_TX,
            &output,
        );

        // No neighbour entry for the backend yet: the rewritten packet goes to the kernel,
        // which resolves the neighbour and forwards it (so TTL and MACs are left to it).
        let input = Frame::tcp("198.18.0.2:40000", "198.18.100.3:80");
        let output = input.clone().with(|f| f.dst = endpoint("198.18.1.99:8080"));
        lab.expect(
            "backend without a neighbour entry",
            &input,
            lab.c0,
            XDP_PASS,
            &output,
        );
        assert_eq!(lab.event(events::FIB_NO_NEIGHBOUR), 1);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn ip_options_are_honoured() {
    with_lab(|lab| {
        let input = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80")
            .with(|f| f.ip_options = vec![0x01, 0x01, 0x01, 0x00]);
        let output = to_backend(&input, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect(
            "IPv4 header with options",
            &input,
            lab.c0,
            XDP_REDIRECT,
            &output,
        );
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    with_lab(|lab| {
        let cases = [
            (
                "other port",
                Frame::tcp("198.18.0.2:40000", "198.18.100.1:81"),
            ),
            (
                "other address",
                Frame::tcp("198.18.0.2:40000", "198.18.100.9:80"),
            ),
            (
                "udp to a tcp service",
                Frame::udp("198.18.0.2:40000", "198.18.100.1:80"),
            ),
            (
                "tcp to a udp service",
                Frame::tcp("198.18.0.2:40000", "198.18.100.1:53"),
            ),
            (
                "to the balancer itself",
                Frame::tcp("198.18.0.2:40000", "198.18.0.1:22"),
            ),
        ];
        for (case, frame) in cases {
            lab.expect_untouched(case, &frame.build(), lab.c0);
        }
        let arp = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80")
            .with(|f| f.ether_type_override = Some(0x0806));
        lab.expect_untouched("ARP", &arp.build(), lab.c0);
        let vlan = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80").with(|f| f.vlan = Some(100));
        lab.expect_untouched("VLAN-tagged", &vlan.build(), lab.c0);
        let vlan6 = Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80").with(|f| f.vlan = Some(100));
        lab.expect_untouched("VLAN-tagged IPv6", &vlan6.build(), lab.c0);
        assert_eq!(lab.event(events::VLAN), 2);
        assert_eq!(lab.service_new_flows("web"), 0);
        assert_eq!(lab.service_new_flows("web6"), 0);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn malformed_packets_are_never_rewritten() {
    with_lab(|lab| {
        let valid = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let bytes = valid.build();
        // Every truncation (BPF_PROG_TEST_RUN needs at least an Ethernet header at XDP, and a
        // byte more at tc).
        for len in lab.shortest_frame(&bytes)..bytes.len() {
            lab.expect_untouched(&format!("truncated to {len} bytes"), &bytes[..len], lab.c0);
        }
        let udp = Frame::udp("198.18.0.2:5000", "198.18.100.1:53").build();
        for len in lab.shortest_frame(&udp)..udp.len() {
            lab.expect_untouched(
                &format!("UDP truncated to {len} bytes"),
                &udp[..len],
                lab.c0,
            );
        }

        let cases = [
            (
                "IHL below 5",
                valid.clone().with(|f| f.ihl_override = Some(4)),
            ),
            (
                "IHL beyond the packet",
                valid.clone().with(|f| f.ihl_override = Some(15)),
            ),
            (
                "version 6 in an IPv4 frame",
                valid.clone().with(|f| f.version = Some(6)),
            ),
            (
                "total length beyond the frame",
                valid
                    .clone()
                    .with(|f| f.total_length_override = Some(1_400)),
            ),
            (
                "total length shorter than the headers",
                valid.clone().with(|f| f.total_length_override = Some(30)),
            ),
            (
                "TCP data offset below 5",
                valid.clone().with(|f| f.tcp_doff_override = Some(4)),
            ),
            (
                "TCP data offset beyond the segment",
                valid.clone().with(|f| f.tcp_doff_override = Some(15)),
            ),
            ("TTL 1", valid.clone().with(|f| f.ttl = 1)),
            ("TTL 0", valid.clone().with(|f| f.ttl = 0)),
            ("first fragment", valid.clone().with(|f| f.ip_frag = IP_MF)),
            ("later fragment", valid.clone().with(|f| f.ip_frag = 185)),
        ];
        for (case, frame) in cases {
            lab.expect_untouched(case, &frame.build(), lab.c0);
        }
        // A UDP length field longer than the IP payload.
        let mut bad_udp = Frame::udp("198.18.0.2:5000", "198.18.100.1:53").build();
        bad_udp[38..40].copy_from_slice(&500u16.to_be_bytes());
        lab.expect_untouched("UDP length beyond the packet", &bad_udp, lab.c0);

        assert_eq!(
            lab.service_new_flows("web"),
            0,
            "no malformed packet created a flow"
        );
        assert_eq!(lab.service_new_flows("dns"), 0);
        assert!(lab.dataplane.maps.flows.all().unwrap().is_empty());
        assert_eq!(lab.event(events::TTL_EXPIRED), 2);
        assert_eq!(lab.event(events::FRAGMENT), 2);
        assert!(
            lab.event(events::MALFORMED) >= 7,
            "malformed: {}",
            lab.event(events::MALFORMED)
        );
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn an_empty_table_drops_new_flows_but_keeps_established_ones() {
    with_lab(|lab| {
        let established = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let output = to_backend(&established, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("before", &established, lab.c0, XDP_REDIRECT, &output);

        let web = lab
            .balancer
            .services()
            .iter()
            .find(|s| s.name == "web")
            .unwrap()
            .id;
        lab.dataplane
            .maps
            .publish_table(table_index(web, 0), &BackendTable::EMPTY)
            .unwrap();

        let new = Frame::tcp("198.18.0.2:40001", "198.18.100.1:80");
        let (verdict, _) = lab.run(&new.build(), lab.c0);
        assert_eq!(
            verdict_name(verdict),
            verdict_name(XDP_DROP),
            "a new flow with no backend"
        );
        assert_eq!(
            lab.dataplane.maps.service_counters(web).unwrap().no_backend,
            1
        );
        assert_eq!(lab.event(events::NO_BACKEND), 1);

        lab.expect(
            "established flow after the swap",
            &established,
            lab.c0,
            XDP_REDIRECT,
            &output,
        );
    });
}

/// Publisher threads swap the table thousands of times while this thread runs new flows
/// through the program (each swap returns only after an RCU grace period, about 15 ms here, so
/// four threads publish at once to get through a thousand swaps in a few seconds). Table A is one slot of backend .12; table B is 2,048 slots of backend .13.
/// A packet that saw a mix (B's length with A's slots, whose unused slots are zero) would be
/// sent to backend id 0, .11, which is in neither table; one that saw a length of zero would
/// be dropped. Neither may happen.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn table_swaps_are_atomic_under_concurrent_traffic() {
    with_lab(|lab| {
        let web = lab
            .balancer
            .services()
            .iter()
            .find(|s| s.name == "web")
            .unwrap();
        let id_of = |address: &str| {
            web.backends
                .iter()
                .find(|b| b.address.to_string() == address)
                .unwrap()
                .id
        };
        let (b11, b12, b13) = (
            id_of("198.18.1.11:8080"),
            id_of("198.18.1.12:8080"),
            id_of("198.18.1.13:8080"),
        );
        assert_eq!(b11, 0, "the outsider must be the id that empty slots hold");
        let index = table_index(web.id, 0);
        let table_a = xlb::table::backend_table(&[b12], 1);
        let table_b =
            xlb::table::backend_table(&[b13; lb_common::consts::limits::MAX_TABLE_SLOTS], 2);
        let mut publisher = lab.dataplane.maps.table_publisher().unwrap();
        publisher.publish(index, &table_a).unwrap();

        const PUBLISHERS: usize = 4;
        const SWAPS_EACH: usize = 300;
        let mut publishers: Vec<_> = (0..PUBLISHERS)
            .map(|_| lab.dataplane.maps.table_publisher().unwrap())
            .collect();
        let running = std::sync::atomic::AtomicUsize::new(PUBLISHERS);
        let (mut seen_12, mut seen_13, mut packets) = (0usize, 0usize, 0usize);
        std::thread::scope(|scope| {
            for publisher in &mut publishers {
                let (table_a, table_b, running) = (&table_a, &table_b, &running);
                scope.spawn(move || {
                    for swap in 0..SWAPS_EACH {
                        let table = if swap % 2 == 0 { table_b } else { table_a };
                        publisher.publish(index, table).unwrap();
                    }
                    running.fetch_sub(1, std::sync::atomic::Ordering::Release);
                });
            }
            let mut port = 1024u16;
            while running.load(std::sync::atomic::Ordering::Acquire) > 0 {
                port = port.wrapping_add(1).max(1024);
                let client = 2 + (packets / 60_000) % 200;
                let input = Frame::tcp(&format!("198.18.0.{client}:{port}"), "198.18.100.1:80");
                let (verdict, output) = lab.run(&input.build(), lab.c0);
                assert_eq!(
                    verdict_name(verdict),
                    verdict_name(XDP_REDIRECT),
                    "packet {packets}"
                );
                match &output[30..34] {
                    [198, 18, 1, 12] => seen_12 += 1,
                    [198, 18, 1, 13] => seen_13 += 1,
                    other => panic!("packet {packets} went to {other:?}, in neither table"),
                }
                packets += 1;
            }
        });
        assert!(
            packets >= 1_000,
            "only {packets} packets ran during the swaps"
        );
        assert!(
            seen_12 > 0 && seen_13 > 0,
            "both tables were seen: {seen_12} / {seen_13}"
        );
        assert_eq!(lab.event(events::NO_BACKEND), 0);
        let swaps = PUBLISHERS * SWAPS_EACH;
        eprintln!(
            "{packets} new flows during {swaps} swaps: {seen_12} to table A, {seen_13} to table B"
        );
    });
}

/// Active flows per backend, as the monitor counts them for `max_flows`: established flows
/// stamped by the program within the window.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn active_flows_are_counted_per_backend() {
    with_lab(|lab| {
        for port in 0..7u16 {
            let syn = Frame::tcp(&format!("198.18.0.2:{}", 30_000 + port), "198.18.100.1:80");
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
            let ack = ack_of(&syn);
            assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        }
        // One more that never completes its handshake: half-open, not active.
        let syn = Frame::tcp("198.18.0.2:31000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);

        let ids = lab.backend_ids("web");
        let report = lab
            .dataplane
            .maps
            .sweep_flows(&FlowTimeouts::default(), Duration::from_secs(10))
            .unwrap();
        let per_backend: Vec<u64> = ids
            .iter()
            .map(|id| report.active.get(id).copied().unwrap_or(0))
            .collect();
        assert_eq!(per_backend, [3, 2, 2]);
        assert_eq!((report.established, report.half_open), (7, 1));
        // A window that ended before the flows began counts none of them.
        std::thread::sleep(Duration::from_millis(20));
        let none = lab
            .dataplane
            .maps
            .sweep_flows(&FlowTimeouts::default(), Duration::from_millis(10))
            .unwrap();
        assert!(none.active.is_empty(), "{:?}", none.active);
        assert_eq!(none.expired, 0);
    });
}

/// The client's ACK that follows `syn`.
fn ack_of(syn: &Frame) -> Frame {
    syn.clone().with(|f| {
        f.transport = Transport::Tcp {
            flags: TCP_ACK,
            seq: 1_001,
        }
    })
}

impl PacketLab {
    fn backend_ids(&self, service: &str) -> Vec<u32> {
        self.balancer
            .services()
            .iter()
            .find(|s| s.name == service)
            .unwrap()
            .backends
            .iter()
            .map(|b| b.id)
            .collect()
    }
}

fn flow_key(client: &str, vip: &str, protocol: u8) -> FlowKey {
    let (client, vip) = (endpoint(client), endpoint(vip));
    FlowKey {
        src_addr: addr_field(client.ip()),
        dst_addr: addr_field(vip.ip()),
        src_port: port_field(client.port()),
        dst_port: port_field(vip.port()),
        proto: protocol,
        family: if client.is_ipv4() { 4 } else { 6 },
        _pad: [0; 2],
    }
}

/// A FIN or RST marks both directions of a flow closing; the sweep deletes each kind of flow
/// after its own timeout.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn flows_expire_by_their_timeouts_and_fin_or_rst_shortens_them() {
    with_lab(|lab| {
        let open = |port: u16| {
            let syn = Frame::tcp(&format!("198.18.0.2:{port}"), "198.18.100.1:80");
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
            assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);
            syn
        };
        let kept = open(41_000);
        let finished = open(41_001);
        let reset = open(41_002);
        let fin = ack_of(&finished).with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_FIN | TCP_ACK,
                seq: 1_001,
            }
        });
        assert_eq!(lab.run(&fin.build(), lab.c0).0, XDP_REDIRECT);
        // The RST comes from the backend: the reply direction marks the flow too.
        let rst = Frame::tcp("198.18.1.13:8080", "198.18.0.2:41002").with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_RST,
                seq: 5,
            };
            f.eth_dst = S0_MAC;
        });
        assert_eq!(lab.run(&rst.build(), lab.s0).0, XDP_REDIRECT);
        let udp = Frame::udp("198.18.0.2:41003", "198.18.100.1:53");
        assert_eq!(lab.run(&udp.build(), lab.c0).0, XDP_REDIRECT);

        for (name, frame, closing) in [
            ("kept", &kept, false),
            ("finished", &finished, true),
            ("reset", &reset, true),
        ] {
            let key = flow_key(&frame.src.to_string(), "198.18.100.1:80", 6);
            let entry = lab.dataplane.maps.flow(&key).expect(name);
            assert_eq!(
                entry.flags & flow_flags::CLOSING != 0,
                closing,
                "{name}: client-to-backend entry"
            );
        }
        let reply_key = |port: u16, backend: &str| FlowKey {
            src_addr: addr_field(endpoint(backend).ip()),
            dst_addr: addr_field("198.18.0.2".parse().unwrap()),
            src_port: port_field(8080),
            dst_port: port_field(port),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let finished_reply = lab
            .dataplane
            .maps
            .flow(&reply_key(41_001, "198.18.1.12:8080"))
            .expect("the reply entry of the finished flow");
        assert_ne!(
            finished_reply.flags & flow_flags::CLOSING,
            0,
            "the FIN marked the other direction too"
        );

        // Closing flows and idle UDP flows expire after their short timeouts; the open TCP
        // flow stays until its long one.
        std::thread::sleep(Duration::from_millis(100));
        let timeouts = FlowTimeouts {
            tcp_idle: Duration::from_secs(3_600),
            tcp_closing: Duration::from_millis(50),
            udp_idle: Duration::from_millis(50),
        };
        let report = lab
            .dataplane
            .maps
            .sweep_flows(&timeouts, Duration::from_secs(10))
            .unwrap();
        assert_eq!(report.expired, 3, "{report:?}");
        assert_eq!(report.established, 1);
        let left = lab.dataplane.maps.flows.all().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(u16::from_be(left[0].0.src_port), 41_000);
        assert!(
            lab.dataplane
                .maps
                .flow(&reply_key(41_001, "198.18.1.12:8080"))
                .is_none(),
            "both directions of an expired flow are gone"
        );
        // A TCP idle timeout shorter than the silence expires the last one too.
        let report = lab
            .dataplane
            .maps
            .sweep_flows(
                &FlowTimeouts {
                    tcp_idle: Duration::from_millis(50),
                    ..timeouts
                },
                Duration::from_secs(10),
            )
            .unwrap();
        assert_eq!((report.expired, report.established), (1, 0));
    });
}

/// The IPv6 twin of a frame's expected output: as [`to_backend`], for IPv6 endpoints.
fn to_backend6(input: &Frame, backend: &str, dst_mac: [u8; 6]) -> Frame {
    to_backend(input, backend, dst_mac, S0_MAC)
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn ipv6_flows_are_balanced_translated_and_forwarded() {
    with_lab(|lab| {
        // TCP: two flows take the two backends in turn; the reply returns from the VIP.
        let first = Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80");
        let expected = to_backend6(&first, "[fd00:1::11]:8080", backend_mac(0x11));
        lab.expect("IPv6 new flow", &first, lab.c0, XDP_REDIRECT, &expected);
        verify_checksums(&expected.build()).unwrap();
        let second = Frame::tcp("[fd00::2]:40001", "[fd00:100::1]:80");
        let expected = to_backend6(&second, "[fd00:1::12]:8080", backend_mac(0x12));
        lab.expect("IPv6 second flow", &second, lab.c0, XDP_REDIRECT, &expected);
        let later = ack_of(&first).with(|f| f.payload = vec![9; 300]);
        let expected = to_backend6(&later, "[fd00:1::11]:8080", backend_mac(0x11));
        lab.expect("IPv6 established", &later, lab.c0, XDP_REDIRECT, &expected);

        let reply = Frame::tcp("[fd00:1::11]:8080", "[fd00::2]:40000").with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_ACK,
                seq: 77,
            };
            f.eth_dst = S0_MAC;
            f.eth_src = backend_mac(0x11);
        });
        let expected = to_client(&reply, "[fd00:100::1]:80");
        lab.expect("IPv6 reply", &reply, lab.s0, XDP_REDIRECT, &expected);

        // UDP.
        let datagram = Frame::udp("[fd00::2]:5000", "[fd00:100::1]:53");
        let expected = to_backend6(&datagram, "[fd00:1::13]:5353", backend_mac(0x13));
        lab.expect("IPv6 UDP", &datagram, lab.c0, XDP_REDIRECT, &expected);

        // Hop-by-hop and destination options are skipped, and carried along untouched.
        let options = Frame::tcp("[fd00::2]:40002", "[fd00:100::1]:80").with(|f| {
            let mut padding = vec![1, 12];
            padding.extend_from_slice(&[0; 12]);
            f.ipv6_extensions = vec![(0, vec![1, 4, 0, 0, 0, 0]), (60, padding)];
        });
        let expected = to_backend6(&options, "[fd00:1::11]:8080", backend_mac(0x11));
        lab.expect(
            "IPv6 with options",
            &options,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        verify_checksums(
            &to_backend6(
                &Frame::tcp("[fd00::2]:40002", "[fd00:100::1]:80"),
                "[fd00:1::11]:8080",
                backend_mac(0x11),
            )
            .build(),
        )
        .unwrap();

        // Headers xlb does not skip, and malformed packets, pass untouched.
        let base = Frame::tcp("[fd00::2]:40003", "[fd00:100::1]:80");
        let routing = base
            .clone()
            .with(|f| f.ipv6_extensions = vec![(43, vec![0, 0])]);
        lab.expect_untouched("routing header", &routing.build(), lab.c0);
        let fragment = base
            .clone()
            .with(|f| f.ipv6_extensions = vec![(44, vec![0, 1, 0, 0, 0, 1])]);
        lab.expect_untouched("fragment header", &fragment.build(), lab.c0);
        let many = base.clone().with(|f| {
            f.ipv6_extensions = (0..5).map(|_| (60, vec![1, 4, 0, 0, 0, 0])).collect();
        });
        lab.expect_untouched("five option headers", &many.build(), lab.c0);
        let unchecked = Frame::udp("[fd00::2]:5001", "[fd00:100::1]:53").with(|f| {
            f.transport = Transport::Udp {
                zero_checksum: true,
            }
        });
        lab.expect_untouched("IPv6 UDP without checksum", &unchecked.build(), lab.c0);
        let bytes = base.build();
        for len in lab.shortest_frame(&bytes)..bytes.len() {
            lab.expect_untouched(&format!("IPv6 truncated to {len}"), &bytes[..len], lab.c0);
        }
        let hop_limit = base.clone().with(|f| f.ttl = 1);
        lab.expect_untouched("hop limit 1", &hop_limit.build(), lab.c0);

        assert_eq!(lab.service_new_flows("web6"), 3);
        assert_eq!(lab.service_new_flows("dns6"), 1);
        assert_eq!(lab.event(events::IPV6_EXTENSION), 2);
        assert_eq!(lab.event(events::FRAGMENT), 1);
    });
}

/// ICMP echo requests to a VIP are answered by xlb; to other addresses, passed.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn echo_requests_to_a_vip_are_answered() {
    with_lab(|lab| {
        let body = b"ping payload 0123456789".to_vec();
        for (vip, client, request, reply) in [
            ("198.18.100.1", "198.18.0.2", 8, 0),
            ("fd00:100::1", "fd00::2", 128, 129),
        ] {
            let ping = Frame::icmp(client, vip, request, body.clone()).with(|f| {
                f.transport = Transport::Icmp {
                    kind: request,
                    code: 0,
                    rest: [0x12, 0x34, 0, 7],
                };
                f.ttl = 60;
            });
            let pong = Frame::icmp(vip, client, reply, body.clone()).with(|f| {
                f.transport = Transport::Icmp {
                    kind: reply,
                    code: 0,
                    rest: [0x12, 0x34, 0, 7],
                };
                f.eth_dst = CLIENT_MAC;
                f.eth_src = LB_MAC;
            });
            lab.expect(&format!("echo to {vip}"), &ping, lab.c0, XDP_TX, &pong);
            verify_checksums(&pong.build()).unwrap();
        }
        let elsewhere = Frame::icmp("198.18.0.2", "198.18.100.9", 8, body.clone());
        lab.expect_untouched("echo to another address", &elsewhere.build(), lab.c0);
        let reply = Frame::icmp("198.18.0.2", "198.18.100.1", 0, body);
        lab.expect_untouched("echo reply to a VIP", &reply.build(), lab.c0);
        assert_eq!(lab.event(events::ICMP_ECHO_ANSWERED), 2);
    });
}

/// An ICMP error quoting `quoted` (its first `len` bytes, or all of it), from `router` to `to`.
fn icmp_error(
    router: &str,
    to: &str,
    kind: u8,
    code: u8,
    quoted: &Frame,
    len: Option<usize>,
) -> Frame {
    let mut quote = quoted.ip_packet();
    if let Some(len) = len {
        quote.truncate(len);
    }
    Frame::icmp(router, to, kind, quote).with(|f| {
        f.transport = Transport::Icmp {
            kind,
            code,
            rest: [0, 0, 0x05, 0x00],
        }
    })
}

/// ICMP errors about a balanced flow are translated like the flow and reach its other end:
/// the client-side network's report about a reply goes to the backend, the backend-side
/// network's report about a request goes to the client.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn icmp_errors_about_a_flow_reach_its_other_end() {
    with_lab(|lab| {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);

        // "Fragmentation needed" from a router on the client's side, about a reply xlb sent
        // from the VIP: it goes to the backend, quoting the reply as the backend sent it.
        // Once with the whole reply quoted, once with only the 8 bytes RFC 792 promises
        // (then the quoted TCP checksum is not there to update).
        let reply_sent = Frame::tcp("198.18.100.1:80", "198.18.0.2:40000").with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_ACK,
                seq: 9,
            };
            f.payload = vec![0xab; 200];
        });
        let reply_original = reply_sent
            .clone()
            .with(|f| f.src = endpoint("198.18.1.11:8080"));
        for len in [None, Some(28)] {
            let error = icmp_error("198.18.0.254", "198.18.100.1", 3, 4, &reply_sent, len);
            let mut original_quote = reply_original.ip_packet();
            if let Some(len) = len {
                original_quote.truncate(len);
                // The quoted TCP checksum is beyond the quote; the IP header's is updated.
            }
            let expected =
                Frame::icmp("198.18.0.254", "198.18.1.11", 3, original_quote).with(|f| {
                    f.transport = Transport::Icmp {
                        kind: 3,
                        code: 4,
                        rest: [0, 0, 0x05, 0x00],
                    };
                    f.ttl -= 1;
                    f.eth_dst = backend_mac(0x11);
                    f.eth_src = S0_MAC;
                });
            lab.expect(
                &format!("frag needed toward the backend, quote {len:?}"),
                &error,
                lab.c0,
                XDP_REDIRECT,
                &expected,
            );
        }

        // "Time exceeded" from a router on the backends' side, about a request xlb sent to
        // the backend: it goes to the client, quoting the request as the client sent it.
        let request_sent = ack_of(&syn).with(|f| f.dst = endpoint("198.18.1.11:8080"));
        let error =
            icmp_error("198.18.1.254", "198.18.0.2", 11, 0, &request_sent, None).with(|f| {
                f.eth_dst = S0_MAC;
                f.eth_src = backend_mac(0x02);
            });
        let expected =
            icmp_error("198.18.1.254", "198.18.0.2", 11, 0, &ack_of(&syn), None).with(|f| {
                f.ttl -= 1;
                f.eth_dst = CLIENT_MAC;
                f.eth_src = LB_MAC;
            });
        lab.expect(
            "time exceeded toward the client",
            &error,
            lab.s0,
            XDP_REDIRECT,
            &expected,
        );

        // The backend itself reports (port unreachable for a UDP datagram): it reports as
        // the VIP.
        let datagram = Frame::udp("198.18.0.2:5000", "198.18.100.1:53");
        assert_eq!(lab.run(&datagram.build(), lab.c0).0, XDP_REDIRECT);
        let datagram_sent = datagram
            .clone()
            .with(|f| f.dst = endpoint("198.18.1.11:5353"));
        let error = icmp_error("198.18.1.11", "198.18.0.2", 3, 3, &datagram_sent, None).with(|f| {
            f.eth_dst = S0_MAC;
            f.eth_src = backend_mac(0x11);
        });
        let expected = icmp_error("198.18.100.1", "198.18.0.2", 3, 3, &datagram, None).with(|f| {
            f.ttl -= 1;
            f.eth_dst = CLIENT_MAC;
            f.eth_src = LB_MAC;
        });
        lab.expect(
            "port unreachable from the backend",
            &error,
            lab.s0,
            XDP_REDIRECT,
            &expected,
        );

        // IPv6: "packet too big" about a reply, toward the backend.
        let syn6 = Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80");
        assert_eq!(lab.run(&syn6.build(), lab.c0).0, XDP_REDIRECT);
        let reply6 = Frame::tcp("[fd00:100::1]:80", "[fd00::2]:40000").with(|f| {
            f.transport = Transport::Tcp {
                flags: TCP_ACK | 0x02,
                seq: 3,
            }
        });
        let reply6_original = reply6
            .clone()
            .with(|f| f.src = endpoint("[fd00:1::11]:8080"));
        let error = icmp_error("fd00::fe", "fd00:100::1", 2, 0, &reply6, None);
        let expected =
            icmp_error("fd00::fe", "fd00:1::11", 2, 0, &reply6_original, None).with(|f| {
                f.ttl -= 1;
                f.eth_dst = backend_mac(0x11);
                f.eth_src = S0_MAC;
            });
        lab.expect(
            "packet too big toward the backend",
            &error,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        verify_checksums(&expected.build()).unwrap();

        // Errors about no known flow, and other ICMP messages, pass untouched.
        let stranger = Frame::tcp("198.18.100.1:80", "198.18.0.2:40999");
        let error = icmp_error("198.18.0.254", "198.18.100.1", 3, 4, &stranger, None);
        lab.expect_untouched("error about an unknown flow", &error.build(), lab.c0);
        let redirect = icmp_error("198.18.0.254", "198.18.100.1", 5, 0, &reply_sent, None);
        lab.expect_untouched("redirect", &redirect.build(), lab.c0);
        let short = icmp_error("198.18.0.254", "198.18.100.1", 3, 4, &reply_sent, Some(24));
        lab.expect_untouched("quote without ports", &short.build(), lab.c0);
        assert_eq!(lab.event(events::ICMP_ERROR_TRANSLATED), 5);
    });
}

/// A flood of SYNs from spoofed sources fills only the half-open table: an established flow,
/// even an idle one, keeps its entry and its backend.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_syn_flood_cannot_evict_established_flows() {
    let config = CONFIG.replace(
        "interfaces = [\"c0\", \"s0\"]",
        "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
    );
    with_lab_config(&config, |lab| {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        let ack = ack_of(&syn);
        let expected = to_backend(&ack, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("established", &ack, lab.c0, XDP_REDIRECT, &expected);

        const FLOOD: usize = 20_000;
        let mut state = 0x2545_f491_u32;
        for _ in 0..FLOOD {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [a, b, c, d] = state.to_be_bytes();
            let spoofed = Frame::tcp(
                &format!(
                    "198.19.{a}.{b}:{}",
                    1024 + u16::from_be_bytes([c, d]) % 60_000
                ),
                "198.18.100.1:80",
            );
            assert_eq!(lab.run(&spoofed.build(), lab.c0).0, XDP_REDIRECT);
        }
        let report = lab
            .dataplane
            .maps
            .sweep_flows(&FlowTimeouts::default(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(report.established, 1, "{report:?}");
        assert!(
            report.half_open <= 1024 / 4,
            "the half-open table holds {} flows",
            report.half_open
        );
        lab.expect(
            "established after the flood",
            &ack,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        assert_eq!(lab.service_new_flows("web"), 1 + FLOOD as u64);
    });
}

/// Under a SYN flood (more new TCP flows per window than the half-open table can keep for
/// two seconds), SYNs are placed by a seeded hash of their 5-tuple over the same table, so a
/// handshake whose half-open entry was evicted still completes: the client's ACK finds no
/// entry and is placed by the same hash; a handshake that lost only its reply entry gets it
/// rebuilt when it completes. The window after one over budget hashes from its first SYN. A client packet without any entry is always placed by hash; once the flood
/// stops, SYNs take turns again.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn under_a_syn_flood_an_evicted_handshake_still_reaches_its_backend() {
    const VIP: &str = "198.18.100.1:80";
    let config = CONFIG.replace(
        "interfaces = [\"c0\", \"s0\"]",
        "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
    );
    with_lab_config(&config, |lab| {
        let guard = lab.dataplane.maps.handshake_guard().unwrap();
        assert_eq!(guard.budget, handshake_budget(1024));
        let ids = lab.backend_ids("web");
        let weights: Vec<(u32, u32)> = ids.iter().map(|&id| (id, 1)).collect();
        let sequence = smooth_weighted_sequence(&weights);
        // The backend a flow from `client` hashes to: its address and MAC (the config's
        // backends are 198.18.1.11 to .13, with MACs 02:00:00:00:01:11 to :13).
        let hashed = |client: &str| {
            let key = flow_key(client, VIP, 6);
            let id = sequence[flow_hash(&key, guard.seed) as usize % sequence.len()];
            let index = ids.iter().position(|&b| b == id).unwrap() as u8;
            (
                format!("198.18.1.{}:8080", 11 + index),
                backend_mac(0x11 + index),
            )
        };
        // Asserts that `syn` from `client` came out as `output`, sent to its hash's backend.
        let assert_hashed = |case: &str, client: &str, syn: &Frame, output: &[u8]| {
            let (backend, mac) = hashed(client);
            let expected = to_backend(syn, &backend, mac, S0_MAC).build();
            assert!(
                output == expected,
                "{case}\n{}",
                hex_diff(&expected, output)
            );
        };
        // One more SYN of the flood, from the next spoofed source.
        let spoof = |lab: &PacketLab, spoofed: &mut u32| {
            *spoofed += 1;
            let [_, _, a, b] = spoofed.to_be_bytes();
            let syn = Frame::tcp(&format!("198.19.{a}.{b}:1024"), VIP);
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        };

        let orphan = ack_of(&Frame::tcp("198.18.0.2:41000", VIP));
        let (backend, mac) = hashed("198.18.0.2:41000");
        let expected = to_backend(&orphan, &backend, mac, S0_MAC);
        lab.expect(
            "an ACK without a flow",
            &orphan,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        assert_eq!(lab.event(events::MIDSTREAM_HASHED), 1);
        assert_eq!(lab.event(events::SYN_HASHED), 0);

        // Flood until a legitimate SYN lands in a window that is over budget (one round
        // normally; more if the machine stalled past a window in between).
        let mut spoofed = 0u32;
        let mut hashed_syn = None;
        for round in 0..100u16 {
            for _ in 0..2 * guard.budget {
                spoof(lab, &mut spoofed);
            }
            let client = format!("198.18.0.2:{}", 42_000 + round);
            let syn = Frame::tcp(&client, VIP);
            let before = lab.event(events::SYN_HASHED);
            let (verdict, output) = lab.run(&syn.build(), lab.c0);
            assert_eq!(verdict_name(verdict), "XDP_REDIRECT");
            if lab.event(events::SYN_HASHED) == before + 1 {
                hashed_syn = Some((client, syn, output));
                break;
            }
        }
        let (client, syn, output) = hashed_syn.expect("no SYN was placed by hash in 100 rounds");
        assert_hashed("hashed SYN", &client, &syn, &output);
        let (backend, mac) = hashed(&client);

        // The flood evicts the handshake's half-open entries before the client's ACK.
        let key = flow_key(&client, VIP, 6);
        lab.dataplane.maps.flows.remove(&key, endpoint(&backend));
        assert!(lab.dataplane.maps.flow(&key).is_none());
        let ack = ack_of(&syn);
        let expected = to_backend(&ack, &backend, mac, S0_MAC);
        lab.expect("ACK after eviction", &ack, lab.c0, XDP_REDIRECT, &expected);
        assert_eq!(lab.event(events::MIDSTREAM_HASHED), 2);

        // A handshake that lost only its half-open reply entry: a retransmitted SYN puts it
        // back, so the backend's SYN-ACK is translated; and if it is lost again, the ACK moves
        // the flow to `FLOWS` with the reply entry rebuilt, so the answers are translated.
        let client = "198.18.0.2:45000";
        let syn = Frame::tcp(client, VIP);
        let (verdict, output) = lab.run(&syn.build(), lab.c0);
        assert_eq!(verdict_name(verdict), "XDP_REDIRECT");
        let backend_ip = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&output[30..34]).unwrap());
        let backend = format!("{backend_ip}:8080");
        let from_backend = |flags: u8| {
            Frame::tcp(&backend, client).with(|f| {
                f.transport = Transport::Tcp { flags, seq: 500 };
                f.eth_dst = S0_MAC;
                f.eth_src = backend_mac(0x11 + backend_ip.octets()[3] - 11);
            })
        };
        let reply_key = flow_key(&backend, client, 6);
        lab.dataplane.maps.flows.remove_direction(&reply_key);
        let syn_ack = from_backend(TCP_SYN | TCP_ACK);
        lab.expect_untouched("SYN-ACK without its entry", &syn_ack.build(), lab.s0);
        let retransmitted = lab.run(&syn.build(), lab.c0);
        assert_eq!((retransmitted.0, &retransmitted.1), (XDP_REDIRECT, &output));
        let expected = to_client(&syn_ack, VIP);
        lab.expect(
            "SYN-ACK after a retransmitted SYN",
            &syn_ack,
            lab.s0,
            XDP_REDIRECT,
            &expected,
        );

        lab.dataplane.maps.flows.remove_direction(&reply_key);
        let ack = ack_of(&syn);
        assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        let established = lab.dataplane.maps.flows.all().unwrap();
        assert!(
            established
                .iter()
                .any(|(key, _, half_open)| *key == flow_key(client, VIP, 6) && !half_open)
        );
        let answer = from_backend(TCP_ACK);
        let expected = to_client(&answer, VIP);
        lab.expect(
            "answer after a lost reply entry",
            &answer,
            lab.s0,
            XDP_REDIRECT,
            &expected,
        );

        // The window after one over budget places SYNs by hash from its first: keep the flood
        // going one SYN at a time until a window begins, then send a legitimate SYN. A stall
        // of the machine near the boundary changes the windows the test set up, so such a
        // try is repeated (at most ten times).
        let stall = Duration::from_millis(40);
        let mut verified = false;
        for attempt in 0..10u16 {
            let window = lab
                .dataplane
                .maps
                .handshake_guard()
                .unwrap()
                .window_start_ns;
            let began = Instant::now();
            let mut previous = Instant::now();
            let (next, gap) = loop {
                let sent = Instant::now();
                spoof(lab, &mut spoofed);
                let guard = lab.dataplane.maps.handshake_guard().unwrap();
                if guard.window_start_ns != window {
                    break (guard, sent - previous);
                }
                previous = sent;
                assert!(began.elapsed() < Duration::from_secs(5), "no new window");
            };
            let client = format!("198.18.0.2:{}", 44_000 + attempt);
            let syn = Frame::tcp(&client, VIP);
            let before = lab.event(events::SYN_HASHED);
            let (verdict, output) = lab.run(&syn.build(), lab.c0);
            // Valid if no stall came between the old window's last SYN and this one: then the
            // old window was flooded up to its end, and this SYN is in the new window.
            if gap > stall || previous.elapsed() > 2 * stall {
                continue;
            }
            assert_eq!((next.flooded, next.window_flows), (1, 1), "{next:?}");
            assert_eq!(verdict_name(verdict), "XDP_REDIRECT");
            assert_hashed("first SYN of a window", &client, &syn, &output);
            assert_eq!(lab.event(events::SYN_HASHED), before + 1);
            verified = true;
            break;
        }
        assert!(verified, "the machine stalled at every window boundary");

        // A window later, with no flood, SYNs take turns again.
        std::thread::sleep(Duration::from_millis(250));
        let hashed_so_far = lab.event(events::SYN_HASHED);
        for port in 43_000..43_003 {
            let syn = Frame::tcp(&format!("198.18.0.2:{port}"), VIP);
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        }
        assert_eq!(lab.event(events::SYN_HASHED), hashed_so_far);
    });
}

/// When the flow table is full, the least recently used flows make room: the table never
/// grows past its size, and a flow in use keeps its backend.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_full_flow_table_evicts_the_least_recently_used() {
    let config = CONFIG.replace(
        "interfaces = [\"c0\", \"s0\"]",
        "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
    );
    with_lab_config(&config, |lab| {
        let kept = Frame::udp("198.18.0.2:1000", "198.18.100.1:53");
        let expected = to_backend(&kept, "198.18.1.11:5353", backend_mac(0x11), S0_MAC);
        lab.expect("first", &kept, lab.c0, XDP_REDIRECT, &expected);
        for i in 0..5_000u32 {
            let flow = Frame::udp(
                &format!("198.18.{}.{}:2000", 2 + i / 250, 1 + i % 250),
                "198.18.100.1:53",
            );
            assert_eq!(lab.run(&flow.build(), lab.c0).0, XDP_REDIRECT);
            if i % 100 == 0 {
                lab.expect("in use", &kept, lab.c0, XDP_REDIRECT, &expected);
            }
        }
        let report = lab
            .dataplane
            .maps
            .sweep_flows(&FlowTimeouts::default(), Duration::from_secs(10))
            .unwrap();
        assert!(
            report.established <= 1024,
            "{} flows in a table of 1024",
            report.established
        );
        assert!(report.established >= 512, "{report:?}");
        lab.expect(
            "kept after 5,000 newer flows",
            &kept,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
    });
}

const LOCALITY: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
default_pool = "jp"
client_prefixes = { "198.18.0.0/24" = "kr", "198.18.0.7" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
fallback = ["kr"]

[[service]]
name = "video6"
listen = "[fd00:100::1]:80"
protocol = "tcp"
client_prefixes = { "fd00::/64" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "[fd00:1::11]:8080" } ]

[[service.pool]]
name = "jp"
backends = [ { address = "[fd00:1::12]:8080" } ]
"#;

/// The backend a new TCP flow from `client` goes to (by its address in the output frame).
fn new_flow_backend(lab: &PacketLab, client: &str, vip: &str) -> String {
    let syn = Frame::tcp(client, vip);
    let (verdict, output) = lab.run(&syn.build(), lab.c0);
    assert_eq!(verdict_name(verdict), "XDP_REDIRECT", "{client}");
    if syn.is_ipv6() {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&output[38..54]).unwrap()).to_string()
    } else {
        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&output[30..34]).unwrap()).to_string()
    }
}

/// A client's longest matching prefix chooses its home pool (the default pool for the rest);
/// when userspace publishes a fallback's backends in the home pool's table, new flows go
/// there and are counted as spilled, while established flows stay.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn client_prefixes_choose_the_pool_and_full_pools_spill_to_their_fallback() {
    with_lab_config(LOCALITY, |lab| {
        let cases = [
            // (client, VIP, backend): kr is 198.18.1.11, jp .12 and .13 in turn.
            ("198.18.0.2:40000", "198.18.100.1:80", "198.18.1.11"),
            ("198.18.0.3:40000", "198.18.100.1:80", "198.18.1.11"),
            // 198.18.0.7/32 is longer than 198.18.0.0/24: jp.
            ("198.18.0.7:40000", "198.18.100.1:80", "198.18.1.12"),
            ("198.18.0.7:40001", "198.18.100.1:80", "198.18.1.13"),
            // No prefix matches: the default pool, jp.
            ("198.18.9.9:40000", "198.18.100.1:80", "198.18.1.12"),
            // IPv6: fd00::/64 is jp; the rest go to the first pool, kr.
            ("[fd00::2]:40000", "[fd00:100::1]:80", "fd00:1::12"),
            ("[fd00:5::2]:40000", "[fd00:100::1]:80", "fd00:1::11"),
        ];
        for (client, vip, backend) in cases {
            assert_eq!(new_flow_backend(lab, client, vip), backend, "from {client}");
        }

        // kr has no room: userspace publishes jp's backends in kr's table.
        let config = Config::parse(LOCALITY).unwrap();
        let mut specs = ServiceSpec::all_up(&config);
        specs[0].locality.serving = vec![1, 1];
        lab.balancer.apply(&specs, &mut lab.dataplane.maps).unwrap();
        let kr_table = table_index(lab.balancer.services()[0].id, 0);
        assert_eq!(lab.dataplane.maps.spilled(kr_table).unwrap(), 0);
        let spilled = new_flow_backend(lab, "198.18.0.4:40000", "198.18.100.1:80");
        assert!(
            spilled.starts_with("198.18.1.1") && spilled != "198.18.1.11",
            "{spilled}"
        );
        assert_eq!(lab.dataplane.maps.spilled(kr_table).unwrap(), 1);
        // The kr flow made before the spill stays on its backend.
        let established = ack_of(&Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"));
        let expected = to_backend(&established, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect(
            "established kr flow",
            &established,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );

        // Room again: home.
        specs[0].locality.serving = vec![0, 1];
        lab.balancer.apply(&specs, &mut lab.dataplane.maps).unwrap();
        assert_eq!(
            new_flow_backend(lab, "198.18.0.5:40000", "198.18.100.1:80"),
            "198.18.1.11"
        );
        assert_eq!(lab.dataplane.maps.spilled(kr_table).unwrap(), 1);
    });
}
