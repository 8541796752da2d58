//! The monitor's side of the fleet (see `crate::fleet`): it installs the flows peers send
//! (never over one of this instance's own; a copy it has is stamped anew), answers a peer's
//! snapshot request with this instance's established flows, sends every `refresh` the flows
//! it carried since the last, and at start asks every peer for theirs before the instance is
//! announced.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use anyhow::Result;
use lb_common::{FlowEntry, FlowKey, consts::flow_flags, share::FlowEvent};
use tokio::{sync::mpsc, time::Instant};
use tracing::{info, warn};

use super::{Monitor, core::Core};
use crate::{
    control::DataplaneReads as _,
    dataplane::Maps,
    fleet::{Fleet, Incoming, carried, install},
    metrics::FleetMetrics,
};

/// A flow's key and entry.
type Flow = (FlowKey, FlowEntry);

/// How long a starting instance waits for its peers' snapshots before it goes on without
/// those that did not answer (down, or not started yet).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);

/// The fleet, as the monitor holds it, with what its flows did here.
pub(super) struct FleetLink {
    fleet: Fleet,
    /// Flows installed from peers.
    pub(super) installed: u64,
    /// Flows a peer sent that this instance had already.
    pub(super) present: u64,
    /// Flows of a service or backend this instance does not have.
    pub(super) unknown: u64,
    /// Copies of peers' flows stamped anew by their refresh.
    pub(super) refreshed: u64,
    /// Idle entries of another backend that a peer's newer placement replaced.
    pub(super) replaced: u64,
    /// When this instance's last refresh read the tables (the program's clock, ns).
    refreshed_at: u64,
}

impl FleetLink {
    /// What the metrics show of the fleet.
    pub(super) fn metrics(&self) -> FleetMetrics {
        let c = self.fleet.counters();
        let n = |counter: &AtomicU64| counter.load(Relaxed);
        FleetMetrics {
            flows: vec![
                ("sent", n(&c.records_sent)),
                ("received", n(&c.records_received)),
                ("installed", self.installed),
                ("present", self.present),
                ("refreshed", self.refreshed),
                ("replaced", self.replaced),
                ("unknown", self.unknown),
                ("lost", n(&c.lost_in_ring) + n(&c.dropped_pending)),
            ],
            messages: vec![
                ("sent", n(&c.datagrams_sent)),
                ("send_error", n(&c.send_errors)),
                ("refused_not_a_peer", n(&c.refused_not_a_peer)),
                ("refused_malformed", n(&c.refused_malformed)),
                ("refused_bad_tag", n(&c.refused_bad_tag)),
                ("refused_replayed", n(&c.refused_replayed)),
                ("dropped", n(&c.dropped_inbox)),
                ("refresh_unsent", n(&c.refresh_unsent)),
            ],
        }
    }

    /// Handles one accepted message; returns the peer whose snapshot it ends, if it does.
    fn handle(&mut self, incoming: Incoming, core: &Core, maps: &mut Maps) -> Option<SocketAddr> {
        match incoming {
            Incoming::Flows(records) => {
                self.install(&records, core, maps);
                None
            }
            Incoming::SnapshotRequest(peer) => {
                match snapshot(core, maps) {
                    Ok(flows) => {
                        info!(%peer, flows = flows.len(), "fleet: sending this instance's flows to a peer that asked");
                        self.fleet.send_snapshot(peer, flows);
                    }
                    Err(error) => {
                        warn!(%peer, "fleet: the flow tables could not be read for a peer's snapshot: {error:#}")
                    }
                }
                None
            }
            Incoming::SnapshotDone(peer) => Some(peer),
        }
    }

