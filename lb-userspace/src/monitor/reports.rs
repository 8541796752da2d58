//! What the monitor reports: `xlb status` and `xlb stats`, the once-a-second samples behind
//! their rates and the metrics endpoint (which it serves), the active-flow counts the data
//! plane keeps, and the accounting of spilled flows per pool. Everything is read through the
//! data plane's read port, so the reports are tested against the fake maps.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use anyhow::Result;
use lb_common::{
    TrafficCounters,
    consts::{events, limits::HALF_OPEN_DIVISOR},
    tables::table_index,
};
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tracing::warn;

use super::core::Core;
use crate::{
    config::ServiceConfig,
    control::{ActiveFlows, DataplaneReads, ServiceState},
    health::state::{BackendStatus, State},
    metrics::{self, BackendMetrics, GuardMetrics, ReloadMetrics, ServiceMetrics, Snapshot},
    report::{
        AnnounceReport, BackendStatusReport, Connections, Counters, FlowTableStats, PoolStatus,
        ServiceStats, ServiceStatus, StatsReport, StatusReport,
    },
    sys::time::unix_seconds,
};

/// What a rate is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Service(u32),
    Backend(u32),
}

/// Packets and bits per second of every service and backend over the last sample period.
#[derive(Default)]
struct Rates {
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

/// What the reports are made of: rates, active flows, spills, reloads, the metrics' snapshot
/// and the endpoint serving it.
pub(super) struct Reports {
    rates: Rates,
    /// The backends' active flows, as last read.
    active_flows: ActiveFlows,
    /// New flows placed outside their home pool, by (service, from pool, to pool).
    spills: BTreeMap<(String, String, String), u64>,
    /// The data plane's spill counter of each table when last read.
    spill_seen: HashMap<u32, u64>,
    /// Reloads so far, for the metrics.
    reloads: ReloadMetrics,
    snapshot: metrics::Shared,
    metrics_server: Option<JoinHandle<()>>,
    /// Each backend's connections as the metrics show them, and when they were counted (a
    /// count reads the whole flow tables: see [`CONNECTIONS_EVERY`]).
    connections: Option<(Instant, HashMap<u32, Connections>)>,
}

/// How often the metrics' connection counts are taken, when a metrics address is configured:
/// each count reads the flow tables (457 ms of CPU at a million flows on the benchmark
/// machine), which the once-a-second sample cannot afford. `xlb status` counts afresh.
const CONNECTIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Default for Reports {
    fn default() -> Self {
        Self {
            rates: Rates::default(),
            active_flows: ActiveFlows::default(),
            spills: BTreeMap::new(),
            spill_seen: HashMap::new(),
            reloads: ReloadMetrics {
                last_succeeded: true,
                last_success_unix: unix_seconds() as f64,
                ..ReloadMetrics::default()
            },
            snapshot: Arc::new(Mutex::new(Snapshot::default())),
            metrics_server: None,
            connections: None,
        }
    }
}

impl Reports {
    /// Samples the counters: rates since the last sample, and a fresh metrics snapshot (with
    /// `announce`, the announcer's report).
    pub(super) fn sample(
        &mut self,
        core: &Core,
        maps: &impl DataplaneReads,
        announce: Option<AnnounceReport>,
    ) {
        self.account_spills(core, maps);
        let now = Instant::now();
        let mut current = HashMap::new();
        for service in core.balancer().services() {
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
        let stale = self
            .connections
            .as_ref()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= CONNECTIONS_EVERY);
        if core.config().metrics.is_some() && stale {
            let counted = super::connections::read(maps, &core.config().flow_timeouts);
            self.connections = Some((now, counted));
        }
        let snapshot = self.snapshot(core, maps, announce);
        *self.snapshot.lock().expect("the snapshot lock") = snapshot;
    }

    /// Puts the fleet's counts into the metrics' snapshot.
    pub(super) fn set_fleet(&self, fleet: metrics::FleetMetrics) {
        self.snapshot.lock().expect("the snapshot lock").fleet = Some(fleet);
    }

