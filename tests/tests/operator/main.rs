//! Tier 3: what an operator does to a running xlb, through the CLI and its control API, with
//! real servers in network namespaces: status, stats, top, flows, simulate and bad input
//! (`commands`); backend drain/disable/weight/enable and their persistence (`settings`);
//! backends added and removed through the file (`edit`);
//! reload and SIGHUP (`reload`); the metrics endpoint read by promtool and Prometheus
//! (`metrics`); a restart that keeps every flow (`restart`); `xlb trace` (`trace`); the
//! schedulers an operator picks beside round robin (`scheduling`). Needs root: run with
//! `cargo xtask test`.

mod commands;
mod edit;
mod metrics;
mod reload;
mod removal;
mod restart;
mod scheduling;
mod settings;
mod trace;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use xlb::cmd::Response;
use xlb_tests::{
    client::{Session, http_echo, http_get_body, payload, start_download},
    process::binary,
    scenario::{
        Backend, TCP_SERVICE_PORT, UDP_PORT, UDP_SERVICE_PORT, Xlb, balancer_config,
        balancer_config_with, start_backends, start_xlb, tally,
    },
    topology::{CLIENT, Lab, Offloads, VIP, Wiring, backend_addr},
};

fn http_vip() -> SocketAddr {
    SocketAddr::from((VIP, TCP_SERVICE_PORT))
}

fn web_backend(i: usize) -> String {
    format!("{}:8080", backend_addr(i))
}

/// `n` HTTP connections one after the other from the client host; the backend of each.
fn connections(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    let names = lab
        .client
        .block_on(async {
            let mut names = Vec::new();
            for i in 0..n {
                names.push(
                    http_echo(http_vip(), payload(i as u64, 1_000))
                        .await
                        .unwrap(),
                );
            }
            names
        })
        .unwrap();
    tally(&names)
}

fn ok(xlb: &Xlb, args: &[&str]) -> String {
    let (code, stdout, stderr) = xlb.cli(args).unwrap();
    assert_eq!(code, 0, "xlb {args:?} failed: {stderr}\n{stdout}");
    stdout
}

fn fails(xlb: &Xlb, args: &[&str]) -> String {
    let (code, stdout, stderr) = xlb.cli(args).unwrap();
    assert_eq!(code, 1, "xlb {args:?} should fail:\n{stdout}");
    stderr
}

struct Setup {
    lab: Lab,
    _backends: Vec<Backend>,
    xlb: Xlb,
}

fn setup(extra_tcp_keys: &str) -> Setup {
    setup_with(Offloads::Default, "auto", extra_tcp_keys)
}

fn setup_with(offloads: Offloads, mode: &str, extra_tcp_keys: &str) -> Setup {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, offloads).unwrap();
    let backends = start_backends(&lab).unwrap();
    let config = balancer_config_with(&lab, mode, extra_tcp_keys, "");
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    Setup {
        lab,
        _backends: backends,
        xlb,
    }
}

/// Every service's backends with their address, state and weight, from `status --json`
/// (rates and counters, which move every second, left out).
fn backends_of(xlb: &Xlb) -> Vec<(SocketAddr, String, u32, u32)> {
    let response: Response = serde_json::from_str(&ok(xlb, &["--json", "status"])).unwrap();
    let Response::Status(report) = response else {
        panic!("status answered {response:?}");
    };
    report
        .services
        .iter()
        .flat_map(|service| &service.backends)
        .map(|b| (b.address, b.state.clone(), b.weight, b.effective_weight))
        .collect()
}
