//! What one apply changes, decided without touching the maps: from the balancer's record and
//! the next [`ServiceSpec`]s, the record after and every write that gets the maps there, in
//! groups that the writer (`writes`) performs in a fixed order. Pure: the ids are allocated
//! from copies of the balancer's allocators, which it keeps only once the writes succeeded.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use ipnet::IpNet;
use lb_common::{
    BackendEntry, BackendTable, MaglevTable, ServiceEntry, ServiceKey, VipKey, consts::scheduler,
    passive::ServicePolicy, tables::table_index,
};

use super::{
    balancer::{ApplySummary, BackendState, Known, ServiceState},
    ids::IdAllocator,
    maglev::lookup_table,
    spec::{Locality, ServiceSpec},
    table::{backend_table, smooth_weighted_sequence},
};
use crate::{
    config::{Forwarding, MaglevConfig, Scheduler},
    wire::{backend_entry, service_key, vip_key},
};

/// The ids in use, as they will be after the apply.
#[derive(Clone, Debug)]
pub(super) struct Ids {
    pub(super) services: IdAllocator,
    pub(super) backends: IdAllocator,
}

/// Which id ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exhausted {
    /// No free service id.
    Services,
    /// No free backend id.
    Backends,
}

/// One service's writes before any table or service names what they write.
#[derive(Clone, Debug, Default)]
pub(super) struct Setup {
    /// The service's name, for errors.
    pub(super) name: String,
    /// Its id.
    pub(super) id: u32,
    /// Whether the id is new to the service: its counters start from zero.
    pub(super) new_id: bool,
    /// Its passive health and admission settings, if they change.
    pub(super) policy: Option<ServicePolicy>,
    /// Tables of pools new to the service: their round robin starts from the beginning and
    /// their spill counts from zero.
    pub(super) new_tables: Vec<u32>,
    /// Backends whose entry is written: new ones (and all of a service whose maps are not
    /// known): id, entry, address, and whether the id is new (its counters and passive
    /// marks start from zero).
    pub(super) backends: Vec<(u32, BackendEntry, SocketAddr, bool)>,
}

/// A service that leaves.
#[derive(Clone, Debug)]
pub(super) struct Removal {
    pub(super) key: ServiceKey,
    pub(super) name: String,
    pub(super) id: u32,
    /// Its tables, emptied.
    pub(super) tables: Vec<u32>,
    /// Whether it has Maglev tables to remove.
    pub(super) maglev: bool,
    /// Whether its client prefixes must be cleared.
    pub(super) prefixes: bool,
}

/// Every write of one apply, grouped in the order they are made (see `writes`).
#[derive(Clone, Debug, Default)]
pub(super) struct Writes {
    pub(super) setup: Vec<Setup>,
    pub(super) tables: Vec<(u32, BackendTable)>,
    /// Tables of pools their service no longer has: emptied once the service's entry and
    /// client prefixes no longer send clients to them.
    pub(super) pools_emptied: Vec<(u32, BackendTable)>,
    pub(super) maglev_tables: Vec<(u32, Box<MaglevTable>)>,
    pub(super) prefixes: Vec<(u32, Vec<(IpNet, u32)>)>,
    pub(super) entries: Vec<(ServiceKey, ServiceEntry, String)>,
    pub(super) maglev_removed: Vec<u32>,
    pub(super) vips_added: Vec<VipKey>,
    pub(super) removed: Vec<Removal>,
    pub(super) retired: Vec<u32>,
    pub(super) vips_removed: Vec<VipKey>,
}

/// What `VIPS` holds, as the balancer knows it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Vips<'a> {
    /// The VIPs it holds, or may hold.
    pub(super) held: &'a BTreeSet<VipKey>,
    /// Whether it holds exactly those (false after a failed apply: every VIP is added again).
    pub(super) known: bool,
}