    /// What the metrics show now.
    fn snapshot(
        &self,
        core: &Core,
        maps: &impl DataplaneReads,
        announce: Option<AnnounceReport>,
    ) -> Snapshot {
        let counters = |key: Key| -> Counters {
            let found = self
                .rates
                .last
                .as_ref()
                .and_then(|(_, c)| c.get(&key))
                .copied();
            Counters::from(found.unwrap_or_default())
        };
        let config = core.config();
        let no_counts = HashMap::new();
        let connections = self.connections.as_ref().map_or(&no_counts, |(_, c)| c);
        let mut snapshot = Snapshot::default();
        for (s, (service, statuses)) in config.services.iter().zip(core.statuses()).enumerate() {
            let Some(applied) = core.applied(s) else {
                continue;
            };
            snapshot.services.push(ServiceMetrics {
                name: service.name.clone(),
                counters: counters(Key::Service(applied.id)),
                backends: (service.backends.iter().zip(statuses).enumerate())
                    .filter_map(|(b, (configured, status))| {
                        let backend = core.applied_backend(s, b)?;
                        Some(BackendMetrics {
                            address: configured.address.to_string(),
                            counters: counters(Key::Backend(backend.id)),
                            state: status.reported.as_ref().map_or(State::Down, |r| r.state),
                            weight: backend.weight,
                            active_flows: self.active_flows.of(backend.id),
                            connections: connections.get(&backend.id).copied().unwrap_or_default(),
                            check_seconds: status.check_latency.map(|d| d.as_secs_f64()),
                            passive_marks: status.passive_marks,
                        })
                    })
                    .collect(),
            });
        }
        snapshot.spills = self.spills.iter().map(|(k, v)| (k.clone(), *v)).collect();
        snapshot.flows = self.active_by_family(core);
        snapshot.flow_capacity = [config.flow_table_size, config.flow_table_size_ipv6]
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
        snapshot.unserved = unserved(maps).unwrap_or_default();
        snapshot.announce = announce;
        if let Ok(counts) = maps.events() {
            snapshot.flows_expired = counts[events::FLOW_EXPIRED as usize];
            snapshot.events = events::NAMES.iter().copied().zip(counts).collect();
        }
        snapshot
    }

