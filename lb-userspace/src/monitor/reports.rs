//! What the monitor reports: `xlb status` and `xlb stats`, the once-a-second samples behind
//! their rates and the metrics endpoint, and the accounting of spilled flows per pool.

use std::collections::HashMap;

use anyhow::Result;
use lb_common::{
    TrafficCounters,
    consts::{events, limits::HALF_OPEN_DIVISOR},
    tables::table_index,
};
use tokio::time::Instant;

use super::Monitor;
use crate::{
    config::ServiceConfig,
    control::{DataplaneMaps, ServiceState},
    dataplane::{Dataplane, Maps},
    health::state::{BackendStatus, State},
    metrics::{BackendMetrics, GuardMetrics, ServiceMetrics, Snapshot},
    report::{
        BackendStatusReport, Counters, FlowTableStats, PoolStatus, ServiceStats, ServiceStatus,
        StatsReport, StatusReport,
    },
};

/// What a rate is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Service(u32),
    Backend(u32),
}

/// Packets and bits per second of every service and backend over the last sample period.
#[derive(Default)]
pub(super) struct Rates {
    last: Option<(Instant, HashMap<Key, TrafficCounters>)>,
    rates: HashMap<Key, (f64, f64)>,
}

impl Rates {
    fn of(&self, key: Key) -> (f64, f64) {
        self.rates.get(&key).copied().unwrap_or_default()
    }
}

fn total_packets(c: &TrafficCounters) -> u64 {
    c.fwd_packets + c.rev_packets
}

fn total_bytes(c: &TrafficCounters) -> u64 {
    c.fwd_bytes + c.rev_bytes
}

impl Monitor {
    /// Samples the counters: rates since the last sample, and a fresh metrics snapshot.
    pub(super) fn sample(&mut self, maps: &Maps) {
        self.account_spills(maps);
        let now = Instant::now();
        let mut current = HashMap::new();
        for service in self.balancer.services() {
            if let Ok(counters) = maps.service_counters(service.id) {
                current.insert(Key::Service(service.id), counters);
            }
            for backend in &service.backends {
                if let Ok(counters) = maps.backend_counters(backend.id) {
                    current.insert(Key::Backend(backend.id), counters);
                }
            }
        }
        if let Some((then, previous)) = &self.rates.last {
            let seconds = now.saturating_duration_since(*then).as_secs_f64().max(1e-3);
            self.rates.rates = current
                .iter()
                .filter_map(|(key, counters)| {
                    let before = previous.get(key)?;
                    let packets = total_packets(counters).saturating_sub(total_packets(before));
                    let bytes = total_bytes(counters).saturating_sub(total_bytes(before));
                    Some((
                        *key,
                        (packets as f64 / seconds, bytes as f64 * 8.0 / seconds),
                    ))
                })
                .collect();
        }
        self.rates.last = Some((now, current));
        self.refresh_snapshot(maps);
    }

