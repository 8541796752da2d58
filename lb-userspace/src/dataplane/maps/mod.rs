//! The maps as userspace holds them: typed handles, the writes of [`DataplaneMaps`] (tables
//! published whole, see `BACKEND_TABLES`), counters, the handshake guard's settings, the flow
//! tables' timeouts and active-flow counts; the interfaces' settings are in `interfaces`.

use std::{
    collections::HashSet,
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, IterableMap as _, LpmTrie, MapData, PerCpuArray,
        lpm_trie::Key,
    },
};
use ipnet::IpNet;
use lb_common::{
    BackendEntry, BackendTable, ClientPrefix, FlowEntry, FlowKey, HandshakeGuard, MaglevTable,
    ServiceEntry, ServiceKey, TrafficCounters, VipKey,
    consts::{
        limits::{HALF_OPEN_DIVISOR, MAX_PREFIXES_PER_SERVICE},
        map_names,
        timing::{HANDSHAKE_KEEP_NS, HANDSHAKE_WINDOW_NS},
    },
    host_port_key,
    passive::ServicePolicy,
};

mod backend_ports;
mod backend_vips;
mod batch;
pub(crate) mod flows;
mod interfaces;
pub(crate) mod legacy_flows;
mod lone_vips;
pub(crate) mod passive;
mod persistence;
mod program_arrays;
mod reads;
pub(crate) mod share;
pub(crate) mod trace;
pub(crate) mod tunnel;
mod vip_hints;

use self::{
    backend_ports::BackendPorts,
    backend_vips::BackendVipMaps,
    flows::{FlowMaps, FlowTables},
    lone_vips::LoneVipMaps,
    passive::PassiveMaps,
};
use crate::{
    config::{FlowTimeouts, Protocol},
    control::{Counted, DataplaneMaps, DataplaneReads, Existing, Purge},
};

/// The outer map of the backend tables, as userspace holds it.
type TableMap = ArrayOfMaps<MapData, Array<MapData, BackendTable>>;
/// The outer map of the Maglev tables.
type MaglevMap = ArrayOfMaps<MapData, Array<MapData, MaglevTable>>;
/// A service's client prefixes: prefix -> home pool.
type PrefixTrie = LpmTrie<MapData, ClientPrefix, u32>;
/// Tables published in one batch at most (each holds a file descriptor until the batch is
/// written; each batch waits one RCU grace period).
const PUBLISH_CHUNK: usize = 256;
/// `BPF_NOEXIST`: an update that adds a key and fails if it is there.
const BPF_NOEXIST: u64 = 1;
/// `BPF_F_NO_PREALLOC`, which the kernel requires of LPM tries.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Typed handles on the maps the control plane writes and reads.
pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    tables: TableMap,
    tables_id: u32,
    /// A second handle on the outer map, for batch updates (aya has no batch API).
    tables_data: MapData,
    maglev: MaglevMap,
    /// A second handle on the Maglev tables' outer map, for deleting (aya cannot).
    maglev_data: MapData,
    backends: Array<MapData, BackendEntry>,
    backend_ports: BackendPorts,
    /// The VIPs each NAT backend serves (`BACKEND_VIPS4`, `BACKEND_VIPS6`).
    backend_vips: BackendVipMaps,
    /// The ports services listen on (`SERVICE_PORTS`), a bitmap.
    service_ports: Array<MapData, u64>,
    cursors: Array<MapData, u64>,
    handshake_guard: Array<MapData, HandshakeGuard>,
    /// The flow tables (`FLOWS4`, `HALF_OPEN4`, `FLOWS6`, `HALF_OPEN6`), their timeouts and
    /// active-flow counts.
    pub flows: FlowTables,
    vips: HashMap<MapData, VipKey, u32>,
    host_ports: HashMap<MapData, u32, u8>,
    iface_macs: HashMap<MapData, u32, [u8; 8]>,
    iface_macs_generation: Array<MapData, u32>,
    client_pools: ArrayOfMaps<MapData, PrefixTrie>,
    spilled: PerCpuArray<MapData, u64>,
    egress_ports: DevMapHash<MapData>,
    veth_peers: HashMap<MapData, u32, u32>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    events: PerCpuArray<MapData, u64>,
    /// Passive health and admission settings and marks.
    pub passive: PassiveMaps,
    /// Source persistence (`PERSISTENCE`).
    pub(crate) persistence: persistence::PersistenceMap,
    /// The tunnels' encapsulating programs and outer headers (`TUNNEL`).
    pub tunnel: tunnel::TunnelMaps,
}

