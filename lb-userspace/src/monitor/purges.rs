//! What the data plane forgets after a decision is applied: the flows of backends that went
//! Down (which, the plan says), and the source persistence of clients whose backend stopped
//! taking new flows (so that their next new flow is placed afresh).

use std::collections::HashSet;

use anyhow::Result;
use tracing::{debug, info};

use super::{Monitor, plan};
use crate::control::{DataplaneMaps, Purge};

impl Monitor {
    /// Purges the flows the plan says to purge, all of one kind at once; a purge that fails is
    /// made again by the next evaluation.
    pub(super) fn purge_down(
        &mut self,
        plan: &plan::Plan,
        maps: &mut impl DataplaneMaps,
    ) -> Result<()> {
        for purge in [Purge::Unestablished, Purge::All] {
            let backends: Vec<(usize, usize)> = plan
                .purges
                .iter()
                .filter(|p| p.2 == purge)
                .map(|&(service, backend, _)| (service, backend))
                .collect();
            let ids: Vec<u32> = backends
                .iter()
                .filter_map(|&(s, b)| self.core.backend_id(s, b))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let purged = match maps.purge_flows(&ids, purge) {
                Ok(purged) => purged,
                Err(error) => {
                    // Purged again by the next evaluation.
                    for &(s, b) in &backends {
                        self.core.status_mut(self.checkers.at(s, b)).purged = None;
                    }
                    return Err(error);
                }
            };
            for (s, b) in backends {
                let service = &self.core.config().services[s];
                let which = match purge {
                    Purge::All => "every flow",
                    Purge::Unestablished => "flows other than established connections",
                };
                info!(service = service.name, backend = %service.backends[b].address, purged, "{which} of a Down backend purged");
            }
        }
        Ok(())
    }

    /// Forgets the source persistence of every client whose backend no longer takes new flows
    /// (out of its tables: Down, drained, weight 0, removed), once the set of backends that
    /// do changed; a failure is made good by the next evaluation.
    pub(super) fn forget_persistence(&mut self, maps: &mut impl DataplaneMaps) -> Result<()> {
        let config = self.core.config();
        let persisting: HashSet<u32> = (config.services.iter().enumerate())
            .filter(|(_, service)| service.persistence.is_some())
            .filter_map(|(s, _)| self.core.applied(s))
            .flat_map(|service| &service.backends)
            .filter(|backend| backend.weight > 0)
            .map(|backend| backend.id)
            .collect();
        if persisting == self.persisting {
            return Ok(());
        }
        let forgotten = maps.forget_persistence(&persisting)?;
        debug!(
            forgotten,
            "persistence of clients of backends that take no new flows forgotten"
        );
        self.persisting = persisting;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{CONFIG, fail, started_with};
    use crate::config::Config;

    #[tokio::test(start_paused = true)]
    async fn a_backend_that_stops_taking_new_flows_loses_its_clients_persistence() {
        let config = CONFIG.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\npersistence = \"5m\"\n",
        );
        let (mut monitor, mut maps) = started_with(Config::parse(&config).unwrap());
        assert!(
            maps.log.contains(&"persist keep [0, 1, 2]".to_owned()),
            "{:?}",
            maps.log
        );
        // B2 goes Down: its clients are placed afresh.
        maps.log.clear();
        for _ in 0..3 {
            monitor.handle(fail());
        }
        monitor.evaluate(&mut maps).unwrap();
        assert!(
            maps.log.contains(&"persist keep [0, 2]".to_owned()),
            "{:?}",
            maps.log
        );
        // Nothing changed: nothing is read again.
        maps.log.clear();
        monitor.evaluate(&mut maps).unwrap();
        assert!(
            maps.log.iter().all(|l| !l.starts_with("persist")),
            "{:?}",
            maps.log
        );
    }
}
