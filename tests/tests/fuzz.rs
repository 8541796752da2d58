//! Tier 2: the fuzzer. Generated and mutated frames (see `xlb_tests::fuzz`) run through the
//! loaded program with BPF_PROG_TEST_RUN, and every result is checked against invariants that
//! hold whatever the input:
//!
//! - the verdict is one the program documents: DROP, PASS, TX or REDIRECT (never ABORTED);
//! - the frame keeps its length;
//! - a frame is changed only if the reference parser reads it as a TCP/UDP packet (or a first
//!   fragment of a datagram) to a service or of a known flow, a later fragment of a datagram
//!   whose first fragment recorded the ports of a known flow (the fuzzer keeps its own record
//!   of the first fragments it sent), an echo request to a VIP, or an ICMP error quoting a
//!   known flow;
//! - a changed frame whose checksums were valid has valid checksums (a fragment's IPv4 header
//!   checksum, since its transport checksum covers the whole datagram);
//! - a frame is dropped only if it is a new flow to a service, or a later fragment addressed to
//!   a VIP whose first fragment was not recorded;
//! - the tc program, run on the same frame with maps of its own in the same state, does exactly
//!   what the XDP program does: the same frame out, the same verdict (a tc redirect for
//!   `XDP_TX` and `XDP_REDIRECT`). Frames too short for the kernel to build an skb around
//!   (without a full IP header) run at XDP only.
//!
//! `cargo xtask test` runs 20,000 cases with a fixed seed; `cargo xtask fuzz` runs a million
//! (or `--cases N`, `--seed S`). Needs root.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Instant,
};

