//! Passive health, the daemon's side: the data plane reports each backend it marks suspect
//! (a ring buffer, read by a task); the monitor shows the mark, runs the backend's check at
//! once, and takes the backend Down if the check fails too, or clears the mark if it passes.
//! A service without checks leaves the mark to expire after its hold.

use std::time::Duration;

use lb_common::passive::{PassiveEvent, passive_event};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

use super::{
    Monitor,
    checkers::{BackendRef, Event},
};
use crate::{config::HealthCheck, dataplane::maps::passive::PassiveEvents, health::checks};

/// Reads the data plane's reports as they come and hands them to the monitor, until the
/// monitor stops listening.
pub(super) fn spawn_reader(reports: PassiveEvents, events: mpsc::Sender<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: `PassiveEvents` owns the ring buffer's descriptor, open until it is dropped,
        // and always returns that one.
        let mut ring = match unsafe { AsyncFd::register_with_interest(reports, Interest::READABLE) }
        {
            Ok(ring) => ring,
            Err(error) => {
                warn!(
                    "passive health reports cannot be read, marks will expire unconfirmed: {}",
                    error.into_parts().1
                );
                return;
            }
        };
        loop {
            let Ok(mut guard) = ring.readable_mut().await else {
                return;
            };
            while let Some(report) = guard.get_inner_mut().next_event() {
                if events.send(Event::Passive(report)).await.is_err() {
                    return;
                }
            }
            guard.clear_ready();
        }
    })
}

/// What a report says, for logs and `xlb status`: "passive: 3 connections refused in 40 ms".
pub(super) fn describe(report: &PassiveEvent) -> String {
    let span = Duration::from_nanos(report.time_ns.saturating_sub(report.window_start_ns));
    let span = humantime::format_duration(Duration::from_millis(span.as_millis() as u64));
    let plural = |n: u32, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut parts = Vec::new();
    if report.refused > 0 {
        parts.push(plural(
            report.refused,
            "connection refused",
            "connections refused",
        ));
    }
    if report.unanswered > 0 {
        parts.push(plural(
            report.unanswered,
            "handshake unanswered",
            "handshakes unanswered",
        ));
    }
    format!("passive: {} in {span}", parts.join(", "))
}

impl Monitor {
    /// Where the backend with data-plane id `id` is in the config, if it is there.
    fn backend_of_id(&self, id: u32) -> Option<BackendRef> {
        self.balancer
            .services()
            .iter()
            .enumerate()
            .find_map(|(service, state)| {
                let backend = state.backends.iter().position(|b| b.id == id)?;
                Some(BackendRef {
                    service,
                    backend,
                    generation: self.generation,
                })
            })
    }

    /// Records a report of the data plane: a backend marked suspect is shown as such and
    /// checked at once. Returns whether anything that decides the tables (or the states
    /// shown) changed.
    pub(super) fn passive_report(
        &mut self,
        report: &PassiveEvent,
        events: &mpsc::Sender<Event>,
    ) -> bool {
        let Some(at) = self.backend_of_id(report.backend_id) else {
            return false;
        };
        let service = &self.config.services[at.service];
        let address = service.backends[at.backend].address;
        let why = describe(report);
        if report.kind == passive_event::CAPPED {
            warn!(service = service.name, backend = %address, reason = why, "backend not marked suspect: as many of the service's backends are suspect as max_share allows");
            return false;
        }
        let status = &mut self.statuses[at.service][at.backend];
        status.passive_marks += 1;
        if !status.health.is_up() {
            return false;
        }
        warn!(service = service.name, backend = %address, reason = why, "backend suspect: new flows skip it until a check decides");
        status.suspect = Some(why);
        // Detached (not in `self.tasks`, which only a reload empties): each ends after one
        // check or one hold, and its report is dropped if a reload came first.
        let events = events.clone();
        if service.health.check == HealthCheck::None {
            // Nothing to confirm with: the mark lasts its hold, and so does what is shown.
            let hold = service.passive.as_ref().map_or(Duration::ZERO, |p| p.hold);
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let _ = events
                    .send(Event::Confirm(at, Ok(()), Duration::ZERO))
                    .await;
            });
        } else {
            let (check, target, limit) = (
                service.health.check.clone(),
                service.backends[at.backend].check_address(),
                service.health.timeout,
            );
            tokio::spawn(async move {
                let started = Instant::now();
                let result = checks::run(&check, target, limit).await;
                let _ = events
                    .send(Event::Confirm(at, result, started.elapsed()))
                    .await;
            });
        }
        true
    }

    /// The confirming check's result: a failure takes the backend Down at once; a pass
    /// clears the mark (the data plane's, at the next evaluation).
    pub(super) fn confirmed(
        &mut self,
        at: BackendRef,
        result: Result<(), String>,
        latency: Duration,
    ) -> bool {
        let service = &self.config.services[at.service];
        let address = service.backends[at.backend].address;
        let id = self.balancer.services()[at.service].backends[at.backend].id;
        let status = &mut self.statuses[at.service][at.backend];
        let Some(why) = status.suspect.take() else {
            return false;
        };
        status.check_latency = Some(latency);
        self.marks_to_clear.push(id);
        match result {
            Err(error) => {
                status
                    .health
                    .fail_now(format!("{error} (confirming {why})"));
            }
            Ok(()) => {
                info!(service = service.name, backend = %address, reason = why, "passive mark cleared: the check passes");
            }
        }
        true
    }
}