/// An apply, decided.
#[derive(Clone, Debug)]
pub(super) struct ApplyPlan {
    /// The services as the data plane will have them, in spec order.
    pub(super) services: Vec<ServiceState>,
    /// The ids in use after the apply (retired ones released).
    pub(super) ids: Ids,
    /// What `VIPS` will hold.
    pub(super) vips: BTreeSet<VipKey>,
    pub(super) writes: Writes,
    /// Counts of what changes (flows purged are counted by the writer).
    pub(super) summary: ApplySummary,
}

/// Plans the apply of `specs` to what `services` (with `ids` and `vips`) says the maps hold.
/// Backends and services that stay keep their ids; new ones take ids (none is reused within
/// the apply: retired ids are released after it).
pub(super) fn plan(
    services: &[ServiceState],
    ids: &Ids,
    vips: Vips<'_>,
    specs: &[ServiceSpec],
) -> Result<ApplyPlan, Exhausted> {
    let mut previous = services.to_vec();
    let mut ids = ids.clone();
    let mut writes = Writes::default();
    let mut summary = ApplySummary::default();
    let mut applied = Vec::with_capacity(specs.len());
    for spec in specs {
        let existing = previous
            .iter()
            .position(|s| s.listen == spec.listen && s.protocol == spec.protocol)
            .map(|i| previous.swap_remove(i));
        applied.push(service(
            spec,
            existing,
            &mut ids,
            &mut writes,
            &mut summary,
        )?);
    }
    let next_vips: BTreeSet<VipKey> = specs.iter().map(|s| vip_key(s.listen.ip())).collect();
    writes.vips_added = match vips.known {
        true => next_vips.difference(vips.held).copied().collect(),
        false => next_vips.iter().copied().collect(),
    };
    writes.vips_removed = vips.held.difference(&next_vips).copied().collect();
    for removed in previous {
        let tables: Vec<u32> = (0..removed.locality.pools)
            .map(|pool| table_index(removed.id, pool))
            .collect();
        writes.removed.push(Removal {
            key: service_key(removed.listen, removed.protocol),
            name: removed.name.clone(),
            id: removed.id,
            tables,
            maglev: removed.maglev.is_some(),
            prefixes: !removed.locality.prefixes.is_empty() || prefixes_unknown(&removed),
        });
        summary.services_removed += 1;
        summary.backends_removed += removed.backends.len();
        ids.services.release(removed.id);
        // A service that leaves takes its backends' flows with it: its VIP no longer answers.
        let backends = removed.backends.iter().chain(&removed.leaving);
        writes.retired.extend(backends.map(|b| b.id));
    }
    summary.tables_published += writes.tables.len()
        + writes.pools_emptied.len()
        + writes.maglev_tables.len()
        + writes.removed.iter().map(|r| r.tables.len()).sum::<usize>();
    for &id in &writes.retired {
        ids.backends.release(id);
    }
    Ok(ApplyPlan {
        services: applied,
        ids,
        vips: next_vips,
        writes,
        summary,
    })
}

/// Whether the maps may hold client prefixes of `state` that its record does not know.
fn prefixes_unknown(state: &ServiceState) -> bool {
    match state.known {
        Known::All => false,
        // Only a service with pools has prefixes.
        Known::Adopted => state.locality.pools > 1,
        Known::Unknown => true,
    }
}

/// A service that does not exist yet: an id and nothing published.
fn new_service(spec: &ServiceSpec, id: u32) -> ServiceState {
    ServiceState {
        id,
        name: spec.name.clone(),
        listen: spec.listen,
        protocol: spec.protocol,
        backends: Vec::new(),
        leaving: Vec::new(),
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
        forwarding: spec.forwarding,
        known: Known::All,
    }
}

