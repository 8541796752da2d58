//! `xlb reload`: re-read the configuration file and apply the difference.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Response;
use crate::{dataplane::Dataplane, monitor::Monitor};

/// Re-read the configuration file (like SIGHUP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Reload {}

impl Reload {
    /// Reloads; says what changed, or why nothing did.
    pub fn answer(self, monitor: &mut Monitor, dataplane: &mut Dataplane) -> Result<Response> {
        monitor.reload(dataplane).map(Response::Done)
    }
}
