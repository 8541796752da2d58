//! Failover under load: a client opens new connections through the VIP at a steady rate while
//! something happens to a backend, and every attempt is counted when it ends (served, by
//! which backend, or failed, and how). Shared by the passive-health tests and the failover
//! benchmark.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{task::JoinSet, time::MissedTickBehavior};

use crate::{
    client::{http_echo, payload},
    netns::Netns,
    process::temp_file,
    scenario::{
        HTTP_PORT, TCP_SERVICE_PORT, Xlb, backend_name, balancer_config_with, start_backends,
        start_xlb,
    },
    topology::{Lab, VIP, Wiring},
};

/// Checks every 200 ms, two failures take a backend Down: as in the comparison with HAProxy
/// that led to passive health.
pub const HEALTH: &str =
    r#"health = { check = "tcp", interval = "200ms", timeout = "100ms", rise = 2, fall = 2 }"#;
/// Passive health off: active checks alone.
pub const ACTIVE_ONLY: &str = "passive = { refused = 0, unanswered = 0 }";

/// About 800 new connections per second for 2 s, the fault 0.4 s in; a connection may take
/// 2.5 s (one SYN retransmission, not two).
pub const LOAD: Load = Load {
    rate: 800,
    duration: Duration::from_millis(2_000),
    fault_at: Duration::from_millis(400),
    timeout: Duration::from_millis(2_500),
};

/// One failover run and what the daemon saw.
#[derive(Debug)]
pub struct Report {
    /// How the connections ended.
    pub outcome: Outcome,
    /// Connections that failed on the live backends (b1 and b3): the new flows xlb gave them
    /// that they did not serve.
    pub live_failures: u64,
    /// Data-plane events of the run, by name.
    pub events: BTreeMap<String, u64>,
    /// The daemon's log.
    pub log: String,
}

/// New flows per backend name and the events, as the daemon counts them (`xlb --json
/// stats`, read as JSON: this library does not link the daemon's types).
fn counts(xlb: &Xlb) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
    let (code, stdout, stderr) = xlb.cli(&["--json", "stats"])?;
    anyhow::ensure!(code == 0, "xlb stats: {stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout)?;
    let stats = &answer["stats"];
    let number = |value: &serde_json::Value| value.as_u64().context("a count");
    let flows = stats["services"][0]["backends"]
        .as_array()
        .context("the service's backends")?
        .iter()
        .enumerate()
        .map(|(i, backend)| Ok((backend_name(i), number(&backend["counters"]["new_flows"])?)))
        .collect::<Result<_>>()?;
    let events = stats["events"]
        .as_array()
        .context("the events")?
        .iter()
        .map(|event| {
            let name = event[0].as_str().context("an event's name")?;
            Ok((name.to_owned(), number(&event[1])?))
        })
        .collect::<Result<_>>()?;
    Ok((flows, events))
}

/// One run on a fresh lab (three backends, links at their defaults): [`LOAD`] through the
/// VIP, `fault` on b2 at its time, with passive health on or active checks alone.
pub fn run(fault: Fault, passive: bool, load: Load) -> Result<Report> {
    let lab = Lab::new(Wiring::TwoInterfaces, 3)?;
    let mut backends = start_backends(&lab)?;
    lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let keys = if passive {
        HEALTH.to_owned()
    } else {
        format!("{HEALTH}\n{ACTIVE_ONLY}")
    };
    let xlb = start_xlb(
        &lab.balancer,
        &balancer_config_with(&lab, "auto", &keys, ""),
    )?;
    let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
    let (before, _) = counts(&xlb)?;
    let b2 = &lab.backends[1];
    let outcome = lab
        .client
        .block_on(paced_connections(vip, load, || match fault {
            Fault::Kill => backends[1].stop(),
            Fault::Silence => silence(b2, "198.18.0.0/24", HTTP_PORT),
            Fault::Blackhole => silence(b2, "0.0.0.0/0", HTTP_PORT),
        }))??;
    let (after, events) = counts(&xlb)?;
    let live_failures = ["b1", "b3"]
        .iter()
        .map(|b| {
            let placed = after[*b] - before[*b];
            placed.saturating_sub(outcome.served.get(*b).copied().unwrap_or(0))
        })
        .sum();
    Ok(Report {
        outcome,
        live_failures,
        events,
        log: xlb.output(),
    })
}