/// Plans one service: `existing` as the maps have it (none: a new service).
fn service(
    spec: &ServiceSpec,
    existing: Option<ServiceState>,
    ids: &mut Ids,
    writes: &mut Writes,
    summary: &mut ApplySummary,
) -> Result<ServiceState, Exhausted> {
    let locality = &spec.locality;
    let (mut state, new_id) = match existing {
        Some(state) => (state, false),
        None => {
            let id = ids.services.allocate().ok_or(Exhausted::Services)?;
            summary.services_added += 1;
            (new_service(spec, id), true)
        }
    };
    // Nothing of a new service is published; of one whose last apply failed, nothing is
    // known; of one adopted from an earlier daemon, its tables and prefixes are not.
    let unknown = new_id || state.known == Known::Unknown;
    let tables_unknown = unknown || state.known == Known::Adopted;
    let mut setup = Setup {
        name: spec.name.clone(),
        id: state.id,
        new_id,
        ..Setup::default()
    };
    if unknown || state.policy != Some(spec.policy) {
        setup.policy = Some(spec.policy);
        state.policy = Some(spec.policy);
    }
    state.name.clone_from(&spec.name);
    setup.new_tables = (state.locality.pools..locality.pools)
        .map(|pool| table_index(state.id, pool))
        .collect();
    let retired = backends(spec, &mut state, unknown, ids, summary, &mut setup)?;
    writes.retired.extend(retired);
    writes.setup.push(setup);

    tables(spec, &mut state, tables_unknown, writes);
    prefixes(spec, &state, new_id, writes);
    entry(spec, &mut state, unknown, writes);
    state.locality = locality.clone();
    state.known = Known::All;
    Ok(state)
}

/// The backends of `state` for `spec`: those that stay keep their ids, new ones take one, and
/// one removed earlier that is back while it drains takes its id (and flows) back. The
/// entries of new backends (of all, if the maps' are not known) go to `setup`. Those that
/// leave join `state.leaving`, where they keep their ids and flows, if the service drains
/// them; else they are returned, with those that were leaving, to be retired now.
fn backends(
    spec: &ServiceSpec,
    state: &mut ServiceState,
    unknown: bool,
    ids: &mut Ids,
    summary: &mut ApplySummary,
    setup: &mut Setup,
) -> Result<Vec<u32>, Exhausted> {
    let mut old_backends = std::mem::take(&mut state.backends);
    let mut leaving = std::mem::take(&mut state.leaving);
    for backend in &spec.backends {
        let same = |b: &BackendState| b.address == backend.address && b.pool == backend.pool;
        let (id, new) = if let Some(i) = old_backends.iter().position(same) {
            (old_backends.swap_remove(i).id, false)
        } else if let Some(i) = leaving.iter().position(same) {
            (leaving.swap_remove(i).id, false)
        } else {
            let id = ids.backends.allocate().ok_or(Exhausted::Backends)?;
            summary.backends_added += 1;
            (id, true)
        };
        if new || unknown {
            let entry = backend_entry(backend.address, state.id, backend.pool);
            setup.backends.push((id, entry, backend.address, new));
        }
        state.backends.push(BackendState {
            id,
            address: backend.address,
            weight: backend.weight,
            pool: backend.pool,
            maglev_weight: backend.maglev_weight,
        });
    }
    summary.backends_removed += old_backends.len();
    if spec.drain_timeout.is_zero() {
        return Ok(old_backends.iter().chain(&leaving).map(|b| b.id).collect());
    }
    summary.backends_draining += old_backends.len();
    leaving.extend(old_backends.into_iter().map(|backend| BackendState {
        weight: 0,
        maglev_weight: 0,
        ..backend
    }));
    state.leaving = leaving;
    Ok(Vec::new())
}

/// The client prefixes of `state` for `spec`, written if they changed, if the service is new
/// and has some, or if the maps' are not known.
fn prefixes(spec: &ServiceSpec, state: &ServiceState, new_id: bool, writes: &mut Writes) {
    let locality = &spec.locality;
    let prefixes_changed = !Arc::ptr_eq(&state.locality.prefixes, &locality.prefixes)
        && *state.locality.prefixes != *locality.prefixes;
    let new_with_prefixes = new_id && !locality.prefixes.is_empty();
    if prefixes_changed || new_with_prefixes || prefixes_unknown(state) {
        let prefixes = locality
            .prefixes
            .iter()
            .map(|(net, pool)| (*net, *pool as u32))
            .collect();
        writes.prefixes.push((state.id, prefixes));
    }
}

