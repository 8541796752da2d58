//! Keeps the data plane's tables true to what the backends can do.
//!
//! One task per backend runs its health checks, one per agent asks for its load; they report
//! to the monitor, which owns the backends' state ([`BackendStatus`]). After every change the
//! monitor recomputes each service's table weights and applies them through the
//! [`Balancer`], which publishes only the tables that changed (atomically, see
//! `BACKEND_TABLES`). A backend that goes Down leaves its table at once, and then its flows are
//! purged so that UDP flows and retries move to live backends. Every state change is logged
//! with its reason.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
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
use tracing::{debug, info, warn};

use crate::{
    agent::{self, AgentReport},
    api::Call,
    backend_state::{BackendStatus, Health, Reported, State, has_room, table_weights},
    checks,
    config::{Config, HealthCheck},
    control::{
        ApplySummary, BackendSpec, Balancer, DataplaneMaps, Locality, ServiceSpec, table_index,
    },
    dataplane::{Dataplane, Maps},
    flows::SweepReport,
    locality::serving_pools,
    metrics,
    operator::Rates,
};

/// A flow counts as active if a packet of it passed within this window.
pub const ACTIVE_FLOW_WINDOW: Duration = Duration::from_secs(10);
/// How often slow start re-weights a ramping backend.
const RAMP_STEP: Duration = Duration::from_millis(200);

/// How often counters are sampled for rates and metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the monitor considers sweeping the flow tables (it sweeps when
/// [`Monitor::sweep_every`] has passed since the last sweep).
const SWEEP_TICK: Duration = Duration::from_secs(1);

/// Where a backend is: indexes into the config's services and their backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BackendRef {
    pub(crate) service: usize,
    pub(crate) backend: usize,
    /// The monitor's generation when the checker started: events of checkers from before a
    /// reload (whose indexes meant other backends) are ignored.
    pub(crate) generation: u64,
}

/// What a checker task reports.
pub(crate) enum Event {
    /// A health check's result and how long it took.
    Health(BackendRef, Result<(), String>, Duration),
    /// An agent's answer.
    Agent(BackendRef, Result<AgentReport, String>),
}

/// The monitor: backend states, the balancer, and the checker tasks.
pub struct Monitor {
    pub(crate) config: Config,
    /// The config file, re-read on reload.
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) balancer: Balancer,
    pub(crate) statuses: Vec<Vec<BackendStatus>>,
    pub(crate) agent_errors: HashMap<BackendRef, String>,
    pub(crate) tasks: JoinSet<()>,
    pub(crate) rates: Rates,
    pub(crate) snapshot: metrics::Shared,
    pub(crate) metrics_server: Option<JoinHandle<()>>,
    /// Incremented by every reload (see [`BackendRef::generation`]).
    pub(crate) generation: u64,
    /// What the last sweep of the flow tables found, when it ran, and how long it took.
    pub(crate) flow_report: SweepReport,
    pub(crate) last_sweep: Option<Instant>,
    pub(crate) last_sweep_took: Duration,
    /// Flows expired since the daemon started.
    pub(crate) flows_expired: u64,
    /// New flows placed outside their home pool, by (service, from pool, to pool).
    pub(crate) spills: std::collections::BTreeMap<(String, String, String), u64>,
    /// The data plane's spill counter of each table when last read.
    spill_seen: HashMap<u32, u64>,
}

