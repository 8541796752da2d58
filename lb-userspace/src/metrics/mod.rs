//! The Prometheus endpoint (`metrics = "127.0.0.1:9814"` in the config): per-service and
//! per-backend traffic, flows, states, weights and health-check latency, the flow tables, the
//! handshake guard, reloads, the data plane's events and the build. The monitor refreshes a
//! [`Snapshot`] once a second; a scrape encodes the latest one (`families`), in the format the
//! scraper asks for (`format`).

mod endpoint;
mod families;
pub(crate) mod format;

use std::sync::{Arc, Mutex};

use anyhow::Result;
use prometheus_client::{encoding::text::encode, registry::Registry};

pub(crate) use self::{
    endpoint::{bind, serve},
    format::Format,
};
use crate::{health::state::State, report::Counters};

/// What the metrics expose, as of the monitor's last refresh.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Services in config order.
    pub services: Vec<ServiceMetrics>,
    /// Data-plane events: name and count.
    pub events: Vec<(&'static str, u64)>,
    /// New flows placed outside their home pool: (service, from pool, to pool) and count.
    pub spills: Vec<((String, String, String), u64)>,
    /// Active flows (a client packet in the last activity epoch, about 8.6 s): IPv4, IPv6.
    pub flows: (u64, u64),
    /// What the flow tables hold at most: (established, half-open) of IPv4, of IPv6.
    pub flow_capacity: [(u64, u64); 2],
    /// Flows a packet found silent past their timeout (the data plane's count).
    pub flows_expired: u64,
    /// The handshake guard, if it could be read.
    pub guard: Option<GuardMetrics>,
    /// Reloads since the daemon started.
    pub reloads: ReloadMetrics,
    /// Every VIP with the packets to it that no flow or service took.
    pub unserved: Vec<(std::net::IpAddr, u64)>,
    /// Route health injection: each VIP's announcement (none without `[announce]`).
    pub announce: Option<crate::report::AnnounceReport>,
    /// The flows shared with the fleet (none without `[fleet]`).
    pub fleet: Option<FleetMetrics>,
}

/// The fleet's flows and messages, each count with what happened to them.
#[derive(Clone, Debug, Default)]
pub(crate) struct FleetMetrics {
    /// Flows: (result, count).
    pub flows: Vec<(&'static str, u64)>,
    /// Datagrams: (result, count).
    pub messages: Vec<(&'static str, u64)>,
}

/// One service.
#[derive(Clone, Debug)]
pub(crate) struct ServiceMetrics {
    /// Name.
    pub name: String,
    /// Counters.
    pub counters: Counters,
    /// Backends.
    pub backends: Vec<BackendMetrics>,
}

/// One backend.
#[derive(Clone, Debug)]
pub(crate) struct BackendMetrics {
    /// Address and port.
    pub address: String,
    /// Counters.
    pub counters: Counters,
    /// State.
    pub state: State,
    /// Weight in the published table.
    pub weight: u32,
    /// Flows whose client sent a packet in the last activity epoch (about 8.6 s).
    pub active_flows: u64,
    /// Connections in the flow tables, by state.
    pub connections: crate::report::Connections,
    /// Duration of the last health check, in seconds.
    pub check_seconds: Option<f64>,
    /// Times the data plane marked it suspect (passive health).
    pub passive_marks: u64,
}

/// The handshake guard (see the README's SYN flood section).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GuardMetrics {
    /// Whether SYNs are placed by hash now.
    pub hashing: bool,
    /// New TCP flows per window before it hashes (0: never).
    pub budget: u64,
    /// New TCP flows in the current window.
    pub window_flows: u64,
}

/// Reloads of the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReloadMetrics {
    /// Reloads applied.
    pub succeeded: u64,
    /// Reloads refused (the file or the change was invalid; nothing changed).
    pub failed: u64,
    /// Whether the last reload succeeded (true before any).
    pub last_succeeded: bool,
    /// When the configuration in force was loaded (seconds since the Unix epoch).
    pub last_success_unix: f64,
}

/// The snapshot shared between the monitor and the endpoint.
pub(crate) type Shared = Arc<Mutex<Snapshot>>;

/// The registry with xlb's collector.
pub(crate) fn registry(shared: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(families::XlbCollector(shared)));
    registry
}

/// Encodes the metrics in `format`.
pub(crate) fn render(registry: &Registry, format: Format) -> Result<String> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    Ok(match format {
        Format::OpenMetrics => text,
        Format::Classic => format::classic_from_openmetrics(&text),
    })
}

#[cfg(test)]
mod tests;
