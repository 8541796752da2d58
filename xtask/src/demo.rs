//! `cargo xtask demo`: xlb balancing real traffic between namespaces, end to end.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, bail};
use xlb_tests::{
    daemon::Xlb,
    netns::run_prefix,
    scenario::{
        HTTP_PORT, TCP_SERVICE_PORT, Traffic, UDP_PORT, UDP_SERVICE_PORT, backend_name,
        balancer_config, run_traffic, start_backends, start_xlb, tally,
    },
    topology::{Lab, VIP, Wiring, backend_addr},
};

use crate::{
    cargo,
    janitor::Janitor,
    setup::{self, Need},
    steps::{Steps, note},
};

const CONNECTIONS: usize = 30;
const FLOWS: usize = 30;
const BACKENDS: usize = 3;

/// What the demo runs besides xlb: namespaces, and ethtool for its links' offloads.
const NEEDS: &[Need] = &[Need::Namespaces, Need::Ethtool];

const BUILD: &str = "build (cargo build --bins)";
const START: &str = "xlb run (fill the maps, choose the hook, attach)";
const STOP: &str = "stop xlb (SIGTERM: detach)";
const TEAR_DOWN: &str = "tear down the namespaces";

/// Runs `cargo xtask demo`.
pub fn run() -> Result<()> {
    let labels = Labels::new();
    let mut steps = Steps::new("demo").then(setup::plan(NEEDS)).then([
        BUILD,
        &labels.network,
        &labels.backends,
        START,
        &labels.traffic,
        STOP,
        TEAR_DOWN,
    ]);
    setup::run(&mut steps, NEEDS)?;
    steps.run(BUILD, cargo::build_binaries)?;
    let bin_dir = cargo::bin_dir()?;
    // SAFETY: no other thread runs yet; the harness reads this to find the binaries.
    unsafe { std::env::set_var("XLB_BIN_DIR", &bin_dir) };
    let _janitor = Janitor::install(run_prefix())?;

    let lab = steps.run(&labels.network, || {
        Lab::new(Wiring::TwoInterfaces, BACKENDS)
    })?;
    let _backends = steps.run(&labels.backends, || start_backends(&lab))?;
    let config = balancer_config(&lab, "auto");
    let mut xlb = steps.run(START, || start_xlb(&lab.balancer, &config))?;
    note_setup(&config, &xlb);

    let traffic = steps.run(&labels.traffic, || {
        run_traffic(&lab, CONNECTIONS, FLOWS)
            .map_err(|e| e.context(format!("xlb's log:\n{}", xlb.output())))
    })?;
    steps.run(STOP, || stop(&mut xlb))?;
    print_table(&traffic, &counted_flows(&xlb.output()));

    steps.run(TEAR_DOWN, || {
        drop(lab);
        Ok(())
    })?;
    Ok(())
}

/// The labels of the steps that carry the demo's numbers.
struct Labels {
    network: String,
    backends: String,
    traffic: String,
}

impl Labels {
    /// The labels, with the demo's sizes, ports and addresses.
    fn new() -> Self {
        Self {
            network: format!(
                "network: client, balancer (2 interfaces), switch, {BACKENDS} backends, each a \
                 namespace, veth links at their default offloads"
            ),
            backends: format!("backends: HTTP echo on :{HTTP_PORT}, UDP echo on :{UDP_PORT}"),
            traffic: format!(
                "traffic: {CONNECTIONS} HTTP connections to {VIP}:{TCP_SERVICE_PORT}, \
                 {FLOWS} UDP flows to {VIP}:{UDP_SERVICE_PORT}, payloads checked"
            ),
        }
    }
}

/// Notes what xlb was given (the config's listen and interfaces lines) and where it attached
/// (its log's lines about interfaces and hooks).
fn note_setup(config: &str, xlb: &Xlb) {
    for line in config
        .lines()
        .filter(|l| l.starts_with("listen") || l.starts_with("interfaces"))
    {
        note(line);
    }
    for line in xlb
        .output()
        .lines()
        .filter(|l| l.contains("interface ") && l.contains(" → ") || l.contains("attached"))
    {
        note(line);
    }
}

/// Stops xlb with SIGTERM; fails if it exits unsuccessfully, with its log.
fn stop(xlb: &mut Xlb) -> Result<()> {
    let status = xlb.stop(Duration::from_secs(10))?;
    if !status.success() {
        bail!("xlb exited with {status}:\n{}", xlb.output());
    }
    Ok(())
}

/// The table of connections and flows per backend, as the clients saw them and as xlb
/// counted them (`counted`: new flows per backend address).
fn print_table(traffic: &Traffic, counted: &BTreeMap<String, u64>) {
    println!();
    println!(
        "xlb balanced {CONNECTIONS} TCP connections and {FLOWS} UDP flows over {BACKENDS} backends:"
    );
    println!();
    println!(
        "{:<8} {:<14} {:>16} {:>11}   {:>20}",
        "backend", "address", "TCP connections", "UDP flows", "xlb counted TCP/UDP"
    );
    let tcp = tally(&traffic.tcp);
    let udp = tally(&traffic.udp);
    for i in 0..BACKENDS {
        let name = backend_name(i);
        let addr = backend_addr(i);
        let count = |map: &BTreeMap<String, usize>| map.get(&name).copied().unwrap_or(0);
        let xlb_tcp = counted
            .get(&format!("{addr}:{HTTP_PORT}"))
            .copied()
            .unwrap_or(0);
        let xlb_udp = counted
            .get(&format!("{addr}:{UDP_PORT}"))
            .copied()
            .unwrap_or(0);
        println!(
            "{name:<8} {:<14} {:>16} {:>11}   {:>20}",
            addr.to_string(),
            count(&tcp),
            count(&udp),
            format!("{xlb_tcp}/{xlb_udp}")
        );
    }
    println!(
        "{:<8} {:<14} {:>16} {:>11}",
        "total",
        "",
        traffic.tcp.len(),
        traffic.udp.len()
    );
    println!();
}

/// New flows per backend address, from the counters xlb logs when it stops.
fn counted_flows(log: &str) -> BTreeMap<String, u64> {
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(|value| value.trim_matches('"').to_owned())
    };
    log.lines()
        .filter(|line| line.contains("backend counters"))
        .filter_map(|line| {
            Some((
                field(line, "backend=")?,
                field(line, "new_flows=")?.parse().ok()?,
            ))
        })
        .collect()
}
