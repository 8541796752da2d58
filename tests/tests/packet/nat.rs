//! Translation and forwarding of IPv4 flows: new flows in turn, replies, UDP, the FIB (and how
//! often a connection asks it), what is not ours, malformed frames, an empty table, GSO
//! super-packets.

use super::*;

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn new_flows_take_backends_in_turn_and_established_flows_stay() {
    with_lab(|lab| {
        let first = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let to = |input: &Frame, last: u8| {
            // Backend 198.18.1.N has MAC 02:00:00:00:01:N (N written in hex).
            let backend = format!("198.18.1.{}:8080", 10 + (last - 0x10));
            to_backend(input, &backend, backend_mac(last), S0_MAC)
        };
        let mut cases = vec![Case::new(
            "new flow",
            &first,
            Port::Clients,
            XDP_REDIRECT,
            &to(&first, 0x11),
        )];
        // Five more flows continue the rotation exactly: .12 .13 .11 .12 .13.
        for (i, last) in [0x12, 0x13, 0x11, 0x12, 0x13].into_iter().enumerate() {
            let input = Frame::tcp(&format!("198.18.0.2:{}", 40_001 + i), "198.18.100.1:80");
            let what = format!("new flow {}", i + 2);
            cases.push(Case::new(
                what,
                &input,
                Port::Clients,
                XDP_REDIRECT,
                &to(&input, last),
            ));
        }
        // Later packets of the first flow stay on its backend, whatever the cursor says.
        for seq in 1..4 {
            let later = first.clone().with(|f| {
                f.transport = Transport::Tcp {
                    flags: tcp_flags::ACK,
                    seq: 1_000 + seq,
                };
                f.payload = vec![seq as u8; 100 * seq as usize];
            });
            let what = format!("established packet {seq}");
            cases.push(Case::new(
                what,
                &later,
                Port::Clients,
                XDP_REDIRECT,
                &to(&later, 0x11),
            ));
        }
        verify_checksums(&cases[0].output).unwrap();
        lab.run_cases(&cases);
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
fn replies_are_translated_back_to_the_vip() {
    with_lab(|lab| {
        let request = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        let (verdict, _) = lab.run(&request.build(), lab.c0);
        assert_eq!(verdict, XDP_REDIRECT);

        let reply = Frame::tcp("198.18.1.11:8080", "198.18.0.2:40000").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::SYN | tcp_flags::ACK,
                seq: 77,
            };
            f.eth_dst = S0_MAC;
            f.eth_src = backend_mac(0x11);
        });
        // A backend packet to the client that belongs to no flow is not ours.
        let stray = reply.clone().with(|f| f.dst = endpoint("198.18.0.2:40999"));
        lab.run_cases(&[
            Case::new(
                "reply",
                &reply,
                Port::Servers,
                XDP_REDIRECT,
                &to_client(&reply, "198.18.100.1:80"),
            ),
            Case::untouched("reply of an unknown flow", stray.build(), Port::Servers),
        ]);
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
fn a_next_hop_on_a_listed_veth_is_handed_to_its_peer_at_tc_only() {
    with_lab(|lab| {
        // s0 listed in VETH_PEERS, c0 not: the frames are the same either way (the handoff
        // changes only the helper the tc program redirects with), and the flow entry caches
        // the choice with its next hop.
        lab.dataplane.maps.set_veth_peer(lab.s0, true).unwrap();
        let query = Frame::udp("198.18.0.2:5000", "198.18.100.1:53");
        let output = to_backend(&query, "198.18.1.11:5353", backend_mac(0x11), S0_MAC);
        lab.expect("to a listed veth", &query, lab.c0, XDP_REDIRECT, &output);
        let entry = lab
            .dataplane
            .maps
            .flow(&flow_key("198.18.0.2:5000", "198.18.100.1:53", 17))
            .unwrap();
        assert_eq!(entry.to_backend.ifindex, lab.s0);
        assert_eq!(
            entry.to_backend.peer,
            u8::from(lab.hook == Hook::Tc),
            "{:?}",
            lab.hook
        );

        // The reply leaves by c0, which is not listed.
        let reply = Frame::udp("198.18.1.11:5353", "198.18.0.2:5000").with(|f| f.eth_dst = S0_MAC);
        lab.expect(
            "to an unlisted veth",
            &reply,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&reply, "198.18.100.1:53"),
        );
        let entry = lab
            .dataplane
            .maps
            .flow(&flow_key("198.18.0.2:5000", "198.18.100.1:53", 17))
            .unwrap();
        assert_eq!((entry.to_client.ifindex, entry.to_client.peer), (lab.c0, 0));

        // Taken off the list, a new flow is transmitted again.
        lab.dataplane.maps.set_veth_peer(lab.s0, false).unwrap();
        lab.dataplane.maps.set_veth_peer(lab.s0, false).unwrap();
        let query = Frame::udp("198.18.0.2:5001", "198.18.100.1:53");
        assert_eq!(lab.run(&query.build(), lab.c0).0, XDP_REDIRECT);
        let entry = lab
            .dataplane
            .maps
            .flow(&flow_key("198.18.0.2:5001", "198.18.100.1:53", 17))
            .unwrap();
        assert_eq!(
            (entry.to_backend.ifindex, entry.to_backend.peer),
            (lab.s0, 0)
        );
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn forwarding_follows_the_fib() {
    with_lab(|lab| {
        let near = Frame::tcp("198.18.0.2:40000", "198.18.100.2:80");
        let unresolved = Frame::tcp("198.18.0.2:40000", "198.18.100.3:80");
        lab.run_cases(&[
            // The backend is behind the interface the packet came in on: XDP_TX.
            Case::new(
                "backend on the ingress interface",
                &near,
                Port::Clients,
                XDP_TX,
                &to_backend(&near, "198.18.0.21:8080", [0x02, 0, 0, 0, 0, 0x21], LB_MAC),
            ),
            // No neighbour entry for the backend yet: the rewritten packet goes to the kernel,
            // which resolves the neighbour and forwards it (so TTL and MACs are left to it).
            Case::new(
                "backend without a neighbour entry",
                &unresolved,
                Port::Clients,
                XDP_PASS,
                &unresolved
                    .clone()
                    .with(|f| f.dst = endpoint("198.18.1.99:8080")),
            ),
        ]);
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
fn traffic_that_is_not_for_a_service_is_not_balanced() {
    with_lab(|lab| {
        let untouched =
            |what: &str, frame: Frame| Case::untouched(what, frame.build(), Port::Clients);
        let dropped =
            |what: &str, frame: Frame| Case::new(what, &frame, Port::Clients, XDP_DROP, &frame);
        let tcp = |dst: &str| Frame::tcp("198.18.0.2:40000", dst);
        lab.run_cases(&[
            // To a VIP, but no service: dropped (see unserved.rs).
            dropped("other port", tcp("198.18.100.1:81")),
            dropped(
                "udp to a tcp service",
                Frame::udp("198.18.0.2:40000", "198.18.100.1:80"),
            ),
            dropped("tcp to a udp service", tcp("198.18.100.1:53")),
            untouched("other address", tcp("198.18.100.9:80")),
            untouched("to the balancer itself", tcp("198.18.0.1:22")),
            untouched(
                "ARP",
                tcp("198.18.100.1:80").with(|f| f.ether_type_override = Some(0x0806)),
            ),
            untouched(
                "VLAN-tagged",
                tcp("198.18.100.1:80").with(|f| f.vlan = Some(100)),
            ),
            untouched(
                "VLAN-tagged IPv6",
                Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80").with(|f| f.vlan = Some(100)),
            ),
        ]);
        assert_eq!(lab.event(events::VLAN), 2);
        assert_eq!(lab.event(events::VIP_UNSERVED), 3);
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
            // A first fragment must hold its whole transport header (RFC 1858).
            (
                "first fragment cut inside the TCP header",
                valid.clone().with(|f| {
                    f.ip_frag = IP_MF;
                    f.total_length_override = Some(20 + 16);
                }),
            ),
            (
                "first fragment cut inside the UDP header",
                Frame::udp("198.18.0.2:5000", "198.18.100.1:53").with(|f| {
                    f.ip_frag = IP_MF;
                    f.total_length_override = Some(20 + 4);
                }),
            ),
        ];
        let cases: Vec<Case> = cases
            .into_iter()
            .map(|(what, frame)| Case::untouched(what, frame.build(), Port::Clients))
            .collect();
        lab.run_cases(&cases);
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
        assert!(
            lab.event(events::MALFORMED) >= 9,
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

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn gso_super_packets_are_forwarded_whole_at_tc_and_passed_counted_at_xdp() {
    with_lab(|lab| {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        let ack = syn.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
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

/// A connection's one entry keeps its next hops from the handshake to the close: toward the
/// backend the one cached for the backend, toward the client where the SYN came from, both
/// kept when the handshake completes, and a FIN marks the entry closing without asking the FIB
/// again (within the entry's second).
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_connection_keeps_its_next_hops_from_the_handshake_to_the_close() {
    with_lab(|lab| {
        let syn = Frame::tcp("198.18.0.2:40100", "198.18.100.1:80");
        let to_first = to_backend(&syn, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("the SYN", &syn, lab.c0, XDP_REDIRECT, &to_first);
        let syn_ack = Frame::tcp("198.18.1.11:8080", "198.18.0.2:40100").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::SYN | tcp_flags::ACK,
                seq: 77,
            };
            f.tcp_ack = 1_001;
            f.eth_dst = S0_MAC;
            f.eth_src = backend_mac(0x11);
        });
        let to_vip = |frame: &Frame| to_client(frame, "198.18.100.1:80");
        lab.expect(
            "the SYN-ACK",
            &syn_ack,
            lab.s0,
            XDP_REDIRECT,
            &to_vip(&syn_ack),
        );
        assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);

        let key = flow_key("198.18.0.2:40100", "198.18.100.1:80", 6);
        let entry = || lab.dataplane.maps.flow(&key).expect("the flow's entry");
        assert!(
            lab.dataplane
                .maps
                .flow(&flow_key("198.18.1.11:8080", "198.18.0.2:40100", 6))
                .is_none(),
            "one entry per flow: none under the backend's 5-tuple"
        );
        let established = entry();
        assert_eq!(
            (established.to_client.ifindex, established.to_client.dst_mac),
            (lab.c0, CLIENT_MAC),
            "the established entry keeps the next hop toward the client"
        );
        let response = syn_ack.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
                seq: 78,
            }
        });
        lab.expect(
            "the response",
            &response,
            lab.s0,
            XDP_REDIRECT,
            &to_vip(&response),
        );

        let fin = ack_of(&syn).with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::FIN | tcp_flags::ACK,
                seq: 1_001,
            }
        });
        lab.expect(
            "the client's FIN",
            &fin,
            lab.c0,
            XDP_REDIRECT,
            &to_backend(&fin, "198.18.1.11:8080", backend_mac(0x11), S0_MAC),
        );
        let closing = entry();
        assert_ne!(
            closing.flags & flow_flags::CLOSING,
            0,
            "the entry is closing"
        );
        assert_eq!(
            (closing.to_backend.ifindex, closing.to_client.ifindex),
            (lab.s0, lab.c0),
            "a close keeps the next hops"
        );
        let backend_fin = response.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::FIN | tcp_flags::ACK,
                seq: 79,
            }
        });
        lab.expect(
            "the backend's FIN",
            &backend_fin,
            lab.s0,
            XDP_REDIRECT,
            &to_vip(&backend_fin),
        );
    });
}
