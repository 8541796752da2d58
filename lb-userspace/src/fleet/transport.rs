//! The fleet's messages between the daemons: a sender task (the program's flow events, and
//! snapshots asked of this instance) and a receiver task (what peers send), over one UDP
//! socket bound to the fleet's `listen` address.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use lb_common::share::FlowEvent;
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tracing::warn;

use super::{
    replay::{Rejected, Window},
    wire::{self, Key, Kind, MAX_MESSAGE, MAX_RECORDS, Message, Refused},
};
use crate::{config::FleetConfig, dataplane::FlowEvents};

/// How long a flow event waits for others to share its datagram.
pub(super) const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// Flow events waiting to be sent at most; beyond, they are dropped (and counted).
const MAX_PENDING: usize = 65_536;
/// Datagrams sent per second at most (to all peers together): about 440,000 flows a second
/// to one peer.
const MAX_DATAGRAMS_PER_SECOND: u64 = 20_000;
/// Messages received and not yet handled by the monitor at most; beyond, they are dropped.
const INBOX: usize = 1_024;

/// What the fleet's messages did, for the metrics. Counted by the tasks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Flow events sent (once per peer).
    pub records_sent: AtomicU64,
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Datagrams the kernel refused to send (an unreachable peer, a full buffer).
    pub send_errors: AtomicU64,
    /// Flow events dropped: more were waiting than [`MAX_PENDING`].
    pub dropped_pending: AtomicU64,
    /// Flow events the program's ring had no room for.
    pub lost_in_ring: AtomicU64,
    /// Flow records received in accepted messages.
    pub records_received: AtomicU64,
    /// Datagrams refused: from an address that is not a peer.
    pub refused_not_a_peer: AtomicU64,
    /// Datagrams refused: malformed (or a record that is not a flow).
    pub refused_malformed: AtomicU64,
    /// Datagrams refused: a tag the key does not give.
    pub refused_bad_tag: AtomicU64,
    /// Datagrams refused: seen before, or sent too long ago.
    pub refused_replayed: AtomicU64,
    /// Accepted messages dropped because the monitor had [`INBOX`] waiting.
    pub dropped_inbox: AtomicU64,
    /// Flows of a refresh not sent before the next refresh replaced it (the budget of
    /// datagrams was too small for the flows carried).
    pub refresh_unsent: AtomicU64,
}

/// An accepted message, for the monitor.
#[derive(Debug)]
pub enum Incoming {
    /// Flows a peer made established or closed (or sent in a snapshot).
    Flows(Vec<FlowEvent>),
    /// A peer asks for this instance's flows.
    SnapshotRequest(SocketAddr),
    /// A peer's snapshot is complete.
    SnapshotDone(SocketAddr),
}

/// What the monitor asks the sender to send.
#[derive(Debug)]
enum Outgoing {
    /// A snapshot of this instance's flows, to the peer that asked.
    Snapshot(SocketAddr, Vec<FlowEvent>),
    /// Asks every peer for its flows.
    Request,
    /// The flows this instance carried since its last refresh, to every peer.
    Refresh(Vec<FlowEvent>),
}

