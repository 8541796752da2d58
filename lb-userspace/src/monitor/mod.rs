//! Keeps the data plane's tables true to what the backends can do.
//!
//! The [`Monitor`] is the one owner of the daemon's state: the config, every backend's status,
//! the balancer (what the maps hold). One task per backend runs its health checks, one per
//! agent asks for its load (`checkers`); they report to the monitor, which records the result
//! and, when anything that decides the tables changed, decides again: [`plan::plan`], a pure
//! function of (config, statuses, now), gives the backends' states and every table's weights,
//! and the monitor logs the changes, applies the tables through the [`Balancer`] (which
//! publishes only the tables that changed, atomically) and purges the flows of backends that
//! went Down. Around that loop, in child modules: the active-flow counts (`active`), the reports and
//! samples behind `xlb status`, `xlb stats` and the metrics (`reports`), operators' commands
//! (`operator`, with `persist`, `flow_list` and `trace`) and reloads (`reload`).

mod active;
mod checkers;
mod flow_list;
mod operator;
mod passive;
mod persist;
pub mod plan;
mod reload;
mod reports;
pub mod trace;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::{Instant, MissedTickBehavior, interval},
};
use tracing::{debug, info};

use self::{
    checkers::{BackendRef, Event},
    reports::Rates,
};
use crate::{
    announce::{self, Announcer},
    api::Call,
    config::{Config, HealthCheck, ServiceConfig},
    control::{ApplySummary, Balancer, DataplaneMaps},
    dataplane::{ActiveFlows, Dataplane, Maps},
    health::{
        checks,
        state::{BackendStatus, Health},
    },
    metrics,
};

/// How often slow start re-weights a ramping backend.
const RAMP_STEP: Duration = Duration::from_millis(200);
/// How often counters are sampled for rates and metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the active-flow counts are read.
const COUNT_FLOWS_EVERY: Duration = Duration::from_secs(1);

/// The monitor: backend states, the balancer, and the checker tasks.
pub struct Monitor {
    config: Config,
    /// The config file, re-read on reload.
    config_path: Option<PathBuf>,
    /// Where operators' settings are kept (none: they last as long as the daemon).
    state_file: Option<PathBuf>,
    /// What operators set on backends, by service name and address; mirrored into the
    /// statuses of the backends the config has.
    operators: persist::Operators,
    balancer: Balancer,
    /// Every backend's status, per service, in config order.
    statuses: Vec<Vec<BackendStatus>>,
    /// The last error of each agent that does not answer (logged once).
    agent_errors: HashMap<BackendRef, String>,
    tasks: JoinSet<()>,
    rates: Rates,
    snapshot: metrics::Shared,
    metrics_server: Option<JoinHandle<()>>,
    /// Reloads so far, for the metrics.
    reloads: metrics::ReloadMetrics,
    /// The trace maps (taken from the data plane when the monitor runs; lent to a trace
    /// while one runs).
    tracer: trace::SharedTracer,
    /// Incremented by every reload (see [`BackendRef`]).
    generation: u64,
    /// The backends' active flows, as last read.
    active_flows: ActiveFlows,
    /// New flows placed outside their home pool, by (service, from pool, to pool).
    spills: BTreeMap<(String, String, String), u64>,
    /// The data plane's spill counter of each table when last read.
    spill_seen: HashMap<u32, u64>,
    /// Backends whose passive mark the next evaluation clears in the data plane.
    marks_to_clear: Vec<u32>,
    /// Route health injection, if the config announces VIPs.
    announcer: Option<Announcer>,
    /// Stopping: every VIP is withdrawn and stays so while the last flows drain.
    draining: bool,
}