/// New TCP flows per handshake-guard window above which SYNs are placed by hash: the rate at
/// which the half-open table, `flow_table_size / HALF_OPEN_DIVISOR` flows, would keep each
/// for less than `HANDSHAKE_KEEP_NS`. At least 1.
pub fn handshake_budget(flow_table_size: u32) -> u64 {
    let half_open_flows = u64::from(flow_table_size / HALF_OPEN_DIVISOR);
    (half_open_flows * HANDSHAKE_WINDOW_NS / HANDSHAKE_KEEP_NS).max(1)
}

/// Takes map `name` out of the loaded object as a `T`.
pub(in crate::dataplane) fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the XDP object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// The id of the array of maps `name`, from which a second handle can be opened.
fn outer_map_id(ebpf: &Ebpf, name: &str) -> Result<u32> {
    match ebpf.map(name) {
        Some(aya::maps::Map::ArrayOfMaps(data)) => Ok(data.info()?.id()),
        _ => bail!("{name} is not an array of maps"),
    }
}

impl Maps {
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        // The tables' map id lets a second handle be opened (see `table_publisher`).
        let tables_id = outer_map_id(ebpf, map_names::BACKEND_TABLES)?;
        let tables: TableMap = take(ebpf, map_names::BACKEND_TABLES)?;
        let maglev_data = MapData::from_id(outer_map_id(ebpf, map_names::MAGLEV_TABLES)?)?;
        let backends: Array<MapData, BackendEntry> = take(ebpf, map_names::BACKENDS)?;
        let in_use: Vec<(u32, BackendEntry)> =
            batch::lookup_all::<u32, BackendEntry>(backends.map())?
                .into_iter()
                .filter(|(_, entry)| entry.in_use == 1)
                .collect();
        let services: HashMap<MapData, ServiceKey, ServiceEntry> = take(ebpf, map_names::SERVICES)?;
        let held = services.iter().collect::<Result<Vec<_>, _>>()?;
        let mut service_ports: Array<MapData, u64> = take(ebpf, map_names::SERVICE_PORTS)?;
        for (key, _) in &held {
            backend_ports::write(&mut service_ports, key.port, true)?;
        }
        let (backend_vips, flags) = BackendVipMaps::new(
            take(ebpf, map_names::BACKEND_VIPS4)?,
            take(ebpf, map_names::BACKEND_VIPS6)?,
            (
                take(ebpf, map_names::VIP_HINTS4)?,
                take(ebpf, map_names::VIP_HINTS6)?,
            ),
            LoneVipMaps::new(
                take(ebpf, map_names::LONE_VIPS4)?,
                take(ebpf, map_names::LONE_VIPS6)?,
            ),
            &held,
            &in_use,
        )?;
        let mut backends = backends;
        for (id, flags) in flags {
            let entry = backends.get(&id, 0)?;
            backends.set(id, BackendEntry { flags, ..entry }, 0)?;
        }
        Ok(Self {
            services,
            tables,
            tables_id,
            tables_data: MapData::from_id(tables_id)?,
            maglev: take(ebpf, map_names::MAGLEV_TABLES)?,
            maglev_data,
            backends,
            backend_ports: BackendPorts::new(take(ebpf, map_names::BACKEND_PORTS)?, &in_use),
            backend_vips,
            service_ports,
            cursors: take(ebpf, map_names::RR_CURSORS)?,
            handshake_guard: take(ebpf, map_names::HANDSHAKE_GUARD)?,
            flows: FlowTables::new(FlowMaps {
                flows4: take(ebpf, map_names::FLOWS4)?,
                half_open4: take(ebpf, map_names::HALF_OPEN4)?,
                flows6: take(ebpf, map_names::FLOWS6)?,
                half_open6: take(ebpf, map_names::HALF_OPEN6)?,
                replies4: take(ebpf, map_names::REPLY_VIPS4)?,
                replies6: take(ebpf, map_names::REPLY_VIPS6)?,
                timeouts: take(ebpf, map_names::FLOW_TIMEOUTS)?,
                active: take(ebpf, map_names::ACTIVE_FLOWS)?,
            }),
            vips: take(ebpf, map_names::VIPS)?,
            host_ports: take(ebpf, map_names::HOST_PORTS)?,
            iface_macs: take(ebpf, map_names::IFACE_MACS)?,
            iface_macs_generation: take(ebpf, map_names::IFACE_MACS_GENERATION)?,
            client_pools: take(ebpf, map_names::CLIENT_POOLS)?,
            spilled: take(ebpf, map_names::SPILLED)?,
            egress_ports: take(ebpf, map_names::EGRESS_PORTS)?,
            veth_peers: take(ebpf, map_names::VETH_PEERS)?,
            service_stats: take(ebpf, map_names::SERVICE_STATS)?,
            backend_stats: take(ebpf, map_names::BACKEND_STATS)?,
            events: take(ebpf, map_names::EVENTS)?,
            passive: PassiveMaps::take(ebpf)?,
            persistence: persistence::PersistenceMap::take(ebpf)?,
            tunnel: tunnel::TunnelMaps::take(ebpf)?,
        })
    }

    /// Sets the handshake guard's budget for `flow_table_size` and a random hash seed, unless
    /// adopted maps already have them (the seed must not change under established flows that
    /// were placed by hash).
    pub(in crate::dataplane) fn arm_handshake_guard(&mut self, flow_table_size: u32) -> Result<()> {
        if self.handshake_guard()?.budget != 0 {
            return Ok(());
        }
        let mut seed = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut seed))
            .context("reading a hash seed from /dev/urandom")?;
        let guard = HandshakeGuard {
            budget: handshake_budget(flow_table_size),
            seed: u32::from_ne_bytes(seed),
            ..HandshakeGuard::default()
        };
        self.handshake_guard
            .set(0, guard, 0)
            .with_context(|| format!("writing {}", map_names::HANDSHAKE_GUARD))
    }

    /// Makes this data plane place hashed flows as another one does: gives it `other`'s hash
    /// seed (to compare two data planes packet for packet, as the fuzzer compares the hooks).
    pub fn share_hash_seed(&mut self, other: &Maps) -> Result<()> {
        let guard = HandshakeGuard {
            seed: other.handshake_guard()?.seed,
            ..self.handshake_guard()?
        };
        self.handshake_guard
            .set(0, guard, 0)
            .with_context(|| format!("writing {}", map_names::HANDSHAKE_GUARD))
    }

    /// Makes `ports` the ones the host answers on the VIPs itself (`HOST_PORTS`): packets to
    /// the others that no service takes are dropped.
    pub fn set_host_ports(&mut self, ports: &[(Protocol, u16)]) -> Result<()> {
        let wanted: Vec<u32> = ports
            .iter()
            .map(|(protocol, port)| host_port_key(protocol.number(), port.to_be()))
            .collect();
        let held: Vec<u32> = self.host_ports.keys().collect::<Result<_, _>>()?;
        for key in wanted.iter().filter(|key| !held.contains(key)) {
            self.host_ports.insert(key, 1, 0)?;
        }
        for key in held.iter().filter(|key| !wanted.contains(key)) {
            self.host_ports.remove(key)?;
        }
        Ok(())
    }

    /// Writes the flows of an earlier version's tables (see `legacy_flows`): each of a backend
    /// now shared gets the VIP of its replies recorded. With `only_new`, not over flows the
    /// tables hold. Returns how many were written.
    pub fn adopt_flows(&mut self, flows: &[(FlowKey, FlowEntry, bool)], only_new: bool) -> usize {
        let marked: Vec<(FlowKey, FlowEntry, bool)> = flows
            .iter()
            .map(|&(key, mut entry, half_open)| {
                let shared = self
                    .backends
                    .get(&entry.backend_id, 0)
                    .is_ok_and(|backend| backend.flags & lb_common::backend_flags::SHARED != 0);
                if shared && entry.flags & lb_common::consts::flow_flags::DSR == 0 {
                    entry.flags |= lb_common::consts::flow_flags::LOCATED;
                }
                (key, entry, half_open)
            })
            .collect();
        self.flows.insert(&marked, only_new)
    }

    /// Rewrites the flags of backend ids in use (`BACKENDS`, in place: only the flags change).
    fn set_backend_flags(&mut self, flags: &[(u32, u32)]) -> Result<()> {
        for &(id, flags) in flags {
            let entry = self.backends.get(&id, 0)?;
            if entry.in_use == 1 && entry.flags != flags {
                self.backends.set(id, BackendEntry { flags, ..entry }, 0)?;
            }
        }
        Ok(())
    }

    /// Gives the program the flow timeouts.
    pub fn set_flow_timeouts(&mut self, timeouts: &FlowTimeouts) -> Result<()> {
        self.flows.set_timeouts(timeouts)
    }

    /// The `BACKENDS` entry of backend `id`, if it is in use.
    pub fn backend(&self, id: u32) -> Option<BackendEntry> {
        self.backends
            .get(&id, 0)
            .ok()
            .filter(|entry| entry.in_use == 1)
    }

    /// The round-robin cursor of table `index` (`RR_CURSORS`): the new flows it has placed.
    pub fn rr_cursor(&self, index: u32) -> Result<u64> {
        Ok(self.cursors.get(&index, 0)?)
    }

    /// Sets the round-robin cursor of table `index` to `value` (a simulation giving its turn
    /// back).
    pub fn set_rr_cursor(&mut self, index: u32, value: u64) -> Result<()> {
        Ok(self.cursors.set(index, value, 0)?)
    }
}

