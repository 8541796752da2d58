//! IPv6: flows balanced, translated and forwarded; extension headers (fragments: see
//! `fragments`).

use super::*;

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
                flags: tcp_flags::ACK,
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
    });
}
