//! The [`Balancer`]: what the control plane has applied, and how it applies the next
//! [`ServiceSpec`]s in an order that keeps every intermediate state valid (see the module
//! documentation of `control`).

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use lb_common::{
    BackendTable, MaglevTable, ServiceEntry, ServiceKey, VipKey,
    consts::{
        forwarding,
        limits::{MAX_BACKENDS, MAX_SERVICES},
        scheduler,
    },
    passive::ServicePolicy,
    tables::table_index,
};

use super::{
    maglev::lookup_table,
    ports::DataplaneMaps,
    spec::{Locality, ServiceSpec},
    table::{backend_table, smooth_weighted_sequence},
};
use crate::{
    config::{Forwarding, MaglevConfig, Protocol, Scheduler},
    wire::{backend_address, backend_entry, service_key, service_of_key, vip_key},
};

/// A service as the data plane has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    /// Id in the data plane (index of its counters and tables).
    pub id: u32,
    /// Name from the config.
    pub name: String,
    /// Virtual IP and port.
    pub listen: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Backends, in config order.
    pub backends: Vec<BackendState>,
    /// The published round-robin sequence of backend ids of each home pool's table.
    pub tables: Vec<Vec<u32>>,
    /// Generation of the published tables.
    pub generation: u32,
    /// The locality as published.
    pub locality: Locality,
    /// The passive health and admission settings as written (`None`: unknown, as in maps
    /// adopted from an earlier daemon).
    pub policy: Option<ServicePolicy>,
    /// The shape of the published Maglev tables, if the service uses Maglev (size 0 for
    /// tables adopted from an earlier daemon, whose shape is unknown: they are built again,
    /// or removed).
    pub maglev: Option<MaglevConfig>,
    /// What each home pool's published Maglev table was built from: (id, address, weight).
    pub maglev_inputs: Vec<Vec<(u32, SocketAddr, u32)>>,
    /// How packets reach the backends, as published.
    pub forwarding: Forwarding,
}

/// A backend as the data plane has it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    /// Id in the data plane (index of its counters, value in tables and flows).
    pub id: u32,
    /// Address and port.
    pub address: SocketAddr,
    /// Weight in the published table.
    pub weight: u32,
    /// Its pool.
    pub pool: u32,
}

/// What one [`Balancer::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Services added.
    pub services_added: usize,
    /// Services removed.
    pub services_removed: usize,
    /// Backends added.
    pub backends_added: usize,
    /// Backends removed.
    pub backends_removed: usize,
    /// Tables published.
    pub tables_published: usize,
    /// Flows deleted because their backend left.
    pub flows_purged: usize,
}

/// The control plane's record of what it has put in the data plane.
#[derive(Debug)]
pub struct Balancer {
    services: Vec<ServiceState>,
    service_ids: IdAllocator,
    backend_ids: IdAllocator,
    /// What `VIPS` holds.
    vips: BTreeSet<VipKey>,
}

impl Default for Balancer {
    fn default() -> Self {
        Self::new()
    }
}

impl Balancer {
    /// A balancer with nothing applied yet.
    pub fn new() -> Self {
        Self {
            services: Vec::new(),
            service_ids: IdAllocator::new(MAX_SERVICES),
            backend_ids: IdAllocator::new(MAX_BACKENDS),
            vips: BTreeSet::new(),
        }
    }

