//! `xlb backend drain|disable|enable|weight|pause-checks|resume-checks SERVICE BACKEND
//! [WEIGHT]`: an operator's setting on one backend, kept across reloads and restarts until
//! `enable`; `xlb backend reset SERVICE BACKEND [--client C]`, which ends its connections; and
//! `xlb backend add|remove SERVICE BACKEND`, which change the configuration file and reload it.
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
    config::{NewBackend, add_backend, remove_backend},
    dataplane::Dataplane,
    monitor::{Change as MonitorChange, Monitor, targets::EVERY_SERVICE},
};

pub(crate) use crate::monitor::targets::BackendAddress;

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
    /// Clear what an operator set (drain, disable, weight, paused checks): back to the config
    /// and the checks.
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
    /// Stop the backend's health checks: it keeps the verdict they gave last (Up stays Up,
    /// Down stays Down) until `resume-checks` or `enable`; a passive mark lasts its hold.
    PauseChecks(Target),
    /// Run the backend's health checks again: their results decide its health.
    ResumeChecks(Target),
    /// End the backend's connections without taking it out (or one client's, with
    /// `--client`): each TCP connection's next packet, either way, leaves as a RST; its UDP
    /// flows are forgotten. It keeps taking new flows.
    Reset {
        /// Which backend.
        #[command(flatten)]
        target: Target,
        /// Only this client's (an address, or an address and port: one connection).
        #[arg(long)]
        client: Option<BackendAddress>,
    },
    /// Add a backend to the configuration file, then reload it (the file is changed only if
    /// the reload is applied).
    Add {
        /// Which backend.
        #[command(flatten)]
        target: Target,
        /// Its weight (default: the configuration's default, 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WEIGHT)))]
        weight: Option<u32>,
        /// Its pool, for a service with pools.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Remove a backend from the configuration file, then reload it: it drains (its
    /// connections continue until they end or the service's `drain_timeout`).
    Remove(Target),
}

/// Which backend.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Target {
    /// The service's name (except for add and remove, `*`: every service).
    pub service: String,
    /// The backend's address and port (except for add and remove, the address alone: every
    /// backend on that host).
    pub backend: BackendAddress,
}

impl Target {
    /// The one backend a change of the file names: an address with its port, in a service.
    fn one(&self) -> Result<SocketAddr> {
        match self.backend {
            BackendAddress::One(address) if self.service != EVERY_SERVICE => Ok(address),
            _ => anyhow::bail!(
                "add and remove name one backend of one service: its address with its port, \
                 like `web 198.18.1.11:8080`"
            ),
        }
    }
}

impl Backend {
    /// Checks the weight's bounds.
    pub fn check(&self) -> Result<(), String> {
        match self.change {
            Change::Weight { weight, .. }
            | Change::Add {
                weight: Some(weight),
                ..
            } => in_range("weight", weight, 0..=MAX_WEIGHT),
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
        let mut set = |target: Target, change: MonitorChange| {
            monitor.change_backend(
                &mut dataplane.maps,
                &target.service,
                target.backend,
                change,
                &caller.0,
            )
        };
        let done = match self.change {
            Change::Drain(target) => set(target, MonitorChange::Drain),
            Change::Disable(target) => set(target, MonitorChange::Disable),
            Change::Enable(target) => set(target, MonitorChange::Enable),
            Change::Weight { target, weight } => set(target, MonitorChange::Weight(weight)),
            Change::PauseChecks(target) => set(target, MonitorChange::PauseChecks),
            Change::ResumeChecks(target) => set(target, MonitorChange::ResumeChecks),
            Change::Reset { target, client } => monitor.reset_connections(
                &mut dataplane.maps,
                &target.service,
                target.backend,
                client,
            ),
            Change::Add {
                target,
                weight,
                pool,
            } => {
                let backend = NewBackend {
                    address: target.one()?,
                    weight,
                    pool,
                };
                monitor.edit_config(dataplane, |text| {
                    add_backend(text, &target.service, &backend)
                })
            }
            Change::Remove(target) => {
                let address = target.one()?;
                monitor.edit_config(dataplane, |text| {
                    remove_backend(text, &target.service, address)
                })
            }
        };
        done.map(Response::Done)
    }
}

/// The request as it travels.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    /// Service name.
    service: String,
    /// Backend address and port, or its host alone.
    backend: BackendAddress,
    /// What to do.
    action: Action,
}

/// What to do, as it travels.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Drain,
    Disable,
    Enable,
    Weight(u32),
    PauseChecks,
    ResumeChecks,
    Reset {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<BackendAddress>,
    },
    Add {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    Remove,
}

impl From<Backend> for Wire {
    fn from(backend: Backend) -> Self {
        let (target, action) = match backend.change {
            Change::Drain(target) => (target, Action::Drain),
            Change::Disable(target) => (target, Action::Disable),
            Change::Enable(target) => (target, Action::Enable),
            Change::Weight { target, weight } => (target, Action::Weight(weight)),
            Change::PauseChecks(target) => (target, Action::PauseChecks),
            Change::ResumeChecks(target) => (target, Action::ResumeChecks),
            Change::Reset { target, client } => (target, Action::Reset { client }),
            Change::Add {
                target,
                weight,
                pool,
            } => (target, Action::Add { weight, pool }),
            Change::Remove(target) => (target, Action::Remove),
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
            Action::PauseChecks => Change::PauseChecks(target),
            Action::ResumeChecks => Change::ResumeChecks(target),
            Action::Reset { client } => Change::Reset { target, client },
            Action::Add { weight, pool } => Change::Add {
                target,
                weight,
                pool,
            },
            Action::Remove => Change::Remove(target),
        };
        Self { change }
    }
}
