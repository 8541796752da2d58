//! What the monitor answers operators through the control API (status, stats, backend
//! drain/enable/disable, reload, simulate), and the once-a-second samples behind the rates in
//! `xlb status` and the metrics endpoint.

use std::{collections::HashMap, net::SocketAddr};

use anyhow::{Context as _, Result, anyhow, bail};
use lb_common::{
    TrafficCounters,
    consts::{events, limits::HALF_OPEN_DIVISOR},
};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tracing::{info, warn};

use crate::{
    api::{
        AdminAction, BackendStatusReport, Counters, FlowTableStats, PoolStatus, Request, Response,
        ServiceStats, ServiceStatus, StatsReport, StatusReport,
    },
    backend_state::State,
    config::Config,
    dataplane::{Dataplane, Maps},
    hooks::Hook,
    locality::home_pool,
    metrics::{BackendMetrics, ServiceMetrics, Snapshot},
    monitor::{Event, Monitor, fresh_statuses},
    simulate::simulate,
};

/// What a rate is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Service(u32),
    Backend(u32),
}

/// Packets and bits per second of every service and backend over the last sample period.
#[derive(Default)]
pub struct Rates {
    last: Option<(Instant, HashMap<Key, TrafficCounters>)>,
    rates: HashMap<Key, (f64, f64)>,
}

impl Rates {
    fn of(&self, key: Key) -> (f64, f64) {
        self.rates.get(&key).copied().unwrap_or_default()
    }
}

fn total_packets(c: &TrafficCounters) -> u64 {
    c.fwd_packets + c.rev_packets
}

fn total_bytes(c: &TrafficCounters) -> u64 {
    c.fwd_bytes + c.rev_bytes
}

impl Monitor {
    /// Samples the counters: rates since the last sample, and a fresh metrics snapshot.
    pub(crate) fn sample(&mut self, maps: &Maps) {
        self.account_spills(maps);
        let now = Instant::now();
        let mut current = HashMap::new();
        for service in self.balancer.services() {
            if let Ok(counters) = maps.service_counters(service.id) {
                current.insert(Key::Service(service.id), counters);
            }
            for backend in &service.backends {
                if let Ok(counters) = maps.backend_counters(backend.id) {
                    current.insert(Key::Backend(backend.id), counters);
                }
            }
        }
        if let Some((then, previous)) = &self.rates.last {
            let seconds = now.saturating_duration_since(*then).as_secs_f64().max(1e-3);
            self.rates.rates = current
                .iter()
                .filter_map(|(key, counters)| {
                    let before = previous.get(key)?;
                    let packets = total_packets(counters).saturating_sub(total_packets(before));
                    let bytes = total_bytes(counters).saturating_sub(total_bytes(before));
                    Some((
                        *key,
                        (packets as f64 / seconds, bytes as f64 * 8.0 / seconds),
                    ))
                })
                .collect();
        }
        self.rates.last = Some((now, current));
        self.refresh_snapshot(maps);
    }

    fn refresh_snapshot(&self, maps: &Maps) {
        let counters = |key: Key| -> Counters {
            let found = self
                .rates
                .last
                .as_ref()
                .and_then(|(_, c)| c.get(&key))
                .copied();
            Counters::from(found.unwrap_or_default())
        };
        let mut snapshot = Snapshot::default();
        for ((config, applied), statuses) in self
            .config
            .services
            .iter()
            .zip(self.balancer.services())
            .zip(&self.statuses)
        {
            snapshot.services.push(ServiceMetrics {
                name: config.name.clone(),
                counters: counters(Key::Service(applied.id)),
                backends: applied
                    .backends
                    .iter()
                    .zip(statuses)
                    .map(|(backend, status)| BackendMetrics {
                        address: backend.address.to_string(),
                        counters: counters(Key::Backend(backend.id)),
                        state: status.reported.as_ref().map_or(State::Down, |r| r.state),
                        weight: backend.weight,
                        check_seconds: status.check_latency.map(|d| d.as_secs_f64()),
                    })
                    .collect(),
            });
        }
        snapshot.spills = self.spills.iter().map(|(k, v)| (k.clone(), *v)).collect();
        snapshot.flows = (self.flow_report.established, self.flow_report.half_open);
        if let Ok(counts) = maps.events() {
            snapshot.events = events::NAMES.iter().copied().zip(counts).collect();
        }
        *self.snapshot.lock().expect("the snapshot lock") = snapshot;
    }

