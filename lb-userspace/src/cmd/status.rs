//! `xlb status [SERVICE]`: services and backends with their state and why.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Response;
use crate::{dataplane::Dataplane, monitor::Monitor};

/// Services and backends: every service, or the one named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Only this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Answer as a monitoring probe (Nagios/Icinga plugins): one line, and the exit code 0 if
    /// every backend can take new flows, 1 if a service has some that cannot, 2 if a service
    /// has none that can, 3 if the daemon does not answer. (Read by the client only.)
    #[arg(long)]
    #[serde(skip)]
    pub check: bool,
}

impl Status {
    /// The monitor's status report.
    pub fn answer(self, monitor: &Monitor, dataplane: &Dataplane) -> Result<Response> {
        let interfaces = dataplane
            .attachments()
            .iter()
            .map(|a| {
                let hook = a.hook.map_or("xdp (adopted)".to_owned(), |h| h.to_string());
                crate::report::InterfaceHook {
                    name: a.interface.clone(),
                    hook,
                }
            })
            .collect();
        monitor
            .status(self.service.as_deref(), interfaces, &dataplane.maps)
            .map(Response::Status)
    }
}
