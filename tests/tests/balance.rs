//! Tier 3: xlb between real clients and real servers, each host in its own network namespace
//! (see `xlb_tests::topology` and `xlb_tests::scenario`). Needs root: run with
//! `cargo xtask test`.

use std::{collections::BTreeMap, time::Duration};

mod common;

use common::attach_peer_programs;
use xlb_tests::{
    scenario::{
        backend_name, dual_stack_config, run_traffic_to, start_backends, start_xlb_with, tally,
    },
    topology::{Lab, VIP, VIP6, Wiring},
};

/// 30 concurrent TCP connections and 30 UDP flows through the VIP, over IPv4 and over IPv6:
/// each backend must get exactly 10 of each, and every payload must come back intact.
fn round_robin_end_to_end(wiring: Wiring) {
    let lab = Lab::new(wiring, 3).unwrap();
    let _peer_programs = attach_peer_programs(&lab);
    let _backends = start_backends(&lab).unwrap();
    let config = dual_stack_config(&lab, "native");
    let mut xlb = start_xlb_with(&lab.balancer, &config, &["--detach-on-exit"]).unwrap();

    let expected: BTreeMap<String, usize> = (0..3).map(|i| (backend_name(i), 10)).collect();
    for vip in [VIP.into(), VIP6.into()] {
        let traffic = run_traffic_to(&lab, vip, 30, 30)
            .unwrap_or_else(|e| panic!("{vip}: {e:#}\nxlb:\n{}", xlb.output()));
        assert_eq!(
            tally(&traffic.tcp),
            expected,
            "{vip}: TCP connections per backend"
        );
        assert_eq!(
            tally(&traffic.udp),
            expected,
            "{vip}: UDP flows per backend"
        );
    }

    let status = xlb.stop(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "xlb exited with {status}:\n{}",
        xlb.output()
    );
    for interface in &lab.balancer_interfaces {
        let link = lab
            .balancer
            .ip(&format!("link show dev {interface}"))
            .unwrap();
        assert!(
            !link.contains("xdp"),
            "XDP still attached to {interface} after shutdown:\n{link}"
        );
    }
    let log = xlb.output();
    assert!(
        log.contains("service=\"web\" new_flows=30"),
        "30 TCP flows counted:\n{log}"
    );
    assert!(
        log.contains("service=\"dns\" new_flows=30"),
        "30 UDP flows counted:\n{log}"
    );
    for service in ["web6", "dns6"] {
        assert!(
            log.contains(&format!("service=\"{service}\" new_flows=30")),
            "30 IPv6 flows counted for {service}:\n{log}"
        );
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_and_backends_behind_two_interfaces() {
    round_robin_end_to_end(Wiring::TwoInterfaces);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_and_backends_behind_one_interface() {
    round_robin_end_to_end(Wiring::OneInterface);
}
