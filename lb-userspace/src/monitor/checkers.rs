//! The checkers: one task per backend health check and one per agent, which report to the
//! monitor; and what is done with their reports (recorded in the backends' statuses).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    ops::RangeInclusive,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_common::passive::PassiveEvent;
use tokio::{
    sync::{Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
    time::{Instant, MissedTickBehavior, interval_at},
};
use tracing::{info, warn};

use super::core::{BackendRef, Core};
use crate::{
    config::{BackendConfig, CheckVia, Config, Forwarding, HealthCheck, ServiceConfig},
    health::{
        agent::{self, AgentReport},
        checks::{self, CheckPath, CheckResult, Failure},
        tunnel::{CheckTunnel, Encapsulation, TunnelHop},
    },
    sys::limits,
};

/// How many reports may wait for the monitor.
const QUEUE: usize = 1024;
/// Health checks and agent queries in flight at once (each holds a socket; more wait their
/// turn): an eighth of the open files the daemon may hold, within these bounds. Under the
/// unit's limit (524,288) 16,384 backends take their first checks within one timeout; with
/// the checks spread over their intervals, far more are checked without waiting.
const IN_FLIGHT: RangeInclusive<u64> = 256..=16_384;

/// What a checker task (or the data plane's passive reports) tells the monitor.
pub(super) enum Event {
    /// A health check's result and how long it took.
    Health(BackendRef, CheckResult, Duration),
    /// An agent's answer.
    Agent(BackendRef, Result<AgentReport, String>),
    /// The data plane marked a backend suspect, or would have but for the share cap.
    Passive(PassiveEvent),
    /// The result of the check run at once to confirm a passive mark.
    Confirm(BackendRef, CheckResult, Duration),
    /// A connection attempt beside the checks proved the backend's host gone.
    Gone(BackendRef, Failure),
}

impl Event {
    /// The backend the event is about, unless it names one only by its data-plane id.
    pub(super) fn backend(&self) -> Option<BackendRef> {
        match self {
            Self::Health(at, ..)
            | Self::Agent(at, _)
            | Self::Confirm(at, ..)
            | Self::Gone(at, _) => Some(*at),
            Self::Passive(_) => None,
        }
    }
}

/// The checker tasks, their generation, and the agents that do not answer.
pub(super) struct Checkers {
    tasks: JoinSet<()>,
    /// Incremented by every reload (see [`BackendRef`]).
    generation: u64,
    /// The last error of each agent that does not answer (logged once).
    agent_errors: HashMap<BackendRef, String>,
    events: mpsc::Sender<Event>,
    /// Permits for checks and queries in flight.
    slots: Arc<Semaphore>,
    /// The backends (service, backend index) whose checks an operator paused: their tasks
    /// skip their turns.
    paused: Arc<RwLock<HashSet<(usize, usize)>>>,
    /// The way of the checks inside the tunnel, opened by the first of them.
    tunnel: CheckTunnel,
}

impl Checkers {
    /// No checkers yet; their reports will come out of the receiver returned.
    pub(super) fn new() -> (Self, mpsc::Receiver<Event>) {
        let (events, received) = mpsc::channel(QUEUE);
        let checkers = Self {
            tasks: JoinSet::new(),
            generation: 0,
            agent_errors: HashMap::new(),
            events,
            slots: Arc::new(Semaphore::new(in_flight())),
            paused: Arc::default(),
            tunnel: CheckTunnel::default(),
        };
        (checkers, received)
    }

    /// Where checkers and other reporters send their events.
    pub(super) fn events(&self) -> &mpsc::Sender<Event> {
        &self.events
    }

    /// A reference to backend `backend` of service `service`, of this generation.
    pub(super) fn at(&self, service: usize, backend: usize) -> BackendRef {
        BackendRef {
            service,
            backend,
            generation: self.generation,
        }
    }

    /// The current generation.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `at` was made in this generation (before no reload).
    pub(super) fn is_current(&self, at: BackendRef) -> bool {
        at.generation == self.generation
    }

    /// Takes the backends whose checks are paused from `core`'s statuses (their tasks skip
    /// their turns from now on).
    pub(super) fn sync_paused(&self, core: &Core) {
        let paused = core
            .statuses()
            .iter()
            .enumerate()
            .flat_map(|(s, statuses)| {
                statuses
                    .iter()
                    .enumerate()
                    .filter(|(_, status)| status.checks_paused().is_some())
                    .map(move |(b, _)| (s, b))
            })
            .collect();
        *self
            .paused
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = paused;
    }

    /// Whether an operator paused the checks of backend `backend` of service `service`.
    fn is_paused(paused: &RwLock<HashSet<(usize, usize)>>, service: usize, backend: usize) -> bool {
        paused
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&(service, backend))
    }

    /// Whether the checks of backend `backend` of service `service` are paused now.
    #[cfg(test)]
    pub(super) fn is_paused_now(&self, service: usize, backend: usize) -> bool {
        Self::is_paused(&self.paused, service, backend)
    }

    /// Runs every checked backend's first health check at once and returns their results
    /// (they decide each backend's initial health). Takes at most the longest check timeout.
    pub(super) async fn first_checks(&self, core: &Core) -> Result<Vec<Event>> {
        let mut first = JoinSet::new();
        for (service_index, service) in core.config().services.iter().enumerate() {
            if service.health.check == HealthCheck::None {
                continue;
            }
            for (backend_index, backend) in service.backends.iter().enumerate() {
                if core.statuses()[service_index][backend_index]
                    .checks_paused()
                    .is_some()
                {
                    continue;
                }
                let (check, limit) = (service.health.check.clone(), service.health.timeout);
                let (target, path) = self.target(core.config(), service, backend);
                let at = self.at(service_index, backend_index);
                let slots = Arc::clone(&self.slots);
                first.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let started = Instant::now();
                    let result = checks::run(&check, target, &path, limit).await;
                    Event::Health(at, result, started.elapsed())
                });
            }
        }
        let mut results = Vec::new();
        while let Some(joined) = first.join_next().await {
            results.push(joined.context("a health check task failed")?);
        }
        Ok(results)
    }

    /// Starts one checker task per backend health check and per agent of `core`'s config. The
    /// backends are checked at instants spread evenly over their intervals, not all at once.
    pub(super) fn spawn(&mut self, core: &Core) {
        self.sync_paused(core);
        let count = core.config().backend_count() as u32;
        let mut nth = 0;
        for (service_index, service) in core.config().services.iter().enumerate() {
            for (backend_index, backend) in service.backends.iter().enumerate() {
                let at = self.at(service_index, backend_index);
                let offset = spread(service.health.interval, nth, count);
                if service.health.check != HealthCheck::None {
                    let check = service.health.check.clone();
                    let (target, path) = self.target(core.config(), service, backend);
                    // Whether the host is gone is asked of its own address.
                    let host = backend.check_address();
                    let (every, limit) = (service.health.interval, service.health.timeout);
                    // A backend checked before (at start, or before a reload) waits its
                    // offset into the interval; a new one is checked at once.
                    let checked = core.statuses()[service_index][backend_index]
                        .health
                        .is_known();
                    let (events, slots) = (self.events.clone(), Arc::clone(&self.slots));
                    let paused = Arc::clone(&self.paused);
                    let first = Instant::now() + if checked { offset } else { Duration::ZERO };
                    self.tasks.spawn(async move {
                        let mut ticks = interval_at(first, every);
                        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        let mut gone_probe = GoneProbe::default();
                        loop {
                            ticks.tick().await;
                            if Self::is_paused(&paused, service_index, backend_index) {
                                continue;
                            }
                            let Ok(_slot) = slots.acquire().await else {
                                break;
                            };
                            let started = Instant::now();
                            let result = checks::run(&check, target, &path, limit).await;
                            if matches!(&result, Err(failure) if failure.timed_out) {
                                gone_probe.start(at, host, &events);
                            }
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
                    let (events, slots) = (self.events.clone(), Arc::clone(&self.slots));
                    let offset = spread(every, nth, count);
                    self.tasks.spawn(async move {
                        let mut ticks = interval_at(Instant::now() + offset, every);
                        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        loop {
                            ticks.tick().await;
                            let Ok(_slot) = slots.acquire().await else {
                                break;
                            };
                            let result = agent::query(address, limit).await;
                            if events.send(Event::Agent(at, result)).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                nth += 1;
            }
        }
    }

    /// After a reload: stops every checker and starts those of the new config, in a new
    /// generation (events of the old ones are ignored).
    pub(super) fn restart(&mut self, core: &Core) {
        self.stop();
        self.agent_errors.clear();
        self.generation += 1;
        self.spawn(core);
    }

    /// Stops every checker task.
    pub(super) fn stop(&mut self) {
        self.tasks.abort_all();
        self.tasks = JoinSet::new();
    }

    /// Stops every checker task and removes what the checks inside the tunnel added to the
    /// host's routing, if they ran.
    pub(super) async fn close(&mut self) {
        self.stop();
        self.tunnel.close().await;
    }

    /// Where backend `backend` of `service` (of `config`) is checked, and along which path:
    /// its own address (or check port) directly, or the VIP inside the service's tunnel.
    fn target(
        &self,
        config: &Config,
        service: &ServiceConfig,
        backend: &BackendConfig,
    ) -> (SocketAddr, CheckPath) {
        let direct = (backend.check_address(), CheckPath::Direct);
        if service.health.via != CheckVia::Tunnel {
            return direct;
        }
        let source = match service.listen.ip() {
            std::net::IpAddr::V4(_) => config.tunnel.source.map(Into::into),
            std::net::IpAddr::V6(_) => config.tunnel.source_ipv6.map(Into::into),
        };
        let encapsulation = match service.forwarding {
            Forwarding::Ipip => Encapsulation::Ipip,
            Forwarding::Gue => Encapsulation::Gue {
                port: config.tunnel.gue_port,
            },
            // The config allows `via = "tunnel"` only with a tunnel and its source.
            Forwarding::Nat | Forwarding::Dsr => return direct,
        };
        let Some(source) = source else {
            return direct;
        };
        let hop = TunnelHop {
            backend: backend.address.ip(),
            source,
            encapsulation,
        };
        let port = backend.check_port.unwrap_or(service.listen.port());
        let target = SocketAddr::new(service.listen.ip(), port);
        (target, CheckPath::Tunnel(self.tunnel.clone(), hop))
    }

    /// Records a health check's or an agent's report in the backend's status; returns whether
    /// anything that decides the tables changed. Events of another generation, and passive
    /// events and confirmations (the passive module's), change nothing here.
    pub(super) fn record(&mut self, core: &mut Core, event: Event) -> bool {
        if event.backend().is_none_or(|at| !self.is_current(at)) {
            return false;
        }
        // A check that was under way when the operator paused them says nothing now.
        let paused = |at: BackendRef| {
            core.statuses()[at.service][at.backend]
                .checks_paused()
                .is_some()
        };
        if let Event::Health(at, ..) | Event::Gone(at, _) = &event
            && paused(*at)
        {
            return false;
        }
        match event {
            Event::Passive(_) | Event::Confirm(..) => false,
            Event::Gone(at, failure) => {
                warn!(
                    service = core.config().services[at.service].name,
                    backend = %core.address(at),
                    "backend host gone: {failure}"
                );
                core.status_mut(at).health.prove_gone(failure)
            }
            Event::Health(at, result, latency) => {
                let (rise, fall) = {
                    let health = &core.config().services[at.service].health;
                    (health.rise, health.fall)
                };
                let status = core.status_mut(at);
                status.check_latency = Some(latency);
                status.health.observe(result, rise, fall).is_some()
            }
            Event::Agent(at, Err(error)) => {
                // An unreachable agent leaves the backend as it was (HAProxy does the same);
                // health checks decide whether it can serve.
                if self.agent_errors.get(&at) != Some(&error) {
                    warn!(
                        service = core.config().services[at.service].name,
                        backend = %core.address(at),
                        "load check failed, keeping the last known load: {error}"
                    );
                    self.agent_errors.insert(at, error);
                }
                false
            }
            Event::Agent(at, Ok(report)) => {
                if self.agent_errors.remove(&at).is_some() {
                    info!(service = core.config().services[at.service].name, backend = %core.address(at), "load check answers again");
                }
                let (config, statuses) = core.statuses_mut();
                let load = config.services[at.service].load.as_ref();
                let status = &mut statuses[at.service][at.backend];
                let before = (status.agent.clone(), status.overloaded);
                status.agent.apply(&report);
                if let Some(load) = load {
                    status.update_overload(load);
                }
                before != (status.agent.clone(), status.overloaded)
            }
        }
    }
}

/// One backend's connection attempt beside its checks (see [`checks::gone`]), at most one at
/// a time. A check that times out cannot tell a host gone from one too busy: the kernel
/// learns that its neighbour does not answer only after about 3 s.
#[derive(Default)]
struct GoneProbe(Option<JoinHandle<()>>);

impl GoneProbe {
    /// Starts an attempt unless one is under way; its proof goes to `events`.
    fn start(&mut self, at: BackendRef, target: SocketAddr, events: &mpsc::Sender<Event>) {
        if self.0.as_ref().is_some_and(|probe| !probe.is_finished()) {
            return;
        }
        let events = events.clone();
        self.0 = Some(tokio::spawn(async move {
            if let Some(failure) = checks::gone(target, checks::GONE_WAIT).await {
                let _ = events.send(Event::Gone(at, failure)).await;
            }
        }));
    }
}

impl Drop for GoneProbe {
    fn drop(&mut self) {
        if let Some(probe) = &self.0 {
            probe.abort();
        }
    }
}

/// How many checks and queries may be in flight (see [`IN_FLIGHT`]).
fn in_flight() -> usize {
    let open_files = limits::open_files().unwrap_or(*IN_FLIGHT.start() * 4);
    (open_files / 8).clamp(*IN_FLIGHT.start(), *IN_FLIGHT.end()) as usize
}

/// Where in `interval` the `index`-th of all `count` backends is checked: evenly spread.
fn spread(interval: Duration, index: u32, count: u32) -> Duration {
    interval * index / count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_of_a_service_are_spread_over_its_interval() {
        let every = Duration::from_secs(2);
        let offsets: Vec<u128> = (0..4).map(|i| spread(every, i, 4).as_millis()).collect();
        assert_eq!(offsets, [0, 500, 1000, 1500]);
        assert_eq!(spread(every, 0, 1), Duration::ZERO);
    }
}
