//! `xlb backend drain|disable|enable|weight SERVICE BACKEND [WEIGHT]`: an operator's setting
//! on one backend, kept across reloads and restarts until `enable`.
//!
//! On the command line the change comes first (`xlb backend weight web 198.18.1.11:8080 50`);
//! on the wire it is one flat object (`{"command":"backend","service":"web","backend":
//! "198.18.1.11:8080","action":{"weight":50}}`), which [`Wire`] converts from and to.

use std::net::SocketAddr;

use anyhow::Result;
use lb_common::consts::limits::MAX_WEIGHT;
use serde::{Deserialize, Serialize};

use super::{Caller, Response, in_range};
use crate::{
    dataplane::Dataplane,
    monitor::{Change as MonitorChange, Monitor},
};

/// One backend, and what to do to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(into = "Wire", from = "Wire")]
pub struct Backend {
    /// What to do.
    #[command(subcommand)]
    pub change: Change,
}

/// An operator's change to a backend.
#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum Change {
    /// No new flows; established flows continue.
    Drain(Target),
    /// Out of the table at once; its flows are purged.
    Disable(Target),
    /// Clear what an operator set (drain, disable, weight): back to the config and checks.
    Enable(Target),
    /// Replace the configured weight (0 to 256; 0 drains).
    Weight {
        /// Which backend.
        #[command(flatten)]
        target: Target,
        /// The new weight.
        #[arg(value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WEIGHT)))]
        weight: u32,
    },
}

/// Which backend.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Target {
    /// The service's name.
    pub service: String,
    /// The backend's address and port.
    pub backend: SocketAddr,
}

impl Backend {
    /// Checks the weight's bounds.
    pub fn check(&self) -> Result<(), String> {
        match self.change {
            Change::Weight { weight, .. } => in_range("weight", weight, 0..=MAX_WEIGHT),
            _ => Ok(()),
        }
    }

    /// Makes the change, recorded as `caller`'s.
    pub fn answer(
        self,
        caller: &Caller,
        monitor: &mut Monitor,
        dataplane: &mut Dataplane,
    ) -> Result<Response> {
        let (target, change) = self.change.into_parts();
        monitor
            .change_backend(
                &mut dataplane.maps,
                &target.service,
                target.backend,
                change,
                &caller.0,
            )
            .map(Response::Done)
    }
}

impl Change {
    fn into_parts(self) -> (Target, MonitorChange) {
        match self {
            Self::Drain(target) => (target, MonitorChange::Drain),
            Self::Disable(target) => (target, MonitorChange::Disable),
            Self::Enable(target) => (target, MonitorChange::Enable),
            Self::Weight { target, weight } => (target, MonitorChange::Weight(weight)),
        }
    }
}

/// The request as it travels.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    /// Service name.
    service: String,
    /// Backend address and port.
    backend: SocketAddr,
    /// What to do.
    action: Action,
}

/// What to do, as it travels.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Drain,
    Disable,
    Enable,
    Weight(u32),
}

impl From<Backend> for Wire {
    fn from(backend: Backend) -> Self {
        let (target, change) = backend.change.into_parts();
        let action = match change {
            MonitorChange::Drain => Action::Drain,
            MonitorChange::Disable => Action::Disable,
            MonitorChange::Enable => Action::Enable,
            MonitorChange::Weight(weight) => Action::Weight(weight),
        };
        Self {
            service: target.service,
            backend: target.backend,
            action,
        }
    }
}

impl From<Wire> for Backend {
    fn from(wire: Wire) -> Self {
        let target = Target {
            service: wire.service,
            backend: wire.backend,
        };
        let change = match wire.action {
            Action::Drain => Change::Drain(target),
            Action::Disable => Change::Disable(target),
            Action::Enable => Change::Enable(target),
            Action::Weight(weight) => Change::Weight { target, weight },
        };
        Self { change }
    }
}