/// The service's entry for `spec` (pools, default pool, scheduler, forwarding), written if
/// one of them changed or the maps' is not known; `state` takes the scheduler and forwarding.
fn entry(spec: &ServiceSpec, state: &mut ServiceState, unknown: bool, writes: &mut Writes) {
    let locality = &spec.locality;
    let maglev = match spec.scheduler {
        Scheduler::Maglev(config) => Some(config),
        Scheduler::RoundRobin | Scheduler::LeastConnections => None,
    };
    let entry_changed = state.locality.pools != locality.pools
        || state.locality.default_pool != locality.default_pool
        || state.maglev.is_some() != maglev.is_some()
        || state.forwarding != spec.forwarding;
    state.maglev = maglev;
    state.forwarding = spec.forwarding;
    if unknown || entry_changed {
        writes.entries.push((
            service_key(spec.listen, spec.protocol),
            service_entry(state.id, locality, maglev.as_ref(), spec.forwarding),
            spec.name.clone(),
        ));
    }
}

/// The round-robin tables (one per home pool, filled with the backends of the pool that
/// serves it) and the Maglev tables of `state` for `spec`: those that change, or all of them
/// if the maps' are not known.
fn tables(spec: &ServiceSpec, state: &mut ServiceState, unknown: bool, writes: &mut Writes) {
    let locality = &spec.locality;
    state.tables.resize(
        locality.pools.max(state.locality.pools) as usize,
        Vec::new(),
    );
    let mut changed = Vec::new();
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
        if unknown || sequence != state.tables[home as usize] {
            changed.push((home, sequence));
        }
    }
    if !changed.is_empty() {
        state.generation = state.generation.wrapping_add(1);
    }
    for (home, sequence) in &changed {
        let table = backend_table(sequence, state.generation);
        let index = table_index(state.id, *home);
        if *home < locality.pools {
            writes.tables.push((index, table));
        } else {
            writes.pools_emptied.push((index, table));
        }
        state.tables[*home as usize].clone_from(sequence);
    }
    let maglev = match spec.scheduler {
        Scheduler::Maglev(config) => Some(config),
        Scheduler::RoundRobin | Scheduler::LeastConnections => None,
    };
    // Maglev tables are compared by what they are built from (exact weights): the
    // round-robin sequence scales weights down and may not change when they do.
    let rebuild_all = unknown || maglev != state.maglev;
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
                    .map(|b| (b.id, b.address, b.maglev_weight))
                    .collect();
                if rebuild_all || state.maglev_inputs[home as usize] != backends {
                    writes
                        .maglev_tables
                        .push((index, lookup_table(&backends, &config)));
                    state.maglev_inputs[home as usize] = backends;
                }
            }
            None if state.maglev.is_some() => writes.maglev_removed.push(index),
            Some(_) => writes.maglev_removed.push(index),
            None => {}
        }
    }
    if maglev.is_none() {
        state.maglev_inputs.clear();
    }
    state.maglev_inputs.truncate(locality.pools as usize);
    state.tables.truncate(locality.pools as usize);
}

/// A service's entry in `SERVICES`.
fn service_entry(
    id: u32,
    locality: &Locality,
    maglev: Option<&MaglevConfig>,
    forwarding: Forwarding,
) -> ServiceEntry {
    ServiceEntry {
        id,
        pools: locality.pools as u8,
        default_pool: locality.default_pool as u8,
        scheduler: match maglev {
            Some(_) => scheduler::MAGLEV,
            None => scheduler::ROUND_ROBIN,
        },
        forwarding: forwarding.code(),
    }
}
