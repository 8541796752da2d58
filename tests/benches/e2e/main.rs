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
//!   `auto` with `veth_peer_redirect = false`, to show what the veth peer handoff buys;
//! - `xlb auto, dsr|ipip|gue` (a fourth group, default links, full runs only): NAT against the
//!   backends answering the clients directly, at L2 or through a tunnel.
//!
//! Every variant is measured [`REPEATS`] times, the variants taking turns, and reported as the
//! median with the spread (min–max): these machines are noisy.
//!
//! Metrics: small UDP packets delivered per second at the backends (trafgen, 1,024 source
//! ports) and the machine's CPU time per million of them; TCP throughput to one backend
//! (iperf3); HTTP requests per second over keep-alive connections and over a new connection
//! each (wrk against the backends' HTTP servers), with p99 latency; round-robin fairness
//! (max/min requests per backend), and the machine's CPU time per request and per connection.
//!
//! On default links, xlb is measured once more in each round with the kernel's BPF run-time
//! statistics on (which cost two clock reads per packet, so those runs are reported apart):
//! how much of the machine's CPU the balancer program itself takes under each load, which
//! bounds what any change to the program can buy end to end. Needs root. Run by `cargo xtask
//! bench`. The report is written in `section`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use xlb_tests::{
    bench::{fairness, iperf, print_section, quick, served, wrk},
    netns::Netns,
    process::{Process, temp_file},
    program_time::{ProgramTime, ProgramTimer},
    scenario::{HTTP_PORT, Xlb, balancer_config_with, start_backends, start_xlb},
    topology::{CLIENT, Lab, Offloads, VIP, Wiring, backend_addr},
    tunnel,
};

mod section;

use self::section::{intro, program_share, report};

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
    /// xlb with `xdp_mode = "auto"` and that `forwarding` ("dsr", "ipip", "gue"): the backends
    /// hold the VIP on their loopback (and run `xlb decap` for a tunnel) and answer the clients
    /// directly, through the balancer's namespace as their router.
    Direct(&'static str),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Route => "route".into(),
            Self::Nft => "nft".into(),
            Self::Xlb("auto") => "xlb auto (tc)".into(),
            Self::Xlb(mode) => format!("xlb {mode}"),
            Self::XlbTransmit => "xlb auto, no peer handoff".into(),
            Self::Direct(forwarding) => format!("xlb auto, {forwarding}"),
        }
    }
}

/// What one variant measured.
struct Results {
    udp_pps: f64,
    tcp_gbps: f64,
    http_rps: f64,
    http_p99_ms: f64,
    conn_rps: f64,
    conn_p99_ms: f64,
    fairness: Option<f64>,
    /// What each load cost: UDP, TCP, keep-alive requests, new connections.
    costs: [Cost; 4],
}

/// The loads of a run, in the order of [`Results::costs`], with the unit each is counted in.
const LOADS: [(&str, &str); 4] = [
    ("UDP", "packet delivered"),
    ("TCP (iperf3)", "MB received"),
    ("HTTP keep-alive", "request"),
    ("HTTP new connections", "connection"),
];

/// What one load cost the machine and, in a timed run, the balancer program.
#[derive(Clone, Copy)]
struct Cost {
    /// Units of work done (see [`LOADS`]).
    units: f64,
    /// The machine's busy time during the load.
    busy: Duration,
    /// The load's wall time.
    elapsed: Duration,
    /// The balancer program's runs and run time (timed runs only).
    program: Option<ProgramTime>,
}

impl Cost {
    /// The machine's CPU per unit, in microseconds.
    fn machine_us(&self) -> f64 {
        self.busy.as_secs_f64() * 1e6 / self.units
    }

    /// How busy the machine was: busy time over the wall time of all its CPUs.
    fn busy_share(&self) -> f64 {
        self.busy.as_secs_f64() / (self.elapsed.as_secs_f64() * cpus() as f64)
    }
}

/// Runs `load`, which returns its result and the units of work it did, and measures the
/// machine's busy time and (with a `timer`) the balancer program's.
fn costed<T>(
    timer: Option<&ProgramTimer>,
    load: impl FnOnce() -> Result<(T, f64)>,
) -> Result<(T, Cost)> {
    let program_before = timer.map(ProgramTimer::read).transpose()?;
    let (busy_before, start) = (busy_cpu()?, Instant::now());
    let (result, units) = load()?;
    let (busy, elapsed) = (busy_cpu()? - busy_before, start.elapsed());
    let program = match (timer, program_before) {
        (Some(timer), Some(before)) => Some(timer.read()?.since(before)),
        _ => None,
    };
    Ok((
        result,
        Cost {
            units,
            busy,
            elapsed,
            program,
        },
    ))
}

/// The machine's CPUs.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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

