//! Flows shared with a fleet: the events the program tells the daemon of while it shares flows
//! (`FLOW_EVENTS`), and an entry built from another instance's event serving both directions
//! of its flow here.

use lb_common::{
    consts::{events, proto},
    share::{FlowEvent, flow_event, shared_entry},
};
use xlb::dataplane::{FlowEvents, monotonic_ns};

use super::*;

/// The events the program wrote since the last call.
fn drain(events: &mut FlowEvents) -> Vec<FlowEvent> {
    std::iter::from_fn(|| events.next_event()).collect()
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn while_sharing_the_program_tells_of_each_flow_established_and_closed() {
    with_lab(|lab| {
        let mut events = lab.dataplane.flow_events.take().unwrap();
        let udp = Frame::udp("198.18.0.2:42000", "198.18.100.1:53");
        assert_eq!(lab.run(&udp.build(), lab.c0).0, XDP_REDIRECT);
        assert!(
            drain(&mut events).is_empty(),
            "off unless the daemon shares"
        );

        lab.dataplane.fleet_switch.share_flows(true).unwrap();
        // A handshake: nothing for the SYN (half-open), the flow at the ACK, once.
        let syn = Frame::tcp("198.18.0.2:42001", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        assert!(
            drain(&mut events).is_empty(),
            "a half-open flow is not shared"
        );
        let ack = ack_of(&syn);
        assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        let key = flow_key("198.18.0.2:42001", "198.18.100.1:80", proto::TCP);
        let entry = lab.dataplane.maps.flow(&key).unwrap();
        let told = drain(&mut events);
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(
            (
                told[0].key,
                told[0].backend,
                told[0].backend_port,
                told[0].kind
            ),
            (key, entry.addr, entry.port, flow_event::OPENED)
        );
        // Its FIN: closing, once.
        let fin = ack.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::FIN | tcp_flags::ACK,
                seq: 1_001,
            }
        });
        assert_eq!(lab.run(&fin.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&fin.build(), lab.c0).0, XDP_REDIRECT);
        let told = drain(&mut events);
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!((told[0].key, told[0].kind), (key, flow_event::CLOSING));
        // A UDP flow (IPv6 here): at its first datagram.
        let udp6 = Frame::udp("[fd00::2]:42002", "[fd00:100::1]:53");
        assert_eq!(lab.run(&udp6.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&udp6.build(), lab.c0).0, XDP_REDIRECT);
        let told = drain(&mut events);
        assert_eq!(told.len(), 1, "{told:?}");
        let key6 = flow_key("[fd00::2]:42002", "[fd00:100::1]:53", proto::UDP);
        assert_eq!((told[0].key, told[0].kind), (key6, flow_event::OPENED));
        assert_eq!(events.lost(), 0);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_flow_another_instance_placed_goes_both_ways_here() {
    with_lab(|lab| {
        // Another instance placed 198.18.0.2:43000 on 198.18.1.12:8080 (here backend 1 of
        // service 0); this one never saw its SYN. Its ACK here would otherwise be placed anew.
        let key = flow_key("198.18.0.2:43000", "198.18.100.1:80", proto::TCP);
        let backend = endpoint("198.18.1.12:8080");
        let entry = shared_entry(
            &key,
            &addr_field(backend.ip()),
            port_field(backend.port()),
            (lab.backend_ids("web")[1], 0),
            0,
            monotonic_ns().unwrap(),
        );
        assert_eq!(
            lab.dataplane.maps.adopt_flows(&[(key, entry, false)], true),
            1
        );
        let ack = Frame::tcp("198.18.0.2:43000", "198.18.100.1:80").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
                seq: 77,
            }
        });
        let new_before = lab.service_new_flows("web");
        lab.expect(
            "the client's packet follows the shared entry",
            &ack,
            lab.c0,
            XDP_REDIRECT,
            &to_backend(&ack, "198.18.1.12:8080", backend_mac(0x12), S0_MAC),
        );
        let reply = Frame::tcp("198.18.1.12:8080", "198.18.0.2:43000").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
                seq: 5,
            };
            f.eth_dst = S0_MAC;
        });
        lab.expect(
            "the backend's reply is translated back to the VIP",
            &reply,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&reply, "198.18.100.1:80"),
        );
        assert_eq!(
            lab.service_new_flows("web"),
            new_before,
            "not a new flow here"
        );
        // A local entry is never replaced by a shared one.
        let other = shared_entry(&key, &[0x0d01_12c6, 0, 0, 0], 0, (2, 0), 0, 1);
        assert_eq!(
            lab.dataplane.maps.adopt_flows(&[(key, other, false)], true),
            0
        );
    });
}

