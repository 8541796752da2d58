//! The control API. The daemon serves it on a Unix socket (`server`: owner-only, and it refuses
//! peers that are neither root nor the daemon's user); every CLI subcommand except `run` and
//! `check` speaks it (`client`). One JSON request per connection, one JSON response back, each
//! on one line. This module holds the messages.

pub mod client;
pub mod server;

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::health::state::Operator;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// How long a client may take to send its request, and the CLI to wait for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services and backends with their state, weights, load and rates: every service, or
    /// the one named. (Variants without fields are written `{}` so that unknown fields are
    /// refused for them too.)
    Status {
        /// Only this service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// Counters since the program was loaded.
    Stats {},
    /// An operator's change to one backend, kept (across reloads and restarts) until
    /// `enable`.
    Backend {
        /// Service name.
        service: String,
        /// Backend address and port.
        backend: SocketAddr,
        /// What to do.
        action: AdminAction,
    },
    /// Re-read the config file and apply the difference.
    Reload {},
    /// Which backend a new flow from `client` to `service` would get now.
    Simulate {
        /// Service name.
        service: String,
        /// Client address and port.
        client: SocketAddr,
    },
    /// The flows in the flow tables, filtered, like `ipvsadm -Lnc`.
    Flows {
        /// Only this service's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// Only those served by this backend.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<SocketAddr>,
        /// Only those of clients in this prefix (an address is a host prefix).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// At most this many (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// What the data plane decides for a service's packets, for a while: answered by a stream
    /// of `trace_event`s and a final `trace_end`.
    Trace {
        /// The service.
        service: String,
        /// Only packets of flows whose client is in this prefix (an address is a host
        /// prefix); it must be of the service's family.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// For how long (default 10, at most 3600).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        /// Record one matching packet in this many (default 1: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<u32>,
    },
}

/// An operator's change to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// No new flows; established flows continue.
    Drain,
    /// Administratively Down: out of the table, flows purged.
    Disable,
    /// Clear what an operator set (drain, disable, weight).
    Enable,
    /// Replace the configured weight (0..=256).
    Weight(u32),
}

/// Who sent a request: for the record of operators' changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Answer to `status`.
    Status(StatusReport),
    /// Answer to `stats`.
    Stats(StatsReport),
    /// Answer to `simulate`.
    Simulation(SimulationReport),
    /// Answer to `flows`.
    Flows(FlowsReport),
    /// One decision of a trace (a stream of these answers `trace`).
    TraceEvent(TraceEventReport),
    /// The end of a trace, with its counts.
    TraceEnd(TraceSummary),
    /// A change was made; what it was.
    Done(String),
    /// The request failed; why.
    Error(String),
}

/// All services (or the one asked for), and the daemon.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version and commit, as `xlb --version` prints them.
    #[serde(default)]
    pub version: String,
    /// The interfaces and the hook the program runs at on each.
    #[serde(default)]
    pub interfaces: Vec<(String, String)>,
    /// Services in config order.
    pub services: Vec<ServiceStatus>,
    /// Route health injection, if any service announces its VIP.
    #[serde(default)]
    pub announce: Option<AnnounceReport>,
}

/// Route health injection: the device, the BGP daemon, each VIP's announcement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceReport {
    /// The TUN device whose addresses are the announced VIPs.
    pub device: String,
    /// "BIRD 2.0.12 at /run/bird/bird.ctl", or why no BIRD answers there.
    pub bird: String,
    /// Whether a BIRD answered at the last probe.
    pub bird_reachable: bool,
    /// Each announced VIP, in address order.
    pub vips: Vec<VipReport>,
}

/// One VIP's announcement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipReport {
    /// The address.
    pub vip: std::net::IpAddr,
    /// Whether it is on the device (so exported by BIRD) now.
    pub announced: bool,
    /// Why.
    pub reason: String,
    /// Seconds since the last change, as of the report.
    pub since_seconds: f64,
    /// Times it was announced and withdrawn since xlb started.
    pub announcements: u64,
    /// Times it was withdrawn.
    pub withdrawals: u64,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP and port.
    pub listen: SocketAddr,
    /// "tcp" or "udp".
    pub protocol: String,
    /// Packets per second, both directions, over the last second.
    pub packets_per_second: f64,
    /// Bits per second, both directions, over the last second.
    pub bits_per_second: f64,
    /// Backends in config order.
    pub backends: Vec<BackendStatusReport>,
    /// Locality pools (empty for a service without `[[service.pool]]`s).
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
}

/// One locality pool of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Its backends that have room for new flows (Up), and all of them.
    pub up: usize,
    /// Its backends.
    pub backends: usize,
    /// The pool that takes its clients' new flows now: itself, or a fallback.
    pub serving: String,
    /// New flows of its clients placed in other pools so far, by pool.
    pub spilled: Vec<(String, u64)>,
}

/// One backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatusReport {
    /// Address and port.
    pub address: SocketAddr,
    /// Up, Overloaded, Draining or Down.
    pub state: String,
    /// Why.
    pub reason: String,
    /// Seconds in this state.
    pub since_seconds: f64,
    /// Weight in the config.
    pub weight: u32,
    /// Weight in the published table (in hundredths of the configured weight unit).
    pub effective_weight: u32,
    /// The agent's last weight, if it has an agent.
    pub agent_weight_percent: Option<u32>,
    /// Flows with a packet in the last 10 seconds.
    pub active_flows: u64,
    /// Packets per second, both directions, over the last second.
    pub packets_per_second: f64,
    /// Bits per second, both directions, over the last second.
    pub bits_per_second: f64,
    /// What an operator set, who and when, if anything.
    #[serde(default)]
    pub operator: Option<Operator>,
    /// Why the data plane marked it suspect, while a check has not decided (passive health).
    #[serde(default)]
    pub suspect: Option<String>,
    /// Times the data plane marked it suspect since the daemon started.
    #[serde(default)]
    pub passive_marks: u64,
}

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
    pub age_seconds: Option<f64>,
    /// Seconds since its last packet (at most a second stale: times are refreshed once a
    /// second).
    pub idle_seconds: f64,
}

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

