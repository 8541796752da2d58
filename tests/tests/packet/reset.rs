//! An operator ends a connection (`xlb backend reset`): the daemon marks its entry, and its
//! next packet, in either direction, leaves as a RST (its sequence number, which the receiver
//! expects, and its checksum kept right), the flow closing; the packets after pass as before.

use lb_common::consts::flow_flags;

use super::*;

/// Marks the established flow of `key` to be reset, as the daemon does.
fn mark(lab: &mut PacketLab, key: &FlowKey) {
    let marked = lab.dataplane.maps.flows.update(key, |entry| {
        entry.flags |= flow_flags::RESET;
        entry.to_backend.ifindex = 0;
        entry.to_client.ifindex = 0;
        true
    });
    assert!(marked, "no established flow {key:?}");
}

/// A TCP packet of `frame`'s addresses with `flags`, `seq` and a payload.
fn segment(frame: &Frame, flags: u8, seq: u32) -> Frame {
    frame.clone().with(|f| {
        f.transport = Transport::Tcp { flags, seq };
        f.payload = b"more data".to_vec();
    })
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_reset_connections_next_packet_leaves_as_a_rst_either_way() {
    with_lab(|lab| {
        let ack = tcp_flags::ACK;
        let rst = tcp_flags::RST;
        // A client's connection, established, then reset: its next packet reaches the backend
        // as a RST, with its data and sequence number.
        let syn = Frame::tcp("198.18.0.2:43000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);
        let key = flow_key("198.18.0.2:43000", "198.18.100.1:80", 6);
        mark(lab, &key);
        let data = segment(&syn, ack | tcp_flags::PSH, 2_001);
        let reset = segment(&syn, ack | tcp_flags::PSH | rst, 2_001);
        let mac = backend_mac(0x11);
        let out = to_backend(&reset, "198.18.1.11:8080", mac, S0_MAC);
        lab.expect(
            "the client's next packet",
            &data,
            lab.c0,
            XDP_REDIRECT,
            &out,
        );
        let entry = lab.dataplane.maps.flows.get(&key).unwrap();
        assert_eq!(
            entry.flags & (flow_flags::RESET | flow_flags::CLOSING),
            flow_flags::CLOSING
        );
        // Once: the packet after passes unchanged but for the NAT.
        let after = segment(&syn, ack, 2_010);
        let out = to_backend(&after, "198.18.1.11:8080", mac, S0_MAC);
        lab.expect("the packet after", &after, lab.c0, XDP_REDIRECT, &out);

        // Another connection, reset: the backend's next packet reaches the client as a RST.
        let syn = Frame::tcp("198.18.0.2:43001", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);
        mark(lab, &flow_key("198.18.0.2:43001", "198.18.100.1:80", 6));
        let reply = |flags: u8| {
            Frame::tcp("198.18.1.12:8080", "198.18.0.2:43001").with(|f| {
                f.transport = Transport::Tcp { flags, seq: 5_000 };
                f.payload = b"answer".to_vec();
                f.eth_dst = S0_MAC;
                f.eth_src = backend_mac(0x12);
            })
        };
        let out = to_client(&reply(ack | rst), "198.18.100.1:80");
        lab.expect(
            "the backend's next packet",
            &reply(ack),
            lab.s0,
            XDP_REDIRECT,
            &out,
        );
    });
}
