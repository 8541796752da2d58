//! The bench's section of BENCHMARKS.md: its introduction, a table per kind of links, and the
//! balancer program's share of the machine's CPU in the timed runs.

use xlb_tests::{
    bench::{Table, median},
    program_time::ProgramTime,
};

use super::{Cost, LOADS, Results, Settings, Variant};

/// The section's introduction: the topology, the variants, and how each metric is measured.
pub(super) fn intro(settings: &Settings) -> String {
    format!(
        "Client, balancer, switch (a bridge) and three backends, each in its own namespace, joined by \
         veth pairs; every variant on a freshly built topology, the variants taking turns, {} runs \
         each: a cell is the median, with the lowest and highest run in parentheses. `route`: no \
         balancer, the balancer namespace forwards to backend 1. `nft`: nftables DNAT, `numgen inc \
         mod 3` per new flow, conntrack reversing the replies. `xlb MODE`: this project with that \
         `xdp_mode` (`auto` chose tc, as it does on veth), handing packets to the veth peers \
         (`veth_peer_redirect`, the default); `no peer handoff`: the same with it off. `xlb auto, \
         dsr|ipip|gue`: the backends answer the clients directly (the VIP on their loopback; \
         `xlb decap` for the tunnels), on the backends' ports. Ratios divide medians.\n\n\
         - UDP: trafgen sends {} 60-byte frames from 1,024 source ports as fast as it can; counted \
         at the backends' interfaces.\n\
         - CPU: the whole machine's busy time during a load (generator, client, servers and \
         kernel included) over the packets, requests or connections it completed.\n\
         - TCP: iperf3, one stream, {}s, to backend 1 (a service of its own for xlb).\n\
         - HTTP: wrk, 2 threads, 32 connections, {}s, against the backends' HTTP servers (the test \
         backend, hyper); \"new connections\" sends `Connection: close`.\n\
         - Fairness: requests served per backend during the new-connections run.\n",
        settings.repeats, settings.udp_packets, settings.seconds, settings.seconds,
    )
}