    fn refresh_snapshot(&self, maps: &Maps) {
        let counters = |key: Key| -> Counters {
            let found = self
                .rates
                .last
                .as_ref()
                .and_then(|(_, c)| c.get(&key))
                .copied();
            Counters::from(found.unwrap_or_default())
        };
        let mut snapshot = Snapshot::default();
        for ((config, applied), statuses) in self
            .config
            .services
            .iter()
            .zip(self.balancer.services())
            .zip(&self.statuses)
        {
            snapshot.services.push(ServiceMetrics {
                name: config.name.clone(),
                counters: counters(Key::Service(applied.id)),
                backends: applied
                    .backends
                    .iter()
                    .zip(statuses)
                    .map(|(backend, status)| BackendMetrics {
                        address: backend.address.to_string(),
                        counters: counters(Key::Backend(backend.id)),
                        state: status.reported.as_ref().map_or(State::Down, |r| r.state),
                        weight: backend.weight,
                        active_flows: self.active_flows.of(backend.id),
                        check_seconds: status.check_latency.map(|d| d.as_secs_f64()),
                        passive_marks: status.passive_marks,
                    })
                    .collect(),
            });
        }
        snapshot.spills = self.spills.iter().map(|(k, v)| (k.clone(), *v)).collect();
        snapshot.flows = self.active_by_family();
        snapshot.flow_capacity = [
            self.config.flow_table_size,
            self.config.flow_table_size_ipv6,
        ]
        .map(|size| (u64::from(size), u64::from(size / HALF_OPEN_DIVISOR)));
        snapshot.guard = maps
            .handshake_guard()
            .ok()
            .zip(maps.handshake_guard_on().ok())
            .map(|(guard, hashing)| GuardMetrics {
                hashing,
                budget: guard.budget,
                window_flows: guard.window_flows,
            });
        snapshot.reloads = self.reloads;
        snapshot.announce = self
            .announcer
            .as_ref()
            .map(crate::announce::Announcer::report);
        if let Ok(counts) = maps.events() {
            snapshot.flows_expired = counts[events::FLOW_EXPIRED as usize];
            snapshot.events = events::NAMES.iter().copied().zip(counts).collect();
        }
        *self.snapshot.lock().expect("the snapshot lock") = snapshot;
    }

    /// `xlb status`: every service, or the one named (an unknown name is an error).
    pub(super) fn status_report(
        &self,
        only: Option<&str>,
        dataplane: &Dataplane,
    ) -> Result<StatusReport> {
        let only = only.map(|name| self.service_index(name)).transpose()?;
        let now = Instant::now();
        let mut report = StatusReport {
            version: crate::VERSION.to_owned(),
            interfaces: dataplane
                .attachments()
                .iter()
                .map(|a| {
                    let hook = a.hook.map_or("xdp (adopted)".to_owned(), |h| h.to_string());
                    (a.interface.clone(), hook)
                })
                .collect(),
            services: Vec::new(),
            announce: self
                .announcer
                .as_ref()
                .map(crate::announce::Announcer::report),
        };
        for (index, ((config, applied), statuses)) in self
            .config
            .services
            .iter()
            .zip(self.balancer.services())
            .zip(&self.statuses)
            .enumerate()
        {
            if only.is_some_and(|o| o != index) {
                continue;
            }
            let (pps, bps) = self.rates.of(Key::Service(applied.id));
            report.services.push(ServiceStatus {
                name: config.name.clone(),
                listen: config.listen,
                protocol: config.protocol.to_string(),
                packets_per_second: pps,
                bits_per_second: bps,
                backends: config
                    .backends
                    .iter()
                    .zip(&applied.backends)
                    .zip(statuses)
                    .map(|((configured, backend), status)| {
                        let (pps, bps) = self.rates.of(Key::Backend(backend.id));
                        let (state, reason, since) = match &status.reported {
                            Some(r) => (r.state, r.reason.clone(), r.since),
                            None => (State::Down, "not checked yet".into(), now),
                        };
                        BackendStatusReport {
                            address: backend.address,
                            state: state.to_string(),
                            reason,
                            since_seconds: now.saturating_duration_since(since).as_secs_f64(),
                            weight: configured.weight,
                            effective_weight: backend.weight,
                            agent_weight_percent: status.agent.weight_percent,
                            active_flows: self.active_flows.of(backend.id),
                            packets_per_second: pps,
                            bits_per_second: bps,
                            operator: status.operator.clone(),
                            suspect: status.suspect.clone(),
                            passive_marks: status.passive_marks,
                        }
                    })
                    .collect(),
                pools: self.pool_status(config, applied, statuses),
            });
        }
        Ok(report)
    }

