//! Tier 3: xlb where users run it first, on veth links left at their default offloads
//! (transmit checksum offload and TSO on, GRO on after the links came up), with no program on
//! the peers. Native XDP blackholed there and generic XDP broke bulk TCP; xlb must choose a
//! hook that is correct (tc), refuse the ones that are not, and say why. Needs root: run with
//! `cargo xtask test`.

use std::{net::SocketAddr, time::Instant};

mod common;

use common::{event, stats};
use xlb_tests::{
    client::{start_download, upload},
    netns::Netns,
    scenario::{
        TCP_SERVICE_PORT, balancer_config, dual_stack_config, run_traffic, start_backends,
        start_xlb,
    },
    topology::{Lab, Offloads, VIP, VIP6, Wiring},
};

/// Bytes of each bulk stream.
const BULK: usize = 100 * 1024 * 1024;

/// A checksum-error counter of `/proc/net/snmp` on `host` (`Tcp` or `Udp`, `InCsumErrors`):
/// what a receiver counts when a balancer forwards a packet whose checksum is wrong.
fn checksum_errors(host: &Netns, protocol: &str) -> u64 {
    let snmp = host.exec("cat", &["/proc/net/snmp"]).unwrap();
    let mut lines = snmp
        .lines()
        .filter(|l| l.starts_with(&format!("{protocol}:")));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "InCsumErrors")
        .unwrap();
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// The IPv6 twin of `checksum_errors` (`/proc/net/snmp6`, `Tcp` has none there: IPv6 TCP
/// errors are counted in `/proc/net/snmp` too; UDP has `Udp6InCsumErrors`).
fn udp6_checksum_errors(host: &Netns) -> u64 {
    let snmp = host.exec("cat", &["/proc/net/snmp6"]).unwrap();
    snmp.lines()
        .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn bulk_streams_cross_byte_exact_both_ways_at_the_hook_auto_chooses() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let xlb = start_xlb(&lab.balancer, &dual_stack_config(&lab, "auto")).unwrap();
    assert!(xlb.output().contains("hook=tc"), "{}", xlb.output());

    for vip in [
        SocketAddr::new(VIP.into(), TCP_SERVICE_PORT),
        SocketAddr::new(VIP6.into(), TCP_SERVICE_PORT),
    ] {
        lab.client
            .enter(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let started = Instant::now();
                    let download = start_download(vip, BULK, 0).await.unwrap();
                    let backend = download.backend.clone();
                    let received = download
                        .finish()
                        .await
                        .unwrap_or_else(|e| panic!("{vip}: 100 MB download from {backend}: {e:#}"));
                    assert_eq!(received, BULK);
                    eprintln!(
                        "{vip}: 100 MB from {backend}, byte-exact, in {:.2?}",
                        started.elapsed()
                    );
                    let started = Instant::now();
                    let backend = upload(vip, BULK)
                        .await
                        .unwrap_or_else(|e| panic!("{vip}: 100 MB upload: {e:#}"));
                    eprintln!(
                        "{vip}: 100 MB to {backend}, byte-exact, in {:.2?}",
                        started.elapsed()
                    );
                });
            })
            .unwrap();
    }

    // No receiver saw a corrupt checksum, and no packet was passed for being oversized.
    for host in lab.backends.iter().chain([&lab.client]) {
        assert_eq!(
            checksum_errors(host, "Tcp"),
            0,
            "{}: TCP checksum errors",
            host.name()
        );
        assert_eq!(
            checksum_errors(host, "Udp"),
            0,
            "{}: UDP checksum errors",
            host.name()
        );
        assert_eq!(
            udp6_checksum_errors(host),
            0,
            "{}: UDP6 checksum errors",
            host.name()
        );
    }
    assert_eq!(event(&stats(&xlb), "oversized_passed"), 0);
}

