//! Flows shared by the instances of a fleet: how long a new flow takes to be installed on a
//! peer, what sharing costs on the wire and in the data plane. Needs root. Run by
//! `cargo xtask bench`.
//!
//! Two instances in one namespace (`packet_net`'s), each a loaded program with its own maps
//! and a fleet transport on an address of its own: A's program makes new UDP flows, one
//! BPF_PROG_TEST_RUN each, at a steady 5,000 a second; B installs what A sends as its
//! monitor does. A flow's delay runs from just before A's test run to just after B's map
//! update. In the same run, the data plane's cost of a new flow with sharing on and off; then
//! one instance's new connections per second end to end, `[fleet]` on and off in turns.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, ensure};
use xlb::{
    config::{Config, FleetConfig, FlowTimeouts, Secret},
    control::{Balancer, DataplaneReads as _, ServiceSpec},
    dataplane::{Dataplane, monotonic_ns},
    fleet::{Fleet, Incoming, carried, install},
    sys::netif,
};
use xlb_tests::{
    bench::{
        Table, median, percentile, print_section, process_cpu_time, quick, thread_cpu_time, wrk,
    },
    client::http_get_body,
    daemon::start_xlb,
    packet::Frame,
    packet_net::{self, XDP_REDIRECT},
    process::temp_file,
    scenario::{balancer_config_with, start_backends},
    topology::{Lab, Offloads, VIP, Wiring, backend_addr},
};

const CONFIG: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353" }, { address = "198.18.1.12:5353" } ]
"#;

/// New flows per second.
const RATE: u64 = 5_000;

fn fleet(listen: &str, peer: &str) -> FleetConfig {
    FleetConfig {
        listen: listen.parse().unwrap(),
        peers: vec![peer.parse().unwrap()],
        key_file: PathBuf::new(),
        key: Secret(b"the benchmark's fleet key, 32 bytes and more".to_vec()),
        refresh: FleetConfig::DEFAULT_REFRESH,
    }
}

/// The first datagram of new flow `i`.
fn frame(i: u64) -> Vec<u8> {
    Frame::udp(
        &format!("198.18.0.{}:{}", 2 + i / 60_000, 1_024 + i % 60_000),
        "198.18.100.1:53",
    )
    .build()
}

/// Makes `flows` new flows through `program`, at [`RATE`]; when each began.
fn make_flows(program: &aya::programs::Xdp, c0: u32, flows: u64) -> Result<Vec<Instant>> {
    let mut made = Vec::with_capacity(flows as usize);
    let start = Instant::now();
    for i in 0..flows {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        made.push(Instant::now());
        let run = packet_net::run(program, &frame(i), c0, 1)?;
        ensure!(run.verdict == XDP_REDIRECT, "new flow {i}");
    }
    Ok(made)
}

