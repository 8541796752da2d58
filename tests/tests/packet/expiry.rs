//! The life of flows: active-flow counts, timeouts applied by the program, FIN and RST, a
//! full table.

use super::*;

/// Active flows per backend, as the monitor counts them for `max_flows` and the reports: the
/// program counts a flow once per activity epoch, when it is established (a UDP flow at once,
/// a TCP flow once its handshake completes), however many packets it sends.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn active_flows_are_counted_per_backend_once_per_epoch() {
    with_lab(|lab| {
        for port in 0..7u16 {
            let syn = Frame::tcp(&format!("198.18.0.2:{}", 30_000 + port), "198.18.100.1:80");
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
            let ack = ack_of(&syn);
            for _ in 0..3 {
                assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
            }
        }
        // One more that never completes its handshake: half-open, not active.
        let syn = Frame::tcp("198.18.0.2:31000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        // UDP flows are active from their first packet.
        for port in 0..3u16 {
            let query = Frame::udp(&format!("198.18.0.2:{}", 32_000 + port), "198.18.100.1:53");
            assert_eq!(lab.run(&query.build(), lab.c0).0, XDP_REDIRECT);
            assert_eq!(lab.run(&query.build(), lab.c0).0, XDP_REDIRECT);
        }
        let count = |service: &str| -> Vec<u64> {
            let ids = lab.backend_ids(service);
            let active = lab.dataplane.maps.active_flows(&ids).unwrap();
            ids.iter().map(|id| active.of(*id)).collect()
        };
        // (A test that straddles the end of an epoch sees some flows in each: the larger of
        // the two counts is then short of the total. Epochs last 8.6 s; retry once.)
        let (mut web, mut dns) = (count("web"), count("dns"));
        if web.iter().sum::<u64>() != 7 {
            (web, dns) = (count("web"), count("dns"));
        }
        assert_eq!(web, [3, 2, 2]);
        assert_eq!(dns, [2, 1]);
    });
}