/// Runs `xlb check` on the balancer host with `config`; returns (exit code, stdout, stderr).
fn check(host: &Netns, config: &str) -> (i32, String, String) {
    xlb_tests::daemon::check(host, config).unwrap()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn xdp_modes_are_refused_where_they_would_corrupt_packets_and_auto_says_why() {
    let lab = Lab::new(Wiring::TwoInterfaces, 1).unwrap();
    let config = |mode: &str| dual_stack_config(&lab, mode);

    // auto: tc on both, and the reason, naming each peer and where it lives.
    let (code, stdout, stderr) = check(&lab.balancer, &config("auto"));
    assert_eq!(code, 0, "{stderr}");
    for (interface, peer, host) in [("eth0", "eth0", &lab.client), ("eth1", "lb", &lab.switch)] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("interface {interface} ")))
            .unwrap_or_else(|| panic!("no line for {interface}:\n{stdout}"));
        for part in [
            format!("veth, peer {peer} in network namespace {}", host.name()),
            "→ tc".to_owned(),
            "tx-checksum-ip-generic".to_owned(),
        ] {
            assert!(line.contains(&part), "{part:?} missing from {line:?}");
        }
    }

    // native and generic: refused, for each interface, with the cause and the fix.
    for mode in ["native", "generic"] {
        let (code, _, stderr) = check(&lab.balancer, &config(mode));
        assert_eq!(code, 1, "xdp_mode = {mode} must be refused:\n{stderr}");
        for interface in ["eth0", "eth1"] {
            assert!(
                stderr.contains(&format!("interface {interface} (veth, peer")),
                "{mode}: {interface} not named:\n{stderr}"
            );
        }
        for part in [
            "would corrupt packets",
            "partial checksums",
            "xdp_mode = \"tc\"",
            "ethtool -K",
        ] {
            assert!(stderr.contains(part), "{mode}: {part:?} missing:\n{stderr}");
        }
        if mode == "generic" {
            assert!(
                stderr.contains("rx-gro"),
                "generic: GRO not named:\n{stderr}"
            );
        }
    }

    // `xlb run` refuses too, and attaches nothing.
    let refused = start_xlb(&lab.balancer, &config("native"));
    let error = refused.err().expect("xlb run must refuse native here");
    assert!(
        format!("{error:#}").contains("would corrupt packets"),
        "{error:#}"
    );
    for interface in &lab.balancer_interfaces {
        assert!(common::hooks_attached(&lab.balancer, interface).is_empty());
    }

    // The operator may state otherwise.
    let (code, stdout, stderr) = check(
        &lab.balancer,
        &format!("assume_complete_checksums = true\n{}", config("native")),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("→ native (complete checksums as the config assumes)"),
        "{stdout}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn prepared_links_are_recognised() {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 1, Offloads::Prepared).unwrap();
    let (code, stdout, stderr) = check(&lab.balancer, &dual_stack_config(&lab, "native"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.matches("→ native (complete checksums)").count(),
        2,
        "{stdout}"
    );
    // auto still uses tc on veth (native there needs the peers prepared for redirects too).
    let (code, stdout, _) = check(&lab.balancer, &dual_stack_config(&lab, "auto"));
    assert_eq!(code, 0);
    assert_eq!(
        stdout
            .matches("→ tc (auto uses native XDP on NICs only)")
            .count(),
        2,
        "{stdout}"
    );
    // Generic needs GRO off as well, which these links (prepared for native) have on.
    let (code, _, stderr) = check(&lab.balancer, &dual_stack_config(&lab, "generic"));
    assert_eq!(code, 1);
    assert!(stderr.contains("ethtool -K eth0 gro off"), "{stderr}");
}

/// A counter of `interface` on `host` (`/sys/class/net/<interface>/statistics/<counter>`).
fn link_counter(host: &Netns, interface: &str, counter: &str) -> u64 {
    let path = format!("/sys/class/net/{interface}/statistics/{counter}");
    let text = host.exec("cat", &[&path]).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {path}: {text:?}: {e}", host.name()))
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn tc_hands_packets_to_the_veth_peer_unless_turned_off() {
    // Where the packets leave: with the handoff (the default), straight into the peer's
    // receive path, so the balancer's veths transmit only what its own stack sends (health
    // checks, neighbour discovery); turned off by a reload, every forwarded packet is
    // transmitted by them. Either way the backends receive every packet and the traffic is
    // served byte for byte.
    let lab = Lab::new(Wiring::TwoInterfaces, 2).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let xlb = start_xlb(&lab.balancer, &balancer_config(&lab, "auto")).unwrap();
    for interface in ["eth0", "eth1"] {
        let line = format!("interface {interface}: packets for it are handed to its veth peer");
        assert!(xlb.output().contains(&line), "{}", xlb.output());
    }

    let transmitted = |interface| link_counter(&lab.balancer, interface, "tx_packets");
    let received = || -> u64 {
        lab.backends
            .iter()
            .map(|b| link_counter(b, "eth0", "rx_packets"))
            .sum()
    };
    for handoff in [true, false] {
        if !handoff {
            let running = std::fs::read_to_string(&xlb.config_path).unwrap();
            let config = format!("veth_peer_redirect = false\n{running}");
            std::fs::write(&xlb.config_path, config).unwrap();
            let (code, _, stderr) = xlb.cli(&["reload"]).unwrap();
            assert_eq!(code, 0, "{stderr}");
            // Flows that reuse a port pick the change up when their entry is next refreshed.
            std::thread::sleep(std::time::Duration::from_millis(1_500));
        }
        let before = (transmitted("eth0"), transmitted("eth1"), received());
        let traffic = run_traffic(&lab, 20, 200).unwrap();
        assert_eq!((traffic.tcp.len(), traffic.udp.len()), (20, 200));
        let to_clients = transmitted("eth0") - before.0;
        let to_backends = transmitted("eth1") - before.1;
        let at_backends = received() - before.2;
        eprintln!(
            "veth_peer_redirect = {handoff}: backends received {at_backends} packets; the \
             balancer transmitted {to_backends} on eth1, {to_clients} on eth0"
        );
        // 200 flows of 3 datagrams, and 20 connections of 20 to 50 kB (fewer packets after GRO).
        assert!(at_backends >= 600, "{at_backends}");
        if handoff {
            assert!(
                to_backends * 4 < at_backends,
                "{to_backends} of {at_backends}"
            );
            assert!(
                to_clients * 4 < at_backends,
                "{to_clients} vs {at_backends}"
            );
        } else {
            assert!(
                to_backends >= at_backends * 9 / 10,
                "{to_backends} of {at_backends}"
            );
            assert!(
                to_clients * 4 >= at_backends,
                "{to_clients} vs {at_backends}"
            );
        }
    }
}
