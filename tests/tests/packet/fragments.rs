//! IP fragments: the fragments of one datagram go where its first fragment went. The first
//! carries the ports and is handled like any packet of its flow (its transport checksum,
//! computed over the whole datagram, changes once); the others carry no transport header and
//! get only their IP header rewritten. Both directions, IPv4 and IPv6, TCP and UDP, NAT and
//! DSR; a later fragment that comes before its first is dropped and counted.
//!
//! Expected fragments are the expected whole datagram, fragmented the way the input was (see
//! `lb_common::frame::fragment`), so each is stated exactly; the outputs are then put back
//! together and their transport checksum recomputed.

use xlb_tests::packet::{fragment, locate, reassemble};

use super::*;

/// Bytes of payload per fragment: three fragments for the datagrams below.
const CHUNK: usize = 1_200;

/// A datagram of `len` payload bytes from `src` to `dst`, as a host sends one it fragments
/// (no "don't fragment"), with identification `id`.
fn datagram(src: &str, dst: &str, len: usize, id: u16) -> Frame {
    Frame::udp(src, dst).with(|f| {
        f.ip_frag = 0;
        f.ip_id = id;
        f.payload = (0..len).map(|i| (i * 7) as u8).collect();
    })
}

/// The frames `whole` is sent as: its fragments of [`CHUNK`] bytes, identification `id`.
fn pieces(whole: &Frame, id: u32) -> Vec<Vec<u8>> {
    let pieces = fragment(&whole.build(), CHUNK, id);
    assert_eq!(pieces.len(), 3, "three fragments");
    pieces
}

/// Where the part of a fragment that follows its IP headers starts: the transport header in a
/// first fragment, data in the others.
fn after_ip_headers(frame: &[u8]) -> usize {
    let parsed = locate(frame).expect("a fragment that parses");
    if parsed.src.len() == 16 {
        parsed.l3 + 40 + 8
    } else {
        parsed.l4
    }
}

