//! The data plane as the daemon's logic sees it: two ports, the writes of the control plane
//! ([`DataplaneMaps`]) and the reads of the reports ([`DataplaneReads`]). The data plane's
//! maps implement both, and so does an in-memory fake (`fake`) that tests read back, so the
//! control plane, the monitor and its reports are tested without a kernel.

use std::collections::{HashMap, HashSet};

pub use crate::health::state::Purge;
use anyhow::Result;
use ipnet::IpNet;
use lb_common::{
    BackendEntry, BackendTable, FlowEntry, FlowKey, HandshakeGuard, MaglevTable, ServiceEntry,
    ServiceKey, TrafficCounters, VipKey, consts::events, passive::ServicePolicy,
};

/// Writes the control plane makes to the data plane.
pub trait DataplaneMaps {
    /// Records where backend `id` lives (`BACKENDS`).
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<()>;
    /// Atomically replaces the backend table at `index` (`BACKEND_TABLES`).
    fn publish_table(&mut self, index: u32, table: &BackendTable) -> Result<()>;
    /// Atomically replaces several tables (each one atomically; they need not change at the
    /// same instant). The maps do this in one batch.
    fn publish_tables(&mut self, tables: &[(u32, BackendTable)]) -> Result<()> {
        for (index, table) in tables {
            self.publish_table(*index, table)?;
        }
        Ok(())
    }
    /// Atomically replaces the Maglev table at `index` (`MAGLEV_TABLES`), or removes it.
    fn publish_maglev(&mut self, index: u32, table: Option<&MaglevTable>) -> Result<()>;
    /// Sets the passive health and admission settings of service `service_id`
    /// (`SERVICE_POLICIES`).
    fn set_policy(&mut self, service_id: u32, policy: &ServicePolicy) -> Result<()>;
    /// Clears backend `id`'s passive counts and suspect mark (`PASSIVE_MARKS`).
    fn clear_mark(&mut self, id: u32) -> Result<()>;
    /// Restarts the round-robin cursor of table `index` (`RR_CURSORS`).
    fn reset_cursor(&mut self, index: u32) -> Result<()>;
    /// Zeroes what the data plane counted for an id that is handed out again: a service's
    /// counters (`SERVICE_STATS`), a backend's (`BACKEND_STATS`), a table's spills
    /// (`SPILLED`), so that the new owner starts from zero.
    fn zero_counters(&mut self, counters: Counted) -> Result<()>;
    /// Adds or updates a service (`SERVICES`).
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()>;
    /// Removes a service (`SERVICES`).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Deletes the flows (both directions) served by one of `backend_ids`, all of them or
    /// only those that are not established connections (`purge`); returns how many flows were
    /// deleted.
    fn purge_flows(&mut self, backend_ids: &[u32], purge: Purge) -> Result<usize>;
    /// Deletes the source persistence of every client whose backend is not in `serving`
    /// (`PERSISTENCE`); returns how many clients were forgotten.
    fn forget_persistence(&mut self, serving: &HashSet<u32>) -> Result<usize>;
    /// Clears the entry of a released backend id.
    fn release_backend(&mut self, id: u32) -> Result<()> {
        self.set_backend(id, &BackendEntry::default())
    }
    /// Atomically replaces the client prefixes of service `service_id` (`CLIENT_POOLS`): each
    /// prefix and its home pool.
    fn publish_prefixes(&mut self, service_id: u32, prefixes: &[(IpNet, u32)]) -> Result<()>;
    /// Marks an address as a VIP (`VIPS`): ICMP echo requests to it are answered.
    fn add_vip(&mut self, key: &VipKey) -> Result<()>;
    /// Removes an address from `VIPS`.
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    /// The services and the backends in use that the maps already hold (pinned maps that a
    /// previous daemon filled).
    fn existing(&self) -> Result<Existing>;
}

/// Something the data plane counts, by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counted {
    /// A service's traffic counters.
    Service(u32),
    /// A backend's traffic counters.
    Backend(u32),
    /// The spills of the table at this index.
    Spills(u32),
}

/// What pinned maps hold when a daemon starts.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// `SERVICES`.
    pub services: Vec<(ServiceKey, ServiceEntry)>,
    /// The entries of `BACKENDS` in use, by id.
    pub backends: Vec<(u32, BackendEntry)>,
    /// `VIPS`.
    pub vips: Vec<VipKey>,
}

/// What the daemon reads from the data plane: counters, events, the handshake guard, the
/// active-flow counts, spills and the flows themselves.
pub trait DataplaneReads {
    /// A service's counters, summed over CPUs.
    fn service_counters(&self, service_id: u32) -> Result<TrafficCounters>;
    /// A backend's counters, summed over CPUs.
    fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters>;
    /// Data-plane event counts (indexed as `lb_common::consts::events`), summed over CPUs.
    fn events(&self) -> Result<[u64; events::COUNT as usize]>;
    /// The handshake guard's state (`HANDSHAKE_GUARD`).
    fn handshake_guard(&self) -> Result<HandshakeGuard>;
    /// Whether the handshake guard places SYNs by hash now.
    fn handshake_guard_on(&self) -> Result<bool>;
    /// The active flows of `backend_ids` as of now (`ACTIVE_FLOWS`).
    fn active_flows(&self, backend_ids: &[u32]) -> Result<ActiveFlows>;
    /// New flows of the table at `index` that were placed outside its home pool so far.
    fn spilled(&self, index: u32) -> Result<u64>;
    /// Every VIP, with the TCP and UDP packets to it that no flow or service took (dropped).
    fn vips_unserved(&self) -> Result<Vec<(VipKey, u64)>>;
    /// Every client-to-backend flow entry of the flow tables, and whether it is half-open.
    fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry, bool)>>;
    /// The data plane's clock (the monotonic clock, in nanoseconds), which flow entries use.
    fn now_ns(&self) -> Result<u64>;
}

/// The active flows of backends (see `ACTIVE_FLOWS`): per backend id, its flows whose client
/// sent a packet in the last complete activity epoch, and in the one under way so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActiveFlows {
    /// Per backend id: (last complete epoch, epoch under way).
    pub by_backend: HashMap<u32, (u64, u64)>,
}

impl ActiveFlows {
    /// A backend's active flows: the larger of the two epochs' counts (a rise shows at once, a
    /// fall once an epoch without it has completed).
    pub fn of(&self, backend_id: u32) -> u64 {
        self.by_backend
            .get(&backend_id)
            .map_or(0, |(previous, current)| (*previous).max(*current))
    }

    /// The active flows of every backend counted.
    pub fn total(&self) -> u64 {
        self.by_backend.keys().map(|id| self.of(*id)).sum()
    }
}
