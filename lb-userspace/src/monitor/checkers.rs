//! The checker tasks (one per backend health check, one per agent) and what the monitor does
//! with their reports: it records them in the backends' statuses.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior, interval},
};
use tracing::{info, warn};

use super::Monitor;
use crate::{
    config::HealthCheck,
    health::{
        agent::{self, AgentReport},
        checks,
    },
};

/// Where a backend is: indexes into the config's services and their backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BackendRef {
    pub(super) service: usize,
    pub(super) backend: usize,
    /// The monitor's generation when the checker started: events of checkers from before a
    /// reload (whose indexes meant other backends) are ignored.
    pub(super) generation: u64,
}

/// What a checker task reports.
pub(super) enum Event {
    /// A health check's result and how long it took.
    Health(BackendRef, Result<(), String>, Duration),
    /// An agent's answer.
    Agent(BackendRef, Result<AgentReport, String>),
    /// The data plane marked a backend suspect, or would have but for the share cap.
    Passive(lb_common::passive::PassiveEvent),
    /// The result of the check run at once to confirm a passive mark.
    Confirm(BackendRef, Result<(), String>, Duration),
}

impl Monitor {
    /// Starts one checker task per backend health check and per agent.
    pub(super) fn spawn_checkers(&mut self, events: &mpsc::Sender<Event>) {
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
    /// A passive report (which needs the events channel to start its confirming check) is
    /// [`Self::passive_report`]'s, not this.
    pub(super) fn handle(&mut self, event: Event) -> bool {
        let at = match &event {
            Event::Health(at, ..) | Event::Agent(at, _) | Event::Confirm(at, ..) => *at,
            Event::Passive(_) => return false,
        };
        if at.generation != self.generation {
            return false;
        }
        match event {
            Event::Passive(_) => false,
            Event::Confirm(at, result, latency) => self.confirmed(at, result, latency),
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

    fn address(&self, at: BackendRef) -> SocketAddr {
        self.config.services[at.service].backends[at.backend].address
    }

    /// Whether a backend is in its slow start (its weight must be recomputed as time passes).
    pub(super) fn any_ramping(&self) -> bool {
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
}
