//! Scale: kernel memory of the maps and per-packet cost with a full flow table (1,000,000
//! flows), 1,000 backends in one service, and 10,000 services; the time to apply each
//! configuration (build and publish every table); what the daemon's periodic pass over the
//! flows costs (reading the active-flow counts) against a full read of the flow tables; and
//! the memory of a flow. Needs root. Run by `cargo xtask bench`.

use std::{fmt::Write as _, time::Instant};

use anyhow::{Result, ensure};
use aya::maps::{Array, MapData, MapInfo};
use lb_common::{BackendTable, consts::map_names};
use loopback::parse_with_loopbacks;
use xlb::{
    control::{Balancer, DataplaneReads as _, ServiceSpec},
    dataplane::{Dataplane, NoopProgram},
    sys::netif,
};
use xlb_tests::{
    bench::{Table, median, print_section, quick, thread_cpu_time},
    packet::{Frame, Transport, tcp_flags},
    packet_net::{self, XDP_REDIRECT},
};

#[path = "shared/loopback.rs"]
mod loopback;

/// Kernel memory (bytes) of the BPF maps this process holds open, from /proc/self/fdinfo.
fn open_map_memory() -> Result<u64> {
    Ok(open_maps()?.iter().map(|(_, memory)| memory).sum())
}

/// Kernel memory (bytes) of the open maps whose name is one of `names`.
fn memory_of(names: &[&str]) -> Result<u64> {
    Ok(open_maps()?
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()))
        .map(|(_, memory)| memory)
        .sum())
}

/// The BPF maps this process holds open: name and kernel memory (`memlock`, from
/// /proc/self/fdinfo).
fn open_maps() -> Result<Vec<(String, u64)>> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let name = MapInfo::from_id(field("map_id:") as u32)
            .ok()
            .and_then(|map| map.name_as_str().map(str::to_owned))
            .unwrap_or_default();
        maps.push((name, field("memlock:")));
    }
    Ok(maps)
}

/// Kernel memory of one published backend table (an inner map the daemon does not keep open).
fn table_memory() -> Result<u64> {
    let before = open_map_memory()?;
    let _table: Array<MapData, BackendTable> = Array::create(1, 0)?;
    Ok(open_map_memory()? - before)
}

fn config(services: usize, backends: usize) -> String {
    let mut text = String::from("interfaces = [\"c0\", \"s0\"]\n");
    // The first service's backend is its own VIP (see `parse_with_loopbacks`), so a repeated
    // packet stays on one path.
    text.push_str(
        "[[service]]\nname = \"loopback\"\nlisten = \"198.18.100.1:80\"\nprotocol = \"tcp\"\n\
         backends = [ { address = \"198.18.1.250:80\" } ]\n",
    );
    for s in 0..services {
        let list: Vec<String> = (0..backends)
            .map(|b| {
                format!(
                    "{{ address = \"198.18.{}.{}:{}\" }}",
                    10 + b / 200,
                    11 + b % 200,
                    8000 + s % 1000
                )
            })
            .collect();
        let _ = write!(
            text,
            "[[service]]\nname = \"s{s}\"\nlisten = \"198.18.{}.{}:{}\"\nprotocol = \"tcp\"\nbackends = [ {} ]\n",
            101 + s / (250 * 50),
            1 + (s / 50) % 250,
            80 + s % 50,
            list.join(", ")
        );
    }
    text
}

struct Row {
    name: String,
    memory_mib: f64,
    apply_ms: f64,
    established_warm: f64,
    established_cold: f64,
    new_flow: f64,
    noop_single: f64,
    pass_ms: f64,
    read_ms: f64,
    /// Kernel memory of the IPv4 flow tables (with the replies' VIPs of shared backends) per
    /// flow they hold.
    bytes_per_flow: f64,
}

