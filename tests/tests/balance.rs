//! Tier 3: xlb between real clients and real servers, each host in its own network namespace
//! (see `xlb_tests::topology` and `xlb_tests::scenario`). Needs root: run with
//! `cargo xtask test`.
//!
//! The same round-robin scenario runs where users run xlb first, on veth links left at their
//! default offloads with `xdp_mode = "auto"` (which chooses tc there), and on links prepared
//! for XDP, in native and in generic mode.

use std::{collections::BTreeMap, time::Duration};

mod common;

use common::{attach_peer_programs, hooks_attached};
use xlb_tests::{
    scenario::{
        backend_name, dual_stack_config, run_traffic_to, start_backends, start_xlb_with, tally,
    },
    topology::{Lab, Offloads, VIP, VIP6, Wiring},
};

/// 30 concurrent TCP connections and 30 UDP flows through the VIP, over IPv4 and over IPv6:
/// each backend must get exactly 10 of each, and every payload must come back intact. Then
/// xlb stops with `--detach-on-exit` and leaves no program attached.
fn round_robin_end_to_end(wiring: Wiring, offloads: Offloads, mode: &str, hook: &str) {
    let lab = Lab::with_offloads(wiring, 3, offloads).unwrap();
    let _peer_programs = (offloads == Offloads::Prepared).then(|| attach_peer_programs(&lab));
    let _backends = start_backends(&lab).unwrap();
    let config = dual_stack_config(&lab, mode);
    let mut xlb = start_xlb_with(&lab.balancer, &config, &["--detach-on-exit"]).unwrap();
    assert!(
        xlb.output().contains(&format!("hook={hook}")),
        "xdp_mode = {mode:?} on {offloads:?} links should run at the {hook} hook:\n{}",
        xlb.output()
    );

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
        let attached = hooks_attached(&lab.balancer, interface);
        assert!(
            attached.is_empty(),
            "still attached to {interface} after shutdown: {attached:?}"
        );
    }
    let log = xlb.output();
    for service in ["web", "dns", "web6", "dns6"] {
        assert!(
            log.contains(&format!("service=\"{service}\" new_flows=30")),
            "30 flows counted for {service}:\n{log}"
        );
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_and_backends_behind_two_interfaces() {
    round_robin_end_to_end(Wiring::TwoInterfaces, Offloads::Default, "auto", "tc");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_and_backends_behind_one_interface() {
    round_robin_end_to_end(Wiring::OneInterface, Offloads::Default, "auto", "tc");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn native_xdp_on_links_prepared_for_it_two_interfaces() {
    round_robin_end_to_end(
        Wiring::TwoInterfaces,
        Offloads::Prepared,
        "native",
        "native",
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn native_xdp_on_links_prepared_for_it_one_interface() {
    round_robin_end_to_end(Wiring::OneInterface, Offloads::Prepared, "native", "native");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn generic_xdp_on_links_prepared_for_it() {
    round_robin_end_to_end(
        Wiring::TwoInterfaces,
        Offloads::PreparedNoGro,
        "generic",
        "generic",
    );
}