impl Monitor {
    /// A monitor for `config` (read from `config_path`, which reloads read again), with the
    /// operators' settings kept in `state_dir` (read now unless `reset`, which forgets them);
    /// nothing is checked or applied yet.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        state_dir: Option<&std::path::Path>,
        reset: bool,
    ) -> Result<Self> {
        let statuses = config.services.iter().map(fresh_statuses).collect();
        let state_file = state_dir.map(persist::path);
        let operators = match &state_file {
            Some(file) if reset => {
                let operators = persist::Operators::new();
                persist::save(file, &operators)?;
                info!(file = %file.display(), "operator state reset");
                operators
            }
            Some(file) => persist::load(file)?,
            None => persist::Operators::new(),
        };
        let mut monitor = Self {
            config,
            config_path,
            state_file,
            operators,
            balancer: Balancer::new(),
            statuses,
            agent_errors: HashMap::new(),
            tasks: JoinSet::new(),
            rates: Rates::default(),
            snapshot: Arc::new(Mutex::new(metrics::Snapshot::default())),
            metrics_server: None,
            tracer: Arc::new(Mutex::new(None)),
            reloads: metrics::ReloadMetrics {
                last_succeeded: true,
                last_success_unix: operator::unix_seconds() as f64,
                ..metrics::ReloadMetrics::default()
            },
            generation: 0,
            active_flows: ActiveFlows::default(),
            spills: BTreeMap::new(),
            spill_seen: HashMap::new(),
            marks_to_clear: Vec::new(),
            announcer: None,
            draining: false,
        };
        monitor.restore_operators();
        Ok(monitor)
    }

    /// Takes over the services and backends a previous daemon left in pinned maps, so their
    /// ids (and flows) survive the restart.
    pub fn adopt(&mut self, maps: &mut Maps) -> Result<(usize, usize)> {
        self.balancer.adopt(maps)
    }

    /// Announces the VIPs through `announcer` from the next evaluation on.
    pub fn set_announcer(&mut self, announcer: Announcer) {
        self.announcer = Some(announcer);
    }

    /// The balancer (ids of services and backends as applied).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Runs every backend's first health check at once (they decide its initial health) and
    /// fills the maps accordingly. Takes at most the longest check timeout.
    pub async fn start(&mut self, maps: &mut Maps) -> Result<()> {
        maps.set_flow_timeouts(&self.config.flow_timeouts)?;
        let mut first = JoinSet::new();
        for (service_index, service) in self.config.services.iter().enumerate() {
            if service.health.check == HealthCheck::None {
                continue;
            }
            for (backend_index, backend) in service.backends.iter().enumerate() {
                let (check, target, limit) = (
                    service.health.check.clone(),
                    backend.check_address(),
                    service.health.timeout,
                );
                let at = BackendRef {
                    service: service_index,
                    backend: backend_index,
                    generation: self.generation,
                };
                first.spawn(async move {
                    let started = Instant::now();
                    let result = checks::run(&check, target, limit).await;
                    (at, result, started.elapsed())
                });
            }
        }
        while let Some(joined) = first.join_next().await {
            let (at, result, latency) = joined.context("a health check task failed")?;
            self.handle(Event::Health(at, result, latency));
        }
        self.evaluate(maps)?;
        Ok(())
    }

    /// Runs the checkers, reacts to them and answers operators' `calls` until `shutdown`
    /// completes.
    pub async fn run(
        &mut self,
        dataplane: &mut Dataplane,
        mut calls: mpsc::Receiver<Call>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let (events, mut received) = mpsc::channel(1024);
        *self.tracer.lock().expect("the tracer lock") = dataplane.tracer.take();
        let passive_reader = dataplane
            .passive_events
            .take()
            .map(|reports| passive::spawn_reader(reports, events.clone()));
        self.spawn_checkers(&events);
        let mut ramp = interval(RAMP_STEP);
        ramp.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sample = interval(SAMPLE_EVERY);
        sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut count_flows = interval(COUNT_FLOWS_EVERY);
        count_flows.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        // Once told to stop: the VIPs are withdrawn, and xlb keeps balancing until then.
        let mut drained_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown, if drained_at.is_none() => {
                    match self.withdraw_for_shutdown().await {
                        Some(until) => drained_at = Some(until),
                        None => break,
                    }
                }
                () = tokio::time::sleep_until(drained_at.unwrap_or_else(Instant::now)), if drained_at.is_some() => {
                    info!("drained: stopping");
                    break;
                }
                Some(event) = received.recv() => {
                    let changed = match event {
                        Event::Passive(report) => self.passive_report(&report, &events),
                        event => self.handle(event),
                    };
                    if changed {
                        self.evaluate(&mut dataplane.maps)?;
                    }
                }
                Some((request, caller, reply)) = calls.recv() => {
                    let answer = self.answer(request, &caller, dataplane, &events);
                    let _ = reply.send(answer);
                }
                _ = ramp.tick() => {
                    if self.any_ramping() {
                        self.evaluate(&mut dataplane.maps)?;
                    }
                }
                _ = sample.tick() => self.sample(&dataplane.maps),
                _ = count_flows.tick() => {
                    if self.count_active_flows(&dataplane.maps) {
                        self.evaluate(&mut dataplane.maps)?;
                    }
                }
            }
        }
        self.tasks.abort_all();
        if let Some(reader) = passive_reader {
            reader.abort();
        }
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        Ok(())
    }

    /// On the way out: withdraws every VIP; returns when to stop if a drain time is set (xlb
    /// balances on meanwhile, so that the flows routers still send arrive somewhere).
    async fn withdraw_for_shutdown(&mut self) -> Option<Instant> {
        let announcer = self.announcer.as_mut()?;
        self.draining = true;
        announcer.withdraw_all("xlb is stopping").await;
        let drain = announcer.drain();
        if drain.is_zero() {
            return None;
        }
        info!(drain = ?drain, "VIPs withdrawn: balancing on while routers move the flows away");
        Some(Instant::now() + drain)
    }

    /// One line on what the daemon balances, for `systemctl status`.
    pub fn summary(&self) -> String {
        format!(
            "balancing {} services ({} backends) on {}",
            self.config.services.len(),
            self.config.backend_count(),
            self.config.interfaces.join(", ")
        )
    }

    /// Serves the metrics on `listener` (bound to the config's `metrics` address) from now
    /// on; none: stops serving them.
    pub fn serve_metrics(&mut self, listener: Option<tokio::net::TcpListener>) {
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        if let Some(listener) = listener {
            let shared = Arc::clone(&self.snapshot);
            self.metrics_server = Some(tokio::spawn(metrics::serve(listener, shared)));
        }
    }

    /// Decides again (see [`plan::plan`]), logs what changed, applies the tables and purges the
    /// flows of backends that just went Down.
    pub fn evaluate(&mut self, maps: &mut impl DataplaneMaps) -> Result<ApplySummary> {
        let serving_before: Vec<Vec<u32>> = (0..self.config.services.len())
            .map(|i| {
                self.balancer
                    .services()
                    .get(i)
                    .map(|s| s.locality.serving.clone())
                    .unwrap_or_default()
            })
            .collect();
        let plan = plan::plan(
            &self.config,
            &self.statuses,
            &serving_before,
            Instant::now(),
        );
        self.statuses = plan.statuses.clone();
        // Spills so far count toward the pools that were serving until now.
        self.account_spills(maps);
        let summary = self.balancer.apply(&plan.specs, maps)?;
        if let Some(announcer) = self.announcer.as_ref().filter(|_| !self.draining) {
            announcer.want(announce::announcements(&self.config, &plan.specs));
        }
        // Logged once in effect: whoever reads "state changed" finds the tables published.
        self.log_plan(&plan);
        if summary.tables_published > 0 {
            debug!(tables = summary.tables_published, "tables published");
        }
        let newly_down: Vec<(usize, usize)> = plan.newly_down().collect();
        // A Down backend's mark would hold a place in its service's share of suspects.
        self.marks_to_clear.extend(
            newly_down
                .iter()
                .map(|&(s, b)| self.balancer.services()[s].backends[b].id),
        );
        let mut clear = std::mem::take(&mut self.marks_to_clear);
        clear.sort_unstable();
        clear.dedup();
        for id in clear {
            maps.clear_mark(id)?;
        }
        if !newly_down.is_empty() {
            let ids: Vec<u32> = newly_down
                .iter()
                .map(|&(s, b)| self.balancer.services()[s].backends[b].id)
                .collect();
            let purged = maps.purge_flows(&ids)?;
            for &(s, b) in &newly_down {
                let service = &self.config.services[s];
                info!(service = service.name, backend = %service.backends[b].address, purged, "flows of a Down backend purged");
            }
        }
        Ok(summary)
    }

    /// Logs a plan's state changes, reason changes and spills.
    fn log_plan(&self, plan: &plan::Plan) {
        for t in &plan.transitions {
            let service = &self.config.services[t.service];
            let address = service.backends[t.backend].address;
            match t.from {
                None => {
                    info!(service = service.name, backend = %address, state = %t.to, reason = t.reason, "backend state");
                }
                Some(from) => info!(
                    service = service.name,
                    backend = %address,
                    from = %from,
                    state = %t.to,
                    reason = t.reason,
                    "backend state changed"
                ),
            }
        }
        for (s, b, reason) in &plan.reasons {
            let service = &self.config.services[*s];
            debug!(service = service.name, backend = %service.backends[*b].address, reason, "backend load");
        }
        for spill in &plan.spills {
            let service = &self.config.services[spill.service];
            let pool = &service.pools[spill.home].name;
            if spill.serving == spill.home {
                info!(
                    service = service.name,
                    pool, "pool has room again: its clients' new flows stay home"
                );
            } else {
                info!(
                    service = service.name,
                    pool,
                    to = service.pools[spill.serving].name,
                    "pool has no room: its clients' new flows spill over"
                );
            }
        }
    }
}

/// The statuses of a service's backends before any check.
fn fresh_statuses(service: &ServiceConfig) -> Vec<BackendStatus> {
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

#[cfg(test)]
mod tests;
