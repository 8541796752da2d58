//! Packets to a VIP that no flow or service takes: dropped and counted, not passed to the
//! host (where they would reach its own sockets, or loop back to the router), but for the
//! ports the operator lets the host answer (`host_ports`).

use super::*;
use xlb::control::DataplaneReads as _;

/// The packets to each VIP that no service took, as the data plane counted them.
fn unserved(lab: &PacketLab) -> Vec<(u32, u64)> {
    lab.dataplane
        .maps
        .vips_unserved()
        .unwrap()
        .into_iter()
        .map(|(vip, count)| (vip.addr[0], count))
        .collect()
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn packets_to_a_vip_that_no_service_takes_are_dropped_and_counted() {
    with_lab(|lab| {
        let ssh = Frame::tcp("198.18.0.2:40000", "198.18.100.1:22");
        let scan = Frame::udp("198.18.0.2:40000", "198.18.100.2:9999");
        let scan6 = Frame::udp("[fd00::2]:40000", "[fd00:100::1]:9999");
        let host = Frame::tcp("198.18.0.2:40000", "198.18.0.1:22");
        let before = lab.event(events::VIP_UNSERVED);
        lab.expect_bytes(
            "SYN to a VIP's port with no service",
            &ssh.build(),
            lab.c0,
            XDP_DROP,
            &ssh.build(),
        );
        lab.expect_bytes(
            "UDP to a VIP's port with no service",
            &scan.build(),
            lab.c0,
            XDP_DROP,
            &scan.build(),
        );
        lab.expect_bytes(
            "UDP to an IPv6 VIP's port with no service",
            &scan6.build(),
            lab.c0,
            XDP_DROP,
            &scan6.build(),
        );
        lab.run_cases(&[Case::untouched(
            "to the host's own address: not xlb's",
            host.build(),
            Port::Clients,
        )]);
        assert_eq!(lab.event(events::VIP_UNSERVED), before + 3);
        let counts = unserved(lab);
        let vip = |text: &str| addr_field(text.parse().unwrap())[0];
        assert!(counts.contains(&(vip("198.18.100.1"), 1)), "{counts:?}");
        assert!(counts.contains(&(vip("198.18.100.2"), 1)), "{counts:?}");
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn the_host_answers_on_the_vips_the_ports_it_is_given() {
    let config = format!("host_ports = [\"tcp/22\"]\n{CONFIG}");
    with_lab_config(&config, |lab| {
        let ssh = Frame::tcp("198.18.0.2:40000", "198.18.100.1:22");
        let udp = Frame::udp("198.18.0.2:40000", "198.18.100.1:22");
        lab.run_cases(&[Case::untouched(
            "tcp/22 is the host's",
            ssh.build(),
            Port::Clients,
        )]);
        lab.expect_bytes(
            "udp/22 is not",
            &udp.build(),
            lab.c0,
            XDP_DROP,
            &udp.build(),
        );
    });
}

/// Frames not addressed to the interface they arrived on (another host's MAC, which a bridge
/// floods to every port when it forgot where that MAC is; broadcast) are passed untouched,
/// never balanced: the host they were for balances them.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn frames_for_another_mac_are_not_balanced() {
    with_lab(|lab| {
        let syn = Frame::tcp("198.18.0.2:41000", "198.18.100.1:80");
        let other_host = syn
            .clone()
            .with(|f| f.eth_dst = [0x02, 0, 0, 0, 0x09, 0x99]);
        let broadcast = syn.clone().with(|f| f.eth_dst = [0xff; 6]);
        let before = lab.event(events::OTHER_HOST);
        lab.run_cases(&[
            Case::untouched(
                "a SYN to the VIP for another MAC",
                other_host.build(),
                Port::Clients,
            ),
            Case::untouched(
                "a SYN to the VIP, broadcast",
                broadcast.build(),
                Port::Clients,
            ),
        ]);
        assert_eq!(lab.event(events::OTHER_HOST), before + 2);
        let key = flow_key("198.18.0.2:41000", "198.18.100.1:80", 6);
        assert!(lab.dataplane.maps.flow(&key).is_none(), "no flow was made");
        // The same SYN to the interface's MAC is balanced.
        let (verdict, _) = lab.run(&syn.build(), lab.c0);
        assert_ne!(verdict, XDP_PASS);
    });
}