fn main() -> Result<()> {
    let flows = if quick() { 1_000 } else { 20_000 };
    let ns = packet_net::build()?;
    ns.ip("link set lo up")?;
    ns.ip("addr add 198.18.9.1/32 dev lo")?;
    ns.ip("addr add 198.18.9.2/32 dev lo")?;
    let (rows, notes) = ns.enter(|| -> Result<(Vec<Vec<String>>, String)> {
        let config = Config::parse(CONFIG).map_err(|e| anyhow!("{e:?}"))?;
        let mut a = Dataplane::load(1 << 18)?;
        let mut b = Dataplane::load(1 << 18)?;
        let (mut balancer_a, mut balancer_b) = (Balancer::new(), Balancer::new());
        balancer_a.apply(&ServiceSpec::all_up(&config), &mut a.maps)?;
        balancer_b.apply(&ServiceSpec::all_up(&config), &mut b.maps)?;
        let c0 = netif::index("c0")?;
        for name in ["c0", "s0"] {
            a.maps.add_egress_port(netif::index(name)?)?;
        }
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        };
        let events_a = a.flow_events.take().expect("A's flow events");
        let events_b = b.flow_events.take().expect("B's flow events");
        let b_runtime = runtime()?;
        let entered = b_runtime.enter();
        let mut fleet_b = Fleet::start(&fleet("198.18.9.2:7470", "198.18.9.1:7470"), events_b)?;
        let mut inbox = fleet_b.take_inbox().expect("B's inbox");
        drop(entered);

        // A's fleet runs on a thread of its own (its sending's CPU time is that thread's), A
        // makes the flows on another, at RATE, and this thread runs B's fleet and installs
        // what arrives, as B's monitor does (its CPU time is this thread's).
        let (sent, made, installed, receiving_cpu, cost) =
            std::thread::scope(|scope| -> Result<_> {
                let (ready, started) = std::sync::mpsc::channel();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let sender = scope.spawn(move || -> Result<(u64, u64, Duration)> {
                    let runtime = runtime()?;
                    runtime.block_on(async {
                        let fleet_a =
                            Fleet::start(&fleet("198.18.9.1:7470", "198.18.9.2:7470"), events_a)?;
                        let _ = ready.send(());
                        let cpu = thread_cpu_time();
                        let _ = stopped.await;
                        let counters = fleet_a.counters();
                        Ok((
                            counters.datagrams_sent.load(Relaxed),
                            counters.records_sent.load(Relaxed),
                            thread_cpu_time() - cpu,
                        ))
                    })
                });
                started.recv()?;
                a.fleet_switch.share_flows(true)?;
                let program = a.program();
                let (made, installed, receiving_cpu) = std::thread::scope(|inner| -> Result<_> {
                    let maker = inner.spawn(move || make_flows(program, c0, flows));
                    let cpu = thread_cpu_time();
                    let installed = b_runtime.block_on(async {
                        let mut installed: HashMap<u16, Instant> = HashMap::new();
                        let deadline = Instant::now()
                            + Duration::from_nanos(flows * 1_000_000_000 / RATE)
                            + Duration::from_secs(2);
                        while (installed.len() as u64) < flows && Instant::now() < deadline {
                            let wait =
                                tokio::time::timeout(Duration::from_millis(100), inbox.recv());
                            let Ok(Some(Incoming::Flows(records))) = wait.await else {
                                continue;
                            };
                            let resolved =
                                install::resolve(&records, balancer_b.services(), monotonic_ns()?);
                            let entries: Vec<_> = resolved
                                .entries
                                .iter()
                                .map(|&(k, e)| (k, e, false))
                                .collect();
                            b.maps.adopt_flows(&entries, true);
                            let now = Instant::now();
                            for (key, _) in &resolved.entries {
                                installed.insert(key.src_port, now);
                            }
                        }
                        anyhow::Ok(installed)
                    })?;
                    let receiving_cpu = thread_cpu_time() - cpu;
                    let made = maker.join().expect("the flow maker")?;
                    Ok((made, installed, receiving_cpu))
                })?;
                let _ = stop.send(());
                let sent = sender.join().expect("A's fleet")?;
                // The data plane's cost of a new flow, sharing on and off, in alternating blocks
                // (the ring has room for every event: A's fleet no longer reads it).
                let mut cost = [Vec::new(), Vec::new()];
                for block in 0..20u64 {
                    let on = block % 2 == 0;
                    a.fleet_switch.share_flows(on)?;
                    for j in 0..200u64 {
                        let run = packet_net::run(
                            a.program(),
                            &frame(1_000_000 + block * 200 + j),
                            c0,
                            1,
                        )?;
                        ensure!(run.verdict == XDP_REDIRECT);
                        cost[usize::from(on)].push(run.duration.as_secs_f64() * 1e9);
                    }
                }
                Ok((sent, made, installed, receiving_cpu, cost))
            })?;
        let (datagrams, records, sending_cpu) = sent;
        let mut cost = cost;
        let mut delays: Vec<f64> = made
            .iter()
            .enumerate()
            .filter_map(|(i, at)| {
                let port = (1_024 + i as u64 % 60_000) as u16;
                installed
                    .get(&port.to_be())
                    .map(|done| done.duration_since(*at).as_secs_f64() * 1e3)
            })
            .collect();
        // IPv4 and UDP headers, the message's header and tag, 60 bytes a record.
        let wire_bytes = datagrams * (20 + 8 + 32 + 16) + records * 60;
        let per_flow = wire_bytes as f64 / records.max(1) as f64;
        let arrived = delays.len();
        // CPU time per second of flows at RATE, per 1,000 flows a second: a share of a CPU.
        let seconds = flows as f64 / RATE as f64;
        let per_thousand = |cpu: Duration| cpu.as_secs_f64() / seconds / (RATE as f64 / 1_000.0);
        let refresh = refresh_read(&a, flows)?;
        let rows = vec![
            vec![format!("flows made on A at {RATE}/s"), flows.to_string()],
            vec!["installed on B".into(), arrived.to_string()],
            vec![
                "delay, made on A to installed on B: p50".into(),
                format!("{:.2} ms", median(&mut delays)),
            ],
            vec![
                "delay: p99".into(),
                format!("{:.2} ms", percentile(&mut delays, 99.0)),
            ],
            vec![
                "delay: max".into(),
                format!("{:.2} ms", percentile(&mut delays, 100.0)),
            ],
            vec![
                "on the wire per flow and peer (IPv4)".into(),
                format!("{per_flow:.0} B ({records} flows in {datagrams} datagrams)"),
            ],
            vec![
                "per 1,000 new flows/s, per peer".into(),
                format!("{:.0} kB/s", per_flow),
            ],
            vec![
                "CPU per 1,000 new flows/s: sending (reading the ring, tagging, one peer)".into(),
                format!("{:.2}% of a CPU", per_thousand(sending_cpu) * 100.0),
            ],
            vec![
                "CPU per 1,000 new flows/s: receiving and installing (per peer that sends)".into(),
                format!("{:.2}% of a CPU", per_thousand(receiving_cpu) * 100.0),
            ],
            vec![
                format!("a refresh's reading of the flow tables ({flows} flows, 2^18 a table)"),
                refresh,
            ],
            vec![
                "new UDP flow in the data plane, sharing off (median)".into(),
                format!("{:.0} ns", median(&mut cost[0])),
            ],
            vec![
                "new UDP flow in the data plane, sharing on (median)".into(),
                format!("{:.0} ns", median(&mut cost[1])),
            ],
        ];
        drop(fleet_b);
        Ok((rows, format!("{arrived} of {flows} arrived")))
    })??;
    let mut table = Table::new(&["measure", "value"]);
    for row in rows {
        table.row(row);
    }
    let connections = connections_per_second()?;
    print_section(
        "Flow sharing between instances (fleet)",
        &format!(
            "Two instances in one namespace, each a loaded program with its own maps and a fleet \
             transport (UDP over the namespace's loopback, HMAC-SHA256 tags): A's program makes \
             new UDP flows (one BPF_PROG_TEST_RUN each) at a steady {RATE} a second; B installs \
             what A sends as its monitor does. A flow's delay runs from just before A's test run \
             to just after B's map update ({notes}). A shared flow takes no memory on a peer \
             beyond the slot it fills in its preallocated flow table (80 bytes of entry and a \
             16-byte key for IPv4); waiting to be sent, 64 bytes, at most 65,536 of them. The \
             data plane's cost with sharing on and off alternates in blocks of 200 flows.\n\n{}\n\n\
             {connections}",
            table.markdown()
        ),
    );
    Ok(())
}