    /// The services as applied, in config order.
    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Makes the data plane serve `services`. Services and backends that stay keep their ids,
    /// so their established flows keep working; only tables whose sequence changes are
    /// published.
    pub fn apply(
        &mut self,
        services: &[ServiceSpec],
        maps: &mut impl DataplaneMaps,
    ) -> Result<ApplySummary> {
        let mut summary = ApplySummary::default();
        let mut previous = std::mem::take(&mut self.services);
        let mut changes = Changes::default();
        let mut applied = Vec::with_capacity(services.len());

        for service in services {
            let existing = previous
                .iter()
                .position(|s| s.listen == service.listen && s.protocol == service.protocol)
                .map(|i| previous.swap_remove(i));
            applied.push(self.apply_service(
                service,
                existing,
                maps,
                &mut summary,
                &mut changes,
            )?);
        }
        // Every changed table in one batch, then the new services that need them.
        summary.tables_published += changes.tables.len();
        maps.publish_tables(&changes.tables)
            .context("publishing tables")?;
        for (index, table) in &changes.maglev_tables {
            maps.publish_maglev(*index, Some(table))
                .context("publishing a Maglev table")?;
        }
        summary.tables_published += changes.maglev_tables.len();
        for (service_id, prefixes) in &changes.prefixes {
            maps.publish_prefixes(*service_id, prefixes)
                .context("publishing client prefixes")?;
        }
        for (key, entry, name) in &changes.new_services {
            maps.set_service(key, entry)
                .with_context(|| format!("adding service {name}"))?;
        }
        for index in &changes.maglev_removed {
            maps.publish_maglev(*index, None)
                .context("removing a Maglev table")?;
        }
        let vips: BTreeSet<VipKey> = services.iter().map(|s| vip_key(s.listen.ip())).collect();
        for vip in vips.difference(&self.vips) {
            maps.add_vip(vip).context("adding a VIP")?;
        }

        let mut emptied = Vec::new();
        for removed in previous {
            let key = service_key(removed.listen, removed.protocol);
            maps.remove_service(&key)
                .with_context(|| format!("removing service {}", removed.name))?;
            for pool in 0..removed.locality.pools {
                emptied.push((table_index(removed.id, pool), BackendTable::EMPTY));
                if removed.maglev.is_some() {
                    maps.publish_maglev(table_index(removed.id, pool), None)
                        .with_context(|| {
                            format!("removing the Maglev tables of {}", removed.name)
                        })?;
                }
            }
            if !removed.locality.prefixes.is_empty() {
                maps.publish_prefixes(removed.id, &[])
                    .with_context(|| format!("clearing the prefixes of {}", removed.name))?;
            }
            summary.services_removed += 1;
            self.service_ids.release(removed.id);
            changes
                .retired_backends
                .extend(removed.backends.iter().map(|b| b.id));
        }
        summary.tables_published += emptied.len();
        maps.publish_tables(&emptied)
            .context("emptying the tables of removed services")?;

        if !changes.retired_backends.is_empty() {
            summary.flows_purged = maps.purge_flows(&changes.retired_backends)?;
            summary.backends_removed += changes.retired_backends.len();
            for id in changes.retired_backends {
                maps.release_backend(id)?;
                self.backend_ids.release(id);
            }
        }
        for vip in self.vips.difference(&vips) {
            maps.remove_vip(vip).context("removing a VIP")?;
        }
        self.vips = vips;
        self.services = applied;
        Ok(summary)
    }

    /// Takes over what a previous daemon left in pinned maps: its services and backends keep
    /// their ids, so their flows keep working once [`Self::apply`] runs with the config.
    /// Backends in use whose service is gone (a daemon stopped mid-apply) are released, with
    /// their flows. Returns the number of services and backends adopted.
    pub fn adopt(&mut self, maps: &mut impl DataplaneMaps) -> Result<(usize, usize)> {
        let existing = maps.existing()?;
        self.vips = existing.vips.iter().copied().collect();
        let mut adopted_backends = 0;
        for (key, entry) in &existing.services {
            let Some((listen, protocol)) = service_of_key(key) else {
                continue;
            };
            self.service_ids.claim(entry.id);
            let backends: Vec<BackendState> = existing
                .backends
                .iter()
                .filter(|(_, backend)| backend.service_id == entry.id)
                .map(|(id, backend)| {
                    self.backend_ids.claim(*id);
                    BackendState {
                        id: *id,
                        address: backend_address(backend),
                        weight: 0,
                        pool: backend.pool,
                    }
                })
                .collect();
            adopted_backends += backends.len();
            let pools = u32::from(entry.pools.max(1));
            self.services.push(ServiceState {
                id: entry.id,
                name: String::new(),
                listen,
                protocol,
                backends,
                tables: vec![Vec::new(); pools as usize],
                generation: 0,
                locality: Locality {
                    pools,
                    serving: (0..pools).collect(),
                    default_pool: u32::from(entry.default_pool),
                    // Unknown: published again on the first apply.
                    prefixes: Arc::new(Vec::new()),
                },
                policy: None,
                maglev: (entry.scheduler == scheduler::MAGLEV).then_some(MaglevConfig {
                    table_size: 0,
                    seed: 0,
                }),
                maglev_inputs: Vec::new(),
                forwarding: match entry.forwarding {
                    forwarding::DSR => Forwarding::Dsr,
                    _ => Forwarding::Nat,
                },
            });
        }
        let known: Vec<u32> = existing.services.iter().map(|(_, e)| e.id).collect();
        let orphans: Vec<u32> = existing
            .backends
            .iter()
            .filter(|(_, backend)| !known.contains(&backend.service_id))
            .map(|(id, _)| *id)
            .collect();
        if !orphans.is_empty() {
            maps.purge_flows(&orphans)?;
            for id in orphans {
                maps.release_backend(id)?;
            }
        }
        Ok((self.services.len(), adopted_backends))
    }

