//! Tier 3: xlb between real clients and real servers, each host in its own network namespace
//! (see `xlb_tests::topology` and `xlb_tests::scenario`). Needs root: run with
//! `cargo xtask test`.

use std::{collections::BTreeMap, time::Duration};

use xlb::dataplane::NoopProgram;
use xlb_tests::{
    scenario::{backend_name, balancer_config, run_traffic, start_backends, start_xlb_with, tally},
    topology::{Lab, Wiring},
};

/// Attaches the reference XDP program to the far end of each of the balancer's links (see
/// `Lab::balancer_peers`); they stay attached while the returned programs live.
fn attach_peer_programs(lab: &Lab) -> Vec<NoopProgram> {
    lab.balancer_peers()
        .into_iter()
        .map(|(host, interface)| {
            host.enter(|| {
                let mut program = NoopProgram::load()?;
                program.attach(interface)?;
                anyhow::Ok(program)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{interface}: {e:#}"))
        })
        .collect()
}

/// 30 concurrent TCP connections and 30 UDP flows through the VIP: each backend must get
/// exactly 10 of each, and every payload must come back intact.
fn round_robin_end_to_end(wiring: Wiring) {
    let lab = Lab::new(wiring, 3).unwrap();
    let _peer_programs = attach_peer_programs(&lab);
    let _backends = start_backends(&lab).unwrap();
    let config = balancer_config(&lab, "native");
    let mut xlb = start_xlb_with(&lab.balancer, &config, &["--detach-on-exit"]).unwrap();

    let traffic =
        run_traffic(&lab, 30, 30).unwrap_or_else(|e| panic!("{e:#}\nxlb:\n{}", xlb.output()));

    let expected: BTreeMap<String, usize> = (0..3).map(|i| (backend_name(i), 10)).collect();
    assert_eq!(tally(&traffic.tcp), expected, "TCP connections per backend");
    assert_eq!(tally(&traffic.udp), expected, "UDP flows per backend");

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
