//! Passive health and admission: a backend's refusal of a handshake marks it suspect and new
//! flows skip it; only the backend's RST that answers the very SYN counts; a retransmitted SYN
//! its backend never answered goes to another backend; the share cap; the per-prefix bucket.

use lb_common::passive::UNANSWERED_AFTER_NS;

use super::*;

const VIP: &str = "198.18.100.1:80";

/// A client's SYN from `port`, with sequence number 1000 (so its answer acknowledges 1001).
fn syn(port: u16) -> Frame {
    Frame::tcp(&format!("198.18.0.2:{port}"), VIP)
}

/// Backend `.last`'s packet to the client's `port` with `flags`, acknowledging `ack`.
fn from_backend(last: u8, port: u16, flags: u8, ack: u32) -> Frame {
    Frame::tcp(
        &format!("198.18.1.{last:x}:8080"),
        &format!("198.18.0.2:{port}"),
    )
    .with(|f| {
        f.transport = Transport::Tcp { flags, seq: 7_000 };
        f.tcp_ack = ack;
        f.eth_dst = S0_MAC;
        f.eth_src = backend_mac(last);
    })
}

/// Where a new flow's first packet goes: backend `.last` of the web service.
fn placed(input: &Frame, last: u8) -> Frame {
    to_backend(
        input,
        &format!("198.18.1.{last:x}:8080"),
        backend_mac(last),
        S0_MAC,
    )
}

impl PacketLab {
    /// Whether backend `id` is suspect now, by its mark.
    fn suspect(&self, id: u32) -> bool {
        let mark = self.dataplane.maps.passive.mark(id).unwrap();
        mark.suspect_until_ns > xlb::dataplane::monotonic_ns().unwrap()
    }
}

/// A RST from the backend that acknowledges the client's SYN marks the backend suspect at
/// once, and the next new flow whose turn falls on it takes the next slot. A RST from the
/// client, from the backend on a flow no longer half-open, or from the backend with another
/// acknowledgement number, changes nothing. Once
/// the daemon clears the mark, the backend takes its turns again.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_refused_handshake_marks_its_backend_and_new_flows_skip_it() {
    with_lab(|lab| {
        let ids = lab.backend_ids("web");
        for (port, last) in [
            (40_000, 0x11),
            (40_001, 0x12),
            (40_002, 0x13),
            (40_003, 0x11),
        ] {
            let frame = syn(port);
            lab.expect("SYN", &frame, lab.c0, XDP_REDIRECT, &placed(&frame, last));
        }
        // The client resets flow 40003 (its packet completes and closes it); the backend's
        // RST then answers a flow that is no longer half-open.
        let client_rst = syn(40_003).with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::RST | tcp_flags::ACK,
                seq: 1_001,
            }
        });
        let late_rst = from_backend(0x11, 40_003, tcp_flags::RST | tcp_flags::ACK, 1_001);
        let wrong_ack = from_backend(0x11, 40_000, tcp_flags::RST | tcp_flags::ACK, 5_000);
        let refusal = from_backend(0x11, 40_000, tcp_flags::RST | tcp_flags::ACK, 1_001);
        lab.run_cases(&[
            Case::new(
                "the client's RST",
                &client_rst,
                Port::Clients,
                XDP_REDIRECT,
                &placed(&client_rst, 0x11),
            ),
            Case::new(
                "a backend RST on a flow no longer half-open",
                &late_rst,
                Port::Servers,
                XDP_REDIRECT,
                &to_client(&late_rst, VIP),
            ),
            Case::new(
                "a backend RST acknowledging something else",
                &wrong_ack,
                Port::Servers,
                XDP_REDIRECT,
                &to_client(&wrong_ack, VIP),
            ),
        ]);
        assert!(!lab.suspect(ids[0]), "none of these RSTs counts");
        assert_eq!(lab.event(events::PASSIVE_REFUSED), 0);

        let second = syn(40_010);
        let third = syn(40_011);
        lab.run_cases(&[
            Case::new(
                "the refusal",
                &refusal,
                Port::Servers,
                XDP_REDIRECT,
                &to_client(&refusal, VIP),
            ),
            Case::new(
                "next SYN",
                &second,
                Port::Clients,
                XDP_REDIRECT,
                &placed(&second, 0x12),
            ),
            Case::new(
                "next SYN",
                &third,
                Port::Clients,
                XDP_REDIRECT,
                &placed(&third, 0x13),
            ),
        ]);
        assert!(lab.suspect(ids[0]), "refused once: suspect");
        assert_eq!(lab.event(events::PASSIVE_REFUSED), 1);
        assert_eq!(lab.event(events::SUSPECT_MARKED), 1);
        let counters = lab.dataplane.maps.backend_counters(ids[0]).unwrap();
        assert_eq!(counters.refused, 1);

        // Slot 0 is the suspect's: the flow takes slot 1.
        let skipping = syn(40_012);
        lab.expect(
            "b1's turn",
            &skipping,
            lab.c0,
            XDP_REDIRECT,
            &placed(&skipping, 0x12),
        );
        assert_eq!(lab.event(events::SUSPECT_SKIPPED), 1);

        lab.dataplane.maps.passive.clear_mark(ids[0]).unwrap();
        for (port, last) in [(40_013, 0x12), (40_014, 0x13), (40_015, 0x11)] {
            let frame = syn(port);
            lab.expect(
                "after the mark is cleared",
                &frame,
                lab.c0,
                XDP_REDIRECT,
                &placed(&frame, last),
            );
        }
        assert_eq!(lab.event(events::SUSPECT_SKIPPED), 1);
    });
}

