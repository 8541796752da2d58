//! The life of flows: active-flow counts, timeouts, FIN and RST, a full table.

use super::*;

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
