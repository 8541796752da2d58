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
};

/// What happens to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its server is stopped: the host answers new connections with a reset.
    Kill,
    /// Its host drops the clients' SYNs to the service port (nftables), while xlb's health
    /// checks, from the balancer's address, still pass: clients hear nothing.
    Silence,
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

/// Silences a backend host as [`Fault::Silence`] says: drops SYNs to `port` from `clients`.
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
