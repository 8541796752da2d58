//! `xlb stats`: counters since the program was loaded.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Response;
use crate::{dataplane::Dataplane, monitor::Monitor};

/// Counters of every service and backend, and data-plane events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Only this service (the events and flow tables are the data plane's, shown whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Stats {
    /// The monitor's counters report.
    pub fn answer(self, monitor: &Monitor, dataplane: &Dataplane) -> Result<Response> {
        monitor
            .stats(self.service.as_deref(), &dataplane.maps)
            .map(Response::Stats)
    }
}
