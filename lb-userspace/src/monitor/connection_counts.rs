//! The open connections of the backends of least-connections services, counted from the flow
//! tables for their table weights (`control::least_connections`): every second, or less often
//! when the tables are so full that a count takes long, so that counting never takes more
//! than a tenth of a CPU (a count of a million flows takes about 460 ms: then every 4.6 s).

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::{connections, core::Core};
use crate::{config::Scheduler, control::DataplaneReads};

/// How much longer than a count the next one waits, at least.
const SPACING: u32 = 10;

/// When the next count is due.
#[derive(Default)]
pub(super) struct ConnectionCounts {
    next: Option<Instant>,
}

impl ConnectionCounts {
    /// Counts the connections of every least-connections service's backends into their
    /// statuses, if any service is one and a count is due at `now`; returns whether a count
    /// changed.
    pub(super) fn count(
        &mut self,
        core: &mut Core,
        maps: &impl DataplaneReads,
        now: Instant,
    ) -> bool {
        let least = |core: &Core, s: usize| {
            core.config().services[s].scheduler == Scheduler::LeastConnections
        };
        let services = core.config().services.len();
        if !(0..services).any(|s| least(core, s)) || self.next.is_some_and(|next| now < next) {
            return false;
        }
        let started = std::time::Instant::now();
        let (entries, now_ns) = match (maps.flows(), maps.now_ns()) {
            (Ok(entries), Ok(now_ns)) => (entries, now_ns),
            (Err(error), _) | (_, Err(error)) => {
                warn!("counting connections for least-connections services: {error:#}");
                return false;
            }
        };
        let counts = connections::count(&entries, &core.config().flow_timeouts, now_ns);
        let took: Duration = started.elapsed();
        self.next = Some(now + took * SPACING);
        let ids: Vec<Vec<Option<u32>>> = (0..services)
            .map(|s| {
                let backends = core.config().services[s].backends.len();
                (0..backends).map(|b| core.backend_id(s, b)).collect()
            })
            .collect();
        let mut changed = false;
        for (s, ids) in ids.iter().enumerate() {
            if !least(core, s) {
                continue;
            }
            let statuses = &mut core.statuses_mut().1[s];
            for (status, id) in statuses.iter_mut().zip(ids) {
                let open = id
                    .and_then(|id| counts.get(&id))
                    .map_or(0, |c| c.open() + c.half_open);
                changed |= status.open_connections != Some(open);
                status.open_connections = Some(open);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FlowEntry, FlowKey, consts::proto};

    use super::super::tests::{CONFIG, started_with, table};
    use super::*;
    use crate::config::Config;

    #[tokio::test(start_paused = true)]
    async fn a_backend_with_more_connections_gets_fewer_slots_until_they_end() {
        let config = CONFIG.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nscheduler = \"least-connections\"\n",
        );
        let (mut monitor, mut maps) = started_with(Config::parse(&config).unwrap());
        assert_eq!(table(&maps), [0, 1, 2], "no count yet: round robin");
        // Ten connections on backend 0 (id 0), none elsewhere.
        maps.now_ns = 5_000_000_000;
        let key = FlowKey {
            proto: proto::TCP,
            ..FlowKey::default()
        };
        let entry = FlowEntry {
            backend_id: 0,
            last_seen_ns: maps.now_ns,
            ..FlowEntry::default()
        };
        maps.flow_entries = vec![(key, entry, false); 10];
        let now = Instant::now();
        let counts = &mut monitor.connection_counts;
        assert!(counts.count(&mut monitor.core, &maps, now));
        monitor.evaluate(&mut maps).unwrap();
        let slots = |maps: &FakeMaps, id: u32| table(maps).iter().filter(|&&b| b == id).count();
        // Weights 13, 143, 143 (of 1 / (1 + 10), 1, 1): 1, 11, 11 slots.
        assert_eq!(
            (slots(&maps, 0), slots(&maps, 1), slots(&maps, 2)),
            (1, 11, 11)
        );
        assert_eq!(monitor.core.statuses()[0][0].open_connections, Some(10));

        // The same counts change nothing; the connections gone, round robin again.
        assert!(!counts_again(
            &mut monitor,
            &maps,
            now + Duration::from_secs(1)
        ));
        maps.flow_entries.clear();
        assert!(counts_again(
            &mut monitor,
            &maps,
            now + Duration::from_secs(2)
        ));
        monitor.evaluate(&mut maps).unwrap();
        assert_eq!(table(&maps), [0, 1, 2]);
    }

    fn counts_again(monitor: &mut super::super::Monitor, maps: &FakeMaps, now: Instant) -> bool {
        monitor
            .connection_counts
            .count(&mut monitor.core, maps, now)
    }

    use crate::control::fake::FakeMaps;
}
