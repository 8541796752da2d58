//! The [`Balancer`]: the control plane's record of what it has put in the data plane, and how
//! it applies the next [`ServiceSpec`]s: `diff` plans the apply without touching the maps,
//! `writes` makes the writes in an order that keeps every intermediate state valid, and the
//! record changes only with them. A failed apply leaves a record that the next apply repairs
//! (it writes again whatever the failure may have left half-written).

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Result, bail};
use lb_common::{
    VipKey,
    consts::{
        limits::{MAX_BACKENDS, MAX_SERVICES},
        scheduler,
    },
    passive::ServicePolicy,
    tables::table_owner,
};

use super::{
    diff::{self, ApplyPlan, Exhausted, Ids, Vips},
    ids::IdAllocator,
    ports::{DataplaneMaps, Purge},
    spec::{Locality, ServiceSpec},
    writes,
};
use crate::{
    config::{Forwarding, MaglevConfig, Protocol},
    wire::{backend_address, service_of_key},
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
    /// Backends removed from the config that keep their flows (and ids) until the monitor
    /// releases them ([`Balancer::release`]): in no table, so they take no new flow.
    pub leaving: Vec<BackendState>,
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
    /// How much of the above the maps are known to hold.
    pub known: Known,
}

/// How much of a service's record the maps are known to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// All of it.
    All,
    /// Adopted from an earlier daemon's pinned maps: its id, entry and backends; not its
    /// tables or client prefixes, which the next apply publishes whole.
    Adopted,
    /// An apply failed part way: the next writes all of it again.
    Unknown,
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
    /// Weight in the published Maglev table (see [`super::BackendSpec::maglev_weight`]).
    pub maglev_weight: u32,
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
    /// Backends removed (from the config, or with their service).
    pub backends_removed: usize,
    /// Of those, backends that keep their connections until they end or the service's
    /// `drain_timeout` passes.
    pub backends_draining: usize,
    /// Tables published.
    pub tables_published: usize,
    /// Flows deleted because their backend left.
    pub flows_purged: usize,
}

/// The control plane's record of what it has put in the data plane.
#[derive(Debug)]
pub struct Balancer {
    services: Vec<ServiceState>,
    ids: Ids,
    /// What `VIPS` holds (or, after a failed apply, may hold).
    vips: BTreeSet<VipKey>,
    /// Whether an apply failed since `VIPS` was last written whole.
    vips_unknown: bool,
    /// Ids and tables handed out by applies that failed: their counters, marks and cursors
    /// may still be the previous owner's, so the next apply starts them afresh.
    fresh: Fresh,
}

/// What failed applies handed out without (perhaps) setting up: see [`diff::Setup`].
#[derive(Debug, Default)]
struct Fresh {
    services: BTreeSet<u32>,
    backends: BTreeSet<u32>,
    tables: BTreeSet<u32>,
}

impl Fresh {
    /// Records what `setup` hands out.
    fn record(&mut self, setup: &[diff::Setup]) {
        for service in setup {
            if service.new_id {
                self.services.insert(service.id);
            }
            self.tables.extend(&service.new_tables);
            let new_backends = service.backends.iter().filter(|b| b.3).map(|b| b.0);
            self.backends.extend(new_backends);
        }
    }