/// Loads the program with a flow table of `flows`, applies `services` services of `backends`
/// backends, fills the table with `fill` flows, and measures.
fn measure(
    name: &str,
    flows: u32,
    services: usize,
    backends: usize,
    fill: usize,
    samples: usize,
) -> Result<Row> {
    eprintln!("scale: {name}");
    let ns = packet_net::build()?;
    packet_net::repeatable(&ns)?;
    ns.enter(|| -> Result<Row> {
        let config = parse_with_loopbacks(&config(services, backends))?;
        let mut dataplane = Dataplane::load(flows)?;
        let start = Instant::now();
        let mut balancer = Balancer::new();
        let summary = balancer.apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)?;
        let apply_ms = start.elapsed().as_secs_f64() * 1e3;
        let (c0, s0) = (netif::index("c0")?, netif::index("s0")?);
        dataplane.maps.add_egress_port(c0)?;
        dataplane.maps.add_egress_port(s0)?;
        let program = dataplane.program();
        let noop = NoopProgram::load()?;

        // The flows, through the program itself: distinct clients to the first configured
        // service, or to the loopback one if there is none.
        let target = if services > 0 {
            "198.18.101.1:80"
        } else {
            "198.18.100.1:80"
        };
        let client = |i: usize| {
            format!(
                "198.19.{}.{}:{}",
                (i / 60_000) / 250,
                1 + (i / 60_000) % 250,
                1_024 + i % 60_000
            )
        };
        // A flow is its SYN (a new, half-open flow) and its client's ACK (established).
        let syn = |i: usize| Frame::tcp(&client(i), target).with(|f| f.ttl = 255);
        let flow = |i: usize| {
            syn(i)
                .with(|f| {
                    f.transport = Transport::Tcp {
                        flags: tcp_flags::ACK,
                        seq: 2,
                    }
                })
                .build()
        };
        let mut new = Vec::with_capacity(fill);
        for i in 0..fill {
            let result = packet_net::run(program, &syn(i).build(), c0, 1)?;
            ensure!(
                result.verdict == XDP_REDIRECT,
                "flow {i}: verdict {}",
                result.verdict
            );
            new.push(result.duration.as_secs_f64() * 1e9);
            ensure!(packet_net::run(program, &flow(i), c0, 1)?.verdict == XDP_REDIRECT);
        }
        // Established packets of random flows, one run each (their entries are cold), and the
        // same flow repeated (warm).
        let mut cold = Vec::with_capacity(samples);
        let mut noop_single = Vec::with_capacity(samples);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..samples {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let frame = flow(state as usize % fill.max(1));
            cold.push(
                packet_net::run(program, &frame, c0, 1)?
                    .duration
                    .as_secs_f64()
                    * 1e9,
            );
            noop_single.push(
                packet_net::run(noop.program(), &frame, c0, 1)?
                    .duration
                    .as_secs_f64()
                    * 1e9,
            );
        }
        let warm_syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80").with(|f| f.ttl = 255);
        let warm_frame = warm_syn
            .clone()
            .with(|f| {
                f.transport = Transport::Tcp {
                    flags: tcp_flags::ACK,
                    seq: 2,
                }
            })
            .build();
        ensure!(packet_net::run(program, &warm_syn.build(), c0, 1)?.verdict == XDP_REDIRECT);
        ensure!(packet_net::run(program, &warm_frame, c0, 1)?.verdict == XDP_REDIRECT);
        let mut warm = Vec::new();
        for _ in 0..50 {
            warm.push(
                packet_net::run(program, &warm_frame, c0, 200)?
                    .duration
                    .as_secs_f64()
                    * 1e9,
            );
        }
        // The daemon's periodic pass over the flows: the active-flow counts of every backend,
        // every second (CPU time of this thread, the kernel's included; the median of 20).
        let ids: Vec<u32> = summary_ids(&balancer);
        let mut passes = Vec::new();
        for _ in 0..20 {
            let started = thread_cpu_time();
            let active = dataplane.maps.active_flows(&ids)?;
            passes.push((thread_cpu_time() - started).as_secs_f64() * 1e3);
            ensure!(
                active.total() as usize >= fill.min(1),
                "no active flow counted"
            );
        }
        // What the sweep of earlier versions did every few seconds: read both tables whole.
        let started = thread_cpu_time();
        let read = dataplane.maps.flows.all()?;
        let read_ms = (thread_cpu_time() - started).as_secs_f64() * 1e3;
        ensure!(read.len() >= fill.min(read.len()));
        let flow_tables = memory_of(&[
            map_names::FLOWS4,
            map_names::HALF_OPEN4,
            map_names::REPLY_VIPS4,
        ])?;
        let tables = summary.tables_published as u64;
        let memory = open_map_memory()? + tables * table_memory()?;
        Ok(Row {
            name: name.to_owned(),
            memory_mib: memory as f64 / (1 << 20) as f64,
            apply_ms,
            established_warm: median(&mut warm),
            established_cold: median(&mut cold),
            new_flow: median(&mut new),
            noop_single: median(&mut noop_single),
            pass_ms: median(&mut passes),
            read_ms,
            bytes_per_flow: flow_tables as f64 / f64::from(flows),
        })
    })?
}

