//! `xlb simulate`: which backend a new flow would get now.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a simulated new flow got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulationReport {
    /// Service name.
    pub service: String,
    /// Client address and port.
    pub client: SocketAddr,
    /// The program's verdict.
    pub verdict: String,
    /// The backend the packet was sent to, if any.
    pub backend: Option<SocketAddr>,
    /// Whether the client already had a flow (which the packet followed).
    pub existing_flow: bool,
    /// The client's home pool, for a service with pools.
    #[serde(default)]
    pub home_pool: Option<String>,
    /// The pool of the backend the packet went to, for a service with pools.
    #[serde(default)]
    pub backend_pool: Option<String>,
}
