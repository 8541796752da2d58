//! The active-flow counts the data plane keeps (`ACTIVE_FLOWS`: per backend, the flows whose
//! client sent a packet in an activity epoch), read every second for the reports and for the
//! services whose load depends on them (`max_flows`). Reading them costs two batched reads
//! of the per-CPU array (one per epoch, up to the highest backend id), whatever the number of
//! flows.

use tracing::warn;

use super::Monitor;
use crate::dataplane::Maps;

impl Monitor {
    /// Reads the active-flow counts of every backend the balancer knows and gives the backends
    /// of services with `max_flows` theirs. Returns whether there was any such service (and
    /// so may need new weights). A failed read is logged and changes nothing.
    pub(super) fn count_active_flows(&mut self, maps: &Maps) -> bool {
        let ids: Vec<u32> = self
            .balancer
            .services()
            .iter()
            .flat_map(|service| service.backends.iter().map(|backend| backend.id))
            .collect();
        match maps.active_flows(&ids) {
            Ok(active) => self.active_flows = active,
            Err(error) => {
                warn!("reading the active-flow counts: {error:#}");
                return false;
            }
        }
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
                status.active_flows = Some(self.active_flows.of(backend.id));
                status.update_overload(load);
            }
        }
        any
    }
}
