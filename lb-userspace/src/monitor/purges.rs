//! What the data plane forgets after a decision is applied: the flows of backends that went
//! Down (which, the plan says).

use anyhow::Result;
use tracing::info;

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
}
