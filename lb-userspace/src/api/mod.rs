//! The control API. The daemon serves it on a Unix socket (`server`: owner-only, and it refuses
//! peers that are neither root nor the daemon's user); every CLI subcommand except `run` and
//! `check` speaks it (`client`). One JSON request per connection, one JSON response back, each
//! on one line. This module holds the messages.

pub mod client;
pub mod server;

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::report::{
    FlowsReport, SimulationReport, StatsReport, StatusReport, TraceEventReport, TraceSummary,
};

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
