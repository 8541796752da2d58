//! `xlb decap`'s program on a backend: a balancer's IPIP or GUE packet to a VIP leaves as the
//! inner packet; everything else passes untouched; encapsulated packets from elsewhere, to
//! other addresses, or malformed, are dropped and counted, never passed half-stripped.

use lb_common::tunnel::decap_counters;
use xlb::dataplane::{DecapProgram, DecapSettings};

use super::{tunnel::encapsulated, *};

/// The settings of the cases: the balancers' prefixes and the VIPs of `tunnel`'s services.
fn settings() -> DecapSettings {
    DecapSettings {
        from: vec![
            "198.18.1.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ],
        vips: vec![
            "198.18.100.7".parse().unwrap(),
            "fd00:100::7".parse().unwrap(),
        ],
        gue_port: 6080,
    }
}

/// `frame` with the 16-bit word at `offset` changed to `value`.
fn with_word(mut frame: Vec<u8>, offset: usize, value: u16) -> Vec<u8> {
    frame[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
    frame
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn decap_strips_the_balancers_packets_to_the_vips_and_nothing_else() {
    let ns = packet_net::build().expect("creating the namespace");
    ns.enter(|| {
        let program = DecapProgram::load(&settings()).expect("loading the decap program");
        let s0 = netif::index("s0").unwrap();
        let run = |frame: &[u8]| packet_net::run_tc(program.program(), frame, s0, 1).unwrap();
        let tunnels = [
            (
                "IPIP",
                "198.18.0.2:40001",
                "198.18.100.7:80",
                "198.18.1.1",
                false,
            ),
            (
                "GUE",
                "198.18.0.2:40002",
                "198.18.100.7:53",
                "198.18.1.1",
                true,
            ),
            (
                "IPIP6",
                "[fd00::2]:40003",
                "[fd00:100::7]:80",
                "fd00:1::1",
                false,
            ),
            (
                "GUE6",
                "[fd00::2]:40004",
                "[fd00:100::7]:53",
                "fd00:1::1",
                true,
            ),
        ];
        let mut expected = [0u64; decap_counters::COUNT as usize];
        for (what, client, vip, source, gue) in tunnels {
            let inner = if gue {
                Frame::udp(client, vip)
            } else {
                Frame::tcp(client, vip)
            };
            let backend = if inner.is_ipv6() {
                "fd00:50::11"
            } else {
                "198.18.50.11"
            };
            let input = encapsulated(&inner, source, backend, gue);
            // Out: the same Ethernet header, then the inner packet as it was sent.
            let mut stripped = input[..14].to_vec();
            stripped.extend_from_slice(&inner.clone().with(|f| f.ttl -= 1).ip_packet());
            let result = run(&input);
            assert_eq!((what, result.verdict), (what, 0), "{what}: TC_ACT_OK");
            assert_eq!(
                result.frame,
                stripped,
                "{what}: {}",
                hex_diff(&stripped, &result.frame)
            );
            verify_checksums(&result.frame).unwrap();
            expected[decap_counters::DECAPSULATED as usize] += 1;

            // From a source outside the balancers' prefixes: dropped.
            let elsewhere = if inner.is_ipv6() {
                "fd00:9::9"
            } else {
                "198.18.9.9"
            };
            let foreign = encapsulated(&inner, elsewhere, backend, gue);
            assert_eq!(
                run(&foreign).verdict,
                TC_ACT_SHOT,
                "{what} from {elsewhere}"
            );
            // To an address that is no VIP: dropped.
            let other_vip = inner.clone().with(|f| {
                f.dst.set_ip(if f.is_ipv6() {
                    "fd00:100::99".parse().unwrap()
                } else {
                    "198.18.100.99".parse().unwrap()
                })
            });
            let misdirected = encapsulated(&other_vip, source, backend, gue);
            assert_eq!(
                run(&misdirected).verdict,
                TC_ACT_SHOT,
                "{what} to another address"
            );
            expected[decap_counters::FOREIGN as usize] += 2;

            // Cut short: the outer header says more than the frame holds.
            let cut = input[..input.len() - 10].to_vec();
            assert_eq!(run(&cut).verdict, TC_ACT_SHOT, "{what} cut short");
            // An inner length the outer header does not leave.
            let inner_length = if inner.is_ipv6() { 4 } else { 2 };
            let at =
                14 + if inner.is_ipv6() { 40 } else { 20 } + if gue { 8 } else { 0 } + inner_length;
            let length = u16::from_be_bytes([input[at], input[at + 1]]);
            let lying = with_word(input.clone(), at, length + 1);
            assert_eq!(
                run(&lying).verdict,
                TC_ACT_SHOT,
                "{what} with a wrong inner length"
            );
            expected[decap_counters::MALFORMED as usize] += 2;
        }
        // Not encapsulated, or not for this program: untouched.
        let plain = Frame::tcp("198.18.0.2:40005", "198.18.100.7:80").build();
        let other_udp = Frame::udp("198.18.1.1:40006", "198.18.50.11:6081").build();
        let mut six_in_four = encapsulated(
            &Frame::tcp("198.18.0.2:40007", "198.18.100.7:80"),
            "198.18.1.1",
            "198.18.50.11",
            false,
        );
        six_in_four[14 + 9] = 41; // 6in4's protocol: another tunnel's
        for (what, frame) in [
            ("a plain packet", plain),
            ("UDP to another port", other_udp),
            ("6in4", six_in_four),
        ] {
            let result = run(&frame);
            assert_eq!((what, result.verdict), (what, 0), "{what} passes");
            assert_eq!(result.frame, frame, "{what} untouched");
        }
        assert_eq!(program.counters().unwrap(), expected);
    })
    .expect("entering the namespace");
}
