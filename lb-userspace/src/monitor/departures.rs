//! Backends removed from the config, on their way out. The balancer keeps them out of every
//! table, with their ids and flows (`Balancer::leaving`), so that their connections go on
//! while no new flow reaches them. This owner knows since when each has been leaving, and
//! releases it (its flows purged, its id free) once it has no connection left or its
//! service's `drain_timeout` has passed: HAProxy's and ELB's connection draining, IPVS's
//! weight 0 until ActiveConn reaches 0.

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::core::Core;
use crate::{
    control::{DataplaneMaps, DataplaneReads},
    monitor::connections,
    report::{Connections, LeavingBackendReport, StatusReport},
};

/// How often connections are counted while backends are leaving (a count reads the whole
/// flow tables); timeouts are looked at every review.
const COUNT_EVERY: Duration = Duration::from_secs(5);

/// Why a leaving backend is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Release {
    /// It has no connection left.
    Empty,
    /// Its `drain_timeout` passed with this many connections left, now cut.
    TimedOut(u64),
}

/// Since when each leaving backend (by id) has been leaving, and when their connections
/// were last counted.
#[derive(Debug, Default)]
pub(super) struct Departures {
    since: HashMap<u32, Instant>,
    counted_at: Option<Instant>,
}

/// Every connection of `c`, whatever its state.
fn total(c: &Connections) -> u64 {
    c.open() + c.half_open + c.closing
}

/// Whether a backend leaving `since`, with `timeout`, has had its time at `now`.
fn timed_out(timeout: Duration, since: Instant, now: Instant) -> bool {
    now.saturating_duration_since(since) >= timeout
}

/// Which of `leaving` (id, drain timeout, since) are released at `now`, given the
/// connection counts taken now.
pub(super) fn due(
    leaving: &[(u32, Duration, Instant)],
    counts: &HashMap<u32, Connections>,
    now: Instant,
) -> Vec<(u32, Release)> {
    leaving
        .iter()
        .filter_map(|&(id, timeout, since)| {
            let left = counts.get(&id).map_or(0, total);
            if left == 0 {
                Some((id, Release::Empty))
            } else if timed_out(timeout, since, now) {
                Some((id, Release::TimedOut(left)))
            } else {
                None
            }
        })
        .collect()
}

impl Departures {
    /// Notes the backends that started leaving (now) and forgets those no longer leaving
    /// (released, or back in the config).
    pub(super) fn note(&mut self, core: &Core, now: Instant) {
        let leaving: Vec<u32> = core.balancer().leaving().map(|(_, b)| b.id).collect();
        self.since.retain(|id, _| leaving.contains(id));
        for id in leaving {
            self.since.entry(id).or_insert_with(|| {
                // Counted at the next review: one without connections goes at once.
                self.counted_at = None;
                now
            });
        }
    }

    /// Releases the leaving backends that are due (see [`due`]), and logs each.
    pub(super) fn review(
        &mut self,
        core: &mut Core,
        maps: &mut (impl DataplaneMaps + DataplaneReads),
    ) -> Result<()> {
        let now = Instant::now();
        self.note(core, now);
        if self.since.is_empty() {
            self.counted_at = None;
            return Ok(());
        }
        // Counted every COUNT_EVERY, and when one's time is up (to say how many are cut).
        let leaving = self.leaving(core);
        let stale = self
            .counted_at
            .is_none_or(|at| now.duration_since(at) >= COUNT_EVERY);
        if !stale && !leaving.iter().any(|l| timed_out(l.1, l.2, now)) {
            return Ok(());
        }
        let counts = connections::read(maps, &core.config().flow_timeouts);
        self.counted_at = Some(now);
        let due = due(&leaving, &counts, now);
        if due.is_empty() {
            return Ok(());
        }
        let names: Vec<(u32, String, String)> = core
            .balancer()
            .leaving()
            .map(|(s, b)| {
                (
                    b.id,
                    core.config().services[s].name.clone(),
                    b.address.to_string(),
                )
            })
            .collect();
        let ids: Vec<u32> = due.iter().map(|(id, _)| *id).collect();
        let purged = core.balancer_mut().release(&ids, maps)?;
        debug!(purged, "flows of backends removed from the config purged");
        for (id, why) in due {
            let Some((_, service, backend)) = names.iter().find(|n| n.0 == id) else {
                continue;
            };
            match why {
                Release::Empty => {
                    info!(
                        service,
                        backend, "backend removed from the config has no connection left: released"
                    );
                }
                Release::TimedOut(connections) => {
                    warn!(
                        service,
                        backend,
                        connections,
                        "drain_timeout of a backend removed from the config passed: its connections are cut"
                    );
                }
            }
            self.since.remove(&id);
        }
        Ok(())
    }

    /// (id, its service's drain timeout, since) of every leaving backend.
    fn leaving(&self, core: &Core) -> Vec<(u32, Duration, Instant)> {
        core.balancer()
            .leaving()
            .filter_map(|(s, backend)| {
                let since = *self.since.get(&backend.id)?;
                Some((backend.id, core.config().services[s].drain_timeout, since))
            })
            .collect()
    }

    /// Adds the leaving backends to `report`'s services, with `connections` counted by id.
    pub(super) fn report(
        &self,
        core: &Core,
        report: &mut StatusReport,
        connections: &HashMap<u32, Connections>,
    ) {
        let now = Instant::now();
        for (s, backend) in core.balancer().leaving() {
            let service = &core.config().services[s];
            let Some(status) = report.services.iter_mut().find(|r| r.name == service.name) else {
                continue;
            };
            let since = self.since.get(&backend.id).copied().unwrap_or(now);
            let gone = now.saturating_duration_since(since);
            status.leaving.push(LeavingBackendReport {
                address: backend.address,
                connections: connections.get(&backend.id).copied().unwrap_or_default(),
                since_seconds: gone.as_secs_f64(),
                cut_in_seconds: service.drain_timeout.saturating_sub(gone).as_secs_f64(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaving_backend_goes_when_its_connections_end_or_its_time_is_up() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let leaving = [(1, minute, start), (2, minute, start), (3, minute, start)];
        let counts: HashMap<u32, Connections> = [
            (
                1,
                Connections {
                    established: 2,
                    ..Connections::default()
                },
            ),
            (
                2,
                Connections {
                    closing: 1,
                    ..Connections::default()
                },
            ),
        ]
        .into();
        // Within its time: only the one with no connection at all (3) goes; a closing
        // connection still counts.
        let later = start + Duration::from_secs(10);
        assert_eq!(due(&leaving, &counts, later), [(3, Release::Empty)]);
        // Time is up: those with connections go, cut, and say how many they had.
        let up = start + minute;
        assert_eq!(
            due(&leaving, &counts, up),
            [
                (1, Release::TimedOut(2)),
                (2, Release::TimedOut(1)),
                (3, Release::Empty)
            ]
        );
    }
}
