//! Multi-core: the balancer run on one CPU and on both at once (one thread pinned to each, each
//! with its own flows, as RSS would spread them), through BPF_PROG_TEST_RUN. If something the
//! CPUs share serialised them (the round-robin cursor, the handshake guard's window, a lock in
//! the flow tables), a packet would cost more on each CPU when both run. Needs root. Run by
//! `cargo xtask bench`.

use std::sync::Barrier;

use anyhow::{Result, anyhow, ensure};
use aya::programs::Xdp;
use loopback::parse_with_loopbacks;
use xlb::{
    control::{Balancer, ServiceSpec},
    dataplane::{Dataplane, NoopProgram},
    sys::netif,
};
use xlb_tests::{
    bench::{Table, median, print_section, quick},
    packet::{Frame, Transport, tcp_flags},
    packet_net::{self, XDP_PASS, XDP_REDIRECT},
};

#[path = "shared/loopback.rs"]
mod loopback;

/// Repetitions per test run of an established packet (the TTL of 255 must outlast them).
const REPEAT: u32 = 250;

const CONFIG: &str = r#"
interfaces = ["c0", "s0"]
flow_table_size = 1048576

[[service]]
name = "loopback"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.250:80" } ]  # its own VIP: see parse_with_loopbacks

[[service]]
name = "new"
listen = "198.18.100.2:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "udp"
listen = "198.18.100.2:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353" }, { address = "198.18.1.12:5353" }, { address = "198.18.1.13:5353" } ]
"#;

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// What one CPU measured: the median time of one packet (as the kernel timed its runs).
struct PerCpu {
    ns: f64,
}

/// A row of the table: the case, each CPU alone, both at once.
type Row = (String, Vec<PerCpu>, Vec<PerCpu>);

/// Runs `work(cpu)` for each of `cpus` at once, on a thread pinned to that CPU, started
/// together.
fn on_cpus(cpus: &[usize], work: &(dyn Fn(usize) -> Result<PerCpu> + Sync)) -> Result<Vec<PerCpu>> {
    let barrier = Barrier::new(cpus.len());
    std::thread::scope(|scope| {
        let threads: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let barrier = &barrier;
                scope.spawn(move || {
                    pin_to(cpu)?;
                    barrier.wait();
                    work(cpu)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().map_err(|_| anyhow!("a thread panicked"))?)
            .collect()
    })
}

/// `rounds` test runs of `REPEAT` repetitions of `frame` (which must keep its path).
fn repeated(
    program: &Xdp,
    frame: &[u8],
    ifindex: u32,
    verdict: u32,
    rounds: usize,
) -> Result<PerCpu> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let result = packet_net::run(program, frame, ifindex, REPEAT)?;
        ensure!(result.verdict == verdict, "verdict {}", result.verdict);
        times.push(result.duration.as_secs_f64() * 1e9);
    }
    Ok(PerCpu {
        ns: median(&mut times),
    })
}

/// `count` new flows from the clients of range `range` (every range its own), one test run
/// each.
fn new_flows(
    program: &Xdp,
    ifindex: u32,
    range: usize,
    count: usize,
    frame: impl Fn(String) -> Frame,
) -> Result<PerCpu> {
    let mut times = Vec::with_capacity(count);
    let frames: Vec<Vec<u8>> = (range * count..(range + 1) * count)
        .map(|i| {
            frame(format!(
                "198.19.{}.{}:{}",
                i / 60_000 / 250,
                1 + (i / 60_000) % 250,
                1_024 + i % 60_000
            ))
            .build()
        })
        .collect();
    for frame in &frames {
        let result = packet_net::run(program, frame, ifindex, 1)?;
        ensure!(result.verdict == XDP_REDIRECT, "verdict {}", result.verdict);
        times.push(result.duration.as_secs_f64() * 1e9);
    }
    Ok(PerCpu {
        ns: median(&mut times),
    })
}