impl Monitor {
    /// A monitor for `config` (read from `config_path`, which reloads read again); nothing is
    /// checked or applied yet.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Self {
        let statuses = config.services.iter().map(fresh_statuses).collect();
        Self {
            config,
            config_path,
            balancer: Balancer::new(),
            statuses,
            agent_errors: HashMap::new(),
            tasks: JoinSet::new(),
            rates: Rates::default(),
            snapshot: Arc::new(Mutex::new(metrics::Snapshot::default())),
            metrics_server: None,
            generation: 0,
            flow_report: SweepReport::default(),
            last_sweep: None,
            last_sweep_took: Duration::ZERO,
            flows_expired: 0,
            spills: std::collections::BTreeMap::new(),
            spill_seen: HashMap::new(),
        }
    }

    /// Takes over the services and backends a previous daemon left in pinned maps, so their
    /// ids (and flows) survive the restart.
    pub fn adopt(&mut self, maps: &mut Maps) -> Result<(usize, usize)> {
        self.balancer.adopt(maps)
    }

    /// The balancer (ids of services and backends as applied).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Runs every backend's first health check at once (they decide its initial health) and
    /// fills the maps accordingly. Takes at most the longest check timeout.
    pub async fn start(&mut self, maps: &mut Maps) -> Result<()> {
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
        self.spawn_checkers(&events);
        self.start_metrics();
        let mut ramp = interval(RAMP_STEP);
        ramp.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sample = interval(SAMPLE_EVERY);
        sample.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sweep = interval(SWEEP_TICK);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(event) = received.recv() => {
                    if self.handle(event) {
                        self.evaluate(&mut dataplane.maps)?;
                    }
                }
                Some((request, reply)) = calls.recv() => {
                    let response = self.answer(request, dataplane, &events);
                    let _ = reply.send(response);
                }
                _ = ramp.tick() => {
                    if self.any_ramping() {
                        self.evaluate(&mut dataplane.maps)?;
                    }
                }
                _ = sample.tick() => self.sample(&dataplane.maps),
                _ = sweep.tick() => {
                    let due = self
                        .last_sweep
                        .is_none_or(|last| last.elapsed() >= self.sweep_every());
                    if due && self.sweep(&mut dataplane.maps) {
                        self.evaluate(&mut dataplane.maps)?;
                    }
                }
            }
        }
        self.tasks.abort_all();
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        Ok(())
    }

    /// How often the flow tables are swept: often enough for the shortest flow timeout
    /// (see [`crate::flows::FlowTimeouts::sweep_every`]) and for the shortest load interval
    /// of the services that have `max_flows`, which need fresh flow counts; but never more
    /// than a tenth of the time (a sweep reads the whole tables: about a second per million
    /// flows).
    fn sweep_every(&self) -> Duration {
        let load = self
            .config
            .services
            .iter()
            .filter_map(|s| {
                s.load
                    .as_ref()
                    .filter(|l| l.max_flows.is_some())
                    .map(|l| l.interval)
            })
            .min();
        let timeouts = self.config.flow_timeouts.sweep_every();
        let wanted = load.map_or(timeouts, |load| load.min(timeouts));
        wanted.max(self.last_sweep_took * 10)
    }

    /// Sweeps the flow tables: deletes the flows that are over and counts the active ones.
    /// Returns whether a service has `max_flows` (and so may need new weights). A failed sweep
    /// is logged and changes nothing.
    pub(crate) fn sweep(&mut self, maps: &mut Maps) -> bool {
        let started = Instant::now();
        self.last_sweep = Some(started);
        let swept = maps.sweep_flows(&self.config.flow_timeouts, ACTIVE_FLOW_WINDOW);
        self.last_sweep_took = started.elapsed();
        match swept {
            Ok(report) => {
                if report.expired > 0 {
                    debug!(expired = report.expired, "flows expired");
                }
                self.flows_expired += report.expired;
                self.flow_report = report;
            }
            Err(error) => {
                warn!("sweeping the flow tables: {error:#}");
                return false;
            }
        }
        self.count_flows()
    }

    /// Starts (or restarts) the metrics endpoint of the current config.
    pub(crate) fn start_metrics(&mut self) {
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        if let Some(address) = self.config.metrics {
            let shared = Arc::clone(&self.snapshot);
            self.metrics_server = Some(tokio::spawn(async move {
                if let Err(error) = metrics::serve(address, shared).await {
                    warn!("metrics endpoint: {error:#}");
                }
            }));
        }
    }

    /// Starts one checker task per backend health check and per agent.
    pub(crate) fn spawn_checkers(&mut self, events: &mpsc::Sender<Event>) {
        for (service_index, service) in self.config.services.iter().enumerate() {
            for (backend_index, backend) in service.backends.iter().enumerate() {
                let at = BackendRef {
                    service: service_index,
                    backend: backend_index,
                    generation: self.generation,
                };
                if service.health.check != HealthCheck::None {
                    let (check, target) = (service.health.check.clone(), backend.check_address());
                    let (every, limit) = (service.health.interval, service.health.timeout);
                    // A backend checked before (in `start`, or before a reload) waits one
                    // interval; a new one is checked at once.
                    let checked = self.statuses[service_index][backend_index]
                        .health
                        .is_known();
                    let events = events.clone();
                    self.tasks.spawn(async move {
                        let mut ticks = interval(every);
                        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        if checked {
                            ticks.tick().await;
                        }
                        loop {
                            ticks.tick().await;
                            let started = Instant::now();
                            let result = checks::run(&check, target, limit).await;
                            let event = Event::Health(at, result, started.elapsed());
                            if events.send(event).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                let agent = service
                    .load
                    .as_ref()
                    .and_then(|load| Some((load.agent_address(backend)?, load)));
                if let Some((address, load)) = agent {
                    let (every, limit) = (load.interval, load.timeout);
                    let events = events.clone();
                    self.tasks.spawn(async move {
                        let mut ticks = interval(every);
                        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        loop {
                            ticks.tick().await;
                            let result = agent::query(address, limit).await;
                            if events.send(Event::Agent(at, result)).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }
    }

    /// Records an event; returns whether anything that decides the tables changed.
    pub(crate) fn handle(&mut self, event: Event) -> bool {
        let (Event::Health(at, ..) | Event::Agent(at, _)) = &event;
        if at.generation != self.generation {
            return false;
        }
        match event {
            Event::Health(at, result, latency) => {
                let health = &self.config.services[at.service].health;
                let status = &mut self.statuses[at.service][at.backend];
                status.check_latency = Some(latency);
                status
                    .health
                    .observe(result, health.rise, health.fall)
                    .is_some()
            }
            Event::Agent(at, Err(error)) => {
                // An unreachable agent leaves the backend as it was (HAProxy does the same);
                // health checks decide whether it can serve.
                if self.agent_errors.get(&at) != Some(&error) {
                    warn!(
                        service = self.config.services[at.service].name,
                        backend = %self.address(at),
                        "load check failed, keeping the last known load: {error}"
                    );
                    self.agent_errors.insert(at, error);
                }
                false
            }
            Event::Agent(at, Ok(report)) => {
                if self.agent_errors.remove(&at).is_some() {
                    info!(service = self.config.services[at.service].name, backend = %self.address(at), "load check answers again");
                }
                let load = self.config.services[at.service].load.as_ref();
                let status = &mut self.statuses[at.service][at.backend];
                let before = (status.agent.clone(), status.overloaded);
                status.agent.apply(&report);
                if let Some(load) = load {
                    status.update_overload(load);
                }
                before != (status.agent.clone(), status.overloaded)
            }
        }
    }

    pub(crate) fn address(&self, at: BackendRef) -> SocketAddr {
        self.config.services[at.service].backends[at.backend].address
    }

    pub(crate) fn any_ramping(&self) -> bool {
        let now = Instant::now();
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

    /// Gives the backends of services with `max_flows` their active-flow counts from the last
    /// sweep. Returns whether there was any such service.
    pub(crate) fn count_flows(&mut self) -> bool {
        let mut any = false;
        for (service_index, service) in self.config.services.iter().enumerate() {
            let Some(load) = service.load.as_ref().filter(|l| l.max_flows.is_some()) else {
                continue;
            };
            let Some(applied) = self.balancer.services().get(service_index) else {
                continue;
            };
            any = true;
            for (status, backend) in self.statuses[service_index]
                .iter_mut()
                .zip(&applied.backends)
            {
                let active = self.flow_report.active.get(&backend.id).copied();
                status.active_flows = Some(active.unwrap_or(0));
                status.update_overload(load);
            }
        }
        any
    }

    /// Logs state changes, recomputes every table's weights, applies them, and purges the
    /// flows of backends that just went Down.
    pub fn evaluate(&mut self, maps: &mut impl DataplaneMaps) -> Result<ApplySummary> {
        let now = Instant::now();
        let mut newly_down = Vec::new();
        let mut specs = Vec::with_capacity(self.config.services.len());
        for (service_index, service) in self.config.services.iter().enumerate() {
            let statuses = &mut self.statuses[service_index];
            for (backend_index, status) in statuses.iter_mut().enumerate() {
                let (state, reason) =
                    status.state(service.load.as_ref(), service.health.slowstart, now);
                let address = service.backends[backend_index].address;
                match &status.reported {
                    None => {
                        info!(service = service.name, backend = %address, state = %state, reason, "backend state");
                    }
                    Some(previous) if previous.state != state => {
                        if previous.state == State::Down {
                            status.came_up_at = Some(now);
                        }
                        if state == State::Down {
                            newly_down.push((service_index, backend_index));
                        }
                        info!(
                            service = service.name,
                            backend = %address,
                            from = %previous.state,
                            state = %state,
                            reason,
                            "backend state changed"
                        );
                    }
                    Some(previous) => {
                        if previous.reason != reason {
                            debug!(service = service.name, backend = %address, reason, "backend load");
                            if let Some(reported) = &mut status.reported {
                                reported.reason = reason;
                            }
                        }
                        continue;
                    }
                }
                status.reported = Some(Reported {
                    state,
                    reason,
                    since: now,
                });
            }
            // Weights and room are judged within each pool; a pool without room spills.
            let mut weights = vec![0; statuses.len()];
            let mut room = vec![false; service.pools.len()];
            for (pool, room) in room.iter_mut().enumerate() {
                let members: Vec<usize> = (0..statuses.len())
                    .filter(|&i| service.backends[i].pool == pool)
                    .collect();
                let refs: Vec<&BackendStatus> = members.iter().map(|&i| &statuses[i]).collect();
                let (load, slowstart) = (service.load.as_ref(), service.health.slowstart);
                for (&i, weight) in members
                    .iter()
                    .zip(table_weights(&refs, load, slowstart, now))
                {
                    weights[i] = weight;
                }
                *room = has_room(&refs, load, slowstart, now);
            }
            let fallback: Vec<Vec<usize>> =
                service.pools.iter().map(|p| p.fallback.clone()).collect();
            let serving: Vec<u32> = serving_pools(&room, &fallback)
                .into_iter()
                .map(|pool| pool as u32)
                .collect();
            if let Some(applied) = self.balancer.services().get(service_index)
                && applied.locality.serving != serving
                && service.pools.len() > 1
            {
                for (home, (&now_serving, pool)) in serving.iter().zip(&service.pools).enumerate() {
                    let before = applied.locality.serving.get(home).copied();
                    if before == Some(now_serving) {
                        continue;
                    }
                    let target = &service.pools[now_serving as usize].name;
                    if now_serving as usize == home {
                        info!(
                            service = service.name,
                            pool = pool.name,
                            "pool has room again: its clients' new flows stay home"
                        );
                    } else {
                        info!(
                            service = service.name,
                            pool = pool.name,
                            to = target,
                            "pool has no room: its clients' new flows spill over"
                        );
                    }
                }
            }
            specs.push(ServiceSpec {
                name: service.name.clone(),
                listen: service.listen,
                protocol: service.protocol,
                backends: service
                    .backends
                    .iter()
                    .zip(weights)
                    .map(|(b, weight)| BackendSpec {
                        address: b.address,
                        weight,
                        pool: b.pool as u32,
                    })
                    .collect(),
                locality: Locality {
                    pools: service.pools.len() as u32,
                    serving,
                    default_pool: service.default_pool as u32,
                    prefixes: std::sync::Arc::clone(&service.client_prefixes),
                },
            });
        }
        // Spills so far count toward the pools that were serving until now.
        self.account_spills(maps);
        let summary = self.balancer.apply(&specs, maps)?;
        if summary.tables_published > 0 {
            debug!(tables = summary.tables_published, "tables published");
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
}

impl Monitor {
    /// Reads the data plane's spill counters and credits what is new to the pool each home
    /// pool's table was serving from (as published). Called before every apply and every
    /// second, so a flow is credited to the wrong pool only if it was placed in the instant a
    /// table changed.
    pub(crate) fn account_spills(&mut self, maps: &impl DataplaneMaps) {
        for (config, applied) in self.config.services.iter().zip(self.balancer.services()) {
            if config.pools.len() <= 1 || applied.locality.pools as usize != config.pools.len() {
                continue;
            }
            for (home, &serving) in applied.locality.serving.iter().enumerate() {
                let index = table_index(applied.id, home as u32);
                let Ok(count) = maps.spilled(index) else {
                    continue;
                };
                let seen = self.spill_seen.insert(index, count).unwrap_or(0);
                let new = count.saturating_sub(seen);
                if new > 0 {
                    let key = (
                        config.name.clone(),
                        config.pools[home].name.clone(),
                        config.pools[serving as usize].name.clone(),
                    );
                    *self.spills.entry(key).or_default() += new;
                }
            }
        }
    }
}

/// The statuses of a service's backends before any check.
pub(crate) fn fresh_statuses(service: &crate::config::ServiceConfig) -> Vec<BackendStatus> {
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
mod tests {
    use super::*;
    use crate::{backend_state::AgentAdmin, control::fake::FakeMaps};

    const CONFIG: &str = r#"
interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
health = { check = "tcp", interval = "100ms", timeout = "50ms", rise = 2, fall = 3, slowstart = "10s" }
load = { agent_port = 9777, interval = "100ms", overload_below = "20%" }
"#;

    const B1: BackendRef = BackendRef {
        service: 0,
        backend: 0,
        generation: 0,
    };
    const B2: BackendRef = BackendRef {
        service: 0,
        backend: 1,
        generation: 0,
    };

    /// A monitor whose backends all passed their first check, applied to fake maps.
    fn started() -> (Monitor, FakeMaps) {
        let mut monitor = Monitor::new(Config::parse(CONFIG).unwrap(), None);
        for status in &mut monitor.statuses[0] {
            status.health.observe(Ok(()), 2, 3);
        }
        let mut maps = FakeMaps::default();
        monitor.evaluate(&mut maps).unwrap();
        (monitor, maps)
    }

    fn table(maps: &FakeMaps) -> Vec<u32> {
        maps.tables[&0].clone()
    }

    fn fail() -> Event {
        Event::Health(B2, Err("connection refused".into()), Duration::ZERO)
    }

    fn state_of(monitor: &Monitor, at: BackendRef) -> State {
        monitor.statuses[at.service][at.backend]
            .reported
            .as_ref()
            .unwrap()
            .state
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_failing_fall_checks_leaves_at_once_and_its_flows_are_purged() {
        let (mut monitor, mut maps) = started();
        assert_eq!(table(&maps), [0, 1, 2]);
        maps.flows_by_backend.insert(1, 7);

        for n in 1..=2 {
            assert!(!monitor.handle(fail()), "failure {n} of 3 changes nothing");
        }
        assert!(monitor.handle(fail()));
        maps.log.clear();
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(
            maps.log,
            ["table 0 [0, 2]", "purge [1]"],
            "the table first, then the purge"
        );
        assert_eq!(state_of(&monitor, B2), State::Down);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_backend_rises_then_ramps_up_slowly() {
        let (mut monitor, mut maps) = started();
        for _ in 0..3 {
            monitor.handle(fail());
        }
        monitor.evaluate(&mut maps).unwrap();
        assert!(
            !monitor.handle(Event::Health(B2, Ok(()), Duration::ZERO)),
            "rise is 2"
        );
        assert!(monitor.handle(Event::Health(B2, Ok(()), Duration::ZERO)));
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(state_of(&monitor, B2), State::Up);
        // Slow start: weight 1 against 100 at first, then growing.
        let weights = |monitor: &Monitor| {
            monitor.balancer().services()[0]
                .backends
                .iter()
                .map(|b| b.weight)
                .collect::<Vec<_>>()
        };
        assert_eq!(weights(&monitor), [100, 1, 100]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(monitor.any_ramping());
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(weights(&monitor), [100, 50, 100]);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!monitor.any_ramping());
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(weights(&monitor), [100, 100, 100]);
        assert_eq!(table(&maps), [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_and_overload_stop_new_flows_without_purging() {
        let (mut monitor, mut maps) = started();
        maps.flows_by_backend.insert(0, 3);
        let drain = AgentReport {
            admin: Some(AgentAdmin::Drain),
            ..Default::default()
        };
        assert!(monitor.handle(Event::Agent(B1, Ok(drain))));
        maps.log.clear();
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(maps.log, ["table 0 [1, 2]"], "no purge for a drain");
        assert_eq!(state_of(&monitor, B1), State::Draining);

        let busy = AgentReport {
            weight_percent: Some(10),
            ..Default::default()
        };
        assert!(monitor.handle(Event::Agent(B2, Ok(busy))));
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(state_of(&monitor, B2), State::Overloaded);
        assert_eq!(
            table(&maps),
            [2],
            "only the backend with room takes new flows"
        );

        let ready = AgentReport {
            weight_percent: Some(100),
            ready: true,
            ..Default::default()
        };
        monitor.handle(Event::Agent(B1, Ok(ready.clone())));
        monitor.handle(Event::Agent(B2, Ok(ready)));
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(table(&maps), [0, 1, 2]);
        assert!(!maps.log.iter().any(|line| line.starts_with("purge")));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_agent_changes_nothing() {
        let (mut monitor, mut maps) = started();
        assert!(!monitor.handle(Event::Agent(B1, Err("refused".into()))));
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(state_of(&monitor, B1), State::Up);
        assert_eq!(table(&maps), [0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn all_backends_down_leaves_an_empty_table() {
        let (mut monitor, mut maps) = started();
        for backend in 0..3 {
            for _ in 0..3 {
                monitor.handle(Event::Health(
                    BackendRef {
                        service: 0,
                        backend,
                        generation: 0,
                    },
                    Err("timed out".into()),
                    Duration::ZERO,
                ));
            }
        }
        monitor.evaluate(&mut maps).unwrap();
        assert!(table(&maps).is_empty());
    }
}