/// No more than the service's share of its backends (half of three: one) is suspect at once:
/// a second backend's refusal while the first is marked is counted but marks nothing; once
/// the first mark is cleared, the next refusal marks.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn no_more_than_the_share_of_backends_is_suspect_at_once() {
    with_lab(|lab| {
        let ids = lab.backend_ids("web");
        for (port, last) in [
            (41_000, 0x11),
            (41_001, 0x12),
            (41_002, 0x13),
            (41_003, 0x11),
        ] {
            let frame = syn(port);
            lab.expect("SYN", &frame, lab.c0, XDP_REDIRECT, &placed(&frame, last));
        }
        let refuse = |lab: &PacketLab, last: u8, port: u16| {
            let rst = from_backend(last, port, tcp_flags::RST | tcp_flags::ACK, 1_001);
            lab.expect("refusal", &rst, lab.s0, XDP_REDIRECT, &to_client(&rst, VIP));
        };
        refuse(lab, 0x11, 41_000);
        assert!(lab.suspect(ids[0]));
        refuse(lab, 0x12, 41_001);
        assert!(!lab.suspect(ids[1]), "the cap: one of three");
        assert_eq!(lab.event(events::SUSPECT_CAPPED), 1);
        assert_eq!(
            lab.dataplane.maps.backend_counters(ids[1]).unwrap().refused,
            1
        );

        lab.dataplane.maps.passive.clear_mark(ids[0]).unwrap();
        refuse(lab, 0x11, 41_003);
        assert!(
            lab.suspect(ids[0]),
            "the slot was free again, the same backend took it"
        );
        lab.dataplane.maps.passive.clear_mark(ids[0]).unwrap();
        // b2's window still holds its refusal: one more marks it.
        let frame = syn(41_004);
        lab.expect("SYN", &frame, lab.c0, XDP_REDIRECT, &placed(&frame, 0x12));
        refuse(lab, 0x12, 41_004);
        assert!(lab.suspect(ids[1]));
        assert_eq!(lab.event(events::SUSPECT_MARKED), 3);
    });
}

/// A SYN the client retransmits while its backend has not answered goes to another backend
/// (the backend never answered, so nothing is lost): its answer is translated, the first
/// backend's late answer is not ours, and the client's ACK follows the new backend. A SYN
/// retransmitted after the backend answered stays where it was.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_retransmitted_syn_its_backend_never_answered_goes_to_another_backend() {
    with_lab(|lab| {
        let ids = lab.backend_ids("web");
        let unanswered = syn(42_000);
        let answered = syn(42_001);
        lab.expect(
            "SYN",
            &unanswered,
            lab.c0,
            XDP_REDIRECT,
            &placed(&unanswered, 0x11),
        );
        lab.expect(
            "SYN",
            &answered,
            lab.c0,
            XDP_REDIRECT,
            &placed(&answered, 0x12),
        );
        let syn_ack = from_backend(0x12, 42_001, tcp_flags::SYN | tcp_flags::ACK, 1_001);
        lab.expect(
            "SYN-ACK",
            &syn_ack,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&syn_ack, VIP),
        );

        // Too soon for a retransmission: a duplicate stays.
        lab.expect(
            "duplicate",
            &unanswered,
            lab.c0,
            XDP_REDIRECT,
            &placed(&unanswered, 0x11),
        );
        std::thread::sleep(Duration::from_nanos(UNANSWERED_AFTER_NS) + Duration::from_millis(50));

        // A SYN's entry is inserted after its backend is chosen, so each copy of a SYN took a
        // turn: the duplicate slot 2, the retransmission slot 0 (b1, the backend to avoid),
        // and its re-placement slot 1 (b2).
        lab.expect(
            "retransmitted, unanswered",
            &unanswered,
            lab.c0,
            XDP_REDIRECT,
            &placed(&unanswered, 0x12),
        );
        lab.expect(
            "retransmitted, answered",
            &answered,
            lab.c0,
            XDP_REDIRECT,
            &placed(&answered, 0x12),
        );
        assert_eq!(lab.event(events::SYN_REPLACED), 1);
        assert_eq!(lab.event(events::PASSIVE_UNANSWERED), 1);
        assert_eq!(
            lab.dataplane
                .maps
                .backend_counters(ids[0])
                .unwrap()
                .unanswered,
            1
        );
        assert!(
            !lab.suspect(ids[0]),
            "one unanswered handshake of the two that mark"
        );

        let late = from_backend(0x11, 42_000, tcp_flags::SYN | tcp_flags::ACK, 1_001);
        let new_answer = from_backend(0x12, 42_000, tcp_flags::SYN | tcp_flags::ACK, 1_001);
        let ack = ack_of(&unanswered);
        lab.run_cases(&[
            Case::untouched(
                "the first backend's late answer",
                late.build(),
                Port::Servers,
            ),
            Case::new(
                "the new backend's answer",
                &new_answer,
                Port::Servers,
                XDP_REDIRECT,
                &to_client(&new_answer, VIP),
            ),
            Case::new(
                "the client's ACK",
                &ack,
                Port::Clients,
                XDP_REDIRECT,
                &placed(&ack, 0x12),
            ),
        ]);
    });
}