fn main() -> Result<()> {
    let quick = quick();
    let (rounds, flows) = if quick { (20, 2_000) } else { (300, 40_000) };
    let cpus = std::thread::available_parallelism()?.get().min(2);
    ensure!(cpus == 2, "this benchmark needs two CPUs (it has {cpus})");
    let ns = packet_net::build()?;
    packet_net::repeatable(&ns)?;
    let rows = ns.enter(|| -> Result<Vec<Row>> {
        let config = parse_with_loopbacks(CONFIG)?;
        let mut dataplane = Dataplane::load(config.flow_table_size)?;
        Balancer::new().apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)?;
        let (c0, s0) = (netif::index("c0")?, netif::index("s0")?);
        dataplane.maps.add_egress_port(c0)?;
        dataplane.maps.add_egress_port(s0)?;
        let noop = NoopProgram::load()?;
        let program = dataplane.program();

        // Each CPU's own established flow (see packet_cost.rs for the loopback service).
        let ack = |port: usize| {
            Frame::tcp(&format!("198.18.0.2:{}", 40_000 + port), "198.18.100.1:80").with(|f| {
                f.ttl = 255;
                f.transport = Transport::Tcp {
                    flags: tcp_flags::ACK,
                    seq: 2,
                };
            })
        };
        for cpu in 0..cpus {
            let syn = Frame::tcp(&format!("198.18.0.2:{}", 40_000 + cpu), "198.18.100.1:80")
                .with(|f| f.ttl = 255);
            ensure!(packet_net::run(program, &syn.build(), c0, 1)?.verdict == XDP_REDIRECT);
            ensure!(packet_net::run(program, &ack(cpu).build(), c0, 1)?.verdict == XDP_REDIRECT);
        }
        let mut rows = Vec::new();
        // Each CPU alone before and after both together (the mean of the two), so that what
        // changed meanwhile (the tables filling) weighs on both sides alike; the CPUs of a
        // virtual machine need not be equally fast, so each is compared with itself.
        let measure = |work: &(dyn Fn(usize) -> Result<PerCpu> + Sync)| -> Result<_> {
            let mut alone = Vec::new();
            for cpu in 0..cpus {
                alone.push(on_cpus(&[cpu], work)?.remove(0));
            }
            let all: Vec<usize> = (0..cpus).collect();
            let together = on_cpus(&all, work)?;
            for (cpu, before) in alone.iter_mut().enumerate() {
                let after = on_cpus(&[cpu], work)?.remove(0);
                before.ns = (before.ns + after.ns) / 2.0;
            }
            Ok((alone, together))
        };
        let (alone, together) =
            measure(&|cpu| repeated(noop.program(), &ack(cpu).build(), c0, XDP_PASS, rounds))?;
        rows.push(("reference: count and pass".to_owned(), alone, together));
        let (alone, together) =
            measure(&|cpu| repeated(program, &ack(cpu).build(), c0, XDP_REDIRECT, rounds))?;
        rows.push((
            "established TCP flow, IPv4 (each CPU its own)".to_owned(),
            alone,
            together,
        ));
        // New flows: every run of every CPU takes a range of clients of its own, so that every
        // flow is new.
        let ranges = std::sync::atomic::AtomicUsize::new(0);
        let next = |_cpu: usize| ranges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (alone, together) = measure(&|cpu| {
            new_flows(program, c0, next(cpu), flows, |client| {
                Frame::tcp(&client, "198.18.100.2:80")
            })
        })?;
        rows.push((
            "new TCP flow (round robin: one cursor, one handshake guard)".to_owned(),
            alone,
            together,
        ));
        let (alone, together) = measure(&|cpu| {
            new_flows(program, c0, next(cpu), flows, |client| {
                Frame::udp(&client, "198.18.100.2:53")
            })
        })?;
        rows.push(("new UDP flow (round robin)".to_owned(), alone, together));
        Ok(rows)
    })??;

    let mut table = Table::new(&[
        "case",
        "each CPU alone: ns per packet (CPU 0 / CPU 1)",
        "both at once: ns per packet (CPU 0 / CPU 1)",
        "one CPU: millions per second (CPU 0)",
        "both: millions per second",
        "both against each alone, summed",
    ]);
    let list = |cpus: &[PerCpu]| {
        cpus.iter()
            .map(|c| format!("{:.0}", c.ns))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (case, alone, together) in rows {
        let rate = |cpus: &[PerCpu]| -> f64 { cpus.iter().map(|c| 1e3 / c.ns).sum() };
        table.row(vec![
            case,
            list(&alone),
            list(&together),
            format!("{:.2}", 1e3 / alone[0].ns),
            format!("{:.2}", rate(&together)),
            format!("{:.2}", rate(&together) / rate(&alone)),
        ]);
    }
    print_section(
        "Multi-core",
        &format!(
            "The balancer through BPF_PROG_TEST_RUN on one CPU, then on both at once, then on one again \
             (each CPU's alone figure is the mean of the two) (a thread \
             pinned to each, started together, each with flows of its own, as RSS spreads \
             them over queues); a table of {} flows. Established: {rounds} runs of {REPEAT} \
             repetitions per CPU; new flows: {flows} per CPU, one run each (the TCP ones all fit in \
             the half-open table: no eviction), all to the same \
             service, so both CPUs advance the same round-robin cursor and count in the same \
             handshake-guard window. Per packet is the kernel's median time of a run, which \
             contention would raise; the rates follow from it (one packet after another, on \
             each CPU); the last column is the rate of both at once over the sum of each one's alone \
             (1.00: the CPUs do not slow each other down). \
             (Wall-clock rates would measure the test runs' system calls: a new flow's run is \
             mostly system call, and a repeated run swaps the kernel's XDP dispatcher.)\n\n{}",
            1_048_576,
            table.markdown()
        ),
    );
    Ok(())
}