    fn apply_service(
        &mut self,
        service: &ServiceSpec,
        existing: Option<ServiceState>,
        maps: &mut impl DataplaneMaps,
        summary: &mut ApplySummary,
        changes: &mut Changes,
    ) -> Result<ServiceState> {
        let is_new = existing.is_none();
        let locality = &service.locality;
        let mut state = match existing {
            Some(state) => state,
            None => {
                let id = self
                    .service_ids
                    .allocate()
                    .context("no free service id (too many services)")?;
                summary.services_added += 1;
                ServiceState {
                    id,
                    name: service.name.clone(),
                    listen: service.listen,
                    protocol: service.protocol,
                    backends: Vec::new(),
                    tables: Vec::new(),
                    generation: 0,
                    locality: Locality {
                        pools: 0,
                        serving: Vec::new(),
                        default_pool: 0,
                        prefixes: Arc::new(Vec::new()),
                    },
                    policy: None,
                    maglev: None,
                    maglev_inputs: Vec::new(),
                    forwarding: service.forwarding,
                }
            }
        };
        if state.policy != Some(service.policy) {
            maps.set_policy(state.id, &service.policy)
                .with_context(|| format!("setting the policies of service {}", service.name))?;
            state.policy = Some(service.policy);
        }
        state.name.clone_from(&service.name);
        // Pools that are new to this service start their round robin from the beginning.
        for pool in state.locality.pools..locality.pools {
            maps.reset_cursor(table_index(state.id, pool))?;
        }

        let mut old_backends = std::mem::take(&mut state.backends);
        for backend in &service.backends {
            let same = |b: &BackendState| b.address == backend.address && b.pool == backend.pool;
            let id = match old_backends.iter().position(same) {
                Some(i) => old_backends.swap_remove(i).id,
                None => {
                    let id = self
                        .backend_ids
                        .allocate()
                        .context("no free backend id (too many backends)")?;
                    let entry = backend_entry(backend.address, state.id, backend.pool);
                    maps.clear_mark(id)
                        .and_then(|()| maps.set_backend(id, &entry))
                        .with_context(|| {
                            format!(
                                "adding backend {} of service {}",
                                backend.address, service.name
                            )
                        })?;
                    summary.backends_added += 1;
                    id
                }
            };
            state.backends.push(BackendState {
                id,
                address: backend.address,
                weight: backend.weight,
                pool: backend.pool,
            });
        }
        changes
            .retired_backends
            .extend(old_backends.iter().map(|b| b.id));

        // One table per home pool, filled with the backends of the pool that serves it.
        state.tables.resize(
            locality.pools.max(state.locality.pools) as usize,
            Vec::new(),
        );
        let mut changed_tables = Vec::new();
        for home in 0..state.tables.len() as u32 {
            let sequence = match locality.serving.get(home as usize) {
                Some(&serving) if home < locality.pools => {
                    let weights: Vec<(u32, u32)> = state
                        .backends
                        .iter()
                        .filter(|b| b.pool == serving)
                        .map(|b| (b.id, b.weight))
                        .collect();
                    smooth_weighted_sequence(&weights)
                }
                // A pool the service no longer has: its table is emptied.
                _ => Vec::new(),
            };
            if is_new || sequence != state.tables[home as usize] {
                changed_tables.push((home, sequence));
            }
        }
        if !changed_tables.is_empty() {
            state.generation = state.generation.wrapping_add(1);
        }
        let maglev = match service.scheduler {
            Scheduler::Maglev(config) => Some(config),
            Scheduler::RoundRobin => None,
        };
        let rebuild_all = maglev != state.maglev;
        for (home, sequence) in &changed_tables {
            let table = backend_table(sequence, state.generation);
            changes.tables.push((table_index(state.id, *home), table));
            state.tables[*home as usize].clone_from(sequence);
        }
        // Maglev tables are compared by what they are built from (exact weights): the
        // round-robin sequence scales weights down and may not change when they do.
        state.maglev_inputs.resize(state.tables.len(), Vec::new());
        for home in 0..state.tables.len() as u32 {
            let index = table_index(state.id, home);
            match maglev {
                Some(config) if home < locality.pools => {
                    let serving = locality.serving[home as usize];
                    let backends: Vec<(u32, SocketAddr, u32)> = state
                        .backends
                        .iter()
                        .filter(|b| b.pool == serving)
                        .map(|b| (b.id, b.address, b.weight))
                        .collect();
                    if rebuild_all || state.maglev_inputs[home as usize] != backends {
                        changes
                            .maglev_tables
                            .push((index, lookup_table(&backends, &config)));
                        state.maglev_inputs[home as usize] = backends;
                    }
                }
                None if state.maglev.is_some() => changes.maglev_removed.push(index),
                Some(_) => changes.maglev_removed.push(index),
                None => {}
            }
        }
        if maglev.is_none() {
            state.maglev_inputs.clear();
        }
        state.maglev_inputs.truncate(locality.pools as usize);
        state.tables.truncate(locality.pools as usize);

        let prefixes_changed = !Arc::ptr_eq(&state.locality.prefixes, &locality.prefixes)
            && *state.locality.prefixes != *locality.prefixes;
        if prefixes_changed || (is_new && !locality.prefixes.is_empty()) {
            let prefixes = locality
                .prefixes
                .iter()
                .map(|(net, pool)| (*net, *pool as u32))
                .collect();
            changes.prefixes.push((state.id, prefixes));
        }
        let entry_changed = state.locality.pools != locality.pools
            || state.locality.default_pool != locality.default_pool
            || state.maglev.is_some() != maglev.is_some()
            || state.forwarding != service.forwarding;
        state.maglev = maglev;
        state.forwarding = service.forwarding;
        if is_new || entry_changed {
            let entry = ServiceEntry {
                id: state.id,
                pools: locality.pools as u8,
                default_pool: locality.default_pool as u8,
                scheduler: match maglev {
                    Some(_) => scheduler::MAGLEV,
                    None => scheduler::ROUND_ROBIN,
                },
                forwarding: match service.forwarding {
                    Forwarding::Nat => forwarding::NAT,
                    Forwarding::Dsr => forwarding::DSR,
                },
            };
            let key = service_key(service.listen, service.protocol);
            changes
                .new_services
                .push((key, entry, service.name.clone()));
        }
        state.locality = locality.clone();
        Ok(state)
    }
}

