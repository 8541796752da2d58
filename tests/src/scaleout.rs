//! The scale-out scenario, shared by the tier-3 test and the benchmark: long-lived TCP
//! connections through the [`Cluster`] while one balancer's xlb is killed (SIGKILL) and, in a
//! second round, started again. Every connection echoes a payload at a steady pace and checks
//! each byte that comes back; it completes only if every exchange did, on one backend.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::task::JoinSet;

use crate::{
    client::{Session, payload, udp_socket},
    cluster::{Cluster, PORT},
    topology::VIP,
};

/// The service keys of each scheduler the scenario compares.
pub const MAGLEV: &str = "scheduler = \"maglev\"";
/// Round robin: a flow that arrives at another instance is placed by that instance's own
/// hash, over its own table.
pub const ROUND_ROBIN: &str = "scheduler = \"round-robin\"";

/// The load of one round.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Connections, opened before the event.
    pub connections: usize,
    /// How long each keeps exchanging.
    pub duration: Duration,
    /// Time between two exchanges of one connection.
    pub every: Duration,
    /// Bytes per exchange.
    pub bytes: usize,
    /// When the event happens, after every connection opened.
    pub event_at: Duration,
    /// UDP sessions beside the connections (to the UDP service of a fleet's cluster): each
    /// sends a datagram every `every` and must be answered by one backend throughout.
    pub udp_sessions: usize,
}

/// 300 connections for 6 s, 1 KB each way every 200 ms; the event 2 s in.
pub const LOAD: Load = Load {
    connections: 300,
    duration: Duration::from_secs(6),
    every: Duration::from_millis(200),
    bytes: 1_000,
    event_at: Duration::from_secs(2),
    udp_sessions: 0,
};

/// How the connections of one round ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Connections whose every exchange came back intact.
    pub completed: usize,
    /// Connections that failed, by what went wrong first (connections that never opened
    /// included).
    pub failed: BTreeMap<String, usize>,
    /// Exchanges made in all.
    pub exchanges: u64,
    /// UDP sessions whose every datagram was answered, by one backend.
    pub udp_completed: usize,
    /// UDP sessions that failed, by what went wrong first.
    pub udp_failed: BTreeMap<String, usize>,
}

impl Outcome {
    /// Connections attempted.
    pub fn total(&self) -> usize {
        self.completed + self.failed.values().sum::<usize>()
    }

    /// The share of connections that completed, in percent.
    pub fn completed_percent(&self) -> f64 {
        100.0 * self.completed as f64 / self.total().max(1) as f64
    }
}

/// One connection: opened, then an echo every `load.every` until `until`.
async fn connection(index: usize, load: Load, until: Instant) -> (Result<()>, u64) {
    let vip = SocketAddr::from((VIP, PORT));
    let mut exchanges = 0;
    let result = async {
        let mut session = Session::open(vip).await?;
        let mut backend = None;
        let mut round = 0u64;
        while Instant::now() < until {
            let body = payload((index as u64) << 32 | round, load.bytes);
            let answered = session.echo(body).await?;
            exchanges += 1;
            round += 1;
            match &backend {
                None => backend = Some(answered),
                Some(first) if *first != answered => {
                    anyhow::bail!("moved from backend {first} to {answered}")
                }
                Some(_) => {}
            }
            tokio::time::sleep(load.every).await;
        }
        Ok(())
    }
    .await;
    (result, exchanges)
}

/// How long a UDP session waits for the answer to a datagram before it sends it again, and how
/// many times it sends one: a datagram may be lost while the router takes a dead instance out
/// of its route (BFD: 0.3 s), as TCP retransmits a segment.
const UDP_WAIT: Duration = Duration::from_millis(400);
const UDP_SENDS: usize = 3;

/// One UDP session: a datagram every `load.every` until `until`, each answered with its own
/// bytes by the backend that answered the first (a late answer to an earlier datagram is
/// skipped).
async fn udp_session(index: usize, load: Load, until: Instant) -> Result<()> {
    let vip = SocketAddr::from((VIP, PORT));
    let socket = udp_socket(vip).await?;
    let mut backend: Option<String> = None;
    let mut buffer = vec![0u8; 2_048];
    let mut round = 0u64;
    while Instant::now() < until {
        let body = payload((index as u64) << 32 | round, 64);
        let mut answered = None;
        'sends: for _ in 0..UDP_SENDS {
            socket.send(&body).await?;
            let deadline = tokio::time::Instant::now() + UDP_WAIT;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await
            {
                let reply = &buffer[..received?];
                let Some(split) = reply.iter().position(|&b| b == b'\n') else {
                    anyhow::bail!("a UDP answer without a backend's name");
                };
                if reply[split + 1..] == body[..] {
                    answered = Some(String::from_utf8_lossy(&reply[..split]).into_owned());
                    break 'sends;
                }
            }
        }
        let name = answered.with_context(|| format!("no UDP answer in {UDP_SENDS} sends"))?;
        match &backend {
            None => backend = Some(name),
            Some(first) if *first != name => {
                anyhow::bail!("UDP session moved from backend {first} to {name}")
            }
            Some(_) => {}
        }
        round += 1;
        tokio::time::sleep(load.every).await;
    }
    Ok(())
}

