//! `xlb trace`: the data plane's decisions, one event each, and how the trace went.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One decision of the data plane, as `xlb trace` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEventReport {
    /// Seconds since the trace began.
    pub seconds: f64,
    /// The service.
    pub service: String,
    /// "tcp" or "udp" (the flow's, also for an ICMP error quoting it).
    pub protocol: String,
    /// The flow's client.
    pub client: SocketAddr,
    /// "new_round_robin", "new_hashed", "no_backend", "established" or "icmp_translated".
    pub decision: String,
    /// "to_backend" (the client's packet) or "to_client" (the backend's).
    pub direction: String,
    /// The backend, if one serves the flow.
    pub backend: Option<SocketAddr>,
    /// For a new flow: the table slot its backend was taken from.
    pub slot: Option<u32>,
    /// For a new flow of a service with pools: the client's home pool...
    pub home_pool: Option<String>,
    /// ...and its backend's (another one: a spill).
    pub backend_pool: Option<String>,
    /// The packet's TCP flags ("SYN", "ACK", "FIN|ACK" ...), empty for UDP.
    pub tcp_flags: String,
    /// The flow's handshake has not completed.
    pub half_open: bool,
    /// Slots of suspect backends a new flow passed over (passive health).
    #[serde(default)]
    pub skipped_suspects: u8,
}

/// How a trace went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// How long it ran.
    pub seconds: f64,
    /// Packets that matched the filter.
    pub matched: u64,
    /// Events received (one in `sample` of the matched ones).
    pub recorded: u64,
    /// Events lost because the ring buffer was full.
    pub lost: u64,
    /// One matching packet in this many was recorded.
    pub sample: u32,
}

/// What a running trace sends: its events as they come, then how it went, or why it failed.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every update is an event: boxing would allocate once per event"
)]
pub enum TraceUpdate {
    /// One decision.
    Event(TraceEventReport),
    /// The trace ended.
    End(TraceSummary),
    /// The trace failed.
    Failed(String),
}
