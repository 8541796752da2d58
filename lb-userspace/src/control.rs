//! The control plane: turns a [`Config`] into the contents of the data plane's maps and keeps
//! them in step when the configuration changes, touching only what changed.
//!
//! It speaks to the maps through the [`DataplaneMaps`] trait, so all of its logic (id
//! allocation, table building, the order of updates) is tested without a kernel.
//!
//! The order of updates keeps every intermediate state valid for a packet that arrives
//! between two of them: a backend's address is written before any table names it, a table is
//! published before its service appears, a service disappears before its table is emptied,
//! and a backend's flows are purged only after the last table naming it was replaced.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc};

use ipnet::IpNet;

use anyhow::{Context as _, Result};
use lb_common::{
    BackendEntry, BackendTable, ServiceEntry, ServiceKey, VipKey,
    consts::limits::{MAX_BACKENDS, MAX_POOLS_PER_SERVICE, MAX_SERVICES},
};

use crate::{
    config::{Config, Protocol},
    table::{backend_table, smooth_weighted_sequence},
    wire::{backend_address, backend_entry, service_key, service_of_key, vip_key},
};

/// Writes the control plane makes to the data plane.
pub trait DataplaneMaps {
    /// Records where backend `id` lives (`BACKENDS`).
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<()>;
    /// Atomically replaces the backend table at `index` (`BACKEND_TABLES`).
    fn publish_table(&mut self, index: u32, table: &BackendTable) -> Result<()>;
    /// Atomically replaces several tables (each one atomically; they need not change at the
    /// same instant). The maps do this in one batch.
    fn publish_tables(&mut self, tables: &[(u32, BackendTable)]) -> Result<()> {
        for (index, table) in tables {
            self.publish_table(*index, table)?;
        }
        Ok(())
    }
    /// Restarts the round-robin cursor of table `index` (`RR_CURSORS`).
    fn reset_cursor(&mut self, index: u32) -> Result<()>;
    /// Adds or updates a service (`SERVICES`).
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()>;
    /// Removes a service (`SERVICES`).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Deletes every flow (both directions) served by one of `backend_ids`; returns how many
    /// flows were deleted.
    fn purge_flows(&mut self, backend_ids: &[u32]) -> Result<usize>;
    /// Clears the entry of a released backend id.
    fn release_backend(&mut self, id: u32) -> Result<()> {
        self.set_backend(id, &BackendEntry::default())
    }
    /// Atomically replaces the client prefixes of service `service_id` (`CLIENT_POOLS`): each
    /// prefix and its home pool.
    fn publish_prefixes(&mut self, service_id: u32, prefixes: &[(IpNet, u32)]) -> Result<()>;
    /// New flows of the table at `index` that were placed outside its home pool so far.
    fn spilled(&self, index: u32) -> Result<u64>;
    /// Marks an address as a VIP (`VIPS`): ICMP echo requests to it are answered.
    fn add_vip(&mut self, key: &VipKey) -> Result<()>;
    /// Removes an address from `VIPS`.
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    /// The services and the backends in use that the maps already hold (pinned maps that a
    /// previous daemon filled).
    fn existing(&self) -> Result<Existing>;
}

/// What pinned maps hold when a daemon starts.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// `SERVICES`.
    pub services: Vec<(ServiceKey, ServiceEntry)>,
    /// The entries of `BACKENDS` in use, by id.
    pub backends: Vec<(u32, BackendEntry)>,
    /// `VIPS`.
    pub vips: Vec<VipKey>,
}

/// Index in `BACKEND_TABLES` (and `RR_CURSORS`) of a service's pool.
pub fn table_index(service_id: u32, pool: u32) -> u32 {
    service_id * MAX_POOLS_PER_SERVICE + pool
}

/// What the data plane should serve: a service, the weights its backends should have in the
/// tables right now (0: no new flows, but the backend and its flows stay), and its locality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name (for logs and errors).
    pub name: String,
    /// Virtual IP and port.
    pub listen: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Backends, in config order.
    pub backends: Vec<BackendSpec>,
    /// Locality pools.
    pub locality: Locality,
}

