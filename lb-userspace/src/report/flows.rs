//! `xlb flows`: the flows in the flow tables, as operators read them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Flows, as `xlb flows` lists them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowsReport {
    /// The flows that matched, up to the limit, oldest first.
    pub flows: Vec<FlowReport>,
    /// How many matched in all.
    pub matched: usize,
}

/// One flow (both of its directions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowReport {
    /// Service name.
    pub service: String,
    /// "tcp" or "udp".
    pub protocol: String,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The VIP and port it connected to.
    pub vip: SocketAddr,
    /// The backend serving it.
    pub backend: SocketAddr,
    /// "half-open" (TCP handshake not completed), "established" or "closing" (FIN or RST
    /// seen).
    pub state: String,
    /// Seconds since it began, if known (entries made by older versions do not say).
    #[serde(serialize_with = "super::seconds::maybe_millis")]
    pub age_seconds: Option<f64>,
    /// Seconds since its last packet (at most a second stale: times are refreshed once a
    /// second).
    #[serde(serialize_with = "super::seconds::millis")]
    pub idle_seconds: f64,
}