    /// Answers one API request.
    pub(crate) fn answer(
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

    fn status_report(&self) -> StatusReport {
        let now = Instant::now();
        let active = &self.flow_report.active;
        let mut report = StatusReport::default();
        for ((config, applied), statuses) in self
            .config
            .services
            .iter()
            .zip(self.balancer.services())
            .zip(&self.statuses)
        {
            let (pps, bps) = self.rates.of(Key::Service(applied.id));
            report.services.push(ServiceStatus {
                name: config.name.clone(),
                listen: config.listen,
                protocol: config.protocol.to_string(),
                packets_per_second: pps,
                bits_per_second: bps,
                backends: config
                    .backends
                    .iter()
                    .zip(&applied.backends)
                    .zip(statuses)
                    .map(|((configured, backend), status)| {
                        let (pps, bps) = self.rates.of(Key::Backend(backend.id));
                        let (state, reason, since) = match &status.reported {
                            Some(r) => (r.state, r.reason.clone(), r.since),
                            None => (State::Down, "not checked yet".into(), now),
                        };
                        BackendStatusReport {
                            address: backend.address,
                            state: state.to_string(),
                            reason,
                            since_seconds: now.saturating_duration_since(since).as_secs_f64(),
                            weight: configured.weight,
                            effective_weight: backend.weight,
                            agent_weight_percent: status.agent.weight_percent,
                            active_flows: active.get(&backend.id).copied().unwrap_or(0),
                            packets_per_second: pps,
                            bits_per_second: bps,
                            admin: status.admin,
                        }
                    })
                    .collect(),
                pools: self.pool_status(config, applied, statuses),
            });
        }
        report
    }

    /// The pools of a service with more than one, as `xlb status` shows them.
    fn pool_status(
        &self,
        config: &crate::config::ServiceConfig,
        applied: &crate::control::ServiceState,
        statuses: &[crate::backend_state::BackendStatus],
    ) -> Vec<PoolStatus> {
        if config.pools.len() <= 1 {
            return Vec::new();
        }
        config
            .pools
            .iter()
            .enumerate()
            .map(|(index, pool)| {
                let members: Vec<usize> = (0..config.backends.len())
                    .filter(|&i| config.backends[i].pool == index)
                    .collect();
                let up = members
                    .iter()
                    .filter(|&&i| {
                        statuses[i]
                            .reported
                            .as_ref()
                            .is_some_and(|r| r.state == State::Up)
                    })
                    .count();
                let serving = applied
                    .locality
                    .serving
                    .get(index)
                    .map_or(index, |&s| s as usize);
                let spilled = self
                    .spills
                    .iter()
                    .filter(|((service, from, _), _)| *service == config.name && *from == pool.name)
                    .map(|((_, _, to), count)| (to.clone(), *count))
                    .collect();
                PoolStatus {
                    name: pool.name.clone(),
                    up,
                    backends: members.len(),
                    serving: config
                        .pools
                        .get(serving)
                        .map_or(pool.name.clone(), |p| p.name.clone()),
                    spilled,
                }
            })
            .collect()
    }

    fn stats_report(&self, maps: &Maps) -> Result<StatsReport> {
        let mut report = StatsReport::default();
        for (config, applied) in self.config.services.iter().zip(self.balancer.services()) {
            let mut backends = Vec::new();
            for backend in &applied.backends {
                backends.push((
                    backend.address,
                    Counters::from(maps.backend_counters(backend.id)?),
                ));
            }
            report.services.push(ServiceStats {
                name: config.name.clone(),
                counters: Counters::from(maps.service_counters(applied.id)?),
                backends,
            });
        }
        report.events = events::NAMES
            .iter()
            .map(|n| (*n).to_owned())
            .zip(maps.events()?)
            .collect();
        let size = u64::from(self.config.flow_table_size);
        let guard = maps.handshake_guard()?;
        report.flow_table = FlowTableStats {
            established: self.flow_report.established,
            capacity: size,
            half_open: self.flow_report.half_open,
            half_open_capacity: size / u64::from(HALF_OPEN_DIVISOR),
            expired: self.flows_expired,
            handshake_budget: guard.budget,
            handshake_guard_on: maps.handshake_guard_on()?,
        };
        Ok(report)
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
    ) -> Result<crate::api::SimulationReport> {
        let s = self.service_index(service)?;
        let config = &self.config.services[s];
        let ifindex = dataplane
            .attachments()
            .first()
            .map(|a| a.ifindex)
            .context("xlb is attached to no interface")?;
        let mut report = simulate(
            dataplane,
            &config.name,
            config.listen,
            config.protocol,
            client,
            ifindex,
        )?;
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

    /// Re-reads the config file and applies the difference. The new file is validated whole
    /// first; if it is invalid, or asks for what cannot change while xlb runs, nothing changes.
    /// Backends that stay keep their state and flows; operators' drains and disables end.
    fn reload(
        &mut self,
        dataplane: &mut Dataplane,
        events: &mpsc::Sender<Event>,
    ) -> Result<String> {
        let path = self
            .config_path
            .clone()
            .context("this daemon has no config file to reload")?;
        let new = Config::load(&path).map_err(|errors| anyhow!("{errors}\nnothing was changed"))?;
        if new.flow_table_size != self.config.flow_table_size {
            bail!(
                "flow_table_size cannot change while xlb runs (it sizes the pinned flow table); \
                 nothing was changed"
            );
        }
        if new.pin_path != self.config.pin_path {
            bail!("pin_path cannot change while xlb runs; nothing was changed");
        }
        let plan = crate::daemon::preflight(&new).context("nothing was changed")?;
        if let Some(running) = dataplane.hook() {
            let fits = plan.hook == running || (plan.fall_back_to_tc && running == Hook::Tc);
            if !fits {
                bail!(
                    "xlb runs at the {running} hook, and the new configuration needs {}: the hook \
                     changes only at a restart (which keeps every flow); nothing was changed",
                    plan.hook
                );
            }
        }
        let hook = dataplane.hook().unwrap_or(plan.hook);

        let added: Vec<String> = new
            .interfaces
            .iter()
            .filter(|i| !self.config.interfaces.contains(i))
            .cloned()
            .collect();
        for (n, interface) in added.iter().enumerate() {
            if let Err(error) = dataplane.attach(interface, hook) {
                for done in &added[..n] {
                    dataplane.detach(done);
                }
                return Err(error.context("nothing was changed"));
            }
        }
        let removed: Vec<String> = self
            .config
            .interfaces
            .iter()
            .filter(|i| !new.interfaces.contains(i))
            .cloned()
            .collect();
        for interface in &removed {
            dataplane.detach(interface);
        }

        // Backends that stay keep what the monitor knows of them.
        let mut statuses = Vec::with_capacity(new.services.len());
        for service in &new.services {
            let mut fresh = fresh_statuses(service);
            let old = self
                .config
                .services
                .iter()
                .position(|s| s.listen == service.listen && s.protocol == service.protocol);
            if let Some(old) = old {
                for (backend, status) in service.backends.iter().zip(fresh.iter_mut()) {
                    let before = self.config.services[old]
                        .backends
                        .iter()
                        .position(|b| b.address == backend.address);
                    if let Some(before) = before {
                        let mut kept = self.statuses[old][before].clone();
                        kept.configured_weight = backend.weight;
                        kept.admin = None;
                        *status = kept;
                    }
                }
            }
            statuses.push(fresh);
        }
        let metrics_changed = new.metrics != self.config.metrics;
        self.config = new;
        self.statuses = statuses;
        self.agent_errors.clear();
        self.generation += 1;
        self.tasks.abort_all();
        self.tasks = JoinSet::new();
        self.spawn_checkers(events);
        if metrics_changed {
            self.start_metrics();
        }
        let summary = self.evaluate(&mut dataplane.maps)?;
        self.sample(&dataplane.maps);
        let message = format!(
            "reloaded {}: {} services ({} added, {} removed), {} backends added, {} removed, \
             {} tables published, {} flows purged, interfaces +{} -{}",
            path.display(),
            self.config.services.len(),
            summary.services_added,
            summary.services_removed,
            summary.backends_added,
            summary.backends_removed,
            summary.tables_published,
            summary.flows_purged,
            added.len(),
            removed.len(),
        );
        info!("{message}");
        if !removed.is_empty() {
            warn!(interfaces = ?removed, "detached from interfaces no longer in the config");
        }
        Ok(message)
    }
}