/// Every backend id the balancer applied.
fn summary_ids(balancer: &Balancer) -> Vec<u32> {
    balancer
        .services()
        .iter()
        .flat_map(|service| service.backends.iter().map(|backend| backend.id))
        .collect()
}

fn main() -> Result<()> {
    let quick = quick();
    let (flows, services, backends, samples) = if quick {
        (20_000, 100, 100, 200)
    } else {
        (1_000_000, 10_000, 1_000, 20_000)
    };
    let rows = [
        measure(
            "1 service, 1 backend, 10,000 flows (default table)",
            262_144,
            0,
            1,
            samples.min(10_000),
            samples,
        )?,
        // A little room above the fill: the LRU evicts before it is exactly full.
        measure(
            &format!("{flows} flows"),
            flows + flows / 10,
            0,
            1,
            flows as usize,
            samples,
        )?,
        measure(
            &format!("1 service of {backends} backends"),
            262_144,
            1,
            backends,
            samples.min(10_000),
            samples,
        )?,
        measure(
            &format!("{services} services of 3 backends"),
            262_144,
            services,
            3,
            samples.min(10_000),
            samples,
        )?,
    ];
    let mut table = Table::new(&[
        "configuration",
        "maps, kernel memory (MiB)",
        "apply config (ms)",
        "established, warm (ns)",
        "established, cold (ns)",
        "new flow (ns)",
        "reference, single runs (ns)",
        "periodic pass, CPU (ms)",
        "full read of the flow tables, CPU (ms)",
        "IPv4 flow tables per flow (bytes)",
    ]);
    for row in rows {
        table.row(vec![
            row.name,
            format!("{:.1}", row.memory_mib),
            format!("{:.0}", row.apply_ms),
            format!("{:.0}", row.established_warm),
            format!("{:.0}", row.established_cold),
            format!("{:.0}", row.new_flow),
            format!("{:.0}", row.noop_single),
            format!("{:.2}", row.pass_ms),
            format!("{:.0}", row.read_ms),
            format!("{:.0}", row.bytes_per_flow),
        ]);
    }
    print_section(
        "Scale",
        &format!(
            "The program in the packet-test namespace, its flow table filled through the program \
             itself (one BPF_PROG_TEST_RUN per new flow). Memory: the `memlock` of every map \
             (from /proc/self/fdinfo) plus the published tables. Apply: building and publishing \
             every table and adding every service (tables go in one BPF_MAP_UPDATE_BATCH). \
             Established, warm: one flow repeated 200 times per run; cold: one run per packet of \
             a random established flow, against single runs of the reference program (which \
             include the kernel's per-run timing overhead). New flow: the median over the fill of \
             each flow's SYN (its ACK then makes it established), so with a full table it \
             includes LRU evictions. Periodic pass: what the daemon does every second about \
             flows, reading every backend's active-flow counts (the program expires flows \
             itself; median of 20, CPU time of the reading thread, system calls included). Full \
             read: both IPv4 tables read whole with batched lookups, what the sweep of earlier \
             versions did every few seconds (and what `xlb flows` does once). Per flow: the \
             kernel memory of FLOWS4 and HALF_OPEN4 over the flows FLOWS4 holds (two entries \
             each); the IPv6 tables hold as many flows, at 72-byte entries.\n\n{}",
            table.markdown()
        ),
    );
    Ok(())
}