use xlb::{
    config::Config,
    control::{Balancer, ServiceSpec},
    dataplane::Dataplane,
    sys::netif,
    wire::{addr_field, family_of, port_field},
};
use xlb_tests::{
    fuzz::{self, Datagram, Reading, Tuple, WORLD_CONFIG, World, ipv4_header_ok},
    packet::{LB_MAC, verify_checksums},
    packet_net::{self, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
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

/// Whether the kernel builds an skb around `frame` for a tc test run: it needs the fixed
/// header of an IPv4 or IPv6 packet whole (any other EtherType, just the Ethernet header).
fn skb_buildable(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() >= 14 + 20,
        Some([0x86, 0xdd]) => frame.len() >= 14 + 40,
        Some(_) => frame.len() > 14,
        None => false,
    }
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test` or `cargo xtask fuzz`"]
fn hostile_frames_never_break_the_invariants() {
    let cases = env_number("XLB_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_number("XLB_FUZZ_SEED", DEFAULT_SEED);
    let world = World::packet_net();
    let ns = packet_net::build().expect("creating the namespace");
    ns.enter(|| {
        let config = Config::parse(WORLD_CONFIG).expect("valid config");
        let interfaces = [netif::index("c0").unwrap(), netif::index("s0").unwrap()];
        let load = || {
            let mut dataplane =
                Dataplane::load(config.flow_table_size).expect("loading the program");
            Balancer::new()
                .apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)
                .expect("applying the config");
            for ifindex in interfaces {
                dataplane.maps.add_egress_port(ifindex).unwrap();
            }
            dataplane
        };
        // The XDP program runs on `dataplane`, the tc program on `twin`: same config, same hash
        // seed, so the same packets leave both in the same state.
        let dataplane = load();
        let mut twin = load();
        twin.maps.share_hash_seed(&dataplane.maps).unwrap();
        let is_service = |dst: &SocketAddr, proto: u8| world.services.contains(&(*dst, proto));
        let is_vip = |ip: &std::net::IpAddr| world.services.iter().any(|(s, _)| s.ip() == *ip);

        let started = Instant::now();
        let mut verdicts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut changed = 0u64;
        let mut tc_compared = 0u64;
        let mut fragments_changed = 0u64;
        // The ports each datagram's first fragment recorded, as the reference reads them.
        let mut records: HashMap<Datagram, (u16, u16)> = HashMap::new();
        for index in 0..cases {
            let input = fuzz::frame(seed, index, &world);
            let reading = fuzz::read(&input);
            let to_service = match &reading {
                Reading::Transport((_, dst, proto)) => is_service(dst, *proto),
                Reading::FirstFragment {
                    tuple: (_, dst, proto),
                    forwardable: true,
                    ..
                } => is_service(dst, *proto),
                _ => false,
            };
            // A later fragment of a datagram whose first fragment was not recorded, to a VIP.
            let unmatched = matches!(
                &reading,
                Reading::LaterFragment { datagram, .. }
                    if !records.contains_key(datagram) && is_vip(&datagram.1)
            );
            let fragment = matches!(
                &reading,
                Reading::FirstFragment { .. } | Reading::LaterFragment { .. }
            );
            // A packet to a VIP that no service takes is dropped, not passed to the host.
            let to_vip = fuzz::transport_destination(&input).is_some_and(|dst| is_vip(&dst));
            let may_change = match &reading {
                Reading::Transport(tuple) => {
                    to_service || dataplane.maps.flow_of_packet(&flow_key(tuple)).is_some()
                }
                Reading::FirstFragment {
                    tuple, forwardable, ..
                } => {
                    *forwardable
                        && (to_service || dataplane.maps.flow_of_packet(&flow_key(tuple)).is_some())
                }
                Reading::LaterFragment {
                    datagram,
                    forwardable,
                } => {
                    let (src, dst, proto, _) = *datagram;
                    *forwardable
                        && records.get(datagram).is_some_and(|&(sport, dport)| {
                            let tuple = (
                                SocketAddr::new(src, sport),
                                SocketAddr::new(dst, dport),
                                proto,
                            );
                            dataplane.maps.flow_of_packet(&flow_key(&tuple)).is_some()
                        })
                }
                Reading::Echo(ip) => is_vip(ip),
                Reading::IcmpError {
                    quoted: (src, dst, proto),
                    ..
                } => dataplane
                    .maps
                    .flow_of_packet(&flow_key(&(*dst, *src, *proto)))
                    .is_some(),
                Reading::Untouchable => false,
            };
            let ifindex = interfaces[(index % 2) as usize];
            // Addressed to the interface it arrives on (s0's MAC on s0), unless the damage
            // changed the address: other frames are not balanced.
            let mut input = input;
            if index % 2 == 1 && input.get(..6) == Some(&LB_MAC[..]) {
                input[..6].copy_from_slice(&packet_net::S0_MAC);
            }
            let result = packet_net::run(dataplane.program(), &input, ifindex, 1)
                .unwrap_or_else(|e| panic!("case {index} (seed {seed:#x}): {e:#}"));
            let replay = format!(
                "case {index}, seed {seed:#x} (replay: XLB_FUZZ_SEED={seed:#x} \
                 XLB_FUZZ_CASES={}); read as {reading:?}\ninput  {input:02x?}\noutput {:02x?}",
                index + 1,
                result.frame
            );
            let verdict = packet_net::verdict_name(result.verdict).strip_prefix("XDP_");
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
                if fragment {
                    fragments_changed += 1;
                    if ipv4_header_ok(&input) {
                        assert!(
                            ipv4_header_ok(&result.frame),
                            "bad IPv4 header checksum after the rewrite: {replay}"
                        );
                    }
                } else if verify_checksums(&input).is_ok() {
                    verify_checksums(&result.frame)
                        .unwrap_or_else(|e| panic!("{e} after the rewrite: {replay}"));
                }
            }
            if verdict == Some("DROP") {
                assert!(
                    to_service || to_vip || unmatched,
                    "dropped a frame that is no new flow to a service or a VIP: {replay}"
                );
            }
            if let Reading::FirstFragment {
                tuple: (src, dst, _),
                datagram,
                more: true,
                ..
            } = &reading
            {
                records.insert(*datagram, (src.port(), dst.port()));
            }
            if skb_buildable(&input) {
                let tc = packet_net::run_tc(twin.tc_program(), &input, ifindex, 1)
                    .unwrap_or_else(|e| panic!("tc: {e:#}: {replay}"));
                let tc_verdict = match tc.verdict {
                    TC_ACT_UNSPEC => "PASS",
                    TC_ACT_SHOT => "DROP",
                    TC_ACT_REDIRECT => "REDIRECT",
                    _ => "an undocumented tc verdict",
                };
                let xdp_verdict = match verdict {
                    Some("TX") => "REDIRECT",
                    other => other.unwrap(),
                };
                assert_eq!(tc_verdict, xdp_verdict, "tc and XDP disagree: {replay}");
                assert!(
                    tc.frame == result.frame,
                    "tc and XDP output differ: {replay}\ntc     {:02x?}",
                    tc.frame
                );
                tc_compared += 1;
            }
        }
        eprintln!(
            "{cases} cases (seed {seed:#x}) in {:.1?}: {changed} changed ({fragments_changed} \
             fragments); verdicts {verdicts:?}; {tc_compared} also run at tc; {} datagrams \
             recorded",
            started.elapsed(),
            records.len()
        );
        assert!(
            tc_compared > cases / 2,
            "only {tc_compared} of {cases} frames were compared with the tc program"
        );
        assert!(
            changed > cases / 10,
            "only {changed} of {cases} frames were rewritten: the generator lost its aim"
        );
    })
    .expect("entering the namespace");
}