/// The fleet's transport: its tasks, what they received, and their counters.
pub struct Fleet {
    inbox: Option<mpsc::Receiver<Incoming>>,
    outbox: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
    peers: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Binds the fleet's socket and starts the tasks, which send the program's flow `events`
    /// (the caller turns them on: `Dataplane::fleet_switch`).
    pub fn start(config: &FleetConfig, events: FlowEvents) -> Result<Self> {
        let socket = std::net::UdpSocket::bind(config.listen)
            .with_context(|| format!("fleet: binding {} (listen)", config.listen))?;
        socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(socket)?);
        let key = Key::new(&config.key.0);
        let counters = Arc::new(Counters::default());
        let (outbox, outgoing) = mpsc::channel(64);
        let (incoming, inbox) = mpsc::channel(INBOX);
        let sender = Sender {
            socket: Arc::clone(&socket),
            key: key.clone(),
            peers: config.peers.clone(),
            epoch: epoch(),
            sequence: 0,
            counters: Arc::clone(&counters),
            budget: Budget::new(),
        };
        let receiver = Receiver {
            socket,
            key,
            windows: config
                .peers
                .iter()
                .map(|p| (*p, Window::default()))
                .collect(),
            counters: Arc::clone(&counters),
            inbox: incoming,
        };
        let tasks = vec![
            tokio::spawn(sender.run(events, outgoing)),
            tokio::spawn(receiver.run()),
        ];
        Ok(Self {
            inbox: Some(inbox),
            outbox,
            counters,
            peers: config.peers.clone(),
            tasks,
        })
    }

    /// The messages received, for whoever handles them (once).
    pub fn take_inbox(&mut self) -> Option<mpsc::Receiver<Incoming>> {
        self.inbox.take()
    }

    /// Asks every peer for its flows.
    pub fn request_snapshot(&self) {
        let _ = self.outbox.try_send(Outgoing::Request);
    }

    /// Sends `flows` to `peer`, which asked for them, and then the end of the snapshot.
    pub fn send_snapshot(&self, peer: SocketAddr, flows: Vec<FlowEvent>) {
        if self
            .outbox
            .try_send(Outgoing::Snapshot(peer, flows))
            .is_err()
        {
            warn!(%peer, "fleet: a snapshot could not be queued (too many at once): the peer will miss it");
        }
    }

    /// Sends `flows` to every peer again (a refresh, see [`super::carried`]), after the
    /// program's events and as the budget of datagrams allows; what is left of the previous
    /// refresh is dropped (and counted).
    pub fn send_refresh(&self, flows: Vec<FlowEvent>) {
        if self.outbox.try_send(Outgoing::Refresh(flows)).is_err() {
            warn!(
                "fleet: a refresh could not be queued (the sender is behind): the peers get the next one"
            );
        }
    }

    /// The peers.
    pub fn peers(&self) -> &[SocketAddr] {
        &self.peers
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A number this run of the daemon picks for its messages: its start time in nanoseconds.
fn epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// UNIX time now, in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A token bucket of datagrams: [`MAX_DATAGRAMS_PER_SECOND`], bursts of a tenth of that.
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    const BURST: f64 = MAX_DATAGRAMS_PER_SECOND as f64 / 10.0;

    fn new() -> Self {
        Self {
            tokens: Self::BURST,
            at: Instant::now(),
        }
    }

    /// Takes one datagram's token if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * MAX_DATAGRAMS_PER_SECOND as f64;
        self.tokens = (self.tokens + earned).min(Self::BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The sender task's state.
struct Sender {
    socket: Arc<UdpSocket>,
    key: Key,
    peers: Vec<SocketAddr>,
    epoch: u64,
    sequence: u64,
    counters: Arc<Counters>,
    budget: Budget,
}

impl Sender {
    /// Sends the program's flow events to every peer, batched, and what the monitor asks.
    async fn run(mut self, events: FlowEvents, mut outgoing: mpsc::Receiver<Outgoing>) {
        // SAFETY: `FlowEvents` owns the ring buffer's descriptor, open until it is dropped,
        // and always returns that one.
        let mut ring = match unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        {
            Ok(ring) => ring,
            Err(error) => {
                warn!(
                    "fleet: the flow events cannot be read, no flow is shared: {}",
                    error.into_parts().1
                );
                return;
            }
        };
        let mut pending: VecDeque<FlowEvent> = VecDeque::new();
        let mut refresh: VecDeque<FlowEvent> = VecDeque::new();
        let mut flush_at: Option<Instant> = None;
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let Ok(mut guard) = guard else { return };
                    let events = guard.get_inner_mut();
                    while let Some(event) = events.next_event() {
                        if pending.len() < MAX_PENDING {
                            pending.push_back(event);
                        } else {
                            self.counters.dropped_pending.fetch_add(1, Relaxed);
                        }
                    }
                    self.counters.lost_in_ring.store(events.lost(), Relaxed);
                    guard.clear_ready();
                    flush_at.get_or_insert_with(|| Instant::now() + FLUSH_AFTER);
                    if pending.len() >= MAX_RECORDS {
                        flush_at = self.flush(&mut pending, &mut refresh).await;
                    }
                }
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    flush_at = self.flush(&mut pending, &mut refresh).await;
                }
                asked = outgoing.recv() => match asked {
                    None => return,
                    Some(Outgoing::Request) => {
                        let peers = self.peers.clone();
                        self.send(Kind::SnapshotRequest, &[], &peers).await;
                    }
                    Some(Outgoing::Snapshot(peer, flows)) => {
                        for chunk in flows.chunks(MAX_RECORDS) {
                            while !self.budget.take() {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            self.send(Kind::Snapshot, chunk, &[peer]).await;
                        }
                        self.send(Kind::SnapshotDone, &[], &[peer]).await;
                    }
                    Some(Outgoing::Refresh(flows)) => {
                        let unsent = std::mem::replace(&mut refresh, flows.into()).len() as u64;
                        self.counters.refresh_unsent.fetch_add(unsent, Relaxed);
                        flush_at.get_or_insert_with(Instant::now);
                    }
                },
            }
        }
    }

    /// Sends what is pending to every peer, then what is left of the refresh, as far as the
    /// budget allows; when it could not send everything, the time to try again.
    async fn flush(
        &mut self,
        pending: &mut VecDeque<FlowEvent>,
        refresh: &mut VecDeque<FlowEvent>,
    ) -> Option<Instant> {
        let peers = self.peers.clone();
        for queue in [pending, refresh] {
            while !queue.is_empty() {
                if !self.budget.take() {
                    return Some(Instant::now() + FLUSH_AFTER);
                }
                let take = queue.len().min(MAX_RECORDS);
                let batch: Vec<FlowEvent> = queue.drain(..take).collect();
                self.send(Kind::Flows, &batch, &peers).await;
            }
        }
        None
    }

    /// Sends one message of `kind` with `records` to each of `peers`.
    async fn send(&mut self, kind: Kind, records: &[FlowEvent], peers: &[SocketAddr]) {
        self.sequence += 1;
        let message = Message {
            kind,
            epoch: self.epoch,
            sequence: self.sequence,
            sent_ms: now_ms(),
            records: records.to_vec(),
        };
        let datagram = wire::encode(&message, &self.key);
        for peer in peers {
            match self.socket.send_to(&datagram, peer).await {
                Ok(_) => {
                    self.counters.datagrams_sent.fetch_add(1, Relaxed);
                    let sent = records.len() as u64;
                    self.counters.records_sent.fetch_add(sent, Relaxed);
                }
                Err(_) => {
                    self.counters.send_errors.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// The receiver task's state.
struct Receiver {
    socket: Arc<UdpSocket>,
    key: Key,
    windows: HashMap<SocketAddr, Window>,
    counters: Arc<Counters>,
    inbox: mpsc::Sender<Incoming>,
}

impl Receiver {
    /// Takes the peers' messages and hands the accepted ones to the monitor.
    async fn run(mut self) {
        let mut buffer = vec![0u8; MAX_MESSAGE + 1];
        loop {
            let Ok((len, from)) = self.socket.recv_from(&mut buffer).await else {
                continue;
            };
            let accepted = accept(
                &buffer[..len],
                from,
                &mut self.windows,
                &self.key,
                &self.counters,
                now_ms(),
            );
            let Some(incoming) = accepted else {
                continue;
            };
            if self.inbox.try_send(incoming).is_err() {
                self.counters.dropped_inbox.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The message in `datagram` from `from`, if it is accepted: from a peer (one of
/// `windows`' keys), authentic under `key`, not replayed. What is refused is counted.
fn accept(
    datagram: &[u8],
    from: SocketAddr,
    windows: &mut HashMap<SocketAddr, Window>,
    key: &Key,
    counters: &Counters,
    now_ms: u64,
) -> Option<Incoming> {
    let Some(window) = windows.get_mut(&from) else {
        counters.refused_not_a_peer.fetch_add(1, Relaxed);
        return None;
    };
    let message = match wire::decode(datagram, key) {
        Ok(message) => message,
        Err(Refused::BadTag) => {
            counters.refused_bad_tag.fetch_add(1, Relaxed);
            return None;
        }
        Err(Refused::Malformed | Refused::BadRecord) => {
            counters.refused_malformed.fetch_add(1, Relaxed);
            return None;
        }
    };
    if let Err(Rejected::Replayed | Rejected::Stale) =
        window.accept(message.epoch, message.sequence, message.sent_ms, now_ms)
    {
        counters.refused_replayed.fetch_add(1, Relaxed);
        return None;
    }
    counters
        .records_received
        .fetch_add(message.records.len() as u64, Relaxed);
    Some(match message.kind {
        Kind::Flows | Kind::Snapshot => Incoming::Flows(message.records),
        Kind::SnapshotRequest => Incoming::SnapshotRequest(from),
        Kind::SnapshotDone => Incoming::SnapshotDone(from),
    })
}

#[cfg(test)]
mod tests {
    use lb_common::share::flow_event;

    use super::*;
    use crate::fleet::wire::tests::flow;

    #[test]
    fn only_a_peers_authentic_new_messages_are_accepted_and_the_rest_is_counted() {
        let key = Key::new(b"a fleet key of at least 32 bytes!");
        let peer: SocketAddr = "198.18.1.22:7470".parse().unwrap();
        let mut windows: HashMap<SocketAddr, Window> = [(peer, Window::default())].into();
        let counters = Counters::default();
        let now = 1_765_000_000_000;
        let message = |sequence: u64| Message {
            kind: Kind::Flows,
            epoch: 1,
            sequence,
            sent_ms: now,
            records: vec![flow(40_000, flow_event::OPENED)],
        };
        let datagram = wire::encode(&message(1), &key);
        let mut take = |datagram: &[u8], from: SocketAddr| {
            accept(datagram, from, &mut windows, &key, &counters, now)
        };
        assert!(matches!(take(&datagram, peer), Some(Incoming::Flows(r)) if r.len() == 1));
        assert!(take(&datagram, peer).is_none(), "replayed");
        let stranger: SocketAddr = "198.18.1.99:7470".parse().unwrap();
        assert!(take(&wire::encode(&message(2), &key), stranger).is_none());
        let forged = wire::encode(&message(3), &Key::new(b"not the fleet's key, 32 bytes...."));
        assert!(take(&forged, peer).is_none());
        assert!(take(b"XLBF garbage", peer).is_none());
        let n = |c: &AtomicU64| c.load(Relaxed);
        assert_eq!(
            (
                n(&counters.records_received),
                n(&counters.refused_replayed),
                n(&counters.refused_not_a_peer),
                n(&counters.refused_bad_tag),
                n(&counters.refused_malformed)
            ),
            (1, 1, 1, 1, 1)
        );
    }
}
