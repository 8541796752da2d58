//! Source persistence, the daemon's side: the clients that persist on a backend that stops
//! taking new flows (Down, drained, disabled, weight 0, removed) are forgotten in the data
//! plane (`PERSISTENCE`), so that their next new flow is placed afresh.

use std::collections::HashSet;

use anyhow::Result;
use tracing::debug;

use super::core::Core;
use crate::control::DataplaneMaps;

/// The backends of services with persistence that took new flows when last decided.
#[derive(Default)]
pub(super) struct ClientPersistence {
    serving: HashSet<u32>,
}

impl ClientPersistence {
    /// After a decision is applied to `core`'s balancer: forgets, in `maps`, every client
    /// whose backend no longer takes new flows, once the set of backends that do changed; a
    /// failure is made good by the next decision.
    pub(super) fn forget(&mut self, core: &Core, maps: &mut impl DataplaneMaps) -> Result<()> {
        let config = core.config();
        let serving: HashSet<u32> = (config.services.iter().enumerate())
            .filter(|(_, service)| service.persistence.is_some())
            .filter_map(|(s, _)| core.applied(s))
            .flat_map(|service| &service.backends)
            .filter(|backend| backend.weight > 0)
            .map(|backend| backend.id)
            .collect();
        if serving == self.serving {
            return Ok(());
        }
        let forgotten = maps.forget_persistence(&serving)?;
        debug!(
            forgotten,
            "persistence of clients of backends that take no new flows forgotten"
        );
        self.serving = serving;
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