impl DataplaneMaps for Maps {
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<()> {
        // Its port and VIPs are marked before the entry is there (and so before a table names
        // it), and unmarked after the entry is cleared; the entries of the same backend in
        // other services are marked shared (or no longer) before either.
        let mut entry = *entry;
        if entry.in_use == 1 {
            self.backend_ports.set(id, &entry)?;
            let (flags, others) = self.backend_vips.set_backend(id, &entry)?;
            self.set_backend_flags(&others)?;
            entry.flags = flags;
        }
        self.backends.set(id, entry, 0)?;
        if entry.in_use != 1 {
            let (_, others) = self.backend_vips.set_backend(id, &entry)?;
            self.set_backend_flags(&others)?;
            self.backend_ports.set(id, &entry)?;
        }
        Ok(())
    }

    fn publish_table(&mut self, index: u32, table: &BackendTable) -> Result<()> {
        publish(&mut self.tables, index, table)
    }

    fn publish_tables(&mut self, tables: &[(u32, BackendTable)]) -> Result<()> {
        // Each table of a batch holds a file descriptor until the batch is written: chunks
        // keep a start with thousands of tables well within the file limit.
        for chunk in tables.chunks(PUBLISH_CHUNK) {
            publish_batch(&self.tables_data, chunk)?;
        }
        Ok(())
    }