/// Runs `load`'s connections (in the client's namespace, from the caller's thread) and
/// returns once every one ended. `opened` is called once every connection had time to open.
pub async fn run_connections(load: Load) -> Outcome {
    let until = Instant::now() + load.duration;
    let mut sessions = JoinSet::new();
    for index in 0..load.udp_sessions {
        sessions.spawn(udp_session(index, load, until));
    }
    let mut set = JoinSet::new();
    for index in 0..load.connections {
        set.spawn(connection(index, load, until));
        // A few hundred handshakes spread over 100 ms, not one burst.
        if index % 30 == 29 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut outcome = Outcome::default();
    while let Some(joined) = set.join_next().await {
        let (result, exchanges) = joined.unwrap_or_else(|e| (Err(e.into()), 0));
        outcome.exchanges += exchanges;
        match result {
            Ok(()) => outcome.completed += 1,
            Err(error) => {
                let kind = format!("{error:#}");
                let kind = kind.split(':').next().unwrap_or("").trim().to_owned();
                *outcome.failed.entry(kind).or_default() += 1;
            }
        }
    }
    while let Some(joined) = sessions.join_next().await {
        match joined.unwrap_or_else(|e| Err(e.into())) {
            Ok(()) => outcome.udp_completed += 1,
            Err(error) => {
                *outcome.udp_failed.entry(format!("{error:#}")).or_default() += 1;
            }
        }
    }
    outcome
}

/// What a scale-out run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Flows each balancer placed (new or arriving without a flow) in the first round before
    /// the kill.
    pub spread: Vec<u64>,
    /// The first round: one xlb killed.
    pub kill: Outcome,
    /// From SIGKILL until the router's route had one next hop less.
    pub withdrawn_after: Duration,
    /// The second round: the killed xlb started again.
    pub restart: Outcome,
    /// From the restart until the restarted xlb said it balanced.
    pub ready_after: Duration,
    /// From the restart until the router's route had every next hop again.
    pub announced_after: Duration,
    /// Flows placed by each balancer over both rounds, after the restart (its counters
    /// start again when the daemon does: they live in pinned maps, so they do not).
    pub placed: Vec<u64>,
}

/// One run: a fresh cluster of three balancers and three backends with `scheduler_keys`, a
/// round in which balancer 2's xlb is killed, a round in which it is started again.
pub fn run(scheduler_keys: &str, load: Load) -> Result<Report> {
    let cluster = Cluster::start(3, 3, scheduler_keys)?;
    let mut report = Report::default();
    let before = cluster.placed_and_forwarded()?;
    let (outcome, (spread, withdrawn)) = round(&cluster, load, || {
        let spread = cluster_placed_since(&cluster, &before)?;
        let killed = Instant::now();
        cluster.kill(1)?;
        cluster.wait_for_next_hops(2, Duration::from_secs(10))?;
        Ok((spread, killed.elapsed()))
    })?;
    report.spread = spread;
    report.kill = outcome;
    report.withdrawn_after = withdrawn;

    let (outcome, (ready, announced)) = round(&cluster, load, || {
        let restarted = Instant::now();
        cluster.restart(1)?;
        let ready = restarted.elapsed();
        cluster.wait_for_next_hops(3, Duration::from_secs(10))?;
        Ok((ready, restarted.elapsed()))
    })?;
    report.restart = outcome;
    report.ready_after = ready;
    report.announced_after = announced;
    report.placed = cluster
        .placed_and_forwarded()?
        .iter()
        .map(|(placed, _)| *placed)
        .collect();
    Ok(report)
}

/// One round: `load`'s connections from the client (on a thread of their own) and, once
/// they opened, `event` on this thread; the connections' outcome and what `event` measured.
pub fn round<T: Send>(
    cluster: &Cluster,
    load: Load,
    event: impl FnOnce() -> Result<T>,
) -> Result<(Outcome, T)> {
    std::thread::scope(|scope| {
        let client = &cluster.client;
        let connections = scope.spawn(|| client.block_on(run_connections(load)));
        std::thread::sleep(load.event_at);
        let measured = event()?;
        let outcome = connections.join().expect("the client thread")?;
        Ok((outcome, measured))
    })
}

/// Flows each balancer placed since `before`.
fn cluster_placed_since(cluster: &Cluster, before: &[(u64, u64)]) -> Result<Vec<u64>> {
    let now = cluster
        .placed_and_forwarded()
        .context("reading the balancers' counters")?;
    Ok(now
        .iter()
        .zip(before)
        .map(|((placed, _), (was, _))| placed - was)
        .collect())
}
