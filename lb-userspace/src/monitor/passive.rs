//! Passive health, the daemon's side: the data plane reports each backend it marks suspect
//! (a ring buffer, read by a task); the monitor shows the mark, runs the backend's check at
//! once, and takes the backend Down if the check fails too, or clears the mark if it passes.
//! A service without checks, or a backend whose checks an operator paused, leaves the mark to
//! expire after its hold.

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
    checkers::Event,
    core::{BackendRef, Core},
};
use crate::{
    config::HealthCheck,
    dataplane::maps::passive::PassiveEvents,
    health::checks::{self, CheckPath, CheckResult, Failure},
};

/// Reads the data plane's reports as they come and hands them to the monitor, until the
/// monitor stops listening.
fn spawn_reader(reports: PassiveEvents, events: mpsc::Sender<Event>) -> JoinHandle<()> {
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

/// The daemon's side of passive health: the task reading the data plane's reports, and the
/// marks the next evaluation clears in the data plane.
#[derive(Default)]
pub(super) struct Passive {
    reader: Option<JoinHandle<()>>,
    /// Backends whose passive mark the next evaluation clears in the data plane.
    marks_to_clear: Vec<u32>,
}

impl Passive {
    /// Starts reading the data plane's reports into `events`.
    pub(super) fn start(&mut self, reports: PassiveEvents, events: mpsc::Sender<Event>) {
        self.stop();
        self.reader = Some(spawn_reader(reports, events));
    }

    /// Stops reading reports.
    pub(super) fn stop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }

    /// Has the marks of `ids` cleared by the next evaluation (backends that went Down: a Down
    /// backend's mark would hold a place in its service's share of suspects).
    pub(super) fn clear_marks(&mut self, ids: impl IntoIterator<Item = u32>) {
        self.marks_to_clear.extend(ids);
    }

    /// The marks to clear in the data plane now, each once.
    pub(super) fn take_marks_to_clear(&mut self) -> Vec<u32> {
        let mut clear = std::mem::take(&mut self.marks_to_clear);
        clear.sort_unstable();
        clear.dedup();
        clear
    }

    /// Records a report of the data plane: a backend marked suspect is shown as such and
    /// checked at once (its result comes back to `events` as [`Event::Confirm`]). Returns
    /// whether anything that decides the tables (or the states shown) changed.
    pub(super) fn report(
        &mut self,
        core: &mut Core,
        generation: u64,
        report: &PassiveEvent,
        events: &mpsc::Sender<Event>,
    ) -> bool {
        let Some(at) = core.backend_of_id(report.backend_id, generation) else {
            return false;
        };
        let service = &core.config().services[at.service];
        let (name, address) = (service.name.clone(), service.backends[at.backend].address);
        let why = describe(report);
        if report.kind == passive_event::CAPPED {
            warn!(service = name, backend = %address, reason = why, "backend not marked suspect: as many of the service's backends are suspect as max_share allows");
            return false;
        }
        // What confirms the mark: the backend's check, or (no checks, or paused) only the
        // mark's hold.
        let paused = core.statuses()[at.service][at.backend]
            .checks_paused()
            .is_some();
        let confirm = match service.health.check {
            ref check if *check != HealthCheck::None && !paused => Ok((
                check.clone(),
                service.backends[at.backend].check_address(),
                service.health.timeout,
            )),
            _ => Err(service.passive.as_ref().map_or(Duration::ZERO, |p| p.hold)),
        };
        let status = core.status_mut(at);
        status.passive_marks += 1;
        if !status.health.is_up() {
            return false;
        }
        warn!(service = name, backend = %address, reason = why, "backend suspect: new flows skip it until a check decides");
        status.suspect = Some(why);
        // Detached (not among the checkers, which only a reload stops): each ends after one
        // check or one hold, and its report is dropped if a reload came first.
        let events = events.clone();
        match confirm {
            Err(hold) => {
                // Nothing to confirm with: the mark lasts its hold, and so does what is shown.
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    let _ = events
                        .send(Event::Confirm(at, Ok(()), Duration::ZERO))
                        .await;
                });
            }
            Ok((check, target, limit)) => {
                tokio::spawn(async move {
                    let started = Instant::now();
                    // Passive health is for NAT services, whose checks go directly.
                    let result = checks::run(&check, target, &CheckPath::Direct, limit).await;
                    let _ = events
                        .send(Event::Confirm(at, result, started.elapsed()))
                        .await;
                });
            }
        }
        true
    }

    /// The confirming check's result: a check that fails takes the backend Down at once, one
    /// that times out counts as one failed check (rise and fall decide: a backend too busy
    /// to take a new connection in time is not proven unable to serve); a pass clears the
    /// mark (the data plane's, at the next evaluation).
    pub(super) fn confirmed(
        &mut self,
        core: &mut Core,
        at: BackendRef,
        result: CheckResult,
        latency: Duration,
    ) -> bool {
        let health = &core.config().services[at.service].health;
        let (rise, fall) = (health.rise, health.fall);
        let service = core.config().services[at.service].name.clone();
        let address = core.address(at);
        let id = core.backend_id(at.service, at.backend);
        let status = core.status_mut(at);
        let Some(why) = status.suspect.take() else {
            return false;
        };
        status.check_latency = Some(latency);
        self.marks_to_clear.extend(id);
        match result {
            Err(failure) if failure.timed_out => {
                let failure = Failure {
                    message: format!("{} (confirming {why})", failure.message),
                    ..failure
                };
                status.health.observe(Err(failure), rise, fall);
            }
            Err(failure) => {
                status.health.fail_now(Failure {
                    message: format!("{} (confirming {why})", failure.message),
                    ..failure
                });
            }
            Ok(()) => {
                info!(service, backend = %address, reason = why, "passive mark cleared: the check passes");
            }
        }
        true
    }
}