/// The table of one kind of links: each metric's median (and spread) per variant, and each
/// xlb variant's ratios to `route` and to `nft`.
pub(super) fn report(variants: &[Variant], results: &[Vec<Results>]) -> String {
    type Metric = (&'static str, fn(&Results) -> Option<f64>);
    let metrics: [Metric; 10] = [
        ("UDP packets/s delivered (64 B)", |r| Some(r.udp_pps)),
        ("CPU ms per million packets (machine)", |r| {
            Some(r.costs[0].machine_us() * 1e3)
        }),
        ("TCP throughput, Gbit/s", |r| Some(r.tcp_gbps)),
        ("HTTP keep-alive requests/s", |r| Some(r.http_rps)),
        ("HTTP keep-alive p99, ms", |r| Some(r.http_p99_ms)),
        ("CPU µs per keep-alive request (machine)", |r| {
            Some(r.costs[2].machine_us())
        }),
        ("new connections/s", |r| Some(r.conn_rps)),
        ("new connections p99, ms", |r| Some(r.conn_p99_ms)),
        ("CPU µs per new connection (machine)", |r| {
            Some(r.costs[3].machine_us())
        }),
        ("fairness, max/min per backend", |r| r.fairness),
    ];
    let position = |wanted: Variant| variants.iter().position(|v| *v == wanted);
    let (route, nft) = (position(Variant::Route), position(Variant::Nft));
    let xlbs: Vec<usize> = (0..variants.len())
        .filter(|&i| {
            matches!(
                variants[i],
                Variant::Xlb(_) | Variant::XlbTransmit | Variant::Direct(_)
            )
        })
        .collect();
    let mut header = vec!["metric".to_owned()];
    header.extend(variants.iter().map(|v| v.name()));
    // Ratios to the baselines the group has.
    let baselines: Vec<(&str, usize)> = [("route", route), ("nft", nft)]
        .into_iter()
        .filter_map(|(name, at)| Some((name, at?)))
        .collect();
    for &x in &xlbs {
        for (name, _) in &baselines {
            header.push(format!("{} ÷ {name}", variants[x].name()));
        }
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = Table::new(&header_refs);
    for (name, get) in metrics {
        let runs: Vec<Vec<f64>> = results
            .iter()
            .map(|runs| runs.iter().filter_map(get).collect())
            .collect();
        let medians: Vec<Option<f64>> = runs
            .iter()
            .map(|values| (!values.is_empty()).then(|| median(&mut values.clone())))
            .collect();
        let mut row = vec![name.to_owned()];
        for (values, middle) in runs.iter().zip(&medians) {
            row.push(match middle {
                None => "n/a".into(),
                Some(m) if values.len() == 1 => format_number(*m),
                Some(m) => {
                    let low = values.iter().copied().fold(f64::MAX, f64::min);
                    let high = values.iter().copied().fold(f64::MIN, f64::max);
                    format!(
                        "{} ({}–{})",
                        format_number(*m),
                        format_number(low),
                        format_number(high)
                    )
                }
            });
        }
        let ratio = |a: Option<f64>, b: Option<usize>| match (a, b.and_then(|b| medians[b])) {
            (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => {
                format!("{:.2}", a / b)
            }
            _ => "n/a".into(),
        };
        for &x in &xlbs {
            for (_, at) in &baselines {
                row.push(ratio(medians[x], Some(*at)));
            }
        }
        table.row(row);
    }
    table.markdown()
}

/// The timed runs' table: per load, what the machine spent per unit and what of it the
/// balancer program took (medians over runs, spread in parentheses).
pub(super) fn program_share(timed: &[Results]) -> String {
    let spread = |mut values: Vec<f64>, format: fn(f64) -> String| {
        let low = values.iter().copied().fold(f64::MAX, f64::min);
        let high = values.iter().copied().fold(f64::MIN, f64::max);
        let middle = median(&mut values);
        if values.len() == 1 {
            format(middle)
        } else {
            format!("{} ({}–{})", format(middle), format(low), format(high))
        }
    };
    let mut table = Table::new(&[
        "load",
        "unit",
        "machine busy, share of its CPUs",
        "machine CPU per unit (µs)",
        "program runs per unit",
        "ns per program run",
        "the program's share of the machine's CPU",
    ]);
    let percent = |v: f64| format!("{:.1}%", v * 100.0);
    for (i, (load, unit)) in LOADS.iter().enumerate() {
        let costs: Vec<&Cost> = timed.iter().map(|r| &r.costs[i]).collect();
        let programs: Vec<(&Cost, ProgramTime)> = costs
            .iter()
            .filter_map(|c| c.program.map(|p| (*c, p)))
            .collect();
        let of_programs = |f: fn(&Cost, ProgramTime) -> f64| {
            programs.iter().map(|(c, p)| f(c, *p)).collect::<Vec<_>>()
        };
        table.row(vec![
            (*load).to_owned(),
            (*unit).to_owned(),
            spread(costs.iter().map(|c| c.busy_share()).collect(), percent),
            spread(
                costs.iter().map(|c| c.machine_us()).collect(),
                format_number,
            ),
            spread(of_programs(|c, p| p.runs as f64 / c.units), format_number),
            spread(
                of_programs(|_, p| p.time.as_nanos() as f64 / p.runs.max(1) as f64),
                format_number,
            ),
            spread(
                of_programs(|c, p| p.time.as_secs_f64() / c.busy.as_secs_f64()),
                percent,
            ),
        ]);
    }
    format!(
        "xlb auto (tc) on default links, one more run per round with the kernel's BPF run-time \
         statistics on (`BPF_ENABLE_STATS`: two clock reads per program run, so these runs are \
         not in the tables above); the same loads. Runs per unit count the packets of both \
         directions that met the program; its share is its run time over the machine's busy \
         time. {} run(s): medians, spread in parentheses.\n\n{}",
        timed.len(),
        table.markdown()
    )
}

/// A number with fewer decimals the larger it is (`∞` for infinity).
fn format_number(value: f64) -> String {
    if value.is_infinite() {
        "∞".into()
    } else if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}
