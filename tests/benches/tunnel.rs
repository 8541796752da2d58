//! End to end across routers: layer-3 direct server return (`forwarding = "ipip"` and
//! `"gue"`) on `Wiring::Tunneled` (client, router, a one-armed balancer behind it, a second
//! router, three backends two routed hops from the balancer, each running `xlb decap` with
//! the VIP on its loopback), links at their defaults (`auto` chooses tc). Each variant on a
//! freshly built topology, taking turns, [`REPEATS`] runs: the median and the spread.
//!
//! - `route`: no balancer; the client's packets go to backend 1 itself through both routers
//!   (the path's baseline: one hop fewer than through the balancer).
//! - `xlb ipip`, `xlb gue`: the client's packets go to the VIP, through the balancer, which
//!   sends them inside the outer header; the backends answer the client directly.
//!
//! Metrics: TCP throughput to backend 1 (iperf3 upload, which passes the balancer); HTTP
//! requests per second over keep-alive connections and over a new connection each (wrk), with
//! p99 latency; round-robin fairness. Needs root. Run by `cargo xtask bench`.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::{Context as _, Result, bail};
use xlb_tests::{
    bench::{Table, fairness, iperf, median, print_section, quick, served, wrk},
    process::Process,
    scenario::{HTTP_PORT, start_xlb},
    topology::{Lab, VIP, Wiring, backend_addr},
    tunnel::start_backends_and_decaps,
};

/// Measurements of each variant.
const REPEATS: usize = 3;
/// iperf3's port (a service of its own, to backend 1 only).
const IPERF_PORT: u16 = 5201;

/// What is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Route,
    Xlb(&'static str),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Route => "route".into(),
            Self::Xlb(forwarding) => format!("xlb {forwarding} (tc)"),
        }
    }
}

/// One run's results.
struct Results {
    tcp_gbps: f64,
    http_rps: f64,
    http_p99_ms: f64,
    conn_rps: f64,
    conn_p99_ms: f64,
    fairness: Option<f64>,
}

fn main() -> Result<()> {
    let (seconds, repeats, variants): (u32, usize, &[Variant]) = if quick() {
        // The suite's check that the benchmark runs.
        (1, 1, &[Variant::Xlb("ipip")])
    } else {
        (
            4,
            REPEATS,
            &[Variant::Route, Variant::Xlb("ipip"), Variant::Xlb("gue")],
        )
    };
    let mut results: Vec<Vec<Results>> = variants.iter().map(|_| Vec::new()).collect();
    for run in 0..repeats {
        for (v, variant) in variants.iter().enumerate() {
            eprintln!("tunnel run {}: {}", run + 1, variant.name());
            let result = measure(*variant, seconds).with_context(|| variant.name())?;
            results[v].push(result);
        }
    }
    let mut body = format!(
        "Client, router, a one-armed balancer behind it, a second router and three backends, \
         each in its own namespace, links at their defaults (`auto` chose tc); the backends are \
         two routed hops from the balancer, hold the VIP on their loopback and run `xlb decap`, \
         and answer the client directly through both routers. Every variant on a freshly built \
         topology, the variants taking turns, {repeats} runs each: a cell is the median, with \
         the lowest and highest run in parentheses. `route`: no balancer, the client talks to \
         backend 1 through both routers (one hop fewer).\n\n\
         - TCP: iperf3, one stream, {seconds}s, client to backend 1 (the data passes the \
         balancer; the ACKs do not).\n\
         - HTTP: wrk, 2 threads, 32 connections, {seconds}s, against the backends' HTTP servers; \
         \"new connections\" sends `Connection: close`.\n\
         - Fairness: requests served per backend during the new-connections run.\n\n"
    );
    type Metric = (&'static str, fn(&Results) -> Option<f64>);
    let metrics: [Metric; 6] = [
        ("TCP throughput, Gbit/s", |r| Some(r.tcp_gbps)),
        ("HTTP keep-alive requests/s", |r| Some(r.http_rps)),
        ("HTTP keep-alive p99, ms", |r| Some(r.http_p99_ms)),
        ("new connections/s", |r| Some(r.conn_rps)),
        ("new connections p99, ms", |r| Some(r.conn_p99_ms)),
        ("fairness, max/min per backend", |r| r.fairness),
    ];
    let names: Vec<String> = variants.iter().map(|v| v.name()).collect();
    let mut header = vec!["metric"];
    header.extend(names.iter().map(String::as_str));
    let mut table = Table::new(&header);
    for (name, metric) in metrics {
        let mut row = vec![name.to_owned()];
        for runs in &results {
            let mut values: Vec<f64> = runs.iter().filter_map(metric).collect();
            row.push(if values.is_empty() {
                "–".into()
            } else {
                let (low, high) = spread(&values);
                format!(
                    "{} ({}–{})",
                    number(median(&mut values)),
                    number(low),
                    number(high)
                )
            });
        }
        table.row(row);
    }
    write!(body, "{}", table.markdown())?;
    print_section("End to end across routers: IPIP and GUE", &body);
    Ok(())
}

/// The lowest and highest of `values`.
fn spread(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::MAX, f64::min);
    let high = values.iter().copied().fold(f64::MIN, f64::max);
    (low, high)
}

