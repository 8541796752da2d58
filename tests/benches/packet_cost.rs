//! Per-packet cost of the balancer, through BPF_PROG_TEST_RUN, against the reference program
//! that only counts and passes, at XDP and (established flows) at tc. Needs root. Run by
//! `cargo xtask bench`.
//!
//! The kernel does not restore a frame between the repetitions of one test run, so a rewritten
//! packet would take another path on the next repetition. The established and reply cases
//! therefore use a service whose backend is the VIP itself: the rewrite does all its work but
//! leaves the frame as it was, and TTL 255 leaves room for the decrements of a run. New flows
//! cannot repeat at all (the first run records the flow), so each new flow is one run of its
//! own, compared with single runs of the reference program.

use anyhow::{Result, ensure};
use lb_common::{passive::PassiveMark, trace::TraceConfig};
use loopback::parse_with_loopbacks;
use xlb::{
    control::{Balancer, ServiceSpec},
    dataplane::{Dataplane, NoopProgram, monotonic_ns},
    sys::netif,
};
use xlb_tests::{
    bench::{Table, median, print_section, quick},
    packet::{Frame, Transport, tcp_flags},
    packet_net::{self, S0_MAC, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_PASS, XDP_REDIRECT},
};

#[path = "shared/loopback.rs"]
mod loopback;

/// Repetitions per test run (the TTL of 255 must outlast them).
const REPEAT: u32 = 250;

const CONFIG: &str = r#"
interfaces = ["c0", "s0"]

[tunnel]
source = "198.18.1.1"

[[service]]
name = "loopback"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.250:80" } ]  # its own VIP: see parse_with_loopbacks

[[service]]
name = "loopback6"
listen = "[fd00:100::1]:80"
protocol = "tcp"
backends = [ { address = "[fd00:1::250]:80" } ]  # its own VIP: see parse_with_loopbacks

[[service]]
name = "new"
listen = "198.18.100.2:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "suspect"
listen = "198.18.100.3:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "maglev"
listen = "198.18.100.4:80"
protocol = "tcp"
scheduler = "maglev"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "new-udp"
listen = "198.18.100.6:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353" }, { address = "198.18.1.12:5353" }, { address = "198.18.1.13:5353" } ]

[[service]]
name = "maglev-dsr"
listen = "198.18.100.5:80"
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backends = [ { address = "198.18.1.11:80" }, { address = "198.18.1.12:80" }, { address = "198.18.1.13:80" } ]

[[service]]
name = "maglev-ipip"
listen = "198.18.100.10:80"
protocol = "tcp"
scheduler = "maglev"
forwarding = "ipip"
backends = [ { address = "198.18.50.11:80" }, { address = "198.18.50.12:80" }, { address = "198.18.50.13:80" } ]

[[service]]
name = "maglev-gue"
listen = "198.18.100.11:80"
protocol = "tcp"
scheduler = "maglev"
forwarding = "gue"
backends = [ { address = "198.18.50.11:80" }, { address = "198.18.50.12:80" }, { address = "198.18.50.13:80" } ]

[[service]]
name = "source-hash"
listen = "198.18.100.7:80"
protocol = "tcp"
scheduler = "source-hash"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "persistent-udp"
listen = "198.18.100.8:53"
protocol = "udp"
persistence = "1h"
backends = [ { address = "198.18.1.11:5353" }, { address = "198.18.1.12:5353" }, { address = "198.18.1.13:5353" } ]
"#;

