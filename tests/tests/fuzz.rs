//! Tier 2: the fuzzer. Generated and mutated frames (see `xlb_tests::fuzz`) run through the
//! loaded program with BPF_PROG_TEST_RUN, and every result is checked against invariants that
//! hold whatever the input:
//!
//! - the verdict is one the program documents: DROP, PASS, TX or REDIRECT (never ABORTED);
//! - the frame keeps its length;
//! - a frame is changed only if the reference parser reads it as a TCP/UDP packet to a service
//!   or of a known flow, an echo request to a VIP, or an ICMP error quoting a known flow;
//! - a changed frame whose checksums were valid has valid checksums;
//! - a frame is dropped only if it is a new flow to a service.
//!
//! `cargo xtask test` runs 20,000 cases with a fixed seed; `cargo xtask fuzz` runs a million
//! (or `--cases N`, `--seed S`). Needs root.

use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use xlb::{
    config::Config,
    control::{Balancer, ServiceSpec},
    dataplane::Dataplane,
    netif,
    wire::{addr_field, family_of, port_field},
};
use xlb_tests::{
    fuzz::{self, Reading, Tuple, WORLD_CONFIG, World},
    packet::verify_checksums,
    packet_net,
};

/// Cases run by `cargo xtask test`.
const DEFAULT_CASES: u64 = 20_000;
/// The seed of the cases `cargo xtask test` runs.
const DEFAULT_SEED: u64 = 0x786c_6266_757a_7a31;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => {
            let value = value.trim();
            let parsed = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number"))
        }
        Err(_) => default,
    }
}

fn flow_key((src, dst, proto): &Tuple) -> lb_common::FlowKey {
    lb_common::FlowKey {
        src_addr: addr_field(src.ip()),
        dst_addr: addr_field(dst.ip()),
        src_port: port_field(src.port()),
        dst_port: port_field(dst.port()),
        proto: *proto,
        family: family_of(src.ip()),
        _pad: [0; 2],
    }
}

const VERDICTS: [&str; 5] = ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"];

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test` or `cargo xtask fuzz`"]
fn hostile_frames_never_break_the_invariants() {
    let cases = env_number("XLB_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_number("XLB_FUZZ_SEED", DEFAULT_SEED);
    let world = World::packet_net();
    let ns = packet_net::build().expect("creating the namespace");
    ns.enter(|| {
        let config = Config::parse(WORLD_CONFIG).expect("valid config");
        let mut dataplane = Dataplane::load(config.flow_table_size).expect("loading the program");
        Balancer::new()
            .apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)
            .expect("applying the config");
        let interfaces = [netif::index("c0").unwrap(), netif::index("s0").unwrap()];
        for ifindex in interfaces {
            dataplane.maps.add_egress_port(ifindex).unwrap();
        }
        let is_service = |dst: &SocketAddr, proto: u8| world.services.contains(&(*dst, proto));
        let is_vip = |ip: &std::net::IpAddr| world.services.iter().any(|(s, _)| s.ip() == *ip);

        let started = Instant::now();
        let mut verdicts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut changed = 0u64;
        for index in 0..cases {
            let input = fuzz::frame(seed, index, &world);
            let reading = fuzz::read(&input);
            let to_service =
                matches!(&reading, Reading::Transport((_, dst, proto)) if is_service(dst, *proto));
            let may_change = match &reading {
                Reading::Transport(tuple) => {
                    to_service || dataplane.maps.flow(&flow_key(tuple)).is_some()
                }
                Reading::Echo(ip) => is_vip(ip),
                Reading::IcmpError {
                    quoted: (src, dst, proto),
                    ..
                } => dataplane
                    .maps
                    .flow(&flow_key(&(*dst, *src, *proto)))
                    .is_some(),
                Reading::Untouchable => false,
            };
            let ifindex = interfaces[(index % 2) as usize];
            let result = packet_net::run(dataplane.program(), &input, ifindex, 1)
                .unwrap_or_else(|e| panic!("case {index} (seed {seed:#x}): {e:#}"));
            let replay = format!(
                "case {index}, seed {seed:#x} (replay: XLB_FUZZ_SEED={seed:#x} \
                 XLB_FUZZ_CASES={}); read as {reading:?}\ninput  {input:02x?}\noutput {:02x?}",
                index + 1,
                result.frame
            );
            let verdict = VERDICTS.get(result.verdict as usize).copied();
            assert!(
                matches!(verdict, Some("DROP" | "PASS" | "TX" | "REDIRECT")),
                "undocumented verdict {}: {replay}",
                result.verdict
            );
            *verdicts.entry(verdict.unwrap()).or_default() += 1;
            assert_eq!(result.frame.len(), input.len(), "length changed: {replay}");
            if result.frame != input {
                changed += 1;
                assert!(
                    may_change,
                    "a frame that is not xlb's was changed: {replay}"
                );
                if verify_checksums(&input).is_ok() {
                    verify_checksums(&result.frame)
                        .unwrap_or_else(|e| panic!("{e} after the rewrite: {replay}"));
                }
            }
            if verdict == Some("DROP") {
                assert!(
                    to_service,
                    "dropped a frame that is no new flow to a service: {replay}"
                );
            }
        }
        eprintln!(
            "{cases} cases (seed {seed:#x}) in {:.1?}: {changed} changed; verdicts {verdicts:?}",
            started.elapsed()
        );
        assert!(
            changed > cases / 10,
            "only {changed} of {cases} frames were rewritten: the generator lost its aim"
        );
    })
    .expect("entering the namespace");
}
