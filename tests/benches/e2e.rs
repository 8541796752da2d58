//! End to end, client -> balancer -> 3 backends in network namespaces, each variant on a
//! freshly built topology, in one run, on three kinds of links:
//!
//! - offloads at their defaults (as on a container host): where xlb must be correct as it is;
//! - prepared for native XDP (transmit checksum offload off, GRO on before link-up);
//! - prepared for generic XDP (transmit checksum offload off, GRO off).
//!
//! On each, the variants that are correct there:
//!
//! - `route`: no balancer; the balancer namespace only routes, to one backend (the path's
//!   baseline);
//! - `nft`: nftables DNAT with `numgen inc mod 3` (the kernel's own answer to the same job);
//! - `xlb MODE`: xlb with that `xdp_mode` (`auto` chooses tc on veth); on default links also
//!   `auto` with `veth_peer_redirect = false`, to show what the veth peer handoff buys.
//!
//! Every variant is measured [`REPEATS`] times, the variants taking turns, and reported as the
//! median with the spread (min–max): these machines are noisy.
//!
//! Metrics: small UDP packets delivered per second at the backends (trafgen, 1,024 source
//! ports) and the machine's CPU time per million of them; TCP throughput to one backend
//! (iperf3); HTTP requests per second over keep-alive connections and over a new connection
//! each (wrk against the backends' HTTP servers), with p99 latency; round-robin fairness
//! (max/min requests per backend). Needs root. Run by `cargo xtask bench`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xlb_tests::{
    bench::{Table, median, print_section, quick, wrk},
    client::http_get_body,
    netns::Netns,
    process::{Process, temp_file},
    scenario::{HTTP_PORT, balancer_config_with, start_backends, start_xlb},
    topology::{CLIENT, Lab, Offloads, VIP, Wiring, backend_addr},
};

/// Measurements of each variant (3 runs: median and spread).
const REPEATS: usize = 3;

/// Port the UDP packets go to on the backends (no server: the backend's stack counts and
/// drops them, so the measure is delivery, not an application).
const DISCARD_PORT: u16 = 9;
const UDP_SERVICE_PORT: u16 = 53;
const IPERF_PORT: u16 = 5201;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Route,
    Nft,
    Xlb(&'static str),
    /// xlb with `xdp_mode = "auto"` and `veth_peer_redirect = false`: what the veth peer
    /// handoff buys, in the same run.
    XlbTransmit,
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Route => "route".into(),
            Self::Nft => "nft".into(),
            Self::Xlb("auto") => "xlb auto (tc)".into(),
            Self::Xlb(mode) => format!("xlb {mode}"),
            Self::XlbTransmit => "xlb auto, no peer handoff".into(),
        }
    }
}

/// What one variant measured.
#[derive(Default)]
struct Results {
    udp_pps: f64,
    cpu_ms_per_million: f64,
    tcp_gbps: f64,
    http_rps: f64,
    http_p99_ms: f64,
    conn_rps: f64,
    conn_p99_ms: f64,
    fairness: Option<f64>,
}

struct Settings {
    udp_packets: u64,
    seconds: u32,
    repeats: usize,
}

/// Links of one kind and the variants measured on them.
struct Group {
    offloads: Offloads,
    title: &'static str,
    variants: &'static [Variant],
}

const GROUPS: [Group; 3] = [
    Group {
        offloads: Offloads::Default,
        title: "veth at default offloads (transmit checksum offload and TSO on, GRO on): \
                where native and generic XDP are refused, and `auto` chooses tc",
        variants: &[
            Variant::Route,
            Variant::Nft,
            Variant::Xlb("auto"),
            Variant::XlbTransmit,
        ],
    },
    Group {
        offloads: Offloads::Prepared,
        title: "veth prepared for native XDP (transmit checksum offload off, so TSO off; GRO on \
                before link-up)",
        variants: &[
            Variant::Route,
            Variant::Nft,
            Variant::Xlb("native"),
            Variant::Xlb("tc"),
        ],
    },
    Group {
        offloads: Offloads::PreparedNoGro,
        title: "veth prepared for generic XDP (transmit checksum offload off, GRO off)",
        variants: &[Variant::Route, Variant::Nft, Variant::Xlb("generic")],
    },
];

