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
    scenario::{TCP_SERVICE_PORT, dual_stack_config, start_backends, start_xlb},
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
