//! `xlb stats`: counters since the program was loaded or an operator zeroed them; `xlb stats
//! --zero` zeroes them.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Caller, Response};
use crate::{dataplane::Dataplane, monitor::Monitor};

/// Counters of every service and backend, and data-plane events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Only this service (the events and flow tables are the data plane's, shown whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Show every counter, then zero them: `xlb stats` counts from now on (the metrics
    /// endpoint's counters keep counting, as Prometheus counters must).
    #[arg(long, conflicts_with = "service")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zero: bool,
}

impl Stats {
    /// The monitor's counters report (zeroed after it is read, with `zero`, as `caller`'s).
    pub fn answer(
        self,
        caller: &Caller,
        monitor: &mut Monitor,
        dataplane: &Dataplane,
    ) -> Result<Response> {
        if self.zero {
            if self.service.is_some() {
                anyhow::bail!("--zero zeroes every counter: it takes no service");
            }
            return monitor
                .zero_counters(&dataplane.maps, &caller.0)
                .map(Response::Stats);
        }
        monitor
            .stats(self.service.as_deref(), &dataplane.maps)
            .map(Response::Stats)
    }
}
