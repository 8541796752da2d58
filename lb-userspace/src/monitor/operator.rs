//! Operators' requests through the control API: answered here, one at a time, by the
//! monitor (status, stats, backend drain/disable/enable, simulate; reload in `reload`).

use std::net::SocketAddr;

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::mpsc;
use tracing::info;

use super::{Monitor, checkers::Event};
use crate::{
    api::{Request, Response, SimulationReport},
    control::locality::home_pool,
    dataplane::{Dataplane, Maps, simulate::simulate},
    health::AdminAction,
};

impl Monitor {
    /// Answers one API request.
    pub(super) fn answer(
        &mut self,
        request: Request,
        dataplane: &mut Dataplane,
        events: &mpsc::Sender<Event>,
    ) -> Response {
        let result = match request {
            Request::Status {} => Ok(Response::Status(self.status_report())),
            Request::Stats {} => self.stats_report(&dataplane.maps).map(Response::Stats),
            Request::Backend {
                service,
                backend,
                action,
            } => self
                .set_admin(&service, backend, action, &mut dataplane.maps)
                .map(Response::Done),
            Request::Reload {} => self.reload(dataplane, events).map(Response::Done),
            Request::Simulate { service, client } => self
                .simulate(dataplane, &service, client)
                .map(Response::Simulation),
        };
        result.unwrap_or_else(|error| Response::Error(format!("{error:#}")))
    }

    fn service_index(&self, name: &str) -> Result<usize> {
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

    fn set_admin(
        &mut self,
        service: &str,
        backend: SocketAddr,
        action: AdminAction,
        maps: &mut Maps,
    ) -> Result<String> {
        let s = self.service_index(service)?;
        let b = self.config.services[s]
            .backends
            .iter()
            .position(|b| b.address == backend)
            .ok_or_else(|| anyhow!("service {service:?} has no backend {backend}"))?;
        self.statuses[s][b].admin = match action {
            AdminAction::Enable => None,
            other => Some(other),
        };
        self.evaluate(maps)?;
        let verb = match action {
            AdminAction::Drain => "drained: no new flows, established flows continue",
            AdminAction::Disable => "disabled: out of the table, its flows purged",
            AdminAction::Enable => "enabled: back to what its checks say",
        };
        info!(service, %backend, ?action, "operator changed a backend");
        Ok(format!("{service} {backend} {verb}"))
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