    fn publish_maglev(&mut self, index: u32, table: Option<&MaglevTable>) -> Result<()> {
        match table {
            Some(table) => {
                let mut inner: Array<MapData, MaglevTable> = Array::create(1, 0)?;
                inner.set(0, table, 0)?;
                self.maglev.set(index, &inner, 0)?;
            }
            None => {
                batch::delete_one(&self.maglev_data, &index)?;
            }
        }
        Ok(())
    }

    fn set_policy(&mut self, service_id: u32, policy: &ServicePolicy) -> Result<()> {
        self.passive.set_policy(service_id, policy)
    }

    fn clear_mark(&mut self, id: u32) -> Result<()> {
        self.passive.clear_mark(id)
    }

    fn reset_cursor(&mut self, index: u32) -> Result<()> {
        Ok(self.cursors.set(index, 0, 0)?)
    }

    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()> {
        // Its backends' replies find their flows before its first flow is placed.
        let flags = self.backend_vips.set_service(key, entry)?;
        self.set_backend_flags(&flags)?;
        // Its port is marked before its entry is there; a port no service uses any more stays
        // marked (its packets are looked up as before, at no other cost).
        backend_ports::write(&mut self.service_ports, key.port, true)?;
        Ok(self.services.insert(key, entry, 0)?)
    }