/// A backend's answer to a client whose flow another instance placed (ECMP brought the answer
/// here first, before the flow's entry): taken over here, with the backend's one VIP.
fn answer(backend: &str, client: &str, flags: u8) -> Frame {
    Frame::tcp(backend, client).with(|f| {
        f.transport = Transport::Tcp { flags, seq: 500 };
        f.tcp_ack = 1_001;
        f.eth_dst = S0_MAC;
    })
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_backends_answer_that_comes_before_its_flow_is_adopted_while_sharing() {
    with_lab(|lab| {
        let synack = answer(
            "198.18.1.12:8080",
            "198.18.0.2:44000",
            tcp_flags::SYN | tcp_flags::ACK,
        );
        // Not sharing: passed untouched, as a backend's packet in no flow always was.
        assert_eq!(lab.run(&synack.build(), lab.s0).0, XDP_PASS);
        assert_eq!(lab.event(events::FLOW_ADOPTED), 0);

        lab.dataplane.fleet_switch.share_flows(true).unwrap();
        lab.expect(
            "the SYN-ACK leaves from the VIP",
            &synack,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&synack, "198.18.100.1:80"),
        );
        assert_eq!(lab.event(events::FLOW_ADOPTED), 1);
        let key = flow_key("198.18.0.2:44000", "198.18.100.1:80", proto::TCP);
        let entry = lab.dataplane.maps.flow(&key).expect("the adopted flow");
        assert_eq!(
            (entry.addr, entry.port, entry.backend_id),
            (
                addr_field(endpoint("198.18.1.12:8080").ip()),
                port_field(8080),
                lab.backend_ids("web")[1]
            )
        );
        // The client's ACK, if it comes here, completes the handshake on that backend.
        let ack = Frame::tcp("198.18.0.2:44000", "198.18.100.1:80").with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK,
                seq: 1_001,
            }
        });
        let (promoted, new_before) = (
            lab.event(events::FLOW_PROMOTED),
            lab.service_new_flows("web"),
        );
        lab.expect(
            "the client's ACK follows the adopted flow",
            &ack,
            lab.c0,
            XDP_REDIRECT,
            &to_backend(&ack, "198.18.1.12:8080", backend_mac(0x12), S0_MAC),
        );
        assert_eq!(lab.event(events::FLOW_PROMOTED), promoted + 1);
        assert_eq!(lab.service_new_flows("web"), new_before, "no new flow");
        // A data segment of a flow not here yet (its entry lost, or still on its way).
        let data = answer("198.18.1.11:8080", "198.18.0.2:44001", tcp_flags::ACK);
        lab.expect(
            "a mid-stream answer is adopted as established",
            &data,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&data, "198.18.100.1:80"),
        );
        // UDP, and IPv6.
        let udp = Frame::udp("198.18.1.11:5353", "198.18.0.2:44002").with(|f| f.eth_dst = S0_MAC);
        lab.expect(
            "a UDP answer",
            &udp,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&udp, "198.18.100.1:53"),
        );
        let query = Frame::udp("198.18.0.2:44002", "198.18.100.1:53");
        lab.expect(
            "the client's next datagram goes to the backend that answered",
            &query,
            lab.c0,
            XDP_REDIRECT,
            &to_backend(&query, "198.18.1.11:5353", backend_mac(0x11), S0_MAC),
        );
        let six = answer(
            "[fd00:1::12]:8080",
            "[fd00::2]:44003",
            tcp_flags::SYN | tcp_flags::ACK,
        );
        lab.expect(
            "an IPv6 SYN-ACK",
            &six,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&six, "[fd00:100::1]:80"),
        );
        assert_eq!(lab.event(events::FLOW_ADOPTED), 4);
        assert_eq!(lab.event(events::REPLY_UNADOPTED), 0);
        // A packet from a port no NAT backend has at that address: not a backend's.
        let stranger = answer("198.18.1.99:8081", "198.18.0.2:44004", tcp_flags::ACK);
        assert_eq!(lab.run(&stranger.build(), lab.s0).0, XDP_PASS);
        // A backend's answer to this host itself (a health check's): for the host.
        let check = answer(
            "198.18.1.12:8080",
            "198.18.1.1:45000",
            tcp_flags::SYN | tcp_flags::ACK,
        );
        assert_eq!(lab.run(&check.build(), lab.s0).0, XDP_PASS);
        assert_eq!(lab.event(events::FLOW_ADOPTED), 4);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_backend_of_several_vips_whose_answer_comes_first_is_dropped_not_leaked() {
    with_lab_config(reply::SHARED, |lab| {
        lab.dataplane.fleet_switch.share_flows(true).unwrap();
        let synack = answer(
            "198.18.1.11:8080",
            "198.18.0.2:44000",
            tcp_flags::SYN | tcp_flags::ACK,
        );
        assert_eq!(lab.run(&synack.build(), lab.s0).0, XDP_DROP);
        assert_eq!(lab.event(events::REPLY_UNADOPTED), 1);
        assert_eq!(lab.event(events::FLOW_ADOPTED), 0);
    });
}