const GROUPS: [Group; 4] = [
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
    Group {
        offloads: Offloads::Default,
        title: "veth at default offloads, the backends answering the clients directly: NAT \
                (`xlb auto`, as above) against L2 DSR, IPIP and GUE (the backends hold the VIP \
                and run `xlb decap` for the tunnels; their answers pass the balancer's namespace \
                as their router, not xlb)",
        variants: &[
            Variant::Xlb("auto"),
            Variant::Direct("dsr"),
            Variant::Direct("ipip"),
            Variant::Direct("gue"),
        ],
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
    let mut timed = Vec::new();
    // Quick (the suite's check that the benchmarks run): the links at their defaults only; the
    // other groups measure the same variants on prepared links.
    let groups = if quick() { 1 } else { GROUPS.len() };
    for run in 0..settings.repeats {
        for (g, group) in GROUPS.iter().enumerate().take(groups) {
            for (v, variant) in group.variants.iter().enumerate() {
                eprintln!(
                    "e2e run {}: {:?}: {}",
                    run + 1,
                    group.offloads,
                    variant.name()
                );
                let result = measure(*variant, group.offloads, &settings, false)
                    .with_context(|| format!("{:?}: {}", group.offloads, variant.name()))?;
                results[g][v].push(result);
            }
        }
        eprintln!("e2e run {}: Default: xlb auto (tc), timed", run + 1);
        timed.push(
            measure(Variant::Xlb("auto"), Offloads::Default, &settings, true)
                .context("Default: xlb auto (tc), timed")?,
        );
    }
    let mut body = intro(&settings);
    for (group, results) in GROUPS.iter().zip(&results).take(groups) {
        write!(
            body,
            "\n### {}\n\n{}",
            group.title,
            report(group.variants, results)
        )?;
    }
    write!(
        body,
        "\n### The balancer program within the machine's CPU (default offloads, xlb auto)\n\n{}",
        program_share(&timed)
    )?;
    print_section("End to end: route, nftables, xlb", &body);
    Ok(())
}

/// Measures one variant on a fresh topology; `timed`: with the kernel's run-time statistics
/// of the balancer's programs on (xlb only).
fn measure(
    variant: Variant,
    offloads: Offloads,
    settings: &Settings,
    timed: bool,
) -> Result<Results> {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, offloads)?;
    let _backends = start_backends(&lab)?;
    let b1 = backend_addr(0);
    let mut iperf_command = lab.backends[0].command("iperf3");
    iperf_command.args(["-s", "-p", &IPERF_PORT.to_string()]);
    let _iperf = Process::spawn("iperf3", iperf_command)?;
    lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    lab.client
        .sysctl("net.ipv4.ip_local_port_range", "10000 65000")?;

    let mut decaps = Vec::new();
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
        Variant::Direct(forwarding) => Some(start_direct(&lab, forwarding, &mut decaps)?),
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
        // The backends' ports: direct return keeps them.
        Variant::Direct(_) => (
            SocketAddr::from((VIP, HTTP_PORT)),
            SocketAddr::from((VIP, DISCARD_PORT)),
            VIP,
        ),
        _ => (
            SocketAddr::from((VIP, 80)),
            SocketAddr::from((VIP, UDP_SERVICE_PORT)),
            VIP,
        ),
    };
    // Warm up: neighbours resolved, servers answering.
    wrk(&lab.client, http_target, 1, false).context("warm-up")?;

    let timer = match (&_xlb, timed) {
        (Some(xlb), true) => Some(ProgramTimer::start(xlb.pid())?),
        (None, true) => bail!("only xlb's runs are timed"),
        _ => None,
    };
    let timer = timer.as_ref();
    let seconds = f64::from(settings.seconds);
    let (udp_pps, udp_cost) = costed(timer, || {
        let (delivered, pps) = udp_flood(&lab, udp_target, settings.udp_packets)?;
        Ok((pps, delivered as f64))
    })?;
    let (tcp_gbps, tcp_cost) = costed(timer, || {
        let gbps = iperf(
            &lab.client,
            SocketAddr::from((iperf_target, IPERF_PORT)),
            settings.seconds,
        )?;
        Ok((gbps, gbps * 1e3 / 8.0 * seconds))
    })?;
    let ((http_rps, http_p99_ms), http_cost) = costed(timer, || {
        let (rps, p99) = wrk(&lab.client, http_target, settings.seconds, false)?;
        Ok(((rps, p99), rps * seconds))
    })?;
    let before = served(&lab)?;
    let ((conn_rps, conn_p99_ms), conn_cost) = costed(timer, || {
        let (rps, p99) = wrk(&lab.client, http_target, settings.seconds, true)?;
        Ok(((rps, p99), rps * seconds))
    })?;
    let after = served(&lab)?;
    let fairness = (variant != Variant::Route).then(|| fairness(&before, &after));
    Ok(Results {
        udp_pps,
        tcp_gbps,
        http_rps,
        http_p99_ms,
        conn_rps,
        conn_p99_ms,
        fairness,
        costs: [udp_cost, tcp_cost, http_cost, conn_cost],
    })
}