/// A backend as the data plane should have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Address and port.
    pub address: SocketAddr,
    /// Weight in its pool's table.
    pub weight: u32,
    /// Its pool.
    pub pool: u32,
}

/// A service's locality pools as the data plane should have them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locality {
    /// Number of pools (at least 1).
    pub pools: u32,
    /// For each home pool, the pool whose backends take its new flows now (itself, or a
    /// fallback when it has no room).
    pub serving: Vec<u32>,
    /// The pool of clients that match no prefix.
    pub default_pool: u32,
    /// Client prefixes and their home pools.
    pub prefixes: Arc<Vec<(IpNet, usize)>>,
}

impl Locality {
    /// One pool, serving itself: a service without locality.
    pub fn single() -> Self {
        Self {
            pools: 1,
            serving: vec![0],
            default_pool: 0,
            prefixes: Arc::new(Vec::new()),
        }
    }
}

impl ServiceSpec {
    /// Every service of `config` with every backend at its configured weight, each pool
    /// serving itself.
    pub fn all_up(config: &Config) -> Vec<Self> {
        config
            .services
            .iter()
            .map(|service| Self {
                name: service.name.clone(),
                listen: service.listen,
                protocol: service.protocol,
                backends: service
                    .backends
                    .iter()
                    .map(|b| BackendSpec {
                        address: b.address,
                        weight: b.weight,
                        pool: b.pool as u32,
                    })
                    .collect(),
                locality: Locality {
                    pools: service.pools.len() as u32,
                    serving: (0..service.pools.len() as u32).collect(),
                    default_pool: service.default_pool as u32,
                    prefixes: Arc::clone(&service.client_prefixes),
                },
            })
            .collect()
    }
}

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
        for (service_id, prefixes) in &changes.prefixes {
            maps.publish_prefixes(*service_id, prefixes)
                .context("publishing client prefixes")?;
        }
        for (key, entry, name) in &changes.new_services {
            maps.set_service(key, entry)
                .with_context(|| format!("adding service {name}"))?;
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
                }
            }
        };
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
                    maps.set_backend(id, &entry).with_context(|| {
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
        for (home, sequence) in changed_tables {
            let table = backend_table(&sequence, state.generation);
            changes.tables.push((table_index(state.id, home), table));
            state.tables[home as usize] = sequence;
        }
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
            || state.locality.default_pool != locality.default_pool;
        if is_new || entry_changed {
            let entry = ServiceEntry {
                id: state.id,
                pools: locality.pools as u8,
                default_pool: locality.default_pool as u8,
                _pad: [0; 2],
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
struct IdAllocator {
    in_use: Vec<bool>,
    next: usize,
}

impl IdAllocator {
    fn new(capacity: u32) -> Self {
        Self {
            in_use: vec![false; capacity as usize],
            next: 0,
        }
    }

    fn allocate(&mut self) -> Option<u32> {
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

    fn release(&mut self, id: u32) {
        self.in_use[id as usize] = false;
    }

    /// Marks `id` as taken (adopting ids assigned by an earlier daemon).
    fn claim(&mut self, id: u32) {
        if let Some(slot) = self.in_use.get_mut(id as usize) {
            *slot = true;
        }
    }
}

/// An in-memory stand-in for the maps, for testing the control plane without a kernel.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;

    use super::*;

    /// In-memory maps that record every write in order.
    #[derive(Default)]
    pub(crate) struct FakeMaps {
        pub(crate) log: Vec<String>,
        pub(crate) backends: HashMap<u32, BackendEntry>,
        pub(crate) tables: HashMap<u32, Vec<u32>>,
        pub(crate) services: HashMap<ServiceKey, ServiceEntry>,
        pub(crate) flows_by_backend: HashMap<u32, usize>,
        pub(crate) vips: std::collections::BTreeSet<VipKey>,
        pub(crate) prefixes: HashMap<u32, Vec<(IpNet, u32)>>,
        pub(crate) spilled: HashMap<u32, u64>,
    }

    impl DataplaneMaps for FakeMaps {
        fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<()> {
            self.log.push(format!("backend {id}"));
            self.backends.insert(id, *entry);
            Ok(())
        }
        fn publish_table(&mut self, index: u32, table: &BackendTable) -> Result<()> {
            let slots = table.slots[..table.len as usize].to_vec();
            for id in &slots {
                assert!(
                    self.backends.contains_key(id),
                    "table {index} names backend {id} before it was written"
                );
            }
            self.log.push(format!("table {index} {slots:?}"));
            self.tables.insert(index, slots);
            Ok(())
        }
        fn reset_cursor(&mut self, index: u32) -> Result<()> {
            self.log.push(format!("cursor {index}"));
            Ok(())
        }
        fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()> {
            assert!(
                self.tables.contains_key(&table_index(entry.id, 0)),
                "service before its table"
            );
            self.log.push(format!("service+ {}", entry.id));
            self.services.insert(*key, *entry);
            Ok(())
        }
        fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
            let entry = self
                .services
                .remove(key)
                .expect("removing a service that is not there");
            self.log.push(format!("service- {}", entry.id));
            Ok(())
        }
        fn release_backend(&mut self, id: u32) -> Result<()> {
            self.log.push(format!("release {id}"));
            self.backends.insert(id, BackendEntry::default());
            Ok(())
        }
        fn existing(&self) -> Result<Existing> {
            let mut backends: Vec<(u32, BackendEntry)> = self
                .backends
                .iter()
                .filter(|(_, entry)| entry.in_use == 1)
                .map(|(id, entry)| (*id, *entry))
                .collect();
            backends.sort_by_key(|(id, _)| *id);
            Ok(Existing {
                services: self.services.iter().map(|(k, e)| (*k, *e)).collect(),
                backends,
                vips: self.vips.iter().copied().collect(),
            })
        }
        fn publish_prefixes(&mut self, service_id: u32, prefixes: &[(IpNet, u32)]) -> Result<()> {
            self.log
                .push(format!("prefixes {service_id} {}", prefixes.len()));
            self.prefixes.insert(service_id, prefixes.to_vec());
            Ok(())
        }
        fn spilled(&self, index: u32) -> Result<u64> {
            Ok(self.spilled.get(&index).copied().unwrap_or(0))
        }
        fn add_vip(&mut self, key: &VipKey) -> Result<()> {
            assert!(self.vips.insert(*key), "adding a VIP twice");
            self.log.push("vip+".into());
            Ok(())
        }
        fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
            assert!(self.vips.remove(key), "removing a VIP that is not there");
            self.log.push("vip-".into());
            Ok(())
        }
        fn purge_flows(&mut self, backend_ids: &[u32]) -> Result<usize> {
            for (index, slots) in &self.tables {
                for id in backend_ids {
                    assert!(
                        !slots.contains(id),
                        "purging backend {id} still in table {index}"
                    );
                }
            }
            let mut ids = backend_ids.to_vec();
            ids.sort_unstable();
            self.log.push(format!("purge {ids:?}"));
            Ok(backend_ids
                .iter()
                .map(|id| self.flows_by_backend.remove(id).unwrap_or(0))
                .sum())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeMaps, *};

    fn config(services: &str) -> Vec<ServiceSpec> {
        ServiceSpec::all_up(
            &Config::parse(&format!("interfaces = [\"eth0\"]\n{services}")).unwrap(),
        )
    }

    const WEB: &str = r#"
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080", weight = 2 } ]
"#;

    const DNS: &str = r#"
[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:53" } ]
"#;

    #[test]
    fn each_home_pool_gets_the_table_of_the_pool_that_serves_it() {
        let text = r#"
[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
client_prefixes = { "198.18.0.0/25" = "kr", "198.18.0.128/25" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.13:8080" } ]
"#;
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        let mut specs = config(text);
        balancer.apply(&specs, &mut maps).unwrap();
        assert_eq!(maps.tables[&table_index(0, 0)], [0, 1]);
        assert_eq!(maps.tables[&table_index(0, 1)], [2]);
        assert_eq!(maps.prefixes[&0].len(), 2);
        let entry = maps.services.values().next().unwrap();
        assert_eq!((entry.pools, entry.default_pool), (2, 0));
        assert_eq!(maps.backends[&2].pool, 1, "a backend knows its pool");
        let prefixes_published = |maps: &FakeMaps| {
            maps.log
                .iter()
                .filter(|l| l.starts_with("prefixes"))
                .count()
        };
        assert_eq!(prefixes_published(&maps), 1);

        // kr has no room: its clients' table is jp's; jp's own is unchanged.
        maps.log.clear();
        specs[0].locality.serving = vec![1, 1];
        balancer.apply(&specs, &mut maps).unwrap();
        assert_eq!(maps.tables[&table_index(0, 0)], [2]);
        assert_eq!(maps.log, [format!("table {} [2]", table_index(0, 0))]);

        // Room again: home.
        specs[0].locality.serving = vec![0, 1];
        balancer.apply(&specs, &mut maps).unwrap();
        assert_eq!(maps.tables[&table_index(0, 0)], [0, 1]);
        assert_eq!(
            prefixes_published(&maps),
            0,
            "unchanged prefixes are not republished"
        );

        // A reload with other prefixes publishes them whole.
        let reloaded = config(&text.replace("198.18.0.128/25", "198.18.0.128/26"));
        balancer.apply(&reloaded, &mut maps).unwrap();
        assert_eq!(prefixes_published(&maps), 1);
        assert_eq!(maps.prefixes[&0][1].0.to_string(), "198.18.0.128/26");

        // Removing the service empties both tables and its prefixes.
        balancer.apply(&[], &mut maps).unwrap();
        assert!(maps.tables[&table_index(0, 0)].is_empty());
        assert!(maps.tables[&table_index(0, 1)].is_empty());
        assert!(maps.prefixes[&0].is_empty());
    }

    #[test]
    fn a_vip_stays_while_a_service_uses_it() {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        balancer
            .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
            .unwrap();
        assert_eq!(maps.vips.len(), 1, "two services on one VIP: one VIP");
        balancer.apply(&config(DNS), &mut maps).unwrap();
        assert_eq!(maps.vips.len(), 1, "the VIP still serves dns");
        let other = DNS.replace("198.18.100.1:53", "198.18.100.2:53");
        balancer.apply(&config(&other), &mut maps).unwrap();
        assert_eq!(
            maps.vips.iter().copied().collect::<Vec<_>>(),
            [crate::wire::vip_key("198.18.100.2".parse().unwrap())]
        );
        // A restarted daemon knows which VIPs the maps hold and adds none twice.
        let mut restarted = Balancer::new();
        restarted.adopt(&mut maps).unwrap();
        restarted.apply(&config(&other), &mut maps).unwrap();
        assert_eq!(maps.vips.len(), 1);
    }

    #[test]
    fn first_apply_writes_backends_then_table_then_service() {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        let summary = balancer.apply(&config(WEB), &mut maps).unwrap();
        assert_eq!(
            maps.log,
            [
                "cursor 0",
                "backend 0",
                "backend 1",
                "table 0 [1, 0, 1]",
                "service+ 0",
                "vip+"
            ]
        );
        assert_eq!(summary.services_added, 1);
        assert_eq!(summary.backends_added, 2);
        let key = service_key("198.18.100.1:80".parse().unwrap(), Protocol::Tcp);
        assert_eq!(
            maps.services[&key],
            ServiceEntry {
                id: 0,
                pools: 1,
                default_pool: 0,
                _pad: [0; 2]
            }
        );
        assert_eq!(maps.backends[&1].port, 8080u16.to_be());
    }

    #[test]
    fn applying_the_same_config_again_changes_nothing() {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        balancer.apply(&config(WEB), &mut maps).unwrap();
        maps.log.clear();
        let summary = balancer.apply(&config(WEB), &mut maps).unwrap();
        assert!(maps.log.is_empty(), "{:?}", maps.log);
        assert_eq!(summary, ApplySummary::default());
    }

    #[test]
    fn a_weight_change_republishes_only_the_table() {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        balancer
            .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
            .unwrap();
        maps.log.clear();
        balancer
            .apply(
                &config(&format!("{}{DNS}", WEB.replace("weight = 2", "weight = 1"))),
                &mut maps,
            )
            .unwrap();
        assert_eq!(maps.log, ["table 0 [0, 1]"]);
        assert_eq!(balancer.services()[0].generation, 2);
    }

    #[test]
    fn removed_backends_leave_the_table_before_their_flows_are_purged() {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        balancer.apply(&config(WEB), &mut maps).unwrap();
        maps.flows_by_backend.insert(1, 5);
        maps.log.clear();
        let one_backend = WEB.replace(", { address = \"198.18.1.12:8080\", weight = 2 }", "");
        let summary = balancer.apply(&config(&one_backend), &mut maps).unwrap();
        assert_eq!(maps.log, ["table 0 [0]", "purge [1]", "release 1"]);
        assert_eq!(summary.flows_purged, 5);
        assert_eq!(summary.backends_removed, 1);
    }

    #[test]
    fn removed_services_disappear_before_their_table_is_emptied() {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        balancer
            .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
            .unwrap();
        maps.log.clear();
        let summary = balancer.apply(&config(DNS), &mut maps).unwrap();
        assert_eq!(
            maps.log,
            [
                "service- 0",
                "table 0 []",
                "purge [0, 1]",
                "release 0",
                "release 1"
            ]
        );
        assert_eq!(summary.services_removed, 1);
        assert_eq!(balancer.services().len(), 1);
        assert_eq!(
            balancer.services()[0].id,
            1,
            "the remaining service keeps its id"
        );
    }

    #[test]
    fn a_new_balancer_adopts_what_the_maps_hold_and_keeps_the_ids() {
        let mut maps = FakeMaps::default();
        let mut first = Balancer::new();
        first
            .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
            .unwrap();
        let ids = |balancer: &Balancer| -> Vec<(u32, Vec<u32>)> {
            balancer
                .services()
                .iter()
                .map(|s| (s.id, s.backends.iter().map(|b| b.id).collect()))
                .collect()
        };
        let before = ids(&first);

        // A restarted daemon: same maps, a fresh balancer.
        let mut second = Balancer::new();
        assert_eq!(second.adopt(&mut maps).unwrap(), (2, 3));
        maps.log.clear();
        let summary = second
            .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
            .unwrap();
        let mut after = ids(&second);
        after.sort();
        let mut expected = before.clone();
        expected.sort();
        assert_eq!(after, expected, "every service and backend keeps its id");
        assert_eq!((summary.services_added, summary.backends_added), (0, 0));
        assert!(
            maps.log.iter().all(|line| line.starts_with("table")),
            "{:?}",
            maps.log
        );
        // New ids do not collide with adopted ones.
        let mut third = config(&format!("{WEB}{DNS}"));
        third[0].backends.push(BackendSpec {
            address: "198.18.1.20:8080".parse().unwrap(),
            weight: 1,
            pool: 0,
        });
        second.apply(&third, &mut maps).unwrap();
        let new_id = second.services()[0].backends[2].id;
        assert!(!before.iter().any(|(_, b)| b.contains(&new_id)));
    }

    #[test]
    fn orphaned_backends_are_released_on_adoption() {
        let mut maps = FakeMaps::default();
        maps.backends
            .insert(9, backend_entry("198.18.1.99:80".parse().unwrap(), 42, 0));
        maps.flows_by_backend.insert(9, 2);
        assert_eq!(Balancer::new().adopt(&mut maps).unwrap(), (0, 0));
        assert_eq!(maps.log, ["purge [9]", "release 9"]);
    }

    #[test]
    fn ids_are_not_reused_right_away() {
        let mut ids = IdAllocator::new(3);
        assert_eq!(ids.allocate(), Some(0));
        assert_eq!(ids.allocate(), Some(1));
        ids.release(0);
        assert_eq!(
            ids.allocate(),
            Some(2),
            "next-fit skips the just-released id"
        );
        assert_eq!(ids.allocate(), Some(0), "then wraps around to it");
        assert_eq!(ids.allocate(), None);
    }
}