fn main() -> Result<()> {
    let settings = if quick() {
        Settings {
            udp_packets: 20_000,
            seconds: 1,
            repeats: 1,
        }
    } else {
        Settings {
            udp_packets: 2_000_000,
            seconds: 4,
            repeats: REPEATS,
        }
    };
    // results[group][variant][run]
    let mut results: Vec<Vec<Vec<Results>>> = GROUPS
        .iter()
        .map(|g| g.variants.iter().map(|_| Vec::new()).collect())
        .collect();
    for run in 0..settings.repeats {
        for (g, group) in GROUPS.iter().enumerate() {
            for (v, variant) in group.variants.iter().enumerate() {
                eprintln!(
                    "e2e run {}: {:?}: {}",
                    run + 1,
                    group.offloads,
                    variant.name()
                );
                let result = measure(*variant, group.offloads, &settings)
                    .with_context(|| format!("{:?}: {}", group.offloads, variant.name()))?;
                results[g][v].push(result);
            }
        }
    }
    let mut body = intro(&settings);
    for (group, results) in GROUPS.iter().zip(&results) {
        write!(
            body,
            "\n### {}\n\n{}",
            group.title,
            report(group.variants, results)
        )?;
    }
    print_section("End to end: route, nftables, xlb", &body);
    Ok(())
}

fn measure(variant: Variant, offloads: Offloads, settings: &Settings) -> Result<Results> {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, offloads)?;
    let _backends = start_backends(&lab)?;
    let b1 = backend_addr(0);
    let mut iperf_command = lab.backends[0].command("iperf3");
    iperf_command.args(["-s", "-B", &b1.to_string(), "-p", &IPERF_PORT.to_string()]);
    let _iperf = Process::spawn("iperf3", iperf_command)?;
    lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    lab.client
        .sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;

    let _xlb = match variant {
        Variant::Xlb(_) | Variant::XlbTransmit => {
            let (mode, handoff) = match variant {
                Variant::Xlb(mode) => (mode, true),
                _ => ("auto", false),
            };
            let mut config = format!(
                "veth_peer_redirect = {handoff}\n{}",
                balancer_config_with(&lab, mode, "", "")
            );
            // The UDP service of the standard config goes to the echo servers; here it goes
            // to a port without a server, and iperf3 gets a service of its own.
            config = config.replace(
                &format!(":{}\" }}", xlb_tests::scenario::UDP_PORT),
                &format!(":{DISCARD_PORT}\" }}"),
            );
            write!(
                config,
                "\n[[service]]\nname = \"iperf\"\nlisten = \"{VIP}:{IPERF_PORT}\"\nprotocol = \"tcp\"\n\
                 backends = [ {{ address = \"{b1}:{IPERF_PORT}\" }} ]\nhealth = {{ check = \"none\" }}\n"
            )?;
            let xlb = start_xlb(&lab.balancer, &config)?;
            if mode == "auto" && !xlb.output().contains("hook=tc") {
                bail!("auto did not choose tc on veth:\n{}", xlb.output());
            }
            Some(xlb)
        }
        Variant::Nft => {
            nft_dnat(&lab.balancer)?;
            None
        }
        Variant::Route => None,
    };

    // Where each test sends: the VIP, or backend 1 itself when there is no balancer.
    let (http_target, udp_target, iperf_target) = match variant {
        Variant::Route => (
            SocketAddr::from((b1, HTTP_PORT)),
            SocketAddr::from((b1, DISCARD_PORT)),
            b1,
        ),
        _ => (
            SocketAddr::from((VIP, 80)),
            SocketAddr::from((VIP, UDP_SERVICE_PORT)),
            VIP,
        ),
    };
    // Warm up: neighbours resolved, servers answering.
    wrk(&lab.client, http_target, 1, false).context("warm-up")?;

    let (udp_pps, cpu_ms_per_million) = udp_flood(&lab, udp_target, settings.udp_packets)?;
    let tcp_gbps = iperf(&lab.client, iperf_target, settings.seconds)?;
    let (http_rps, http_p99_ms) = wrk(&lab.client, http_target, settings.seconds, false)?;
    let before = served(&lab)?;
    let (conn_rps, conn_p99_ms) = wrk(&lab.client, http_target, settings.seconds, true)?;
    let after = served(&lab)?;
    let fairness = (variant != Variant::Route).then(|| {
        let counts: Vec<f64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b) as f64)
            .collect();
        let max = counts.iter().copied().fold(f64::MIN, f64::max);
        let min = counts.iter().copied().fold(f64::MAX, f64::min);
        if min > 0.0 { max / min } else { f64::INFINITY }
    });
    Ok(Results {
        udp_pps,
        cpu_ms_per_million,
        tcp_gbps,
        http_rps,
        http_p99_ms,
        conn_rps,
        conn_p99_ms,
        fairness,
    })
}