impl PacketLab {
    /// Runs the fragments `input` arriving on `port` in order; each must leave with `verdict`
    /// as the matching fragment of `output`. Then checks that the fragments after the first
    /// kept everything after their IP headers, and that the outputs put back together carry
    /// valid checksums. Returns the outputs.
    fn expect_fragments(
        &self,
        what: &str,
        input: &[Vec<u8>],
        port: Port,
        verdict: u32,
        output: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        let mut outputs = Vec::new();
        for (i, (input, expected)) in input.iter().zip(output).enumerate() {
            let case = format!("{what}, fragment {} ({:?} hook)", i + 1, self.hook);
            let (actual_verdict, actual) = self.run(input, self.ifindex(port));
            assert_eq!(
                verdict_name(actual_verdict),
                verdict_name(verdict),
                "{case}: verdict"
            );
            assert!(
                actual == *expected,
                "{case}: output frame differs\n{}",
                hex_diff(expected, &actual)
            );
            if i > 0 {
                let at = after_ip_headers(input);
                assert!(
                    input[at..] == actual[at..],
                    "{case}: only the IP header of a later fragment changes"
                );
            }
            outputs.push(actual);
        }
        let whole = reassemble(&outputs).unwrap_or_else(|e| panic!("{what}: {e}"));
        verify_checksums(&whole).unwrap_or_else(|e| panic!("{what}, reassembled: {e}"));
        outputs
    }
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_fragmented_udp_datagram_follows_its_first_fragment_both_ways() {
    with_lab(|lab| {
        for (client, vip, backend, mac) in [
            (
                "198.18.0.2:5000",
                "198.18.100.1:53",
                "198.18.1.11:5353",
                0x11,
            ),
            (
                "[fd00::2]:5000",
                "[fd00:100::1]:53",
                "[fd00:1::13]:5353",
                0x13,
            ),
        ] {
            let request = datagram(client, vip, 3_000, 0x4242);
            let expected = to_backend(&request, backend, backend_mac(mac), S0_MAC);
            lab.expect_fragments(
                &format!("request to {vip}"),
                &pieces(&request, 0x4242_0001),
                Port::Clients,
                XDP_REDIRECT,
                &pieces(&expected, 0x4242_0001),
            );
            // The backend's answer, in fragments too, leaves from the VIP.
            let answer = datagram(backend, client, 2_500, 0x0777).with(|f| {
                f.eth_dst = S0_MAC;
                f.eth_src = backend_mac(mac);
            });
            lab.expect_fragments(
                &format!("answer from {backend}"),
                &pieces(&answer, 0x0777_0002),
                Port::Servers,
                XDP_REDIRECT,
                &pieces(&to_client(&answer, vip), 0x0777_0002),
            );
            // An unfragmented datagram of the flow after them goes the same way.
            let small = Frame::udp(client, vip);
            let expected = to_backend(&small, backend, backend_mac(mac), S0_MAC);
            lab.expect(
                "unfragmented after",
                &small,
                lab.c0,
                XDP_REDIRECT,
                &expected,
            );
        }
        assert_eq!(lab.service_new_flows("dns"), 1);
        assert_eq!(lab.service_new_flows("dns6"), 1);
        assert_eq!(
            lab.event(events::FRAGMENT_FOLLOWED),
            8,
            "two later fragments each"
        );
        assert_eq!(lab.event(events::FRAGMENT_UNMATCHED), 0);
        assert_eq!(lab.event(events::FRAGMENT), 0);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_later_fragment_before_its_first_is_dropped_and_counted() {
    with_lab(|lab| {
        for (client, vip, backend, mac) in [
            (
                "198.18.0.2:5001",
                "198.18.100.1:53",
                "198.18.1.11:5353",
                0x11,
            ),
            (
                "[fd00::2]:5001",
                "[fd00:100::1]:53",
                "[fd00:1::13]:5353",
                0x13,
            ),
        ] {
            let request = datagram(client, vip, 3_000, 0x5151);
            let input = pieces(&request, 0x5151);
            let output = pieces(
                &to_backend(&request, backend, backend_mac(mac), S0_MAC),
                0x5151,
            );
            lab.run_cases(&[
                Case {
                    what: format!("{vip}: the second fragment first"),
                    input: input[1].clone(),
                    port: Port::Clients,
                    verdict: XDP_DROP,
                    output: input[1].clone(),
                },
                Case {
                    what: format!("{vip}: then the first"),
                    input: input[0].clone(),
                    port: Port::Clients,
                    verdict: XDP_REDIRECT,
                    output: output[0].clone(),
                },
                Case {
                    what: format!("{vip}: then the third"),
                    input: input[2].clone(),
                    port: Port::Clients,
                    verdict: XDP_REDIRECT,
                    output: output[2].clone(),
                },
            ]);
        }
        assert_eq!(lab.event(events::FRAGMENT_UNMATCHED), 2);
        assert_eq!(lab.event(events::FRAGMENT_FOLLOWED), 2);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn fragments_that_are_not_xlbs_pass_untouched() {
    with_lab(|lab| {
        let mut cases = Vec::new();
        for (client, elsewhere) in [
            ("198.18.0.2:5002", "198.18.100.9:53"),
            ("[fd00::2]:5002", "[fd00:100::9]:53"),
        ] {
            // A datagram to an address that is no VIP: its first fragment is of no flow and
            // passes as any such packet does, and so do the others.
            let other = pieces(&datagram(client, elsewhere, 3_000, 0x6161), 0x6161);
            for (i, piece) in other.into_iter().enumerate() {
                cases.push(Case::untouched(
                    format!("{elsewhere}: fragment {}", i + 1),
                    piece,
                    Port::Clients,
                ));
            }
            // A later fragment without a record, to no VIP: the host's own, or a backend's
            // answer whose first fragment is yet to come; not dropped.
            let unseen = pieces(&datagram(client, elsewhere, 3_000, 0x6262), 0x6262);
            cases.push(Case::untouched(
                format!("{elsewhere}: a later fragment of a datagram never seen"),
                unseen[2].clone(),
                Port::Clients,
            ));
        }
        // ICMP is not balanced in fragments.
        let ping = Frame::icmp("198.18.0.2", "198.18.100.1", 8, vec![1; 3_000]).with(|f| {
            f.ip_frag = 0;
        });
        for (i, piece) in fragment(&ping.build(), CHUNK, 0x7171)
            .into_iter()
            .enumerate()
        {
            cases.push(Case::untouched(
                format!("echo request fragment {}", i + 1),
                piece,
                Port::Clients,
            ));
        }
        lab.run_cases(&cases);
        assert_eq!(lab.event(events::FRAGMENT), 2 * 3 + 3);
        assert_eq!(lab.event(events::FRAGMENT_UNMATCHED), 0);
        assert_eq!(lab.event(events::FRAGMENT_FOLLOWED), 0);
        assert!(lab.dataplane.maps.flows.all().unwrap().is_empty());
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_tcp_flows_fragments_follow_the_flow() {
    with_lab(|lab| {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let backend = "198.18.1.11:8080";
        let to = |input: &Frame| to_backend(input, backend, backend_mac(0x11), S0_MAC);
        lab.expect("SYN", &syn, lab.c0, XDP_REDIRECT, &to(&syn));
        let ack = ack_of(&syn);
        lab.expect("ACK", &ack, lab.c0, XDP_REDIRECT, &to(&ack));
        let segment = ack.clone().with(|f| {
            f.ip_frag = 0;
            f.ip_id = 0x2323;
            f.payload = (0..3_000).map(|i| (i * 3) as u8).collect();
        });
        lab.expect_fragments(
            "a segment in fragments",
            &pieces(&segment, 0x2323),
            Port::Clients,
            XDP_REDIRECT,
            &pieces(&to(&segment), 0x2323),
        );
        let answer = Frame::tcp(backend, "198.18.0.2:40000").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
                seq: 5_000,
            };
            f.eth_dst = S0_MAC;
            f.eth_src = backend_mac(0x11);
            f.ip_frag = 0;
            f.ip_id = 0x2424;
            f.payload = vec![0x5a; 3_000];
        });
        lab.expect_fragments(
            "the backend's segment in fragments",
            &pieces(&answer, 0x2424),
            Port::Servers,
            XDP_REDIRECT,
            &pieces(&to_client(&answer, "198.18.100.1:80"), 0x2424),
        );
        assert_eq!(lab.service_new_flows("web"), 1);
        assert_eq!(lab.event(events::FRAGMENT_FOLLOWED), 4);
    });
}

/// A DSR service for UDP: its packets keep their addresses.
const DSR: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "dsr"
listen = "198.18.100.5:53"
protocol = "udp"
forwarding = "dsr"
backends = [ { address = "198.18.1.12:53" } ]

[[service]]
name = "dsr6"
listen = "[fd00:100::5]:53"
protocol = "udp"
forwarding = "dsr"
backends = [ { address = "[fd00:1::12]:53" } ]
"#;

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn fragments_of_a_dsr_flow_reach_its_backend_with_new_macs_only() {
    with_lab_config(DSR, |lab| {
        for (client, vip) in [
            ("198.18.0.2:5003", "198.18.100.5:53"),
            ("[fd00::2]:5003", "[fd00:100::5]:53"),
        ] {
            let request = datagram(client, vip, 3_000, 0x3131);
            let expected = request.clone().with(|f| {
                f.ttl -= 1;
                f.eth_dst = backend_mac(0x12);
                f.eth_src = S0_MAC;
            });
            lab.expect_fragments(
                &format!("DSR to {vip}"),
                &pieces(&request, 0x3131),
                Port::Clients,
                XDP_REDIRECT,
                &pieces(&expected, 0x3131),
            );
        }
        assert_eq!(lab.event(events::FRAGMENT_FOLLOWED), 4);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn the_fragments_of_a_datagram_to_a_vips_unserved_port_are_all_dropped() {
    with_lab(|lab| {
        let mut cases = Vec::new();
        for (client, vip) in [
            ("198.18.0.2:5003", "198.18.100.1:9999"),
            ("[fd00::2]:5003", "[fd00:100::1]:9999"),
        ] {
            // The first fragment is dropped as any packet to the port is, and the later ones,
            // whose ports its record gives, too (they would reach the host's own sockets).
            for (i, piece) in pieces(&datagram(client, vip, 3_000, 0x6363), 0x6363)
                .into_iter()
                .enumerate()
            {
                cases.push(Case {
                    what: format!("{vip}: fragment {}", i + 1),
                    input: piece.clone(),
                    port: Port::Clients,
                    verdict: XDP_DROP,
                    output: piece,
                });
            }
        }
        lab.run_cases(&cases);
        assert_eq!(lab.event(events::VIP_UNSERVED), 2 * 3);
        assert_eq!(lab.event(events::FRAGMENT_UNMATCHED), 0);
        assert!(lab.dataplane.maps.flows.all().unwrap().is_empty());
    });
}
