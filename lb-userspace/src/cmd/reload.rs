//! `xlb reload`: re-read the configuration file and apply the difference.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Response;
use crate::{config::ConfigErrors, dataplane::Dataplane, monitor::Monitor};

/// Re-read the configuration file (like SIGHUP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Reload {}

impl Reload {
    /// Reloads; says what changed, or why nothing did.
    pub fn answer(self, monitor: &mut Monitor, dataplane: &mut Dataplane) -> Result<Response> {
        match monitor.reload(dataplane) {
            Ok(done) => Ok(Response::Done(done)),
            Err(error) => match error.downcast_ref::<ConfigErrors>() {
                Some(errors) => Ok(Response::Invalid(errors.clone())),
                None => Err(error),
            },
        }
    }
}