/// nftables DNAT in the balancer namespace: round robin over the three backends per new flow.
fn nft_dnat(balancer: &Netns) -> Result<()> {
    let backends = (0..3)
        .map(|i| format!("{i} : {}", backend_addr(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let rules = format!(
        "table ip xlbbench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n\
         ip daddr {VIP} tcp dport 80 dnat to numgen inc mod 3 map {{ {backends} }} : {HTTP_PORT}\n\
         ip daddr {VIP} udp dport {UDP_SERVICE_PORT} dnat to numgen inc mod 3 map {{ {backends} }} : {DISCARD_PORT}\n\
         ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {}\n  }}\n}}\n",
        backend_addr(0)
    );
    let path = temp_file("nft.rules", &rules)?;
    balancer.exec("nft", &["-f", path.to_str().context("path")?])?;
    Ok(())
}

/// Busy CPU time of the whole machine, from /proc/stat.
fn busy_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis(busy * 1000 / ticks))
}

/// Packets received so far on every backend's interface.
fn backend_rx(lab: &Lab) -> Result<u64> {
    let mut total = 0;
    for backend in &lab.backends {
        total += backend
            .exec("cat", &["/sys/class/net/eth0/statistics/rx_packets"])?
            .trim()
            .parse::<u64>()?;
    }
    Ok(total)
}

/// Sends `packets` 60-byte UDP frames from 1,024 source ports; returns the packets per
/// second delivered to the backends and the machine's CPU milliseconds per million of them.
fn udp_flood(lab: &Lab, target: SocketAddr, packets: u64) -> Result<(f64, f64)> {
    let lb_mac = mac_of(&lab.balancer, "eth0")?;
    let config = format!(
        "{{\n  eth(da={lb_mac}, sa={client_mac}),\n  ipv4(sa={CLIENT}, da={ip}, ttl=64),\n  \
         udp(sp=dinc(1024, 2047), dp={port}),\n  fill(0x41, 18)\n}}\n",
        client_mac = mac_of(&lab.client, "eth0")?,
        ip = target.ip(),
        port = target.port()
    );
    let path = temp_file("trafgen.cfg", &config)?;
    let (rx_before, cpu_before, start) = (backend_rx(lab)?, busy_cpu()?, Instant::now());
    lab.client.exec(
        "trafgen",
        &[
            "--dev",
            "eth0",
            "--conf",
            path.to_str().context("path")?,
            "--num",
            &packets.to_string(),
            // One generator CPU, leaving the other to the balancer and the backends; a small
            // TX ring (a large one overruns the veth and trafgen gives up with EAGAIN); and
            // the system's socket memory left alone (a namespace may not change it).
            "--cpus",
            "1",
            "--ring-size",
            "64KiB",
            "--no-sock-mem",
            "-q",
        ],
    )?;
    // Let queued packets drain.
    std::thread::sleep(Duration::from_millis(200));
    let elapsed = start.elapsed().as_secs_f64() - 0.2;
    let delivered = backend_rx(lab)? - rx_before;
    let cpu = (busy_cpu()? - cpu_before).as_secs_f64();
    if delivered == 0 {
        bail!("no UDP packet reached a backend");
    }
    Ok((
        delivered as f64 / elapsed,
        cpu * 1e3 / (delivered as f64 / 1e6),
    ))
}

fn mac_of(host: &Netns, interface: &str) -> Result<String> {
    let link = host.ip(&format!("link show dev {interface}"))?;
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .context("no MAC address")
}

/// TCP throughput from the client to `target` in Gbit/s (iperf3, one stream).
fn iperf(client: &Netns, target: std::net::Ipv4Addr, seconds: u32) -> Result<f64> {
    let out = client.exec(
        "iperf3",
        &[
            "-c",
            &target.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )?;
    let marker = "\"sum_received\"";
    let at = out.find(marker).context("iperf3 printed no sum_received")?;
    let rest = &out[at..];
    let bits = rest
        .split("\"bits_per_second\":")
        .nth(1)
        .and_then(|s| s.split([',', '\n', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .context("no bits_per_second")?;
    Ok(bits / 1e9)
}

/// Requests each backend has served so far.
fn served(lab: &Lab) -> Result<Vec<u64>> {
    lab.balancer.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut counts = Vec::new();
            for i in 0..lab.backends.len() {
                let body = http_get_body(lab.backend_endpoint(i, HTTP_PORT), "/count").await?;
                counts.push(body.trim().parse()?);
            }
            Ok(counts)
        })
    })?
}

fn intro(settings: &Settings) -> String {
    format!(
        "Client, balancer, switch (a bridge) and three backends, each in its own namespace, joined by \
         veth pairs; every variant on a freshly built topology, the variants taking turns, {} runs \
         each: a cell is the median, with the lowest and highest run in parentheses. `route`: no \
         balancer, the balancer namespace forwards to backend 1. `nft`: nftables DNAT, `numgen inc \
         mod 3` per new flow, conntrack reversing the replies. `xlb MODE`: this project with that \
         `xdp_mode` (`auto` chose tc, as it does on veth), handing packets to the veth peers \
         (`veth_peer_redirect`, the default); `no peer handoff`: the same with it off. Ratios \
         divide medians.\n\n\
         - UDP: trafgen sends {} 60-byte frames from 1,024 source ports as fast as it can; counted \
         at the backends' interfaces; CPU is the whole machine's busy time (the generator included).\n\
         - TCP: iperf3, one stream, {}s, to backend 1 (a service of its own for xlb).\n\
         - HTTP: wrk, 2 threads, 32 connections, {}s, against the backends' HTTP servers (the test \
         backend, hyper); \"new connections\" sends `Connection: close`.\n\
         - Fairness: requests served per backend during the new-connections run.\n",
        settings.repeats, settings.udp_packets, settings.seconds, settings.seconds,
    )
}

fn report(variants: &[Variant], results: &[Vec<Results>]) -> String {
    type Metric = (&'static str, fn(&Results) -> Option<f64>);
    let metrics: [Metric; 8] = [
        ("UDP packets/s delivered (64 B)", |r| Some(r.udp_pps)),
        ("CPU ms per million packets (machine)", |r| {
            Some(r.cpu_ms_per_million)
        }),
        ("TCP throughput, Gbit/s", |r| Some(r.tcp_gbps)),
        ("HTTP keep-alive requests/s", |r| Some(r.http_rps)),
        ("HTTP keep-alive p99, ms", |r| Some(r.http_p99_ms)),
        ("new connections/s", |r| Some(r.conn_rps)),
        ("new connections p99, ms", |r| Some(r.conn_p99_ms)),
        ("fairness, max/min per backend", |r| r.fairness),
    ];
    let position = |wanted: Variant| variants.iter().position(|v| *v == wanted);
    let (route, nft) = (position(Variant::Route), position(Variant::Nft));
    let xlbs: Vec<usize> = (0..variants.len())
        .filter(|&i| matches!(variants[i], Variant::Xlb(_) | Variant::XlbTransmit))
        .collect();
    let mut header = vec!["metric".to_owned()];
    header.extend(variants.iter().map(|v| v.name()));
    for &x in &xlbs {
        header.push(format!("{} ÷ route", variants[x].name()));
        header.push(format!("{} ÷ nft", variants[x].name()));
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
            row.push(ratio(medians[x], route));
            row.push(ratio(medians[x], nft));
        }
        table.row(row);
    }
    table.markdown()
}

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