/// A SYN the client retransmits after its half-open flow was over (silent past the closing
/// timeout, which also holds a handshake) starts a new flow: its insert finds the old entry,
/// the packet follows it and finds it over, and the SYN is placed anew rather than dropped.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_syn_retransmitted_after_its_half_open_flow_was_over_starts_a_new_flow() {
    with_lab(|lab| {
        let first = syn(42_100);
        lab.expect("SYN", &first, lab.c0, XDP_REDIRECT, &placed(&first, 0x11));
        // Answered: its retransmission is not re-placed as unanswered, it follows the flow.
        let syn_ack = from_backend(0x11, 42_100, tcp_flags::SYN | tcp_flags::ACK, 1_001);
        lab.expect(
            "SYN-ACK",
            &syn_ack,
            lab.s0,
            XDP_REDIRECT,
            &to_client(&syn_ack, VIP),
        );
        lab.dataplane
            .maps
            .set_flow_timeouts(&FlowTimeouts {
                tcp_idle: Duration::from_secs(3_600),
                tcp_closing: Duration::from_millis(50),
                udp_idle: Duration::from_secs(60),
            })
            .unwrap();
        // The program looks at a flow's timeout at most once a second.
        std::thread::sleep(Duration::from_millis(1_100));
        let new_flows = lab.service_new_flows("web");
        // The cursor took slot 1 for the retransmission's first try, which found the old
        // entry; the new flow takes slot 2.
        lab.expect(
            "retransmitted after the flow was over",
            &first,
            lab.c0,
            XDP_REDIRECT,
            &placed(&first, 0x13),
        );
        assert_eq!(lab.event(events::FLOW_EXPIRED), 1);
        assert_eq!(lab.service_new_flows("web"), new_flows + 1);
        assert_eq!(lab.event(events::SYN_REPLACED), 0);
    });
}

/// Admission: a client prefix may open `burst` new flows at once and `rate` per second
/// after; the excess is dropped and counted. Another prefix has its own bucket, and packets
/// of admitted flows (a retransmitted SYN among them) are never limited; a packet without SYN that makes an entry (a
/// connection that lost its entry) is, with four times the burst.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn the_admission_bucket_admits_its_burst_and_rate_and_drops_the_excess() {
    let config = CONFIG.replace(
        "backends = [ { address = \"198.18.1.11:8080\" }, { address = \"198.18.1.12:8080\" }, { address = \"198.18.1.13:8080\" } ]",
        "backends = [ { address = \"198.18.1.11:8080\" }, { address = \"198.18.1.12:8080\" }, { address = \"198.18.1.13:8080\" } ]\nadmission = { rate = 10, burst = 3, ipv4_prefix = 24 }",
    );
    with_lab_config(&config, |lab| {
        let web = lab
            .balancer
            .services()
            .iter()
            .find(|s| s.name == "web")
            .unwrap()
            .id;
        let mut verdicts = Vec::new();
        for port in 43_000..43_005 {
            verdicts.push(verdict_name(lab.run(&syn(port).build(), lab.c0).0));
        }
        assert_eq!(
            verdicts,
            [
                "XDP_REDIRECT",
                "XDP_REDIRECT",
                "XDP_REDIRECT",
                "XDP_DROP",
                "XDP_DROP"
            ]
        );
        assert_eq!(lab.event(events::ADMISSION_DROPPED), 2);
        let counters = lab.dataplane.maps.service_counters(web).unwrap();
        assert_eq!((counters.admission_dropped, counters.new_flows), (2, 3));

        // A SYN the client retransmits is no new flow: with the bucket empty, it still
        // follows its half-open flow, and is neither dropped nor counted.
        lab.expect(
            "a retransmitted SYN of an admitted flow",
            &syn(43_001),
            lab.c0,
            XDP_REDIRECT,
            &placed(&syn(43_001), 0x12),
        );
        assert_eq!(lab.event(events::ADMISSION_DROPPED), 2);
        let counters = lab.dataplane.maps.service_counters(web).unwrap();
        assert_eq!((counters.admission_dropped, counters.new_flows), (2, 3));

        // Another /24 has its own bucket.
        let other = Frame::tcp("198.18.5.2:43000", VIP);
        assert_eq!(lab.run(&other.build(), lab.c0).0, XDP_REDIRECT);
        // An admitted flow's packets pass, however many; a packet without SYN whose
        // connection lost its entry is placed (by hash) within four times the burst, and
        // takes its turn of the bucket.
        let ack = ack_of(&syn(43_000));
        for _ in 0..5 {
            assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        }
        let midstream = ack_of(&syn(43_100));
        assert_eq!(lab.run(&midstream.build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.event(events::ADMISSION_DROPPED), 2);
        // Two tenths of a second later (the midstream packet took one), one more.
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(lab.run(&syn(43_010).build(), lab.c0).0, XDP_REDIRECT);
        assert_eq!(lab.run(&syn(43_011).build(), lab.c0).0, XDP_DROP);
    });
}

