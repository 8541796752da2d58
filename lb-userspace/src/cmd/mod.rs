//! The commands operators send the daemon (`xlb status`, `stats`, `flows`, `backend`,
//! `reload`, `simulate`, `trace`), one module each, as mini-redis keeps its `cmd/`: a command's
//! request is its clap arguments and its wire message at once, its bounds are declared once
//! (the parser's ranges and [`Request::check`], which the daemon runs on a request from the
//! socket, use the same constants), and its handler sits beside it, calling the monitor.
//!
//! Over the control API a request is one JSON object tagged with its command
//! (`{"command":"status"}`), and so is each [`Response`].

pub(crate) mod backend;
pub(crate) mod flows;
pub(crate) mod reload;
pub(crate) mod simulate;
pub(crate) mod stats;
pub(crate) mod status;
pub(crate) mod trace;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::ConfigErrors,
    dataplane::Dataplane,
    monitor::{Job, Monitor},
    report::{
        FlowsReport, SimulationReport, StatsReport, StatusReport, TraceEventReport, TraceSummary,
    },
};

/// What a client asks the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Services and backends: state and why, weights, operator settings, load, active flows,
    /// rates.
    Status(status::Status),
    /// Counters of every service and backend, and data-plane events.
    Stats(stats::Stats),
    /// The flows in the flow tables, oldest first (like `ipvsadm -Lnc`).
    Flows(flows::Flows),
    /// Change one backend: kept across reloads and restarts until `xlb backend enable`.
    Backend(backend::Backend),
    /// Re-read the configuration file and apply the difference (like SIGHUP); a file with
    /// errors changes nothing and the errors are printed.
    Reload(reload::Reload),
    /// Which backend would a new flow from CLIENT get now? (Runs a packet through the program.)
    Simulate(simulate::Simulate),
    /// What the data plane decides for a service's packets, as they pass (like `cilium
    /// monitor`): new flows with their backend and why, drops, established packets, ICMP
    /// errors translated. Filtered and sampled in the kernel.
    Trace(trace::Trace),
}

impl Request {
    /// Checks the request's values against the command's bounds (the command line's parser
    /// checks the same; a request from the socket may come from elsewhere).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Flows(flows) => flows.check(),
            Self::Backend(backend) => backend.check(),
            Self::Trace(trace) => trace.check(),
            Self::Status(_) | Self::Stats(_) | Self::Reload(_) | Self::Simulate(_) => Ok(()),
        }
    }

    /// Answers the request on the monitor's task, for `caller` (its bounds were checked).
    pub fn answer(
        self,
        caller: &Caller,
        monitor: &mut Monitor,
        dataplane: &mut Dataplane,
    ) -> Reply {
        let answer = match self {
            Self::Status(status) => status.answer(monitor, dataplane),
            Self::Stats(stats) => stats.answer(caller, monitor, dataplane),
            Self::Flows(flows) => flows.answer(monitor, dataplane),
            Self::Backend(backend) => backend.answer(caller, monitor, dataplane),
            Self::Reload(reload) => reload.answer(monitor, dataplane),
            Self::Simulate(simulate) => simulate.answer(monitor, dataplane),
            Self::Trace(trace) => return trace.answer(monitor),
        };
        Reply::Once(answer.unwrap_or_else(|error| Response::Error(format!("{error:#}"))))
    }
}

/// The monitor's job that answers `request` for `caller` and sends the reply back.
pub(crate) fn job(request: Request, caller: Caller, reply: oneshot::Sender<Reply>) -> Job {
    Box::new(move |monitor, dataplane| {
        let _ = reply.send(request.answer(&caller, monitor, dataplane));
    })
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
    /// A reload found errors in the file (every one, located, as `xlb check --json` gives
    /// them); nothing was changed.
    Invalid(ConfigErrors),
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

/// Checks that `value` is within `range`, naming the value: "seconds 0 is out of range: 1
/// to 3600".
fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{name} {value} is out of range: {} to {}",
            range.start(),
            range.end()
        ))
    }
}

#[cfg(test)]
mod tests;
