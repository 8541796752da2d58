//! The data plane's cost of one whole TCP connection, packet by packet, through
//! BPF_PROG_TEST_RUN at both hooks: the handshake, a request and its response, and the close.
//! A short connection is what the end-to-end "new connections" load is made of, and every
//! step of it takes a path of its own (a new flow, a backend's answer to a half-open flow, the
//! move to the established table, the first packet of each direction, the close). Each packet
//! is one test run (a connection cannot repeat), against single runs of the reference
//! program. Needs root. Run by `cargo xtask bench`.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use xlb::{
    config::Config,
    control::{Balancer, ServiceSpec},
    dataplane::{Dataplane, NoopProgram},
    sys::netif,
};
use xlb_tests::{
    bench::{Table, median, print_section, quick},
    packet::{Frame, Transport, locate, tcp_flags},
    packet_net::{self, S0_MAC, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_PASS, XDP_REDIRECT},
};

const CONFIG: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "web"
listen = "198.18.100.2:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
"#;

/// The client (its neighbour entry on c0 lets the FIB answer for the replies).
const CLIENT: &str = "198.18.0.2";
const VIP: &str = "198.18.100.2:80";

/// Who sends a step's packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Client,
    Backend,
}

/// A connection's packets, in order: who sends, TCP flags, whether it carries data.
const STEPS: [(&str, From, u8, bool); 8] = [
    ("SYN (new flow)", From::Client, tcp_flags::SYN, false),
    (
        "SYN-ACK (the backend's answer)",
        From::Backend,
        tcp_flags::SYN | tcp_flags::ACK,
        false,
    ),
    (
        "ACK (handshake complete)",
        From::Client,
        tcp_flags::ACK,
        false,
    ),
    (
        "request",
        From::Client,
        tcp_flags::ACK | tcp_flags::PSH,
        true,
    ),
    (
        "response",
        From::Backend,
        tcp_flags::ACK | tcp_flags::PSH,
        true,
    ),
    (
        "client's FIN",
        From::Client,
        tcp_flags::FIN | tcp_flags::ACK,
        false,
    ),
    (
        "backend's FIN",
        From::Backend,
        tcp_flags::FIN | tcp_flags::ACK,
        false,
    ),
    ("client's last ACK", From::Client, tcp_flags::ACK, false),
];

/// A hook's programs and the verdicts of a forwarded and of a passed packet there.
struct Hook<'a> {
    run: &'a dyn Fn(&[u8], u32) -> Result<packet_net::RunResult>,
    reference: &'a dyn Fn(&[u8], u32) -> Result<packet_net::RunResult>,
    forwarded: u32,
    passed: u32,
}