/// A flood of new UDP flows from one prefix, under an admission limit, cannot evict another
/// client's established flow from a small flow table: only the prefix's burst gets entries.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_udp_flood_from_one_prefix_cannot_evict_other_clients_flows() {
    let config = CONFIG
        .replace(
            "interfaces = [\"c0\", \"s0\"]",
            "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
        )
        .replace(
            "backends = [ { address = \"198.18.1.11:5353\" }, { address = \"198.18.1.12:5353\" } ]",
            "backends = [ { address = \"198.18.1.11:5353\" }, { address = \"198.18.1.12:5353\" } ]\nadmission = { rate = 10, burst = 100, ipv4_prefix = 16 }",
        );
    with_lab_config(&config, |lab| {
        let established = Frame::udp("198.18.0.2:5000", "198.18.100.1:53");
        let expected = to_backend(&established, "198.18.1.11:5353", backend_mac(0x11), S0_MAC);
        lab.expect(
            "first datagram",
            &established,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        let admitted = flood(lab, |client| Frame::udp(client, "198.18.100.1:53"));
        assert!(
            (100..=105).contains(&admitted),
            "the burst, and what the rate adds while the flood runs: {admitted}"
        );
        let key = flow_key("198.18.0.2:5000", "198.18.100.1:53", 17);
        assert!(
            lab.dataplane.maps.flow(&key).is_some(),
            "the established flow kept its entry"
        );
        lab.expect(
            "established, after the flood",
            &established,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
    });
}

/// TCP packets without SYN that make entries (a connection whose entry was lost, or one that
/// went through another instance) are held to the prefix's admission limit too, with four
/// times its burst: a flood of spoofed ACKs from one prefix takes about that many entries, not
/// one per packet.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_flood_of_acks_from_one_prefix_is_held_to_four_times_its_burst() {
    let config = CONFIG
        .replace(
            "interfaces = [\"c0\", \"s0\"]",
            "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 65536",
        )
        .replace(
            "backends = [ { address = \"198.18.1.11:8080\" }, { address = \"198.18.1.12:8080\" }, { address = \"198.18.1.13:8080\" } ]",
            "backends = [ { address = \"198.18.1.11:8080\" }, { address = \"198.18.1.12:8080\" }, { address = \"198.18.1.13:8080\" } ]\nadmission = { rate = 10, burst = 100, ipv4_prefix = 16 }",
        );
    with_lab_config(&config, |lab| {
        let admitted = flood(lab, |client| ack_of(&Frame::tcp(client, "198.18.100.1:80")));
        assert!(
            (400..=410).contains(&admitted),
            "four bursts, and what the rate adds while the flood runs: {admitted}"
        );
    });
}

/// 5,000 first packets (`frame` of each client) from clients of 198.19.0.0/16 arriving on
/// c0: how many were placed (the rest must be dropped).
fn flood(lab: &PacketLab, frame: impl Fn(&str) -> Frame) -> u32 {
    let mut admitted = 0;
    for i in 0..5_000u32 {
        let [_, _, c, d] = i.to_be_bytes();
        let client = format!("198.19.{c}.{d}:{}", 1_024 + i % 60_000);
        let (verdict, _) = lab.run(&frame(&client).build(), lab.c0);
        if verdict == XDP_REDIRECT {
            admitted += 1;
        } else {
            assert_eq!(verdict_name(verdict), "XDP_DROP");
        }
    }
    admitted
}