/// Starts xlb (`auto`) with `forwarding` direct return: every backend holds the VIP on its
/// loopback (and, for L2 DSR, neither answers nor announces it on its link); for a tunnel, its
/// `xlb decap` (pushed on `decaps`) takes the balancer's packets (from 198.18.1.1, its address
/// on the backends' side). The services keep the backends' ports.
fn start_direct(lab: &Lab, forwarding: &str, decaps: &mut Vec<Process>) -> Result<Xlb> {
    for backend in &lab.backends {
        backend.ip(&format!("addr add {VIP}/32 dev lo"))?;
        if forwarding == "dsr" {
            backend.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
            backend.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        } else {
            decaps.push(tunnel::start_decap(
                backend,
                &[VIP.into()],
                &["198.18.1.0/24"],
            )?);
        }
    }
    let b1 = backend_addr(0);
    let backends = |port: u16| {
        (0..lab.backends.len())
            .map(|i| format!("{{ address = \"{}\" }}", lab.backend_endpoint(i, port)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let service = |name: &str, protocol: &str, port: u16, backends: &str| {
        format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{VIP}:{port}\"\nprotocol = \"{protocol}\"\n\
             forwarding = \"{forwarding}\"\nbackends = [ {backends} ]\n"
        )
    };
    let config = format!(
        "interfaces = [\"eth0\", \"eth1\"]\n[tunnel]\nsource = \"198.18.1.1\"\n{}{}{}health = {{ check = \"none\" }}\n",
        service("web", "tcp", HTTP_PORT, &backends(HTTP_PORT)),
        service("discard", "udp", DISCARD_PORT, &backends(DISCARD_PORT)),
        service(
            "iperf",
            "tcp",
            IPERF_PORT,
            &format!("{{ address = \"{b1}:{IPERF_PORT}\" }}")
        ),
    );
    let xlb = start_xlb(&lab.balancer, &config)?;
    if !xlb.output().contains("hook=tc") {
        bail!("auto did not choose tc on veth:\n{}", xlb.output());
    }
    Ok(xlb)
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

/// Sends `packets` 60-byte UDP frames from 1,024 source ports; returns the packets delivered
/// to the backends and how many per second.
fn udp_flood(lab: &Lab, target: SocketAddr, packets: u64) -> Result<(u64, f64)> {
    let lb_mac = mac_of(&lab.balancer, "eth0")?;
    let config = format!(
        "{{\n  eth(da={lb_mac}, sa={client_mac}),\n  ipv4(sa={CLIENT}, da={ip}, ttl=64),\n  \
         udp(sp=dinc(1024, 2047), dp={port}),\n  fill(0x41, 18)\n}}\n",
        client_mac = mac_of(&lab.client, "eth0")?,
        ip = target.ip(),
        port = target.port()
    );
    let path = temp_file("trafgen.cfg", &config)?;
    let mut attempt = 1;
    let (rx_before, start) = loop {
        let (rx_before, start) = (backend_rx(lab)?, Instant::now());
        match send_frames(lab, &path, packets) {
            Ok(()) => break (rx_before, start),
            // trafgen gives up when the kernel refuses to take its ring (EAGAIN), which a
            // busy veth does now and then; the attempt is dropped and made again, at most
            // three times.
            Err(error)
                if attempt < FLOOD_ATTEMPTS
                    && error
                        .to_string()
                        .contains("Resource temporarily unavailable") =>
            {
                eprintln!("trafgen gave up (attempt {attempt} of {FLOOD_ATTEMPTS}): {error:#}");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(error) => return Err(error),
        }
    };
    // Let queued packets drain.
    std::thread::sleep(Duration::from_millis(200));
    let elapsed = start.elapsed().as_secs_f64() - 0.2;
    let delivered = backend_rx(lab)? - rx_before;
    if delivered == 0 {
        bail!("no UDP packet reached a backend");
    }
    Ok((delivered, delivered as f64 / elapsed))
}

/// How many times a UDP flood is tried when trafgen gives up on a full ring.
const FLOOD_ATTEMPTS: u32 = 3;

/// Sends `packets` frames as `config` describes, from the client's eth0 (trafgen).
fn send_frames(lab: &Lab, config: &std::path::Path, packets: u64) -> Result<()> {
    lab.client.exec(
        "trafgen",
        &[
            "--dev",
            "eth0",
            "--conf",
            config.to_str().context("path")?,
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
    Ok(())
}

fn mac_of(host: &Netns, interface: &str) -> Result<String> {
    let link = host.ip(&format!("link show dev {interface}"))?;
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .context("no MAC address")
}