    /// The pools of a service with more than one, as `xlb status` shows them.
    fn pool_status(
        &self,
        config: &ServiceConfig,
        applied: &ServiceState,
        statuses: &[BackendStatus],
    ) -> Vec<PoolStatus> {
        if config.pools.len() <= 1 {
            return Vec::new();
        }
        config
            .pools
            .iter()
            .enumerate()
            .map(|(index, pool)| {
                let members: Vec<usize> = (0..config.backends.len())
                    .filter(|&i| config.backends[i].pool == index)
                    .collect();
                let up = members
                    .iter()
                    .filter(|&&i| {
                        statuses[i]
                            .reported
                            .as_ref()
                            .is_some_and(|r| r.state == State::Up)
                    })
                    .count();
                let serving = applied
                    .locality
                    .serving
                    .get(index)
                    .map_or(index, |&s| s as usize);
                let spilled = self
                    .spills
                    .iter()
                    .filter(|((service, from, _), _)| *service == config.name && *from == pool.name)
                    .map(|((_, _, to), count)| (to.clone(), *count))
                    .collect();
                PoolStatus {
                    name: pool.name.clone(),
                    up,
                    backends: members.len(),
                    serving: config
                        .pools
                        .get(serving)
                        .map_or(pool.name.clone(), |p| p.name.clone()),
                    spilled,
                }
            })
            .collect()
    }

    pub(super) fn stats_report(&self, maps: &Maps) -> Result<StatsReport> {
        let mut report = StatsReport::default();
        for (config, applied) in self.config.services.iter().zip(self.balancer.services()) {
            let mut backends = Vec::new();
            for backend in &applied.backends {
                backends.push((
                    backend.address,
                    Counters::from(maps.backend_counters(backend.id)?),
                ));
            }
            report.services.push(ServiceStats {
                name: config.name.clone(),
                counters: Counters::from(maps.service_counters(applied.id)?),
                backends,
            });
        }
        let counts = maps.events()?;
        report.events = events::NAMES
            .iter()
            .map(|n| (*n).to_owned())
            .zip(counts)
            .collect();
        let size = u64::from(self.config.flow_table_size);
        let guard = maps.handshake_guard()?;
        let (active_ipv4, active_ipv6) = self.active_by_family();
        report.flow_table = FlowTableStats {
            active_ipv4,
            active_ipv6,
            capacity: size,
            capacity_ipv6: u64::from(self.config.flow_table_size_ipv6),
            half_open_capacity: size / u64::from(HALF_OPEN_DIVISOR),
            expired: counts[events::FLOW_EXPIRED as usize],
            handshake_budget: guard.budget,
            handshake_guard_on: maps.handshake_guard_on()?,
        };
        Ok(report)
    }

    /// The active flows of the IPv4 services' backends and of the IPv6 services'.
    fn active_by_family(&self) -> (u64, u64) {
        let (mut ipv4, mut ipv6) = (0, 0);
        for backend in self.balancer.services().iter().flat_map(|s| &s.backends) {
            let active = self.active_flows.of(backend.id);
            if backend.address.is_ipv4() {
                ipv4 += active;
            } else {
                ipv6 += active;
            }
        }
        (ipv4, ipv6)
    }

    /// Reads the data plane's spill counters and credits what is new to the pool each home
    /// pool's table was serving from (as published). Called before every apply and every
    /// second, so a flow is credited to the wrong pool only if it was placed in the instant a
    /// table changed.
    pub(super) fn account_spills(&mut self, maps: &impl DataplaneMaps) {
        for (config, applied) in self.config.services.iter().zip(self.balancer.services()) {
            if config.pools.len() <= 1 || applied.locality.pools as usize != config.pools.len() {
                continue;
            }
            for (home, &serving) in applied.locality.serving.iter().enumerate() {
                let index = table_index(applied.id, home as u32);
                let Ok(count) = maps.spilled(index) else {
                    continue;
                };
                let seen = self.spill_seen.insert(index, count).unwrap_or(0);
                let new = count.saturating_sub(seen);
                if new > 0 {
                    let key = (
                        config.name.clone(),
                        config.pools[home].name.clone(),
                        config.pools[serving as usize].name.clone(),
                    );
                    *self.spills.entry(key).or_default() += new;
                }
            }
        }
    }
}