    fn zero_counters(&mut self, counters: Counted) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, error)| error)?;
        let (name, result) = match counters {
            Counted::Service(id) => (
                map_names::SERVICE_STATS,
                zero(&mut self.service_stats, id, cpus),
            ),
            Counted::Backend(id) => (
                map_names::BACKEND_STATS,
                zero(&mut self.backend_stats, id, cpus),
            ),
            Counted::Spills(index) => (map_names::SPILLED, zero(&mut self.spilled, index, cpus)),
        };
        result.with_context(|| format!("zeroing {counters:?} in {name}"))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        absent_is_removed(self.services.remove(key))
    }

    fn existing(&self) -> Result<Existing> {
        let services = self.services.iter().collect::<Result<Vec<_>, _>>()?;
        let mut backends = Vec::new();
        for id in 0..self.backends.len() {
            let entry = self.backends.get(&id, 0)?;
            if entry.in_use == 1 {
                backends.push((id, entry));
            }
        }
        let vips = self.vips.keys().collect::<Result<Vec<_>, _>>()?;
        Ok(Existing {
            services,
            backends,
            vips,
        })
    }

    fn purge_flows(&mut self, backend_ids: &[u32], purge: Purge) -> Result<usize> {
        self.flows.purge(backend_ids, purge)
    }

    fn forget_persistence(&mut self, serving: &HashSet<u32>) -> Result<usize> {
        self.persistence.retain(serving)
    }

    fn publish_prefixes(&mut self, service_id: u32, prefixes: &[(IpNet, u32)]) -> Result<()> {
        // A fresh trie, filled, then swapped in: packets see the old prefixes or the new ones.
        let mut trie = PrefixTrie::create(MAX_PREFIXES_PER_SERVICE, BPF_F_NO_PREALLOC)?;
        for (net, pool) in prefixes {
            let (len, data) = lpm_key(net);
            trie.insert(&Key::new(len, data), pool, 0)
                .with_context(|| format!("adding prefix {net}"))?;
        }
        self.client_pools
            .set(service_id, &trie, 0)
            .with_context(|| format!("publishing the prefixes of service {service_id}"))?;
        Ok(())
    }

    fn add_vip(&mut self, key: &VipKey) -> Result<()> {
        // The value counts the packets no service took; a VIP already there keeps its count.
        match self.vips.insert(key, 0, BPF_NOEXIST) {
            Err(aya::maps::MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        absent_is_removed(self.vips.remove(key))
    }
}

/// Sets every CPU's slot `index` of `map` to the default (zero).
fn zero<T: aya::Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    index: u32,
    cpus: usize,
) -> Result<()> {
    let values = aya::maps::PerCpuValues::try_from(vec![T::default(); cpus])?;
    map.set(index, values, 0)?;
    Ok(())
}

