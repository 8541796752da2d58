//! The control plane: turns a [`Config`] into the contents of the data plane's maps and keeps
//! them in step when the configuration changes, touching only what changed.
//!
//! It speaks to the maps through the [`DataplaneMaps`] trait, so all of its logic (id
//! allocation, table building, the order of updates) is tested without a kernel.
//!
//! The order of updates keeps every intermediate state valid for a packet that arrives
//! between two of them: a backend's address is written before any table names it, a table is
//! published before its service appears, a service disappears before its table is emptied,
//! and a backend's flows are purged only after the last table naming it was replaced.

mod balancer;
mod diff;
mod ids;
pub mod least_connections;
pub(crate) mod locality;
pub mod maglev;
mod ports;
mod spec;
pub mod table;
mod writes;

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod drain_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod maglev_tests;
#[cfg(test)]
mod tests;

pub use balancer::{ApplySummary, BackendState, Balancer, Known, ServiceState};
pub(crate) use locality::serving_pools;
pub use ports::{ActiveFlows, Counted, DataplaneMaps, DataplaneReads, Existing, Purge};
pub use spec::{BackendSpec, Locality, ServiceSpec};
