//! The monitor's core state: the config in force, every backend's status, and the balancer
//! (what the data plane holds). The monitor's owners read it through this API and change the
//! statuses through it; only the monitor replaces the config (a reload) or applies a plan.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow};
use tokio::time::Instant;

use crate::{
    config::{Config, HealthCheck, ServiceConfig},
    control::{BackendState, Balancer, ServiceState},
    health::state::{BackendStatus, Health},
};

/// Where a backend is: indexes into the config's services and their backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendRef {
    /// Index of the service in the config.
    pub service: usize,
    /// Index of the backend in the service.
    pub backend: usize,
    /// The checkers' generation when the reference was made: references from before a reload
    /// (whose indexes meant other backends) are ignored.
    pub generation: u64,
}

/// The config, the backends' statuses and the balancer.
pub struct Core {
    config: Config,
    /// The config file, re-read on reload.
    config_path: Option<PathBuf>,
    /// Every backend's status, per service, in config order.
    statuses: Vec<Vec<BackendStatus>>,
    balancer: Balancer,
}

impl Core {
    /// The core for `config` (read from `config_path`): every backend not checked yet, nothing
    /// applied.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Self {
        let statuses = config.services.iter().map(fresh_statuses).collect();
        Self {
            config,
            config_path,
            statuses,
            balancer: Balancer::new(),
        }
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The config file reloads read, if there is one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Every backend's status, per service, in config order.
    pub fn statuses(&self) -> &[Vec<BackendStatus>] {
        &self.statuses
    }

    /// The config and the statuses, these to change.
    pub fn statuses_mut(&mut self) -> (&Config, &mut [Vec<BackendStatus>]) {
        (&self.config, &mut self.statuses)
    }

    /// The status of the backend at `at`.
    pub fn status_mut(&mut self, at: BackendRef) -> &mut BackendStatus {
        &mut self.statuses[at.service][at.backend]
    }

    /// The balancer: the services and backends as applied, with their ids.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The balancer, to adopt pinned maps or apply a plan.
    pub fn balancer_mut(&mut self) -> &mut Balancer {
        &mut self.balancer
    }

    /// After the balancer adopted an earlier daemon's maps: the backends of the config that
    /// those maps hold may have flows (so a Down state at the first check purges them).
    pub(super) fn mark_adopted(&mut self) {
        let held: Vec<(SocketAddr, crate::config::Protocol, SocketAddr)> = self
            .balancer
            .services()
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.listen, s.protocol, b.address)))
            .collect();
        for (service, statuses) in self.config.services.iter().zip(&mut self.statuses) {
            for (backend, status) in service.backends.iter().zip(statuses.iter_mut()) {
                status.may_have_flows |=
                    held.contains(&(service.listen, service.protocol, backend.address));
            }
        }
    }

    /// Replaces the statuses with a plan's.
    pub fn set_statuses(&mut self, statuses: Vec<Vec<BackendStatus>>) {
        self.statuses = statuses;
    }

    /// Puts a reloaded config in force, with the statuses carried over to it.
    pub fn replace(&mut self, config: Config, statuses: Vec<Vec<BackendStatus>>) {
        self.config = config;
        self.statuses = statuses;
    }

    /// The index of the service named `name`; an unknown name is an error listing the names.
    pub fn service_index(&self, name: &str) -> Result<usize> {
        let services = &self.config.services;
        services.iter().position(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            anyhow!("no service named {name:?} (services: {})", names.join(", "))
        })
    }

    /// The address of the backend at `at`.
    pub fn address(&self, at: BackendRef) -> SocketAddr {
        self.config.services[at.service].backends[at.backend].address
    }

    /// What the data plane has of service `index` of the config, if it has it. Found by its
    /// listen address and protocol: the balancer's record follows the config only once an
    /// apply succeeds.
    pub fn applied(&self, index: usize) -> Option<&ServiceState> {
        let service = self.config.services.get(index)?;
        let same = |s: &&ServiceState| s.listen == service.listen && s.protocol == service.protocol;
        let applied = self.balancer.services();
        applied
            .get(index)
            .filter(same)
            .or_else(|| applied.iter().find(same))
    }

    /// What the data plane has of backend `backend` of service `service`, if it has it.
    pub fn applied_backend(&self, service: usize, backend: usize) -> Option<&BackendState> {
        let configured = self.config.services.get(service)?.backends.get(backend)?;
        let pool = configured.pool as u32;
        let same = |b: &&BackendState| b.address == configured.address && b.pool == pool;
        let backends = &self.applied(service)?.backends;
        backends
            .get(backend)
            .filter(same)
            .or_else(|| backends.iter().find(same))
    }

    /// The data plane's id of backend `backend` of service `service`, once applied.
    pub fn backend_id(&self, service: usize, backend: usize) -> Option<u32> {
        Some(self.applied_backend(service, backend)?.id)
    }

    /// Where the backend with data-plane id `id` is in the config, if it is there.
    pub fn backend_of_id(&self, id: u32, generation: u64) -> Option<BackendRef> {
        (0..self.config.services.len()).find_map(|service| {
            let count = self.config.services[service].backends.len();
            let backend = (0..count).find(|&b| self.backend_id(service, b) == Some(id))?;
            Some(BackendRef {
                service,
                backend,
                generation,
            })
        })
    }

    /// The serving pools of every service as last published (empty for a service not
    /// published yet), in config order.
    pub fn serving_before(&self) -> Vec<Vec<u32>> {
        (0..self.config.services.len())
            .map(|i| {
                self.applied(i)
                    .map(|s| s.locality.serving.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Whether a backend is in its slow start (its weight must be recomputed as time passes).
    pub fn any_ramping(&self, now: Instant) -> bool {
        self.config
            .services
            .iter()
            .zip(&self.statuses)
            .any(|(service, statuses)| {
                statuses
                    .iter()
                    .any(|s| s.health.is_up() && s.ramping(service.health.slowstart, now))
            })
    }

    /// One line on what the daemon balances, for `systemctl status`.
    pub fn summary(&self) -> String {
        format!(
            "balancing {} ({}) on {}",
            count(self.config.services.len(), "service"),
            count(self.config.backend_count(), "backend"),
            self.config.interfaces.join(", ")
        )
    }
}

/// `n` and the noun, plural unless `n` is 1 ("1 backend", "2 backends").
pub(super) fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// The statuses of a service's backends before any check.
pub(super) fn fresh_statuses(service: &ServiceConfig) -> Vec<BackendStatus> {
    let health = || match service.health.check {
        HealthCheck::None => Health::unchecked(),
        _ => Health::unknown(),
    };
    service
        .backends
        .iter()
        .map(|b| BackendStatus::new(b.weight, health()))
        .collect()
}
