//! `xlb trace SERVICE`: what the data plane decides for a service's packets, as they pass;
//! answered by a stream of `trace_event`s and a final `trace_end`.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Reply, Response, flows::client_prefix, in_range};
use crate::{
    monitor::{Monitor, TraceRequest},
    report::TraceUpdate,
};

/// How long a trace runs unless told, in seconds.
pub(crate) const DEFAULT_SECONDS: u64 = 10;
/// The longest trace, in seconds.
pub(crate) const MAX_SECONDS: u64 = 3600;
/// The sparsest sampling: one matching packet in this many.
pub(crate) const MAX_SAMPLE: u32 = 1_000_000;

/// A service's packets, for a while, filtered and sampled in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// The service's name.
    pub service: String,
    /// Only flows of clients in this prefix (or this address), of the service's family.
    #[arg(long, value_name = "PREFIX", value_parser = client_prefix)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// For how long.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    #[serde(default = "default_seconds")]
    pub seconds: u64,
    /// Record one matching packet in N.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SAMPLE)))]
    #[serde(default = "default_sample")]
    pub sample: u32,
}

fn default_seconds() -> u64 {
    DEFAULT_SECONDS
}

fn default_sample() -> u32 {
    1
}

impl Trace {
    /// Checks the duration's and the sampling's bounds.
    pub fn check(&self) -> Result<(), String> {
        in_range("seconds", self.seconds, 1..=MAX_SECONDS)?;
        in_range("sample", self.sample, 1..=MAX_SAMPLE)
            .map_err(|error| format!("{error} (1: every packet)"))
    }

    /// Starts the trace and streams its events as responses.
    pub fn answer(self, monitor: &mut Monitor) -> Reply {
        let request = TraceRequest {
            service: self.service,
            client: self.client,
            seconds: self.seconds,
            sample: self.sample,
        };
        let mut updates = match monitor.trace(&request) {
            Ok(updates) => updates,
            Err(error) => return Response::Error(format!("{error:#}")).into(),
        };
        let (responses, stream) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                let response = match update {
                    TraceUpdate::Event(event) => Response::TraceEvent(event),
                    TraceUpdate::End(summary) => Response::TraceEnd(summary),
                    TraceUpdate::Failed(error) => Response::Error(error),
                };
                if responses.send(response).await.is_err() {
                    // The operator left: dropping `updates` ends the trace.
                    return;
                }
            }
        });
        Reply::Stream(stream)
    }
}