fn main() -> Result<()> {
    let connections = if quick() { 100 } else { 10_000 };
    let ns = packet_net::build()?;
    let (xdp, tc) = ns.enter(|| -> Result<_> {
        let config = Config::parse(CONFIG).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut dataplane = Dataplane::load(1 << 18)?;
        let mut balancer = Balancer::new();
        balancer.apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)?;
        let (c0, s0) = (netif::index("c0")?, netif::index("s0")?);
        dataplane.maps.add_egress_port(c0)?;
        dataplane.maps.add_egress_port(s0)?;
        let noop = NoopProgram::load()?;
        let (program, tc_program) = (dataplane.program(), dataplane.tc_program());
        let xdp = Hook {
            run: &|frame, ifindex| packet_net::run(program, frame, ifindex, 1),
            reference: &|frame, ifindex| packet_net::run(noop.program(), frame, ifindex, 1),
            forwarded: XDP_REDIRECT,
            passed: XDP_PASS,
        };
        let tc = Hook {
            run: &|frame, ifindex| packet_net::run_tc(tc_program, frame, ifindex, 1),
            reference: &|frame, ifindex| packet_net::run_tc(noop.tc_program(), frame, ifindex, 1),
            forwarded: TC_ACT_REDIRECT,
            passed: TC_ACT_UNSPEC,
        };
        // Per hook: each step's times and the reference's; the hooks take turns, each with
        // client ports of its own.
        let mut times = [
            vec![Vec::new(); STEPS.len() + 1],
            vec![Vec::new(); STEPS.len() + 1],
        ];
        for i in 0..connections {
            for (h, hook) in [&xdp, &tc].into_iter().enumerate() {
                let port = 1_024 + 2 * i + h;
                let client = format!("{CLIENT}:{port}");
                for (step, took) in connection(hook, &client, c0, s0)?.into_iter().enumerate() {
                    times[h][step].push(took);
                }
            }
        }
        let [xdp, tc] = times.map(|steps| {
            steps
                .into_iter()
                .map(|mut step| median(&mut step))
                .collect::<Vec<f64>>()
        });
        Ok((xdp, tc))
    })??;

    let mut table = Table::new(&[
        "packet",
        "XDP: ns (median)",
        "× reference",
        "tc: ns (median)",
        "× reference",
    ]);
    let (xdp_reference, tc_reference) = (xdp[STEPS.len()], tc[STEPS.len()]);
    let row = |name: &str, x: f64, t: f64| {
        vec![
            name.to_owned(),
            format!("{x:.0}"),
            format!("{:.1}", x / xdp_reference),
            format!("{t:.0}"),
            format!("{:.1}", t / tc_reference),
        ]
    };
    table.row(row(
        "reference: count and pass (single runs)",
        xdp_reference,
        tc_reference,
    ));
    for (step, (name, ..)) in STEPS.iter().enumerate() {
        table.row(row(name, xdp[step], tc[step]));
    }
    let (xdp_total, tc_total): (f64, f64) = (
        xdp[..STEPS.len()].iter().sum(),
        tc[..STEPS.len()].iter().sum(),
    );
    table.row(row("the whole connection", xdp_total, tc_total));
    print_section(
        "A connection, packet by packet",
        &format!(
            "One TCP connection through the balancer, each packet one BPF_PROG_TEST_RUN: the \
             handshake, a request and its response, the close; {connections} connections per \
             hook (round robin over three backends, the hooks taking turns, each connection \
             with a client port of its own), against single runs of the reference program with \
             the same frames. The whole connection is the sum of the steps' medians; it is \
             what the end-to-end \"new connections\" load asks of the data plane per \
             connection, apart from a few more ACKs.\n\n{}",
            table.markdown()
        ),
    );
    Ok(())
}

/// Runs one connection from `client` through `hook`: each step's time in ns, then the
/// reference's (on the SYN). The client's packets arrive on `c0`, the backend's on `s0`.
fn connection(hook: &Hook, client: &str, c0: u32, s0: u32) -> Result<Vec<f64>> {
    let client_addr: SocketAddr = client.parse()?;
    let mut backend: Option<SocketAddr> = None;
    let mut times = Vec::with_capacity(STEPS.len() + 1);
    for (seq, (name, from, flags, data)) in STEPS.into_iter().enumerate() {
        let (src, dst, ifindex) = match from {
            From::Client => (client_addr, VIP.parse()?, c0),
            From::Backend => (backend.expect("the SYN chose a backend"), client_addr, s0),
        };
        let frame = Frame::between(
            src,
            dst,
            Transport::Tcp {
                flags,
                seq: 1_000 + seq as u32,
            },
        )
        .with(|f| {
            f.tcp_ack = if flags & tcp_flags::ACK != 0 {
                5_000
            } else {
                0
            };
            if !data {
                f.payload.clear();
            }
            if ifindex == s0 {
                f.eth_dst = S0_MAC;
            }
        })
        .build();
        let result = (hook.run)(&frame, ifindex)?;
        ensure!(
            result.verdict == hook.forwarded,
            "{client}, {name}: verdict {} (passed is {})",
            result.verdict,
            hook.passed
        );
        if backend.is_none() {
            let out = locate(&result.frame).expect("a rewritten IPv4 frame");
            let address: [u8; 4] = out.dst[..].try_into()?;
            let port = u16::from_be_bytes([result.frame[out.l4 + 2], result.frame[out.l4 + 3]]);
            backend = Some(SocketAddr::from((address, port)));
        }
        times.push(result.duration.as_secs_f64() * 1e9);
    }
    let syn = Frame::tcp(client, VIP).build();
    times.push((hook.reference)(&syn, c0)?.duration.as_secs_f64() * 1e9);
    Ok(times)
}
