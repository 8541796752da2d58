//! SYN floods: the half-open table, the handshake guard.

use super::*;

/// A flood of SYNs from spoofed sources fills only the half-open table: an established flow,
/// even an idle one, keeps its entry and its backend.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_syn_flood_cannot_evict_established_flows() {
    let config = CONFIG.replace(
        "interfaces = [\"c0\", \"s0\"]",
        "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
    );
    with_lab_config(&config, |lab| {
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        let ack = ack_of(&syn);
        let expected = to_backend(&ack, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("established", &ack, lab.c0, XDP_REDIRECT, &expected);

        const FLOOD: usize = 20_000;
        let mut state = 0x2545_f491_u32;
        for _ in 0..FLOOD {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [a, b, c, d] = state.to_be_bytes();
            let spoofed = Frame::tcp(
                &format!(
                    "198.19.{a}.{b}:{}",
                    1024 + u16::from_be_bytes([c, d]) % 60_000
                ),
                "198.18.100.1:80",
            );
            assert_eq!(lab.run(&spoofed.build(), lab.c0).0, XDP_REDIRECT);
        }
        let flows = lab.dataplane.maps.flows.all().unwrap();
        let half_open = flows.iter().filter(|(_, _, half_open)| *half_open).count();
        assert_eq!(flows.len() - half_open, 1, "established flows");
        assert!(
            half_open <= 1024 / 4,
            "the half-open table holds {half_open} flows"
        );
        lab.expect(
            "established after the flood",
            &ack,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        assert_eq!(lab.service_new_flows("web"), 1 + FLOOD as u64);
    });
}

/// Under a SYN flood (more new TCP flows per window than the half-open table can keep for
/// two seconds), SYNs are placed by a seeded hash of their 5-tuple over the same table, so a
/// handshake whose half-open entry was evicted still completes: the client's ACK finds no
/// entry and is placed by the same hash; a handshake that lost only its reply entry gets it
/// rebuilt when it completes. The window after one over budget hashes from its first SYN. A client packet without any entry is always placed by hash; once the flood
/// stops, SYNs take turns again.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn under_a_syn_flood_an_evicted_handshake_still_reaches_its_backend() {
    const VIP: &str = "198.18.100.1:80";
    let config = CONFIG.replace(
        "interfaces = [\"c0\", \"s0\"]",
        "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
    );
    with_lab_config(&config, |lab| {
        let guard = lab.dataplane.maps.handshake_guard().unwrap();
        assert_eq!(guard.budget, handshake_budget(1024));
        let ids = lab.backend_ids("web");
        let weights: Vec<(u32, u32)> = ids.iter().map(|&id| (id, 1)).collect();
        let sequence = smooth_weighted_sequence(&weights);
        // The backend a flow from `client` hashes to: its address and MAC (the config's
        // backends are 198.18.1.11 to .13, with MACs 02:00:00:00:01:11 to :13).
        let hashed = |client: &str| {
            let key = flow_key(client, VIP, 6);
            let id = sequence[flow_hash(&key, guard.seed) as usize % sequence.len()];
            let index = ids.iter().position(|&b| b == id).unwrap() as u8;
            (
                format!("198.18.1.{}:8080", 11 + index),
                backend_mac(0x11 + index),
            )
        };
        // Asserts that `syn` from `client` came out as `output`, sent to its hash's backend.
        let assert_hashed = |case: &str, client: &str, syn: &Frame, output: &[u8]| {
            let (backend, mac) = hashed(client);
            let expected = to_backend(syn, &backend, mac, S0_MAC).build();
            assert!(
                output == expected,
                "{case}\n{}",
                hex_diff(&expected, output)
            );
        };
        // One more SYN of the flood, from the next spoofed source.
        let spoof = |lab: &PacketLab, spoofed: &mut u32| {
            *spoofed += 1;
            let [_, _, a, b] = spoofed.to_be_bytes();
            let syn = Frame::tcp(&format!("198.19.{a}.{b}:1024"), VIP);
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        };

        let orphan = ack_of(&Frame::tcp("198.18.0.2:41000", VIP));
        let (backend, mac) = hashed("198.18.0.2:41000");
        let expected = to_backend(&orphan, &backend, mac, S0_MAC);
        lab.expect(
            "an ACK without a flow",
            &orphan,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        assert_eq!(lab.event(events::MIDSTREAM_HASHED), 1);
        assert_eq!(lab.event(events::SYN_HASHED), 0);

        // Flood until a legitimate SYN lands in a window that is over budget (one round
        // normally; more if the machine stalled past a window in between).
        let mut spoofed = 0u32;
        let mut hashed_syn = None;
        for round in 0..100u16 {
            for _ in 0..2 * guard.budget {
                spoof(lab, &mut spoofed);
            }
            let client = format!("198.18.0.2:{}", 42_000 + round);
            let syn = Frame::tcp(&client, VIP);
            let before = lab.event(events::SYN_HASHED);
            let (verdict, output) = lab.run(&syn.build(), lab.c0);
            assert_eq!(verdict_name(verdict), "XDP_REDIRECT");
            if lab.event(events::SYN_HASHED) == before + 1 {
                hashed_syn = Some((client, syn, output));
                break;
            }
        }
        let (client, syn, output) = hashed_syn.expect("no SYN was placed by hash in 100 rounds");
        assert_hashed("hashed SYN", &client, &syn, &output);
        let (backend, mac) = hashed(&client);

        // The flood evicts the handshake's half-open entries before the client's ACK.
        let key = flow_key(&client, VIP, 6);
        lab.dataplane.maps.flows.remove(&key);
        assert!(lab.dataplane.maps.flow(&key).is_none());
        let ack = ack_of(&syn);
        let expected = to_backend(&ack, &backend, mac, S0_MAC);
        lab.expect("ACK after eviction", &ack, lab.c0, XDP_REDIRECT, &expected);
        assert_eq!(lab.event(events::MIDSTREAM_HASHED), 2);

        // A handshake has one entry, under the client's 5-tuple, for both directions: the
        // backend's SYN-ACK and its answers find it through the VIPs the backend serves, so
        // there is no reply entry for a flood to evict.
        let client = "198.18.0.2:45000";
        let syn = Frame::tcp(client, VIP);
        let (verdict, output) = lab.run(&syn.build(), lab.c0);
        assert_eq!(verdict_name(verdict), "XDP_REDIRECT");
        let backend_ip = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&output[30..34]).unwrap());
        let backend = format!("{backend_ip}:8080");
        let from_backend = |flags: u8| {
            Frame::tcp(&backend, client).with(|f| {
                f.transport = Transport::Tcp { flags, seq: 500 };
                f.eth_dst = S0_MAC;
                f.eth_src = backend_mac(0x11 + backend_ip.octets()[3] - 11);
            })
        };
        assert!(
            lab.dataplane
                .maps
                .flow(&flow_key(&backend, client, 6))
                .is_none(),
            "no entry under the backend's 5-tuple"
        );
        let syn_ack = from_backend(tcp_flags::SYN | tcp_flags::ACK);
        let expected = to_client(&syn_ack, VIP);
        lab.expect("SYN-ACK", &syn_ack, lab.s0, XDP_REDIRECT, &expected);
        let ack = ack_of(&syn);
        assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);
        let established = lab.dataplane.maps.flows.all().unwrap();
        assert!(
            established
                .iter()
                .any(|(key, _, half_open)| *key == flow_key(client, VIP, 6) && !half_open)
        );
        let answer = from_backend(tcp_flags::ACK);
        let expected = to_client(&answer, VIP);
        lab.expect("answer", &answer, lab.s0, XDP_REDIRECT, &expected);

        // Without its entry (evicted by the flood), the backend's answer is not translated.
        lab.dataplane.maps.flows.remove(&flow_key(client, VIP, 6));
        lab.expect_untouched("answer without its entry", &answer.build(), lab.s0);

        // The window after one over budget places SYNs by hash from its first: keep the flood
        // going one SYN at a time until a window begins, then send a legitimate SYN. A stall
        // of the machine near the boundary changes the windows the test set up, so such a
        // try is repeated (at most ten times).
        let stall = Duration::from_millis(40);
        let mut verified = false;
        for attempt in 0..10u16 {
            let window = lab
                .dataplane
                .maps
                .handshake_guard()
                .unwrap()
                .window_start_ns;
            let began = Instant::now();
            let mut previous = Instant::now();
            let (next, gap) = loop {
                let sent = Instant::now();
                spoof(lab, &mut spoofed);
                let guard = lab.dataplane.maps.handshake_guard().unwrap();
                if guard.window_start_ns != window {
                    break (guard, sent - previous);
                }
                previous = sent;
                assert!(began.elapsed() < Duration::from_secs(5), "no new window");
            };
            let client = format!("198.18.0.2:{}", 44_000 + attempt);
            let syn = Frame::tcp(&client, VIP);
            let before = lab.event(events::SYN_HASHED);
            let (verdict, output) = lab.run(&syn.build(), lab.c0);
            // Valid if no stall came between the old window's last SYN and this one: then the
            // old window was flooded up to its end, and this SYN is in the new window.
            if gap > stall || previous.elapsed() > 2 * stall {
                continue;
            }
            assert_eq!((next.flooded, next.window_flows), (1, 1), "{next:?}");
            assert_eq!(verdict_name(verdict), "XDP_REDIRECT");
            assert_hashed("first SYN of a window", &client, &syn, &output);
            assert_eq!(lab.event(events::SYN_HASHED), before + 1);
            verified = true;
            break;
        }
        assert!(verified, "the machine stalled at every window boundary");

        // A window later, with no flood, SYNs take turns again.
        std::thread::sleep(Duration::from_millis(250));
        let hashed_so_far = lab.event(events::SYN_HASHED);
        for port in 43_000..43_003 {
            let syn = Frame::tcp(&format!("198.18.0.2:{port}"), VIP);
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
        }
        assert_eq!(lab.event(events::SYN_HASHED), hashed_so_far);
    });
}