fn main() -> Result<()> {
    let quick = quick();
    let rounds = if quick { 5 } else { 200 };
    let new_flows = if quick { 200 } else { 20_000 };
    let ns = packet_net::build()?;
    packet_net::repeatable(&ns)?;
    let rows = ns.enter(|| -> Result<Vec<(String, f64, f64)>> {
        let config = parse_with_loopbacks(CONFIG)?;
        let mut dataplane = Dataplane::load(1 << 18)?;
        let mut balancer = Balancer::new();
        balancer.apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)?;
        // Service "suspect": its first backend is marked suspect (passive health) for the
        // whole run, so a third of its new flows pass over that backend's slot.
        let suspect = balancer.services()[3].backends[0].id;
        dataplane.maps.passive.set_mark(
            suspect,
            PassiveMark {
                suspect_until_ns: monotonic_ns()? + 3_600_000_000_000,
                ..PassiveMark::default()
            },
        )?;
        dataplane.maps.tunnel.set(&config.tunnel)?;
        let (c0, s0) = (netif::index("c0")?, netif::index("s0")?);
        dataplane.maps.add_egress_port(c0)?;
        dataplane.maps.add_egress_port(s0)?;
        let mut noop = NoopProgram::load()?;
        let mut tracer = dataplane.tracer.take().expect("the trace maps");
        let program = dataplane.program();

        // Established packets carry ACK: the SYN records a half-open flow, the first ACK
        // completes it.
        let ack = |frame: Frame| {
            frame
                .with(|f| {
                    f.ttl = 255;
                    f.transport = Transport::Tcp {
                        flags: tcp_flags::ACK,
                        seq: 2,
                    };
                })
                .build()
        };
        // The flows' first frames come from s0's MAC: a flow's replies go back where its first
        // frame came from (until its first refresh asks the FIB, which the namespace also
        // answers with s0's MAC), so that a rewritten reply is addressed to s0 again and the
        // next repetition takes the same path.
        let syn = |frame: Frame| {
            frame
                .with(|f| {
                    f.ttl = 255;
                    f.eth_src = S0_MAC;
                })
                .build()
        };
        let established = ack(Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"));
        // The replies arrive on s0, addressed to it.
        let on_s0 = |frame: Frame| frame.with(|f| f.eth_dst = S0_MAC);
        let reply = ack(on_s0(Frame::tcp("198.18.100.1:80", "198.18.0.2:40000")));
        let other = ack(Frame::tcp("198.18.0.2:40000", "198.18.100.9:80"));
        let established6 = ack(Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80"));
        let reply6 = ack(on_s0(Frame::tcp("[fd00:100::1]:80", "[fd00::2]:40000")));
        for (first, then) in [
            (
                syn(Frame::tcp("198.18.0.2:40000", "198.18.100.1:80")),
                &established,
            ),
            (
                syn(Frame::tcp("[fd00::2]:40000", "[fd00:100::1]:80")),
                &established6,
            ),
        ] {
            ensure!(packet_net::run(program, &first, c0, 1)?.verdict == XDP_REDIRECT);
            ensure!(packet_net::run(program, then, c0, 1)?.verdict == XDP_REDIRECT);
        }

        // Median per-packet time over `rounds` test runs of REPEAT repetitions of `run`, each
        // of which must give `verdict` and keep the frame's length.
        let median_ns = |run: &dyn Fn() -> Result<packet_net::RunResult>,
                         length: usize,
                         verdict: u32|
         -> Result<f64> {
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let result = run()?;
                ensure!(
                    result.verdict == verdict,
                    "verdict {} instead of {verdict}",
                    result.verdict
                );
                ensure!(result.frame.len() == length);
                times.push(result.duration.as_secs_f64() * 1e9);
            }
            Ok(median(&mut times))
        };
        let per_packet = |program: &aya::programs::Xdp, frame: &[u8], ifindex: u32, verdict| {
            median_ns(
                &|| packet_net::run(program, frame, ifindex, REPEAT),
                frame.len(),
                verdict,
            )
        };
        noop.arm_floor(&established, s0)?;
        let noop_ns = per_packet(noop_program(&noop), &established, c0, XDP_PASS)?;
        let mut rows = vec![("reference: count and pass".to_owned(), noop_ns, noop_ns)];
        rows.push((
            "floor: count, one lookup of a 16-byte key in an LRU hash map, redirect".into(),
            per_packet(noop.floor_program(), &established, c0, XDP_REDIRECT)?,
            noop_ns,
        ));
        rows.push((
            "not for a service (passed)".into(),
            per_packet(program, &other, c0, XDP_PASS)?,
            noop_ns,
        ));
        rows.push((
            "established TCP flow, IPv4".into(),
            per_packet(program, &established, c0, XDP_REDIRECT)?,
            noop_ns,
        ));
        rows.push((
            "reply of a flow, IPv4".into(),
            per_packet(program, &reply, s0, XDP_REDIRECT)?,
            noop_ns,
        ));
        rows.push((
            "established TCP flow, IPv6".into(),
            per_packet(program, &established6, c0, XDP_REDIRECT)?,
            noop_ns,
        ));
        rows.push((
            "reply of a flow, IPv6".into(),
            per_packet(program, &reply6, s0, XDP_REDIRECT)?,
            noop_ns,
        ));
        // `xlb trace` running: for another service (the packet is checked against the filter
        // and not recorded), and for this one, one packet in 1000 recorded.
        let trace = |service_id: u32, sample_every: u32| -> Result<TraceConfig> {
            Ok(TraceConfig {
                until_ns: monotonic_ns()? + 3_600_000_000_000,
                service_id,
                sample_every,
                ..TraceConfig::default()
            })
        };
        tracer.begin(trace(2, 1)?)?;
        rows.push((
            "established TCP flow, IPv4, another service traced".into(),
            per_packet(program, &established, c0, XDP_REDIRECT)?,
            noop_ns,
        ));
        ensure!(
            tracer.end()?.matched == 0,
            "a packet of service 0 was traced"
        );
        tracer.begin(trace(0, 1_000)?)?;
        rows.push((
            "established TCP flow, IPv4, traced (1 in 1000 recorded)".into(),
            per_packet(program, &established, c0, XDP_REDIRECT)?,
            noop_ns,
        ));
        let traced = tracer.end()?;
        ensure!(
            traced.matched >= (rounds as u64) * u64::from(REPEAT) && traced.lost == 0,
            "{traced:?}"
        );

        // The same at tc, against the reference at tc: the kernel builds an skb for each run.
        let per_packet_tc =
            |program: &aya::programs::SchedClassifier, frame: &[u8], ifindex: u32, verdict| {
                median_ns(
                    &|| packet_net::run_tc(program, frame, ifindex, REPEAT),
                    frame.len(),
                    verdict,
                )
            };
        let noop_tc_ns = per_packet_tc(noop.tc_program(), &established, c0, TC_ACT_UNSPEC)?;
        let tc = dataplane.tc_program();
        rows.push((
            "tc: reference, count and pass".into(),
            noop_tc_ns,
            noop_tc_ns,
        ));
        rows.push((
            "tc: established TCP flow, IPv4".into(),
            per_packet_tc(tc, &established, c0, TC_ACT_REDIRECT)?,
            noop_tc_ns,
        ));
        rows.push((
            "tc: established TCP flow, IPv6".into(),
            per_packet_tc(tc, &established6, c0, TC_ACT_REDIRECT)?,
            noop_tc_ns,
        ));

        // New flows: one run each, against single runs of the reference program; round
        // robin, Maglev, Maglev with DSR and source hashing in turn, so that they share the
        // run's conditions.
        let (mut new, mut single_noop, mut single_floor) = (Vec::new(), Vec::new(), Vec::new());
        let (mut maglev, mut maglev_dsr, mut source) = (Vec::new(), Vec::new(), Vec::new());
        let (mut maglev_ipip, mut maglev_gue) = (Vec::new(), Vec::new());
        for i in 0..new_flows {
            let client = format!("198.18.0.{}:{}", 2 + i / 60_000, 1_024 + i % 60_000);
            for (vip, times) in [
                ("198.18.100.2:80", &mut new),
                ("198.18.100.4:80", &mut maglev),
                ("198.18.100.5:80", &mut maglev_dsr),
                ("198.18.100.10:80", &mut maglev_ipip),
                ("198.18.100.11:80", &mut maglev_gue),
                ("198.18.100.7:80", &mut source),
            ] {
                // Source hashing hashes the address alone: each flow from a client of its own
                // (198.19.0.0/16), so that its slots are as scattered as Maglev's.
                let client = if vip == "198.18.100.7:80" {
                    format!("198.19.{}.{}:40000", (i / 256) % 256, i % 256)
                } else {
                    client.clone()
                };
                let frame = Frame::tcp(&client, vip).build();
                let result = packet_net::run(program, &frame, c0, 1)?;
                ensure!(
                    result.verdict == XDP_REDIRECT,
                    "new flow {i} to {vip}: verdict {}",
                    result.verdict
                );
                times.push(result.duration.as_secs_f64() * 1e9);
            }
            let frame = Frame::tcp(&client, "198.18.100.2:80").build();
            single_noop.push(
                packet_net::run(noop_program(&noop), &frame, c0, 1)?
                    .duration
                    .as_secs_f64()
                    * 1e9,
            );
            let result = packet_net::run(noop.floor_program(), &frame, c0, 1)?;
            ensure!(
                result.verdict == XDP_REDIRECT,
                "floor: verdict {}",
                result.verdict
            );
            single_floor.push(result.duration.as_secs_f64() * 1e9);
        }
        let mut skipping = Vec::new();
        for i in 0..new_flows {
            let frame = Frame::tcp(
                &format!("198.18.0.{}:{}", 2 + i / 60_000, 1_024 + i % 60_000),
                "198.18.100.3:80",
            )
            .build();
            let result = packet_net::run(program, &frame, c0, 1)?;
            ensure!(result.verdict == XDP_REDIRECT);
            skipping.push(result.duration.as_secs_f64() * 1e9);
        }
        // New UDP flows, without and with persistence in turn (UDP: its entries go to the
        // established table, which has room for both; TCP's half-open table would overflow
        // and slow every row). Every flow of one client but the first finds its persistence.
        // A third: each flow from a client of its own (198.19.0.0/16), whose persistence is
        // recorded for the first time.
        let (mut udp, mut persisted, mut first) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..new_flows {
            let client = format!("198.18.0.{}:{}", 2 + i / 60_000, 1_024 + i % 60_000);
            let own = format!("198.19.{}.{}:40000", (i / 256) % 256, i % 256);
            for (client, vip, times) in [
                (&client, "198.18.100.6:53", &mut udp),
                (&client, "198.18.100.8:53", &mut persisted),
                (&own, "198.18.100.8:53", &mut first),
            ] {
                let frame = Frame::udp(client, vip).build();
                let result = packet_net::run(program, &frame, c0, 1)?;
                ensure!(result.verdict == XDP_REDIRECT, "new UDP flow {i} to {vip}");
                times.push(result.duration.as_secs_f64() * 1e9);
            }
        }
        let single_noop_ns = median(&mut single_noop);
        let mut single_established = Vec::new();
        for _ in 0..new_flows {
            let result = packet_net::run(program, &established, c0, 1)?;
            ensure!(result.verdict == XDP_REDIRECT);
            single_established.push(result.duration.as_secs_f64() * 1e9);
        }
        rows.push((
            "reference, single runs".into(),
            single_noop_ns,
            single_noop_ns,
        ));
        rows.push((
            "established TCP flow, single runs".into(),
            median(&mut single_established),
            single_noop_ns,
        ));
        // Forwarding compared on established flows, single runs (an encapsulated frame grows,
        // so a repetition would see its own output): NAT above; L2 DSR; IPIP and GUE (the
        // balancer, its tail call, the encapsulating program). At XDP and at tc, in turn.
        let tc = dataplane.tc_program();
        let client = "198.18.0.3:41000";
        let mut by_forwarding = Vec::new();
        for (what, vip) in [
            ("L2 DSR", "198.18.100.5:80"),
            ("IPIP", "198.18.100.10:80"),
            ("GUE", "198.18.100.11:80"),
        ] {
            ensure!(
                packet_net::run(program, &syn(Frame::tcp(client, vip)), c0, 1)?.verdict
                    == XDP_REDIRECT
            );
            by_forwarding.push((what, ack(Frame::tcp(client, vip)), Vec::new(), Vec::new()));
        }
        let (mut nat_tc, mut noop_tc) = (Vec::new(), Vec::new());
        for _ in 0..new_flows {
            for (_, frame, xdp_times, tc_times) in &mut by_forwarding {
                let result = packet_net::run(program, frame, c0, 1)?;
                ensure!(result.verdict == XDP_REDIRECT);
                xdp_times.push(result.duration.as_secs_f64() * 1e9);
                let result = packet_net::run_tc(tc, frame, c0, 1)?;
                ensure!(result.verdict == TC_ACT_REDIRECT);
                tc_times.push(result.duration.as_secs_f64() * 1e9);
            }
            let result = packet_net::run_tc(tc, &established, c0, 1)?;
            ensure!(result.verdict == TC_ACT_REDIRECT);
            nat_tc.push(result.duration.as_secs_f64() * 1e9);
            let result = packet_net::run_tc(noop.tc_program(), &established, c0, 1)?;
            noop_tc.push(result.duration.as_secs_f64() * 1e9);
        }
        for (what, _, xdp_times, _) in &mut by_forwarding {
            rows.push((
                format!("established TCP flow, {what}, single runs"),
                median(xdp_times),
                single_noop_ns,
            ));
        }
        let noop_tc_single = median(&mut noop_tc);
        rows.push((
            "tc: reference, single runs".into(),
            noop_tc_single,
            noop_tc_single,
        ));
        rows.push((
            "tc: established TCP flow, NAT, single runs".into(),
            median(&mut nat_tc),
            noop_tc_single,
        ));
        for (what, _, _, tc_times) in &mut by_forwarding {
            rows.push((
                format!("tc: established TCP flow, {what}, single runs"),
                median(tc_times),
                noop_tc_single,
            ));
        }
        rows.push((
            "floor, new flow: a miss, a lookup, two LRU inserts, redirect (single runs)".into(),
            median(&mut single_floor),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow (miss, round robin, one half-open entry)".into(),
            median(&mut new),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow, Maglev (the slot the 5-tuple hashes to, of 65,537)".into(),
            median(&mut maglev),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow, Maglev and DSR (MACs only)".into(),
            median(&mut maglev_dsr),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow, Maglev and IPIP (to a backend behind a gateway)".into(),
            median(&mut maglev_ipip),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow, Maglev and GUE".into(),
            median(&mut maglev_gue),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow, source hashing (Maglev on the client's address)".into(),
            median(&mut source),
            single_noop_ns,
        ));
        rows.push((
            "new TCP flow, one of three backends suspect (a third pass over its slot)".into(),
            median(&mut skipping),
            single_noop_ns,
        ));
        rows.push((
            "new UDP flow (miss, round robin, established at once)".into(),
            median(&mut udp),
            single_noop_ns,
        ));
        rows.push((
            "new UDP flow, round robin with persistence (the client seen before)".into(),
            median(&mut persisted),
            single_noop_ns,
        ));
        rows.push((
            "new UDP flow, round robin with persistence (a client's first)".into(),
            median(&mut first),
            single_noop_ns,
        ));
        Ok(rows)
    })??;

    let mut table = Table::new(&["case", "ns per packet (median)", "× reference"]);
    for (case, ns, reference) in rows {
        table.row(vec![
            case,
            format!("{ns:.0}"),
            format!("{:.2}", ns / reference),
        ]);
    }
    print_section(
        "Per-packet cost (BPF_PROG_TEST_RUN)",
        &format!(
            "Median of {rounds} test runs of {REPEAT} repetitions each (new flows: {new_flows} single \
             runs, against single runs of the reference, which include the kernel's timing \
             overhead of one run). The reference program counts the packet in a per-CPU array \
             and passes it; the tc rows compare the tc program with the reference at tc (the \
             same frames; a tc test run builds an skb). The floor is what any balancer that keeps \
             flows does for a packet, and no more. Goals (issue 16): an established flow at most \
             3× the reference now and 2× in the end, a new flow at most 6× now and 4× in the end.\n\n{}",
            table.markdown()
        ),
    );
    Ok(())
}

fn noop_program(noop: &NoopProgram) -> &aya::programs::Xdp {
    noop.program()
}