/// Counters since the program was loaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Services in config order.
    pub services: Vec<ServiceStats>,
    /// Data-plane events, by name.
    pub events: Vec<(String, u64)>,
    /// The flow tables: active flows against their size.
    pub flow_table: FlowTableStats,
}

/// The flow tables: their live flows against their size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableStats {
    /// Flows of IPv4 services whose client sent a packet in the last activity epoch (about
    /// 8.6 s), or so far in the one under way if that is more.
    pub active_ipv4: u64,
    /// The same for IPv6 services.
    pub active_ipv6: u64,
    /// Flows the IPv4 established table holds (`flow_table_size`); when full, the least
    /// recently used are evicted.
    pub capacity: u64,
    /// The same for IPv6 (`flow_table_size_ipv6`).
    #[serde(default)]
    pub capacity_ipv6: u64,
    /// Flows the IPv4 half-open table holds; when full, the least recently used are evicted.
    pub half_open_capacity: u64,
    /// Flows a packet found silent past their timeout (deleted, and the packet handled as a new
    /// flow's), as the data plane counted them.
    pub expired: u64,
    /// New TCP flows per 100 ms window above which SYNs are placed by hash, not round robin
    /// (the handshake guard; see the README). Absent from older daemons' answers.
    #[serde(default)]
    pub handshake_budget: u64,
    /// Whether the handshake guard is placing SYNs by hash now (a SYN flood).
    #[serde(default)]
    pub handshake_guard_on: bool,
}

/// Counters of one service and its backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Name.
    pub name: String,
    /// The service's counters.
    pub counters: Counters,
    /// Each backend's counters.
    pub backends: Vec<(SocketAddr, Counters)>,
}

/// Traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets client to backend.
    pub packets_to_backend: u64,
    /// Bytes client to backend.
    pub bytes_to_backend: u64,
    /// Packets backend to client.
    pub packets_to_client: u64,
    /// Bytes backend to client.
    pub bytes_to_client: u64,
    /// Flows created.
    pub new_flows: u64,
    /// New flows dropped for want of a backend.
    pub no_backend: u64,
    /// Handshakes refused: a RST answering the client's SYN (passive health).
    #[serde(default)]
    pub refused: u64,
    /// Handshakes left unanswered until the client retransmitted its SYN, then re-placed.
    #[serde(default)]
    pub unanswered: u64,
    /// New flows dropped by the per-prefix admission limit (services).
    #[serde(default)]
    pub admission_dropped: u64,
}

impl From<lb_common::TrafficCounters> for Counters {
    fn from(c: lb_common::TrafficCounters) -> Self {
        Self {
            packets_to_backend: c.fwd_packets,
            bytes_to_backend: c.fwd_bytes,
            packets_to_client: c.rev_packets,
            bytes_to_client: c.rev_bytes,
            new_flows: c.new_flows,
            no_backend: c.no_backend,
            refused: c.refused,
            unanswered: c.unanswered,
            admission_dropped: c.admission_dropped,
        }
    }
}

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

/// What the daemon answers a request with: one response, or (`trace`) a stream of them that
/// ends when the sender is dropped.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one reply per request, moved once: boxing would only add an allocation"
)]
pub enum Reply {
    /// One response.
    Once(Response),
    /// Responses as they come.
    Stream(mpsc::Receiver<Response>),
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Self::Once(response)
    }
}

/// A request, who sent it, and the channel its answer goes back on.
pub type Call = (Request, Caller, oneshot::Sender<Reply>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        assert_eq!(
            serde_json::to_string(&Request::Status { service: None }).unwrap(),
            r#"{"command":"status"}"#
        );
        let drain: Request = serde_json::from_str(
            r#"{"command":"backend","service":"web","backend":"198.18.1.11:8080","action":"drain"}"#,
        )
        .unwrap();
        assert_eq!(
            drain,
            Request::Backend {
                service: "web".into(),
                backend: "198.18.1.11:8080".parse().unwrap(),
                action: AdminAction::Drain
            }
        );
        let weight: Request = serde_json::from_str(
            r#"{"command":"backend","service":"web","backend":"[fd00::1]:80","action":{"weight":7}}"#,
        )
        .unwrap();
        assert!(matches!(
            weight,
            Request::Backend {
                action: AdminAction::Weight(7),
                ..
            }
        ));
        let flows: Request =
            serde_json::from_str(r#"{"command":"flows","client":"198.18.0.0/24"}"#).unwrap();
        assert_eq!(
            flows,
            Request::Flows {
                service: None,
                backend: None,
                client: Some("198.18.0.0/24".into()),
                limit: None
            }
        );
        for bad in [
            r#"{"command":"frobnicate"}"#,
            r#"{"command":"backend","service":"web","backend":"198.18.1.1:80","action":{"weight":-1}}"#,
            r#"{"command":"backend","service":"web"}"#,
            r#"{"command":"status","extra":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