/// A FIN or RST marks both directions of a flow closing. The program applies the timeouts
/// itself: when a packet finds its flow silent past its timeout (each kind its own), the
/// flow's entries are deleted and the packet is handled as the first of a new flow; a flow
/// within its timeout is left alone.
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
                flags: tcp_flags::FIN | tcp_flags::ACK,
                seq: 1_001,
            }
        });
        assert_eq!(lab.run(&fin.build(), lab.c0).0, XDP_REDIRECT);
        // The RST comes from the backend: the reply direction marks the flow too.
        let rst = Frame::tcp("198.18.1.13:8080", "198.18.0.2:41002").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::RST,
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
        assert!(
            lab.dataplane
                .maps
                .flow(&flow_key("198.18.1.12:8080", "198.18.0.2:41001", 6))
                .is_none(),
            "one entry per flow, none under the backend's 5-tuple"
        );

        // Closing flows and idle UDP flows are over after their short timeouts; the open TCP
        // flow stays until its long one. The program looks at a flow's timeout when it
        // refreshes the flow's entry, at most once a second: wait past that.
        let timeouts = FlowTimeouts {
            tcp_idle: Duration::from_secs(3_600),
            tcp_closing: Duration::from_millis(50),
            udp_idle: Duration::from_millis(50),
        };
        lab.dataplane.maps.set_flow_timeouts(&timeouts).unwrap();
        std::thread::sleep(Duration::from_millis(1_100));
        let expired =
            |lab: &PacketLab| lab.dataplane.maps.events().unwrap()[events::FLOW_EXPIRED as usize];
        let backend_of = |lab: &PacketLab, frame: &Frame| {
            let key = flow_key(&frame.src.to_string(), &frame.dst.to_string(), 6);
            lab.dataplane.maps.flow(&key).map(|entry| entry.backend_id)
        };
        let kept_backend = backend_of(lab, &kept);
        assert_eq!(lab.run(&ack_of(&kept).build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(expired(lab), 0, "the open flow is within its timeout");
        assert_eq!(backend_of(lab, &kept), kept_backend);

        let udp_flows = lab.service_new_flows("dns");
        assert_eq!(lab.run(&udp.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(expired(lab), 1, "the UDP flow was over");
        assert_eq!(
            lab.service_new_flows("dns"),
            udp_flows + 1,
            "its packet started a new flow"
        );
        // A packet of a closed flow finds it over: both its entries go, and the packet (an
        // ACK, not a SYN) is placed as a new flow would be, by the handshake guard's hash.
        let midstream = lab.dataplane.maps.events().unwrap()[events::MIDSTREAM_HASHED as usize];
        assert_eq!(lab.run(&ack_of(&finished).build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(expired(lab), 2, "the finished flow was over");
        assert_eq!(
            lab.dataplane.maps.events().unwrap()[events::MIDSTREAM_HASHED as usize],
            midstream + 1
        );
        // The RST's flow: its backend's next packet finds it over, and is passed (it belongs
        // to no flow any more, and is addressed to no service).
        let answer = Frame::tcp("198.18.1.13:8080", "198.18.0.2:41002").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
                seq: 6,
            };
            f.eth_dst = S0_MAC;
        });
        assert_eq!(lab.run(&answer.build(), lab.s0).0, XDP_PASS);
        assert_eq!(expired(lab), 3, "the reset flow was over");
        assert!(
            lab.dataplane
                .maps
                .flow(&flow_key("198.18.0.2:41002", "198.18.100.1:80", 6))
                .is_none(),
            "both directions of an expired flow are gone"
        );
        // A TCP idle timeout shorter than the silence makes the last one over too.
        lab.dataplane
            .maps
            .set_flow_timeouts(&FlowTimeouts {
                tcp_idle: Duration::from_millis(50),
                ..timeouts
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(1_100));
        assert_eq!(lab.run(&ack_of(&kept).build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(expired(lab), 4);
    });
}

/// A client's SYN on a closed flow (the client reused its ports before the flow's timeout) is
/// a new connection: the old flow's entries go, and the SYN is placed by round robin like any
/// new flow, not sent to the old flow's backend. A SYN on a flow that has not closed still
/// follows it.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_syn_on_a_closed_flow_is_placed_as_a_new_flow() {
    with_lab(|lab| {
        let reopened =
            |lab: &PacketLab| lab.dataplane.maps.events().unwrap()[events::FLOW_REOPENED as usize];
        let syn = Frame::tcp("198.18.0.2:42000", "198.18.100.1:80");
        let to_first = to_backend(&syn, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("the first SYN", &syn, lab.c0, XDP_REDIRECT, &to_first);
        assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);
        lab.expect(
            "a SYN on the open flow",
            &syn,
            lab.c0,
            XDP_REDIRECT,
            &to_first,
        );
        assert_eq!(reopened(lab), 0, "an open flow is not reopened");

        let fin = ack_of(&syn).with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::FIN | tcp_flags::ACK,
                seq: 1_001,
            }
        });
        assert_eq!(lab.run(&fin.build(), lab.c0).0, XDP_REDIRECT);
        // A retransmitted FIN or a last ACK still follows the closing flow.
        let last_ack = ack_of(&syn);
        let last_ack_out = to_backend(&last_ack, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect(
            "the last ACK",
            &last_ack,
            lab.c0,
            XDP_REDIRECT,
            &last_ack_out,
        );
        let flows = lab.service_new_flows("web");

        let to_next = to_backend(&syn, "198.18.1.12:8080", backend_mac(0x12), S0_MAC);
        lab.expect(
            "a SYN on the closed flow",
            &syn,
            lab.c0,
            XDP_REDIRECT,
            &to_next,
        );
        assert_eq!(reopened(lab), 1);
        assert_eq!(
            lab.service_new_flows("web"),
            flows + 1,
            "counted as a new flow"
        );
        let old_reply = FlowKey {
            src_addr: addr_field("198.18.1.11".parse().unwrap()),
            dst_addr: addr_field("198.18.0.2".parse().unwrap()),
            src_port: port_field(8080),
            dst_port: port_field(42_000),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        assert!(
            lab.dataplane.maps.flow(&old_reply).is_none(),
            "the old flow's reply entry is gone"
        );
        // The new connection's handshake completes on its own backend.
        let ack_out = to_backend(&ack_of(&syn), "198.18.1.12:8080", backend_mac(0x12), S0_MAC);
        lab.expect("its ACK", &ack_of(&syn), lab.c0, XDP_REDIRECT, &ack_out);
        let key = flow_key("198.18.0.2:42000", "198.18.100.1:80", 6);
        let entry = lab.dataplane.maps.flow(&key).expect("the new flow's entry");
        assert_eq!(entry.flags & flow_flags::CLOSING, 0, "the new flow is open");
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
        let established = lab.dataplane.maps.flows.all().unwrap().len();
        assert!(
            established <= 1024,
            "{established} flows in a table of 1024"
        );
        assert!(established >= 512, "{established} flows in a table of 1024");
        lab.expect(
            "kept after 5,000 newer flows",
            &kept,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
    });
}