/// A deletion of a key that is not there succeeded already (an apply that failed after it
/// is repeated, and deletes again).
fn absent_is_removed(result: Result<(), aya::maps::MapError>) -> Result<()> {
    match result {
        Err(aya::maps::MapError::SyscallError(error))
            if error.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Publishes `table` at `index` of the outer map. A fresh inner map per table: published
/// tables are never written again (see the comment on BACKEND_TABLES in lb-ebpf/src/maps.rs).
/// Our handle on the inner map closes on return; the outer map's reference keeps it alive.
fn publish(tables: &mut TableMap, index: u32, table: &BackendTable) -> Result<()> {
    let mut inner: Array<MapData, BackendTable> = Array::create(1, 0)?;
    inner.set(0, table, 0)?;
    tables.set(index, &inner, 0)?;
    Ok(())
}

/// Publishes several tables with one BPF_MAP_UPDATE_BATCH. Each update of an array of maps
/// makes the kernel wait for an RCU grace period (10-16 ms here) before it returns; a batch
/// waits once for all of its updates, so filling or changing thousands of tables takes one
/// wait instead of thousands. Each table still replaces its slot atomically.
fn publish_batch(tables: &MapData, entries: &[(u32, BackendTable)]) -> Result<()> {
    let inner: Vec<Array<MapData, BackendTable>> = entries
        .iter()
        .map(|(_, table)| {
            let mut map = Array::create(1, 0)?;
            map.set(0, table, 0)?;
            Ok(map)
        })
        .collect::<Result<_>>()?;
    let keys: Vec<u32> = entries.iter().map(|(index, _)| *index).collect();
    let fds: Vec<u32> = inner
        .iter()
        .map(|map| map.map().fd().as_fd().as_raw_fd() as u32)
        .collect();
    batch::update(tables, &keys, &fds).with_context(|| format!("publishing {} tables", keys.len()))
}

/// A second handle on the backend tables, for publishing from another thread (tests and
/// benchmarks that swap tables while packets run).
pub struct TablePublisher {
    tables: TableMap,
}

impl TablePublisher {
    /// Atomically replaces the table at `index`.
    pub fn publish(&mut self, index: u32, table: &BackendTable) -> Result<()> {
        publish(&mut self.tables, index, table)
    }
}

impl Maps {
    /// A [`TablePublisher`] on the same backend tables.
    pub fn table_publisher(&self) -> Result<TablePublisher> {
        let data = MapData::from_id(self.tables_id)?;
        Ok(TablePublisher {
            tables: TableMap::try_from(aya::maps::Map::ArrayOfMaps(data))?,
        })
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which
/// stamps flow entries and the handshake guard's windows.
pub fn monotonic_ns() -> Result<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

/// The `CLIENT_POOLS` key of a prefix: its length in bits and its address bytes (IPv4 in the
/// first 4 of 16, as the data plane looks clients up).
fn lpm_key(net: &IpNet) -> (u32, ClientPrefix) {
    let mut data = [0u8; 16];
    match net {
        IpNet::V4(v4) => data[..4].copy_from_slice(&v4.network().octets()),
        IpNet::V6(v6) => data = v6.network().octets(),
    }
    (u32::from(net.prefix_len()), data)
}

#[cfg(test)]
mod tests {
    use lb_common::consts::limits::DEFAULT_FLOW_TABLE_SIZE;

    use super::*;

    /// The budget is the half-open table's size spread over `HANDSHAKE_KEEP_NS`, per window:
    /// the default table (65,536 half-open flows) takes 32,760 new TCP flows a second by
    /// round robin; the smallest still takes one per window.
    #[test]
    fn the_handshake_budget_keeps_half_open_flows_for_two_seconds() {
        assert_eq!(handshake_budget(DEFAULT_FLOW_TABLE_SIZE), 3_276);
        assert_eq!(handshake_budget(1_024), 12);
        assert_eq!(handshake_budget(4), 1);
        assert_eq!(handshake_budget(0), 1);
    }
}