    /// Makes `setup` start afresh what a failed apply handed out.
    fn restore(&self, setup: &mut [diff::Setup]) {
        for service in setup {
            service.new_id |= self.services.contains(&service.id);
            for table in &self.tables {
                if table_owner(*table).0 == service.id && !service.new_tables.contains(table) {
                    service.new_tables.push(*table);
                }
            }
            for backend in &mut service.backends {
                backend.3 |= self.backends.contains(&backend.0);
            }
        }
    }
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
            ids: Ids {
                services: IdAllocator::new(MAX_SERVICES),
                backends: IdAllocator::new(MAX_BACKENDS),
            },
            vips: BTreeSet::new(),
            vips_unknown: false,
            fresh: Fresh::default(),
        }
    }

    /// The services as applied, in config order.
    pub fn services(&self) -> &[ServiceState] {
        &self.services
    }

    /// Makes the data plane serve `services`. Services and backends that stay keep their ids,
    /// so their established flows keep working; only tables whose sequence changes are
    /// published. When the new services or backends need more ids than are free, the ones
    /// that leave are retired first (an apply of what stays), then the new ones added.
    pub fn apply(
        &mut self,
        services: &[ServiceSpec],
        maps: &mut impl DataplaneMaps,
    ) -> Result<ApplySummary> {
        let plan = match diff::plan(&self.services, &self.ids, self.vips(), services) {
            Ok(plan) => plan,
            Err(_) => {
                let staying = self.staying(services);
                let retire = diff::plan(&self.services, &self.ids, self.vips(), &staying)
                    .expect("applying only what has ids allocates none");
                let retired = self.write(retire, maps)?;
                let mut summary = match diff::plan(&self.services, &self.ids, self.vips(), services)
                {
                    Ok(plan) => self.write(plan, maps)?,
                    Err(Exhausted::Services) => {
                        bail!("no free service id (at most {MAX_SERVICES} services)")
                    }
                    Err(Exhausted::Backends) => {
                        bail!("no free backend id (at most {MAX_BACKENDS} backends)")
                    }
                };
                summary.add(&retired);
                return Ok(summary);
            }
        };
        self.write(plan, maps)
    }

    /// Makes `plan`'s writes and, if they all succeed, takes its record; if one fails, keeps a
    /// record the next apply repairs from.
    fn write(
        &mut self,
        mut plan: ApplyPlan,
        maps: &mut impl DataplaneMaps,
    ) -> Result<ApplySummary> {
        self.fresh.restore(&mut plan.writes.setup);
        match writes::write(&plan.writes, maps) {
            Ok(purged) => {
                self.fresh = Fresh::default();
                let mut summary = plan.summary;
                summary.flows_purged = purged;
                self.services = plan.services;
                self.ids = plan.ids;
                self.vips = plan.vips;
                self.vips_unknown = false;
                Ok(summary)
            }
            Err(error) => {
                self.failed(plan);
                Err(error)
            }
        }
    }

    /// After `plan`'s writes failed part way: the record holds everything the maps may now
    /// hold (the old services and backends, and the new ones, with their ids), all of it
    /// unknown, so that the next apply writes it again and removes what it no longer wants.
    fn failed(&mut self, plan: ApplyPlan) {
        self.fresh.record(&plan.writes.setup);
        let mut merged = plan.services;
        for old in std::mem::take(&mut self.services) {
            let same = |s: &ServiceState| s.listen == old.listen && s.protocol == old.protocol;
            match merged.iter_mut().find(|s| same(s)) {
                Some(new) => {
                    // The tables of pools and the Maglev table the old one had are still to
                    // be emptied or removed, if the next apply does not want them.
                    new.locality.pools = new.locality.pools.max(old.locality.pools);
                    new.maglev = new.maglev.or(old.maglev);
                    let known = |new: &ServiceState, id| {
                        new.backends.iter().chain(&new.leaving).any(|b| b.id == id)
                    };
                    for backend in old.backends {
                        if !known(new, backend.id) {
                            new.backends.push(backend);
                        }
                    }
                    for backend in old.leaving {
                        if !known(new, backend.id) {
                            new.leaving.push(backend);
                        }
                    }
                }
                None => merged.push(old),
            }
        }
        let mut ids = plan.ids;
        for service in &mut merged {
            service.known = Known::Unknown;
            ids.services.claim(service.id);
            for backend in service.backends.iter().chain(&service.leaving) {
                ids.backends.claim(backend.id);
            }
        }
        self.services = merged;
        self.ids = ids;
        self.vips.extend(plan.vips);
        self.vips_unknown = true;
    }

    /// What `VIPS` holds: what is known to be there, and (after a failed apply) what may be.
    fn vips(&self) -> Vips<'_> {
        Vips {
            held: &self.vips,
            known: !self.vips_unknown,
        }
    }

    /// What of `services` already has ids: the services applied, with their backends that
    /// are applied. Applied on its own when ids run out, so backends that leave (and those
    /// already leaving) are released at once: their ids are wanted now.
    fn staying(&self, services: &[ServiceSpec]) -> Vec<ServiceSpec> {
        services
            .iter()
            .filter_map(|spec| {
                let applied = self
                    .services
                    .iter()
                    .find(|s| s.listen == spec.listen && s.protocol == spec.protocol)?;
                let mut spec = spec.clone();
                spec.drain_timeout = Duration::ZERO;
                spec.backends.retain(|b| {
                    applied
                        .backends
                        .iter()
                        .any(|a| a.address == b.address && a.pool == b.pool)
                });
                Some(spec)
            })
            .collect()
    }

    /// The backends that leave, with the index of their service in [`Self::services`].
    pub fn leaving(&self) -> impl Iterator<Item = (usize, &BackendState)> {
        self.services
            .iter()
            .enumerate()
            .flat_map(|(index, service)| service.leaving.iter().map(move |b| (index, b)))
    }

    /// Releases backends that leave (`ids`; others are ignored): their flows purged, their
    /// entries cleared, their ids free. Returns how many flows were purged. If a write fails,
    /// they are still leaving, and releasing them again finishes the job.
    pub fn release(&mut self, ids: &[u32], maps: &mut impl DataplaneMaps) -> Result<usize> {
        let ids: Vec<u32> = self
            .leaving()
            .map(|(_, backend)| backend.id)
            .filter(|id| ids.contains(id))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let purged = maps.purge_flows(&ids, Purge::All)?;
        for &id in &ids {
            maps.release_backend(id)?;
        }
        for service in &mut self.services {
            service.leaving.retain(|backend| !ids.contains(&backend.id));
        }
        for id in ids {
            self.ids.backends.release(id);
        }
        Ok(purged)
    }

    /// Takes over what a previous daemon left in pinned maps: its services and backends keep
    /// their ids, so their flows keep working once [`Self::apply`] runs with the config, which
    /// publishes their tables and prefixes whole (what the maps hold of them is not known).
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
            self.ids.services.claim(entry.id);
            let backends: Vec<BackendState> = existing
                .backends
                .iter()
                .filter(|(_, backend)| backend.service_id == entry.id)
                .map(|(id, backend)| {
                    self.ids.backends.claim(*id);
                    BackendState {
                        id: *id,
                        address: backend_address(backend),
                        weight: 0,
                        pool: backend.pool,
                        maglev_weight: 0,
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
                leaving: Vec::new(),
                tables: vec![Vec::new(); pools as usize],
                generation: 0,
                locality: Locality {
                    pools,
                    serving: (0..pools).collect(),
                    default_pool: u32::from(entry.default_pool),
                    prefixes: Arc::new(Vec::new()),
                },
                policy: None,
                maglev: (entry.scheduler == scheduler::MAGLEV).then_some(MaglevConfig {
                    table_size: 0,
                    seed: 0,
                    client_hash: false,
                }),
                maglev_inputs: Vec::new(),
                forwarding: Forwarding::from_code(entry.forwarding),
                known: Known::Adopted,
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
            maps.purge_flows(&orphans, Purge::All)?;
            for id in orphans {
                maps.release_backend(id)?;
            }
        }
        Ok((self.services.len(), adopted_backends))
    }
}

impl ApplySummary {
    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &Self) {
        self.services_added += other.services_added;
        self.services_removed += other.services_removed;
        self.backends_added += other.backends_added;
        self.backends_removed += other.backends_removed;
        self.backends_draining += other.backends_draining;
        self.tables_published += other.tables_published;
        self.flows_purged += other.flows_purged;
    }
}
