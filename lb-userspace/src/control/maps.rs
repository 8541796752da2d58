//! The writes the control plane makes to the data plane, as a trait: the data plane's maps
//! implement it, and so does an in-memory fake (`fake`) that tests read back.

use anyhow::Result;
use ipnet::IpNet;
use lb_common::{
    BackendEntry, BackendTable, MaglevTable, ServiceEntry, ServiceKey, VipKey,
    passive::ServicePolicy,
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
    /// Adds or updates a service (`SERVICES`).
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()>;
    /// Removes a service (`SERVICES`).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Deletes every flow (both directions) served by one of `backend_ids`; returns how many
    /// flows were deleted.
    fn purge_flows(&mut self, backend_ids: &[u32]) -> Result<usize>;
    /// Clears the entry of a released backend id.
    fn release_backend(&mut self, id: u32) -> Result<()> {
        self.set_backend(id, &BackendEntry::default())
    }
    /// Atomically replaces the client prefixes of service `service_id` (`CLIENT_POOLS`): each
    /// prefix and its home pool.
    fn publish_prefixes(&mut self, service_id: u32, prefixes: &[(IpNet, u32)]) -> Result<()>;
    /// New flows of the table at `index` that were placed outside its home pool so far.
    fn spilled(&self, index: u32) -> Result<u64>;
    /// Marks an address as a VIP (`VIPS`): ICMP echo requests to it are answered.
    fn add_vip(&mut self, key: &VipKey) -> Result<()>;
    /// Removes an address from `VIPS`.
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    /// The services and the backends in use that the maps already hold (pinned maps that a
    /// previous daemon filled).
    fn existing(&self) -> Result<Existing>;
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