/// What happens to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its server is stopped: the host answers new connections with a reset.
    Kill,
    /// Its host drops the clients' SYNs to the service port (nftables), while xlb's health
    /// checks, from the balancer's address, still pass: clients hear nothing.
    Silence,
    /// Its host drops every SYN to the service port, xlb's checks' too: a host that died
    /// without a reset, as far as the service can tell.
    Blackhole,
}

/// The load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// New connections per second.
    pub rate: u32,
    /// How long new connections are opened.
    pub duration: Duration,
    /// When, after the first, the fault happens.
    pub fault_at: Duration,
    /// How long one connection may take (connect, echo, close) before it counts as failed.
    pub timeout: Duration,
}

/// What became of the connections.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Connections opened.
    pub attempts: u64,
    /// Connections served, by the name of the backend that answered.
    pub served: BTreeMap<String, u64>,
    /// Connections that failed, by kind ("refused", "reset", "timed out", "other").
    pub failed: BTreeMap<&'static str, u64>,
    /// Served connections that took longer than a SYN retransmission (about 1 s).
    pub slow: u64,
}

impl Outcome {
    /// Connections that failed, of any kind.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Silences a backend host as [`Fault::Silence`] and [`Fault::Blackhole`] say: drops SYNs to
/// `port` from `clients`.
pub fn silence(host: &Netns, clients: &str, port: u16) -> Result<()> {
    let rules = format!(
        "table inet xlbsilent {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  \
         ip saddr {clients} tcp dport {port} tcp flags & (syn | ack) == syn drop\n }}\n}}\n"
    );
    let path = temp_file("silence.nft", &rules)?;
    host.exec("nft", &["-f", &path.to_string_lossy()])
        .context("adding the nftables rule")?;
    Ok(())
}

/// Opens connections to `vip` as `load` says (each one on its own task, a 100-byte echo),
/// calls `fault` once `load.fault_at` has passed, and waits for every connection to end.
pub async fn paced_connections(
    vip: SocketAddr,
    load: Load,
    fault: impl FnOnce() -> Result<()>,
) -> Result<Outcome> {
    const TICK: Duration = Duration::from_millis(5);
    let per_tick = (f64::from(load.rate) * TICK.as_secs_f64()).max(1.0) as u64;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut attempts = JoinSet::new();
    let mut fault = Some(fault);
    let started = Instant::now();
    let mut opened = 0u64;
    while started.elapsed() < load.duration {
        ticks.tick().await;
        if started.elapsed() >= load.fault_at
            && let Some(fault) = fault.take()
        {
            fault()?;
        }
        for _ in 0..per_tick {
            let body = payload(opened, 100);
            let limit = load.timeout;
            attempts.spawn(async move {
                let begun = Instant::now();
                let result = tokio::time::timeout(limit, http_echo(vip, body)).await;
                (result, begun.elapsed())
            });
            opened += 1;
        }
    }
    let mut outcome = Outcome {
        attempts: opened,
        ..Outcome::default()
    };
    while let Some(ended) = attempts.join_next().await {
        let (result, took) = ended?;
        match result {
            Ok(Ok(backend)) => {
                *outcome.served.entry(backend).or_default() += 1;
                if took > Duration::from_millis(900) {
                    outcome.slow += 1;
                }
            }
            Ok(Err(error)) => *outcome.failed.entry(kind(&error)).or_default() += 1,
            Err(_) => *outcome.failed.entry("timed out").or_default() += 1,
        }
    }
    Ok(outcome)
}

/// The kind of a failed exchange, from its error chain.
fn kind(error: &anyhow::Error) -> &'static str {
    let text = format!("{error:#}").to_lowercase();
    if text.contains("refused") {
        "refused"
    } else if text.contains("reset") || text.contains("closed") || text.contains("broken pipe") {
        "reset"
    } else if text.contains("timed out") {
        "timed out"
    } else {
        "other"
    }
}