/// What `xlb stats` says of the handshake guard (userspace's reading of its window, through
/// `lb_common::guard`) is what the program then does with the next SYN: each of a burst of
/// SYNs is predicted, then run, and the prediction checked against the program's count of
/// hashed SYNs. The burst crosses the budget; a pause ends the window over budget (the next
/// window hashes from its first SYN); a longer one makes it stale (round robin again).
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn userspace_reads_the_handshake_guard_as_the_program_decides() {
    let config = CONFIG.replace(
        "interfaces = [\"c0\", \"s0\"]",
        "interfaces = [\"c0\", \"s0\"]\nflow_table_size = 1024",
    );
    with_lab_config(&config, |lab| {
        let window = lb_common::consts::timing::HANDSHAKE_WINDOW_NS;
        let (mut agreed, mut hashed, mut round_robin, mut raced) = (0, 0, 0, 0);
        for i in 0..60u16 {
            if i == 30 {
                std::thread::sleep(Duration::from_millis(150));
            }
            if i == 45 {
                std::thread::sleep(Duration::from_millis(350));
            }
            let before = lab.dataplane.maps.handshake_guard().unwrap();
            let now = xlb::dataplane::monotonic_ns().unwrap();
            let predicted = lab.dataplane.maps.handshake_guard_on().unwrap();
            let hashed_before = lab.event(events::SYN_HASHED);
            let syn = Frame::tcp(&format!("198.18.0.2:{}", 20_000 + i), "198.18.100.1:80");
            assert_eq!(lab.run(&syn.build(), lab.c0).0, XDP_REDIRECT);
            let decided = lab.event(events::SYN_HASHED) == hashed_before + 1;
            let after = lab.dataplane.maps.handshake_guard().unwrap();
            // The window ended between the prediction and the SYN: no verdict either way.
            let restarted = after.window_start_ns != before.window_start_ns;
            if restarted && now.wrapping_sub(before.window_start_ns) <= window {
                raced += 1;
                continue;
            }
            assert_eq!(predicted, decided, "SYN {i}: userspace said {predicted}");
            agreed += 1;
            if decided {
                hashed += 1;
            } else {
                round_robin += 1;
            }
        }
        eprintln!("{agreed} agreed ({hashed} hashed, {round_robin} round robin), {raced} raced");
        assert!(agreed >= 50, "too many SYNs raced a window's end");
        assert!(hashed >= 20 && round_robin >= 12);
    });
}