/// `value` with the digits that matter here.
fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Measures one variant on a fresh topology.
fn measure(variant: Variant, seconds: u32) -> Result<Results> {
    let lab = Lab::new(Wiring::Tunneled, 3)?;
    let (_servers, _decaps) = start_backends_and_decaps(&lab)?;
    let mut iperf_command = lab.backends[0].command("iperf3");
    iperf_command.args(["-s", "-p", &IPERF_PORT.to_string()]);
    let _iperf = Process::spawn("iperf3", iperf_command)?;
    lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    lab.client
        .sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;
    let b1 = backend_addr(0);
    let _xlb = match variant {
        Variant::Xlb(forwarding) => {
            let backends = |port: u16| {
                (0..lab.backends.len())
                    .map(|i| format!("{{ address = \"{}\" }}", lab.backend_endpoint(i, port)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let config = format!(
                "interfaces = [\"eth0\"]\n[tunnel]\nsource = \"198.18.5.2\"\n\
                 [[service]]\nname = \"web\"\nlisten = \"{VIP}:{HTTP_PORT}\"\nprotocol = \"tcp\"\n\
                 forwarding = \"{forwarding}\"\nbackends = [ {} ]\n\
                 [[service]]\nname = \"iperf\"\nlisten = \"{VIP}:{IPERF_PORT}\"\nprotocol = \"tcp\"\n\
                 forwarding = \"{forwarding}\"\nbackends = [ {{ address = \"{b1}:{IPERF_PORT}\" }} ]\n\
                 health = {{ check = \"none\" }}\n",
                backends(HTTP_PORT)
            );
            let xlb = start_xlb(&lab.balancer, &config)?;
            if !xlb.output().contains("hook=tc") {
                bail!("auto did not choose tc on veth:\n{}", xlb.output());
            }
            Some(xlb)
        }
        Variant::Route => None,
    };
    let (http_target, iperf_target) = match variant {
        Variant::Route => (SocketAddr::from((b1, HTTP_PORT)), b1),
        Variant::Xlb(_) => (SocketAddr::from((VIP, HTTP_PORT)), VIP),
    };
    // Warm up: neighbours resolved, servers answering.
    wrk(&lab.client, http_target, 1, false).context("warm-up")?;
    let tcp_gbps = iperf(
        &lab.client,
        SocketAddr::from((iperf_target, IPERF_PORT)),
        seconds,
    )?;
    let (http_rps, http_p99_ms) = wrk(&lab.client, http_target, seconds, false)?;
    let before = served(&lab)?;
    let (conn_rps, conn_p99_ms) = wrk(&lab.client, http_target, seconds, true)?;
    let after = served(&lab)?;
    let fairness = (variant != Variant::Route).then(|| fairness(&before, &after));
    Ok(Results {
        tcp_gbps,
        http_rps,
        http_p99_ms,
        conn_rps,
        conn_p99_ms,
        fairness,
    })
}
