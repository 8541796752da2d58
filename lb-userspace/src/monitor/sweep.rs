//! The flow sweep, driven by the monitor: when it is due, what it found, and the active-flow
//! counts it gives the services whose load depends on them (`max_flows`).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{ACTIVE_FLOW_WINDOW, Monitor};
use crate::dataplane::Maps;

impl Monitor {
    /// How often the flow tables are swept: often enough for the shortest flow timeout
    /// (see [`crate::config::FlowTimeouts::sweep_every`]) and for the shortest load interval
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

    /// Whether a sweep is due.
    pub(super) fn sweep_due(&self) -> bool {
        self.last_sweep
            .is_none_or(|last| last.elapsed() >= self.sweep_every())
    }

    /// Sweeps the flow tables: deletes the flows that are over and counts the active ones.
    /// Returns whether a service has `max_flows` (and so may need new weights). A failed sweep
    /// is logged and changes nothing.
    pub(super) fn sweep(&mut self, maps: &mut Maps) -> bool {
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

    /// Gives the backends of services with `max_flows` their active-flow counts from the last
    /// sweep. Returns whether there was any such service.
    fn count_flows(&mut self) -> bool {
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
}