    /// Installs the flows of `records`: new ones where this instance has none (stamped as
    /// copies, `carried::stamp_copy`), its entries of the others stamped anew if older, and closing ones
    /// marked so (over this instance's entry too, whose next hops stay).
    fn install(&mut self, records: &[FlowEvent], core: &Core, maps: &mut Maps) {
        let now = maps.now_ns().unwrap_or(0);
        let resolved = install::resolve(records, core.balancer().services(), now);
        self.unknown += (resolved.no_service + resolved.no_backend) as u64;
        let (closing, opened): (Vec<Flow>, Vec<Flow>) = resolved
            .entries
            .into_iter()
            .partition(|(_, entry)| entry.flags & flow_flags::CLOSING != 0);
        for (key, mut entry) in opened {
            carried::stamp_copy(&mut entry, now);
            if maps.adopt_flows(&[(key, entry, false)], true) == 1 {
                self.installed += 1;
                continue;
            }
            // The entry here is read once: stamped anew, or found to give way (a refresh
            // brings every carried flow, so this is the bulk of the fleet's writes).
            let mut replace = false;
            let stamped = maps.flows.update(&key, |own| {
                replace = carried::replaces(own, &entry, now);
                !replace && carried::stamp_copy(own, now)
            });
            if replace {
                // Written as a new flow is, with the VIP of its replies if it needs one.
                maps.adopt_flows(&[(key, entry, false)], false);
                self.replaced += 1;
            } else if stamped {
                self.refreshed += 1;
            } else {
                self.present += 1;
            }
        }
        for (key, entry) in closing {
            let marked = match maps.flow(&key) {
                Some(mut own) => {
                    own.flags |= flow_flags::CLOSING;
                    own
                }
                None => entry,
            };
            maps.adopt_flows(&[(key, marked, false)], false);
        }
    }

    /// Sends every peer the flows this instance carried since its last refresh.
    fn refresh(&mut self, core: &Core, maps: &Maps) -> Result<()> {
        let now = maps.now_ns()?;
        let flows = maps.flows()?;
        let timeouts = &core.config().flow_timeouts;
        let records = carried::carried_since(&flows, self.refreshed_at, timeouts, now);
        self.refreshed_at = now;
        if !records.is_empty() {
            self.fleet.send_refresh(records);
        }
        Ok(())
    }
}

/// This instance's established flows, as the records of a snapshot.
fn snapshot(core: &Core, maps: &Maps) -> Result<Vec<FlowEvent>> {
    let now = maps.now_ns()?;
    Ok(carried::snapshot(
        &maps.flows()?,
        &core.config().flow_timeouts,
        now,
    ))
}

/// The next accepted message, if the monitor has a fleet (else never).
pub(super) async fn next(inbox: &mut Option<mpsc::Receiver<Incoming>>) -> Option<Incoming> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

impl Monitor {
    /// Joins `fleet`: asks every peer for its flows and installs them, for at most
    /// [`SNAPSHOT_WAIT`], before the caller announces this instance; from then on the
    /// monitor's loop handles the fleet's messages.
    pub async fn join_fleet(&mut self, mut fleet: Fleet, maps: &mut Maps) {
        let Some(mut inbox) = fleet.take_inbox() else {
            return;
        };
        let mut waiting: HashSet<SocketAddr> = fleet.peers().iter().copied().collect();
        let peers = waiting.len();
        let mut link = FleetLink {
            fleet,
            installed: 0,
            present: 0,
            unknown: 0,
            refreshed: 0,
            replaced: 0,
            refreshed_at: maps.now_ns().unwrap_or(0),
        };
        link.fleet.request_snapshot();
        let deadline = Instant::now() + SNAPSHOT_WAIT;
        while !waiting.is_empty() {
            let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, inbox.recv()).await else {
                break;
            };
            if let Some(done) = link.handle(incoming, &self.core, maps) {
                waiting.remove(&done);
            }
        }
        let installed = link.installed;
        if waiting.is_empty() {
            info!(installed, peers, "fleet: took the flows of every peer");
        } else {
            let silent: Vec<String> = waiting.iter().map(ToString::to_string).collect();
            warn!(
                installed,
                silent = silent.join(", "),
                "fleet: some peers sent no snapshot within 3 s (down, or starting too): going on without their flows"
            );
        }
        self.fleet = Some(link);
        self.fleet_inbox = Some(inbox);
    }

    /// Sends the peers the flows this instance carried since the last refresh (every
    /// `refresh`, from the monitor's loop).
    pub(super) fn refresh_fleet(&mut self, maps: &Maps) {
        if let Some(link) = &mut self.fleet
            && let Err(error) = link.refresh(&self.core, maps)
        {
            warn!("fleet: the flow tables could not be read for a refresh: {error:#}");
        }
    }

    /// Handles a message of the fleet in the monitor's loop.
    pub(super) fn fleet_message(&mut self, incoming: Incoming, maps: &mut Maps) {
        if let Some(link) = &mut self.fleet {
            link.handle(incoming, &self.core, maps);
        }
    }
}
