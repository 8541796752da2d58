//! ICMP: echo requests to a VIP, errors about a flow sent to its other end.

use super::*;

/// An ICMP error quoting `quoted` (its first `len` bytes, or all of it), from `router` to `to`.
pub(super) fn icmp_error(
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
                flags: tcp_flags::ACK,
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
                flags: tcp_flags::SYN | tcp_flags::ACK,
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