/// What one apply writes after visiting every service.
#[derive(Default)]
struct Changes {
    /// Tables to publish, by index.
    tables: Vec<(u32, BackendTable)>,
    /// Maglev tables to publish with them, by index.
    maglev_tables: Vec<(u32, Box<MaglevTable>)>,
    /// Maglev tables no longer used once the services are written, by index.
    maglev_removed: Vec<u32>,
    /// Services to add (or whose pools changed) once their tables are published.
    new_services: Vec<(ServiceKey, ServiceEntry, String)>,
    /// Client prefixes to publish, by service id.
    prefixes: Vec<(u32, Vec<(IpNet, u32)>)>,
    /// Backends that left; their flows are purged at the end.
    retired_backends: Vec<u32>,
}

/// Hands out small integer ids next-fit, like PIDs: a released id is reused only after every
/// other free id has been handed out, so an id is not recycled while a packet that read an old
/// table might still be using it.
#[derive(Debug)]
pub(super) struct IdAllocator {
    in_use: Vec<bool>,
    next: usize,
}

impl IdAllocator {
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            in_use: vec![false; capacity as usize],
            next: 0,
        }
    }

    pub(super) fn allocate(&mut self) -> Option<u32> {
        let capacity = self.in_use.len();
        for offset in 0..capacity {
            let id = (self.next + offset) % capacity;
            if !self.in_use[id] {
                self.in_use[id] = true;
                self.next = (id + 1) % capacity;
                return Some(id as u32);
            }
        }
        None
    }

    pub(super) fn release(&mut self, id: u32) {
        self.in_use[id as usize] = false;
    }

    /// Marks `id` as taken (adopting ids assigned by an earlier daemon).
    pub(super) fn claim(&mut self, id: u32) {
        if let Some(slot) = self.in_use.get_mut(id as usize) {
            *slot = true;
        }
    }
}
