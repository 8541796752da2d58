//! Operators' requests through the control API: answered here, one at a time, by the
//! monitor (status, stats, flows, backend drain/disable/weight/enable, simulate; reload in
//! `reload`). What operators set on backends is kept in the state file (`persist`).

use std::{net::SocketAddr, time::SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Monitor, checkers::Event, persist};
use crate::{
    api::{AdminAction, Caller, Reply, Request, Response},
    control::locality::home_pool,
    dataplane::{Dataplane, Maps, simulate::simulate},
    health::state::Admin,
    report::SimulationReport,
};

/// The largest weight (as in the config).
const MAX_WEIGHT: u32 = 256;

impl Monitor {
    /// Answers one API request.
    pub(super) fn answer(
        &mut self,
        request: Request,
        caller: &Caller,
        dataplane: &mut Dataplane,
        events: &mpsc::Sender<Event>,
    ) -> Reply {
        if let Request::Trace {
            service,
            client,
            seconds,
            sample,
        } = &request
        {
            return self
                .trace(service, client.as_deref(), *seconds, *sample)
                .unwrap_or_else(|error| Response::Error(format!("{error:#}")).into());
        }
        let result = match request {
            Request::Status { service } => self
                .status_report(service.as_deref(), dataplane)
                .map(Response::Status),
            Request::Stats {} => self.stats_report(&dataplane.maps).map(Response::Stats),
            Request::Flows {
                service,
                backend,
                client,
                limit,
            } => self
                .flows_report(
                    &dataplane.maps,
                    service.as_deref(),
                    backend,
                    client.as_deref(),
                    limit,
                )
                .map(Response::Flows),
            Request::Backend {
                service,
                backend,
                action,
            } => self
                .set_operator(&service, backend, action, caller, &mut dataplane.maps)
                .map(Response::Done),
            Request::Reload {} => self.reload_counted(dataplane, events).map(Response::Done),
            Request::Simulate { service, client } => self
                .simulate(dataplane, &service, client)
                .map(Response::Simulation),
            Request::Trace { .. } => unreachable!("answered above"),
        };
        Reply::Once(result.unwrap_or_else(|error| Response::Error(format!("{error:#}"))))
    }

    pub(super) fn service_index(&self, name: &str) -> Result<usize> {
        self.config
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                anyhow!("no service named {name:?} (services: {})", names.join(", "))
            })
    }

    /// Applies an operator's change to one backend, records who made it, and keeps it in the
    /// state file; if the file cannot be written, nothing changes.
    fn set_operator(
        &mut self,
        service: &str,
        backend: SocketAddr,
        action: AdminAction,
        caller: &Caller,
        maps: &mut Maps,
    ) -> Result<String> {
        let key = (service.to_owned(), backend);
        let known = self.service_index(service).is_ok_and(|s| {
            self.config.services[s]
                .backends
                .iter()
                .any(|b| b.address == backend)
        });
        // A setting on a backend that left the config can still be cleared.
        let forgotten = action == AdminAction::Enable && self.operators.contains_key(&key);
        if !known && !forgotten {
            let s = self.service_index(service)?;
            let addresses: Vec<String> = self.config.services[s]
                .backends
                .iter()
                .map(|b| b.address.to_string())
                .collect();
            bail!(
                "service {service:?} has no backend {backend} (backends: {})",
                addresses.join(", ")
            );
        }
        let mut operators = self.operators.clone();
        let mut setting = operators.get(&key).cloned().unwrap_or_default();
        let verb = match action {
            AdminAction::Drain => {
                setting.admin = Some(Admin::Drain);
                "drained: no new flows, established flows continue".to_owned()
            }
            AdminAction::Disable => {
                setting.admin = Some(Admin::Disable);
                "disabled: out of the table, its flows purged".to_owned()
            }
            AdminAction::Weight(weight) => {
                if weight > MAX_WEIGHT {
                    bail!(
                        "weight {weight} is out of range: 0 to {MAX_WEIGHT}; nothing was changed"
                    );
                }
                setting.weight = Some(weight);
                format!("weight set to {weight} (until `xlb backend enable`)")
            }
            AdminAction::Enable => "enabled: what the operator set is cleared; back to the \
                                    config and the checks"
                .to_owned(),
        };
        if action == AdminAction::Enable {
            operators.remove(&key);
        } else {
            setting.by = caller.0.clone();
            setting.at = unix_seconds();
            operators.insert(key, setting);
        }
        if let Some(file) = &self.state_file {
            persist::save(file, &operators).context("nothing was changed")?;
        }
        self.operators = operators;
        let _orphans = self.apply_operators();
        self.evaluate(maps)?;
        info!(service, %backend, ?action, by = caller.0, "operator changed a backend");
        Ok(format!("{service} {backend} {verb}"))
    }

    /// Puts what operators set into the statuses of the backends the config has; returns the
    /// settings on backends it does not have (kept until `enable`).
    pub(super) fn apply_operators(&mut self) -> Vec<String> {
        let mut orphans: Vec<String> = self
            .operators
            .keys()
            .map(|(service, backend)| format!("{service} {backend}"))
            .collect();
        for (service, statuses) in self.config.services.iter().zip(&mut self.statuses) {
            for (backend, status) in service.backends.iter().zip(statuses.iter_mut()) {
                let key = (service.name.clone(), backend.address);
                status.operator = self.operators.get(&key).cloned();
                orphans.retain(|o| *o != format!("{} {}", key.0, key.1));
            }
        }
        orphans
    }

    /// Applies what operators set and logs it (at start and after a reload).
    pub(super) fn restore_operators(&mut self) {
        for ((service, backend), setting) in &self.operators {
            info!(service, %backend, admin = ?setting.admin, weight = ?setting.weight, by = setting.by, "operator setting kept");
        }
        let orphans = self.apply_operators();
        if !orphans.is_empty() {
            warn!(
                backends = ?orphans,
                "operator settings name backends not in the config; kept until `xlb backend enable`"
            );
        }
    }

    fn simulate(
        &mut self,
        dataplane: &mut Dataplane,
        service: &str,
        client: SocketAddr,
    ) -> Result<SimulationReport> {
        let s = self.service_index(service)?;
        let config = &self.config.services[s];
        let ifindex = dataplane
            .attachments()
            .first()
            .map(|a| a.ifindex)
            .context("xlb is attached to no interface")?;
        let simulation = simulate(dataplane, config.listen, config.protocol, client, ifindex)?;
        let mut report = SimulationReport {
            service: config.name.clone(),
            client,
            verdict: simulation.verdict,
            backend: simulation.backend,
            existing_flow: simulation.existing_flow,
            home_pool: None,
            backend_pool: None,
        };
        if config.pools.len() > 1 {
            let home = home_pool(&config.client_prefixes, config.default_pool, client.ip());
            report.home_pool = Some(config.pools[home].name.clone());
            report.backend_pool = report.backend.and_then(|address| {
                let backend = config.backends.iter().find(|b| b.address == address)?;
                Some(config.pools[backend.pool].name.clone())
            });
        }
        Ok(report)
    }
}

/// Seconds since the Unix epoch.
pub(super) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