/// What a refresh costs A to find the flows it carried: its tables read whole and the
/// `flows` it made picked out, five times; the median wall and CPU time.
fn refresh_read(a: &Dataplane, flows: u64) -> Result<String> {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (started, cpu_before) = (Instant::now(), thread_cpu_time());
        let table = a.maps.flows()?;
        let now = a.maps.now_ns()?;
        let carried = carried::carried_since(&table, 0, &FlowTimeouts::default(), now);
        ensure!(carried.len() as u64 >= flows, "{} carried", carried.len());
        wall.push(started.elapsed().as_secs_f64() * 1e3);
        cpu.push((thread_cpu_time() - cpu_before).as_secs_f64() * 1e3);
    }
    Ok(format!(
        "{:.1} ms ({:.1} ms of CPU)",
        median(&mut wall),
        median(&mut cpu)
    ))
}

/// One instance's new connections per second, end to end, with `[fleet]` on and off in turns;
/// a paragraph and its table.
fn connections_per_second() -> Result<String> {
    let (runs, seconds) = if quick() { (1, 1) } else { (5, 4) };
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, Offloads::Default)?;
    let _backends = start_backends(&lab)?;
    let key = temp_file(
        "bench-fleet.key",
        "the benchmark's fleet key, 32 bytes and more\n",
    )?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    // Its one peer: a backend host's address, where nothing listens. What is measured is this
    // instance's side: the events, their tags and datagrams.
    let fleet = format!(
        "fleet = {{ listen = \"198.18.1.1:7470\", peers = [\"{}:7470\"], key_file = \"{}\" }}\n",
        backend_addr(0),
        key.display()
    );
    let target = SocketAddr::from((VIP, 80));
    let mut rates = [Vec::new(), Vec::new()];
    // The daemon's CPU time per second of load (a share of one CPU), and the flows it sent
    // per second, with [fleet] on.
    let mut daemon_cpu = [Vec::new(), Vec::new()];
    let mut sent_rates = Vec::new();
    let mut sent = 0.0;
    for _ in 0..runs {
        for (i, on) in [false, true].into_iter().enumerate() {
            let config = format!(
                "metrics = \"{METRICS}\"\n{}{}",
                if on { fleet.as_str() } else { "" },
                balancer_config_with(&lab, "auto", "", "")
            );
            let xlb = start_xlb(&lab.balancer, &config)?;
            wrk(&lab.client, target, 1, true)?;
            let sent_before = if on { flows_sent(&lab)? } else { 0.0 };
            let (cpu_before, started) = (process_cpu_time(xlb.pid())?, Instant::now());
            let (rate, _) = wrk(&lab.client, target, seconds, true)?;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = process_cpu_time(xlb.pid())? - cpu_before;
            rates[i].push(rate);
            daemon_cpu[i].push(cpu.as_secs_f64() / elapsed);
            if on {
                let total = flows_sent(&lab)?;
                sent_rates.push((total - sent_before) / elapsed);
                sent += total;
            }
            drop(xlb);
        }
    }
    ensure!(sent > 0.0, "with [fleet] on, no flow was sent");
    let spread = |values: &mut Vec<f64>, scale: f64, digits: usize| {
        let (min, max) = (
            values.iter().copied().fold(f64::MAX, f64::min) * scale,
            values.iter().copied().fold(0.0, f64::max) * scale,
        );
        format!(
            "{:.digits$} ({min:.digits$}–{max:.digits$})",
            median(values) * scale
        )
    };
    let mut table = Table::new(&[
        "[fleet]",
        "new connections/s (median, min–max)",
        "the daemon's CPU, % of one (median, min–max)",
    ]);
    for (i, name) in ["off", "on"].iter().enumerate() {
        table.row(vec![
            (*name).to_owned(),
            spread(&mut rates[i], 1.0, 0),
            spread(&mut daemon_cpu[i], 100.0, 1),
        ]);
    }
    let sending = (median(&mut daemon_cpu[1]) - median(&mut daemon_cpu[0])) * 100.0;
    let per_second = median(&mut sent_rates);
    Ok(format!(
        "End to end, one instance on the test topology at the links' defaults (xlb auto: tc): \
         wrk's new connections per second (a connection per request, 2 threads, 32 \
         connections, {seconds} s), with `[fleet]` off and on in turns, {runs} runs each; on, \
         every connection's flow is told to the daemon, tagged and sent to one peer ({sent:.0} \
         flows sent in all). Client, backends and xlb share the machine's two CPUs, so the \
         daemon's sending competes with the load. The daemon's CPU time comes from \
         /proc/PID/stat over each timed run; on, it sent {per_second:.0} flows a second \
         (median): the difference of the medians, {sending:.1}% of a CPU, is {:.2}% per 1,000 \
         flows a second.\n\n{}",
        sending / (per_second / 1_000.0).max(f64::MIN_POSITIVE),
        table.markdown()
    ))
}

/// Where the instance of [`connections_per_second`] serves its metrics.
const METRICS: &str = "127.0.0.1:9814";

/// The flows the lab's instance sent to its peer, from its metrics.
fn flows_sent(lab: &Lab) -> Result<f64> {
    let endpoint = METRICS.parse()?;
    let body = lab
        .balancer
        .block_on(http_get_body(endpoint, "/metrics"))??;
    Ok(body
        .lines()
        .find_map(|line| {
            line.strip_prefix("xlb_fleet_flows_total{result=\"sent\"}")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}
