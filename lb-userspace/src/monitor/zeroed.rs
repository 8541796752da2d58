//! Counters an operator zeroed (`xlb stats --zero`): the data plane's counters are never
//! written (the metrics endpoint serves them as Prometheus counters, which only go up), so
//! the daemon keeps what they were at the zeroing and `xlb stats` shows the difference.
//!
//! A service or a backend is known by its name or address and its data-plane id: one whose id
//! changed since (it left the config and came back) or whose counters went back (its id was
//! freed and given again) started counting after the zeroing, and is shown whole.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use super::core::Core;
use crate::report::{Counters, StatsReport, Zeroed};

/// The counters as `xlb stats` shows them: since the last zeroing, if any.
#[derive(Default)]
pub(super) struct Zeroing {
    last: Option<Baseline>,
}

impl Zeroing {
    /// Makes `report` (read whole from the data plane) count from the last zeroing.
    pub(super) fn count_since(&self, core: &Core, report: &mut StatsReport) {
        if let Some(baseline) = &self.last {
            baseline.subtract(core, report);
        }
    }

    /// Zeroes the counters of `raw` (read whole from the data plane), `by` someone now;
    /// returns them as they were until now.
    pub(super) fn zero(&mut self, core: &Core, raw: StatsReport, by: &str) -> StatsReport {
        let mut report = raw.clone();
        self.count_since(core, &mut report);
        let zeroed = Zeroed {
            by: by.to_owned(),
            at: crate::sys::time::unix_seconds(),
        };
        self.last = Some(Baseline::take(core, &raw, zeroed));
        report.zeroed_now = true;
        report
    }
}

/// What the counters were when an operator zeroed them.
struct Baseline {
    /// Who zeroed them and when.
    zeroed: Zeroed,
    /// By service name: its id and counters.
    services: HashMap<String, (u32, Counters)>,
    /// By service name and backend address: its id and counters.
    backends: HashMap<(String, SocketAddr), (u32, Counters)>,
    /// The data plane's events, by name.
    events: HashMap<String, u64>,
    /// Packets to each VIP that no service took.
    unserved: HashMap<IpAddr, u64>,
    /// Flows found expired.
    expired: u64,
}

/// The data-plane id of service `name` and, with an address, of that backend of it.
fn id_of(core: &Core, name: &str, backend: Option<SocketAddr>) -> Option<u32> {
    let s = core.service_index(name).ok()?;
    match backend {
        None => Some(core.applied(s)?.id),
        Some(address) => {
            let b = core.config().services[s]
                .backends
                .iter()
                .position(|b| b.address == address)?;
            core.backend_id(s, b)
        }
    }
}

impl Baseline {
    /// The counters of `report` (every service's, read whole) as zeroed `by` someone `at` a
    /// time.
    fn take(core: &Core, report: &StatsReport, zeroed: Zeroed) -> Self {
        let mut services = HashMap::new();
        let mut backends = HashMap::new();
        for service in &report.services {
            if let Some(id) = id_of(core, &service.name, None) {
                services.insert(service.name.clone(), (id, service.counters));
            }
            for b in &service.backends {
                if let Some(id) = id_of(core, &service.name, Some(b.address)) {
                    backends.insert((service.name.clone(), b.address), (id, b.counters));
                }
            }
        }
        Self {
            zeroed,
            services,
            backends,
            events: report.events.iter().cloned().collect(),
            unserved: report.unserved.iter().copied().collect(),
            expired: report.flow_table.expired,
        }
    }

    /// Makes `report` count from the zeroing, and say since when.
    fn subtract(&self, core: &Core, report: &mut StatsReport) {
        let since = |now: &mut Counters, base: Option<&(u32, Counters)>, id: Option<u32>| {
            let since = base
                .filter(|(then, _)| Some(*then) == id)
                .and_then(|(_, base)| now.since(base));
            if let Some(since) = since {
                *now = since;
            }
        };
        for service in &mut report.services {
            let id = id_of(core, &service.name, None);
            since(&mut service.counters, self.services.get(&service.name), id);
            for b in &mut service.backends {
                let id = id_of(core, &service.name, Some(b.address));
                let key = (service.name.clone(), b.address);
                since(&mut b.counters, self.backends.get(&key), id);
            }
        }
        let less = |now: &mut u64, then: Option<&u64>| {
            if let Some(count) = then.and_then(|then| now.checked_sub(*then)) {
                *now = count;
            }
        };
        for (name, count) in &mut report.events {
            less(count, self.events.get(name));
        }
        for (vip, count) in &mut report.unserved {
            less(count, self.unserved.get(vip));
        }
        less(&mut report.flow_table.expired, Some(&self.expired));
        report.since = Some(self.zeroed.clone());
    }
}

#[cfg(test)]
mod tests {
    use lb_common::TrafficCounters;

    use super::super::tests::started;

    fn counted(packets: u64) -> TrafficCounters {
        TrafficCounters {
            fwd_packets: packets,
            new_flows: packets / 10,
            ..TrafficCounters::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stats_count_from_the_zeroing_and_the_data_plane_keeps_its_counters() {
        let (mut monitor, mut maps) = started();
        maps.service_counters.insert(0, counted(300));
        for (id, packets) in [(0, 100), (1, 120), (2, 80)] {
            maps.backend_counters.insert(id, counted(packets));
        }
        let answer = monitor.zero_counters(&maps, "root (uid 0)").unwrap();
        assert!(answer.zeroed_now && answer.since.is_none());
        assert_eq!(
            answer.services[0].counters.packets_to_backend, 300,
            "as they were"
        );

        maps.service_counters.insert(0, counted(330));
        maps.backend_counters.insert(0, counted(130));
        // Backend 2's id freed and given again: its counters start afresh.
        maps.backend_counters.insert(2, counted(5));
        let report = monitor.stats(None, &maps).unwrap();
        let service = &report.services[0];
        assert_eq!(service.counters.packets_to_backend, 30);
        assert_eq!(service.counters.new_flows, 3, "33 - 30");
        let backends: Vec<u64> = service
            .backends
            .iter()
            .map(|b| b.counters.packets_to_backend)
            .collect();
        assert_eq!(backends, [30, 0, 5]);
        assert_eq!(report.since.as_ref().unwrap().by, "root (uid 0)");
        assert!(!report.zeroed_now);
        assert_eq!(maps.service_counters[&0].fwd_packets, 330, "never written");

        // Zeroed again: the answer is what was counted since the first zeroing.
        let answer = monitor.zero_counters(&maps, "alice (uid 1000)").unwrap();
        assert_eq!(answer.services[0].counters.packets_to_backend, 30);
        let report = monitor.stats(Some("web"), &maps).unwrap();
        assert_eq!(report.services[0].counters.packets_to_backend, 0);
        assert_eq!(report.since.unwrap().by, "alice (uid 1000)");
    }
}