    /// `xlb status`: every service, or the one named (an unknown name is an error);
    /// `interfaces` are the attached interfaces and their hooks.
    pub(super) fn status(
        &self,
        core: &Core,
        only: Option<&str>,
        interfaces: Vec<crate::report::InterfaceHook>,
        announce: Option<AnnounceReport>,
        connections: &HashMap<u32, Connections>,
    ) -> Result<StatusReport> {
        let only = only.map(|name| core.service_index(name)).transpose()?;
        let now = Instant::now();
        let mut report = StatusReport {
            version: crate::VERSION.to_owned(),
            interfaces,
            services: Vec::new(),
            announce,
        };
        for (index, (config, statuses)) in core
            .config()
            .services
            .iter()
            .zip(core.statuses())
            .enumerate()
        {
            if only.is_some_and(|o| o != index) {
                continue;
            }
            let applied = core.applied(index);
            let (pps, bps) = applied.map_or((0.0, 0.0), |a| self.rates.of(Key::Service(a.id)));
            let available = (0..config.backends.len())
                .filter_map(|b| core.applied_backend(index, b))
                .filter(|backend| backend.weight > 0)
                .count();
            report.services.push(ServiceStatus {
                available,
                leaving: Vec::new(),
                name: config.name.clone(),
                listen: config.listen,
                protocol: config.protocol.to_string(),
                packets_per_second: pps,
                bits_per_second: bps,
                backends: config
                    .backends
                    .iter()
                    .zip(statuses)
                    .enumerate()
                    .map(|(b, (configured, status))| {
                        let backend = core.applied_backend(index, b);
                        let (pps, bps) =
                            backend.map_or((0.0, 0.0), |b| self.rates.of(Key::Backend(b.id)));
                        let (state, reason, since) = match &status.reported {
                            Some(r) => (r.state, r.reason.clone(), r.since),
                            None => (State::Down, "not checked yet".into(), now),
                        };
                        BackendStatusReport {
                            address: configured.address,
                            state: state.to_string(),
                            reason,
                            since_seconds: now.saturating_duration_since(since).as_secs_f64(),
                            weight: configured.weight,
                            effective_weight: backend.map_or(0, |b| b.weight),
                            agent_weight_percent: status.agent.weight_percent,
                            // Every flow purged (disabled, or its host gone): the
                            // epoch's activity count is of flows that are no more.
                            active_flows: match status.purged {
                                Some(crate::health::state::Purge::All) => 0,
                                _ => backend.map_or(0, |b| self.active_flows.of(b.id)),
                            },
                            connections: backend
                                .and_then(|b| connections.get(&b.id))
                                .copied()
                                .unwrap_or_default(),
                            packets_per_second: pps,
                            bits_per_second: bps,
                            operator: status.operator.clone(),
                            suspect: status.suspect.clone(),
                            passive_marks: status.passive_marks,
                            health: status.health.verdict().into(),
                            pool: (config.pools.len() > 1)
                                .then(|| config.pools.get(configured.pool))
                                .flatten()
                                .map(|pool| pool.name.clone()),
                        }
                    })
                    .collect(),
                pools: applied.map_or_else(Vec::new, |applied| {
                    self.pool_status(config, applied, statuses)
                }),
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

    /// `xlb stats`: the counters of every service and backend, events, the flow tables.
    pub(super) fn stats(&self, core: &Core, maps: &impl DataplaneReads) -> Result<StatsReport> {
        let config = core.config();
        let mut report = StatsReport::default();
        for (s, service) in config.services.iter().enumerate() {
            let Some(applied) = core.applied(s) else {
                continue;
            };
            let mut backends = Vec::new();
            for b in 0..service.backends.len() {
                if let Some(backend) = core.applied_backend(s, b) {
                    let counters = maps.backend_counters(backend.id)?;
                    backends.push(crate::report::BackendCounters {
                        address: backend.address,
                        counters: Counters::from(counters),
                    });
                }
            }
            report.services.push(ServiceStats {
                name: service.name.clone(),
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
        report.unserved = unserved(maps)?;
        let size = u64::from(config.flow_table_size);
        let guard = maps.handshake_guard()?;
        let (active_ipv4, active_ipv6) = self.active_by_family(core);
        report.flow_table = FlowTableStats {
            active_ipv4,
            active_ipv6,
            capacity: size,
            capacity_ipv6: u64::from(config.flow_table_size_ipv6),
            half_open_capacity: size / u64::from(HALF_OPEN_DIVISOR),
            expired: counts[events::FLOW_EXPIRED as usize],
            handshake_budget: guard.budget,
            handshake_guard_on: maps.handshake_guard_on()?,
        };
        Ok(report)
    }

    /// The active flows of the IPv4 services' backends and of the IPv6 services'.
    fn active_by_family(&self, core: &Core) -> (u64, u64) {
        let (mut ipv4, mut ipv6) = (0, 0);
        for backend in core.balancer().services().iter().flat_map(|s| &s.backends) {
            let active = self.active_flows.of(backend.id);
            if backend.address.is_ipv4() {
                ipv4 += active;
            } else {
                ipv6 += active;
            }
        }
        (ipv4, ipv6)
    }

    /// Reads the active-flow counts the data plane keeps (`ACTIVE_FLOWS`: per backend, the
    /// flows whose client sent a packet in an activity epoch) of every backend the balancer
    /// knows, and gives the backends of services with `max_flows` theirs. Returns whether
    /// there was any such service (and so may need new weights). A failed read is logged and
    /// changes nothing. Reading them costs two batched reads of the per-CPU array (one per
    /// epoch, up to the highest backend id), whatever the number of flows.
    pub(super) fn count_active_flows(
        &mut self,
        core: &mut Core,
        maps: &impl DataplaneReads,
    ) -> bool {
        let ids: Vec<u32> = core
            .balancer()
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
        let ids: Vec<Vec<Option<u32>>> = (core.config().services.iter().enumerate())
            .map(|(s, service)| {
                (0..service.backends.len())
                    .map(|b| core.backend_id(s, b))
                    .collect()
            })
            .collect();
        let (config, statuses) = core.statuses_mut();
        let mut any = false;
        for (service_index, service) in config.services.iter().enumerate() {
            let Some(load) = service.load.as_ref().filter(|l| l.max_flows.is_some()) else {
                continue;
            };
            any = true;
            for (status, id) in statuses[service_index].iter_mut().zip(&ids[service_index]) {
                status.active_flows = id.map(|id| self.active_flows.of(id));
                status.update_overload(load);
            }
        }
        any
    }

    /// Reads the data plane's spill counters and credits what is new to the pool each home
    /// pool's table was serving from (as published). Called before every apply and every
    /// second, so a flow is credited to the wrong pool only if it was placed in the instant a
    /// table changed.
    pub(super) fn account_spills(&mut self, core: &Core, maps: &impl DataplaneReads) {
        let config = core.config();
        for (s, service) in config.services.iter().enumerate() {
            let Some(applied) = core.applied(s) else {
                continue;
            };
            if service.pools.len() <= 1 || applied.locality.pools as usize != service.pools.len() {
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
                        service.name.clone(),
                        service.pools[home].name.clone(),
                        service.pools[serving as usize].name.clone(),
                    );
                    *self.spills.entry(key).or_default() += new;
                }
            }
        }
    }

    /// Counts a reload: applied, or refused.
    pub(super) fn count_reload(&mut self, succeeded: bool) {
        if succeeded {
            self.reloads.succeeded += 1;
            self.reloads.last_success_unix = unix_seconds() as f64;
        } else {
            self.reloads.failed += 1;
        }
        self.reloads.last_succeeded = succeeded;
    }

    /// Serves the metrics on `listener` (bound to the config's `metrics` address) from now
    /// on; none: stops serving them.
    pub(super) fn serve_metrics(&mut self, listener: Option<TcpListener>) {
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        if let Some(listener) = listener {
            let shared = Arc::clone(&self.snapshot);
            self.metrics_server = Some(tokio::spawn(metrics::serve(listener, shared)));
        }
    }
}

/// Every VIP with the packets to it that no flow or service took.
fn unserved(maps: &impl DataplaneReads) -> Result<Vec<(std::net::IpAddr, u64)>> {
    Ok(maps
        .vips_unserved()?
        .into_iter()
        .map(|(vip, count)| (crate::wire::ip_from_field(&vip.addr, vip.family), count))
        .collect())
}
