//! The loaded XDP program and its maps: loading the embedded object, attaching it to
//! interfaces, and the map writes of [`DataplaneMaps`].

use std::{
    io::Read as _,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, IterableMap as _, LpmTrie, MapData, PerCpuArray,
        lpm_trie::Key,
    },
    programs::{SchedClassifier, Xdp, XdpMode as AyaXdpMode},
};
use ipnet::IpNet;
use lb_common::{
    BackendEntry, BackendTable, ClientPrefix, FlowKey, HandshakeGuard, ServiceEntry, ServiceKey,
    TrafficCounters, VipKey,
    consts::{
        events,
        limits::{HALF_OPEN_DIVISOR, MAX_PREFIXES_PER_SERVICE},
        map_names, program_names,
        timing::{HANDSHAKE_KEEP_NS, HANDSHAKE_WINDOW_NS},
    },
};
use tracing::warn;

pub use crate::attach::Attachment;
use crate::{
    attach::Attachments,
    batch,
    control::{DataplaneMaps, Existing},
    flows::{FlowTables, FlowTimeouts, SweepReport},
    hooks::{Hook, Plan},
    locality, netif,
};

/// The balancer's XDP object, built from `lb-ebpf` by build.rs.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// The reference program's object (see [`NoopProgram`]).
static NOOP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-noop"));

/// The outer map of the backend tables, as userspace holds it.
type TableMap = ArrayOfMaps<MapData, Array<MapData, BackendTable>>;
/// A service's client prefixes: prefix -> home pool.
type PrefixTrie = LpmTrie<MapData, ClientPrefix, u32>;
/// `BPF_F_NO_PREALLOC`, which the kernel requires of LPM tries.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Typed handles on the maps the control plane writes and reads.
pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    tables: TableMap,
    tables_id: u32,
    /// A second handle on the outer map, for batch updates (aya has no batch API).
    tables_data: MapData,
    backends: Array<MapData, BackendEntry>,
    cursors: Array<MapData, u64>,
    handshake_guard: Array<MapData, HandshakeGuard>,
    /// The flow tables (`FLOWS` and `HALF_OPEN`).
    pub flows: FlowTables,
    vips: HashMap<MapData, VipKey, u32>,
    client_pools: ArrayOfMaps<MapData, PrefixTrie>,
    spilled: PerCpuArray<MapData, u64>,
    egress_ports: DevMapHash<MapData>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    events: PerCpuArray<MapData, u64>,
}

/// The balancer's programs (XDP and tc), loaded and verified, with their maps.
///
/// With a pin directory, the maps and the links that attach a program to interfaces are
/// pinned in bpffs: they outlive the process, so the data plane keeps forwarding while no daemon
/// runs, and the next daemon takes them over (maps with their contents; links by swapping its
/// own program in, atomically). Without one (tests, benchmarks), everything goes away with the
/// process.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The maps.
    pub maps: Maps,
    attachments: Attachments,
    pin_dir: Option<PathBuf>,
    adopted: bool,
}

/// Names of every map of the balancer, for pinning.
const MAP_NAMES: [&str; 14] = [
    map_names::SERVICES,
    map_names::BACKEND_TABLES,
    map_names::BACKENDS,
    map_names::RR_CURSORS,
    map_names::HANDSHAKE_GUARD,
    map_names::FLOWS,
    map_names::HALF_OPEN,
    map_names::VIPS,
    map_names::CLIENT_POOLS,
    map_names::SPILLED,
    map_names::EGRESS_PORTS,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
    map_names::EVENTS,
];

impl Dataplane {
    /// Loads the program into the kernel (without attaching it) with a flow table for
    /// `flow_table_size` flows, nothing pinned.
    pub fn load(flow_table_size: u32) -> Result<Self> {
        Self::load_with(flow_table_size, None)
    }

    /// Loads the program with its maps pinned in `pin_dir` (a bpffs directory): maps already
    /// pinned there by an earlier daemon are reused, contents and all ([`Self::adopted`]).
    pub fn load_pinned(flow_table_size: u32, pin_dir: &Path) -> Result<Self> {
        Self::load_with(flow_table_size, Some(pin_dir))
    }

    fn load_with(flow_table_size: u32, pin_dir: Option<&Path>) -> Result<Self> {
        ensure_built(XDP_OBJECT)?;
        // Two entries per flow, one per direction.
        let flow_entries = flow_table_size.saturating_mul(2);
        let half_open_entries = (flow_table_size / HALF_OPEN_DIVISOR).saturating_mul(2);
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::FLOWS, flow_entries);
        loader.map_max_entries(map_names::HALF_OPEN, half_open_entries);
        let mut adopted = false;
        if let Some(dir) = pin_dir {
            adopted = dir.join(map_names::FLOWS).exists();
            for name in MAP_NAMES {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(XDP_OBJECT).with_context(|| match pin_dir {
            Some(dir) if adopted => format!(
                "loading the XDP object with the maps pinned in {} (if xlb was upgraded and its \
                 maps changed, run the old version with --detach-on-exit first, or remove the pins)",
                dir.display()
            ),
            _ => "loading the XDP object".to_owned(),
        })?;
        if adopted {
            let pinned = match ebpf.map(map_names::FLOWS) {
                Some(map) => map_data(map).info()?.max_entries(),
                None => 0,
            };
            if pinned != flow_entries {
                bail!(
                    "the pinned flow table holds {} flows but flow_table_size is {flow_table_size}: \
                     keep the old size, or stop xlb with --detach-on-exit (dropping every flow) to \
                     change it",
                    pinned / 2
                );
            }
        }
        let program: &mut Xdp = ebpf
            .program_mut(program_names::BALANCER)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::BALANCER))?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program (verifier)")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(program_names::BALANCER_TC)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::BALANCER_TC))?
            .try_into()?;
        program
            .load()
            .context("loading the tc program (verifier)")?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.arm_handshake_guard(flow_table_size)?;
        Ok(Self {
            ebpf,
            maps,
            attachments: Attachments::new(pin_dir.map(Path::to_owned)),
            pin_dir: pin_dir.map(Path::to_owned),
            adopted,
        })
    }

    /// Whether the maps were pinned by an earlier daemon and taken over with their contents.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(program_names::BALANCER)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The tc program, for `BPF_PROG_TEST_RUN`.
    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(program_names::BALANCER_TC)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Attaches as `plan` says: at its hook on every interface, or, if that fails and the
    /// plan allows it, at tc on every interface; or to none, with an error naming the
    /// interface.
    pub fn attach_planned(&mut self, interfaces: &[String], plan: &Plan) -> Result<Hook> {
        match self.attach_all(interfaces, plan.hook) {
            Ok(()) => Ok(plan.hook),
            Err(error) if plan.fall_back_to_tc => {
                warn!("{error:#}; using tc on every interface instead");
                self.attach_all(interfaces, Hook::Tc)?;
                Ok(Hook::Tc)
            }
            Err(error) => Err(error),
        }
    }

    /// Attaches at `hook` to every interface, or to none: if one attach fails, the ones made
    /// by this call are undone and the error names the interface.
    pub fn attach_all(&mut self, interfaces: &[String], hook: Hook) -> Result<()> {
        for interface in interfaces {
            self.maps.add_egress_port(netif::index(interface)?)?;
        }
        let result = self
            .attachments
            .attach_all(&mut self.ebpf, interfaces, hook);
        if result.is_err() {
            for interface in interfaces {
                if let Ok(ifindex) = netif::index(interface)
                    && !self.attachments.list().iter().any(|a| a.ifindex == ifindex)
                {
                    let _ = self.maps.egress_ports.remove(ifindex);
                }
            }
        }
        result
    }

    /// Attaches at `hook` to `interface` (see `attach`).
    pub fn attach(&mut self, interface: &str, hook: Hook) -> Result<()> {
        self.attach_all(&[interface.to_owned()], hook)
    }

    /// Detaches the program from `interface` and removes its pinned link.
    pub fn detach(&mut self, interface: &str) {
        if let Some(ifindex) = self.attachments.detach(&mut self.ebpf, interface) {
            let _ = self.maps.egress_ports.remove(ifindex);
        }
    }

    /// Detaches the program from every interface and removes the pinned links.
    pub fn detach_all(&mut self) {
        for ifindex in self.attachments.detach_all(&mut self.ebpf) {
            let _ = self.maps.egress_ports.remove(ifindex);
        }
    }

    /// Removes the pinned maps (after [`Self::detach_all`]): the next daemon starts empty.
    pub fn unpin_maps(&self) {
        if let Some(dir) = &self.pin_dir {
            for name in MAP_NAMES {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The interfaces the program is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        self.attachments.list()
    }

    /// The hook the program runs at, if it is attached and the hook is known (an XDP link
    /// adopted from an older xlb has no recorded mode).
    pub fn hook(&self) -> Option<Hook> {
        self.attachments.list().iter().find_map(|a| a.hook)
    }
}

/// The `MapData` inside a map of any kind.
fn map_data(map: &aya::maps::Map) -> &MapData {
    use aya::maps::Map;
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::XskMap(m)
        | Map::Unsupported(m) => m,
        #[allow(unreachable_patterns)]
        _ => unreachable!("every kind of map holds MapData"),
    }
}

/// New TCP flows per handshake-guard window above which SYNs are placed by hash: the rate at
/// which the half-open table, `flow_table_size / HALF_OPEN_DIVISOR` flows, would keep each
/// for less than `HANDSHAKE_KEEP_NS`. At least 1.
pub fn handshake_budget(flow_table_size: u32) -> u64 {
    let half_open_flows = u64::from(flow_table_size / HALF_OPEN_DIVISOR);
    (half_open_flows * HANDSHAKE_WINDOW_NS / HANDSHAKE_KEEP_NS).max(1)
}

/// Whether, at `now_ns` (coarse monotonic clock), the program would place a SYN by hash, as
/// `hash_seed` in `lb-ebpf/src/balance.rs` decides it: within the current window, if it is
/// over budget or follows one that was; once it has ended, if it ended over budget (the next
/// SYN restarts the window and carries that over) and not more than a window ago.
pub fn handshake_guard_on(guard: &HandshakeGuard, now_ns: u64) -> bool {
    if guard.budget == 0 {
        return false;
    }
    let over = guard.window_flows >= guard.budget;
    let elapsed = now_ns.wrapping_sub(guard.window_start_ns) as i64;
    if elapsed > HANDSHAKE_WINDOW_NS as i64 {
        over && elapsed <= 2 * HANDSHAKE_WINDOW_NS as i64
    } else {
        over || guard.flooded != 0
    }
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self> {
        fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("the XDP object has no map {name}"))?;
            T::try_from(map).with_context(|| format!("map {name}"))
        }
        // The tables' map id lets a second handle be opened (see `table_publisher`).
        let tables_id = match ebpf.map(map_names::BACKEND_TABLES) {
            Some(aya::maps::Map::ArrayOfMaps(data)) => data.info()?.id(),
            _ => bail!("{} is not an array of maps", map_names::BACKEND_TABLES),
        };
        let tables: TableMap = take(ebpf, map_names::BACKEND_TABLES)?;
        Ok(Self {
            services: take(ebpf, map_names::SERVICES)?,
            tables,
            tables_id,
            tables_data: MapData::from_id(tables_id)?,
            backends: take(ebpf, map_names::BACKENDS)?,
            cursors: take(ebpf, map_names::RR_CURSORS)?,
            handshake_guard: take(ebpf, map_names::HANDSHAKE_GUARD)?,
            flows: FlowTables::new(
                take(ebpf, map_names::FLOWS)?,
                take(ebpf, map_names::HALF_OPEN)?,
            ),
            vips: take(ebpf, map_names::VIPS)?,
            client_pools: take(ebpf, map_names::CLIENT_POOLS)?,
            spilled: take(ebpf, map_names::SPILLED)?,
            egress_ports: take(ebpf, map_names::EGRESS_PORTS)?,
            service_stats: take(ebpf, map_names::SERVICE_STATS)?,
            backend_stats: take(ebpf, map_names::BACKEND_STATS)?,
            events: take(ebpf, map_names::EVENTS)?,
        })
    }

    /// Sets the handshake guard's budget for `flow_table_size` and a random hash seed, unless
    /// adopted maps already have them (the seed must not change under established flows that
    /// were placed by hash).
    fn arm_handshake_guard(&mut self, flow_table_size: u32) -> Result<()> {
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

    /// Whether the handshake guard is placing SYNs by hash now (see [`handshake_guard_on`]).
    pub fn handshake_guard_on(&self) -> Result<bool> {
        Ok(handshake_guard_on(
            &self.handshake_guard()?,
            monotonic_ns()?,
        ))
    }

    /// The handshake guard: its budget, hash seed and current window.
    pub fn handshake_guard(&self) -> Result<HandshakeGuard> {
        self.handshake_guard
            .get(&0, 0)
            .with_context(|| format!("reading {}", map_names::HANDSHAKE_GUARD))
    }

    /// Lets the program redirect packets to interface `ifindex` (attaching does this; tests
    /// that run the program without attaching it call it directly).
    pub fn add_egress_port(&mut self, ifindex: u32) -> Result<()> {
        self.egress_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding interface {ifindex} to {}", map_names::EGRESS_PORTS))
    }

    /// A service's counters, summed over CPUs.
    pub fn service_counters(&self, service_id: u32) -> Result<TrafficCounters> {
        sum_counters(&self.service_stats, service_id)
    }

    /// A backend's counters, summed over CPUs.
    pub fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters> {
        sum_counters(&self.backend_stats, backend_id)
    }

    /// Data-plane event counts (indexed as `lb_common::consts::events`), summed over CPUs.
    pub fn events(&self) -> Result<[u64; events::COUNT as usize]> {
        let mut totals = [0u64; events::COUNT as usize];
        for (event, total) in totals.iter_mut().enumerate() {
            *total = match self.events.get(&(event as u32), 0) {
                Ok(counts) => counts.iter().sum(),
                // An events map pinned by an older version, with fewer events: none counted.
                Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::OutOfBounds { .. }) => {
                    0
                }
                Err(error) => return Err(error.into()),
            };
        }
        Ok(totals)
    }

    /// Sweeps the flow tables (see [`FlowTables::sweep`]) as of now.
    pub fn sweep_flows(
        &mut self,
        timeouts: &FlowTimeouts,
        active_window: std::time::Duration,
    ) -> Result<SweepReport> {
        self.flows.sweep(timeouts, monotonic_ns()?, active_window)
    }

    /// The entry of one direction of a flow, if a flow table has it.
    pub fn flow(&self, key: &FlowKey) -> Option<lb_common::FlowEntry> {
        self.flows.get(key)
    }
}

fn sum_counters(
    map: &PerCpuArray<MapData, TrafficCounters>,
    index: u32,
) -> Result<TrafficCounters> {
    let mut total = TrafficCounters::default();
    for counters in map.get(&index, 0)?.iter() {
        total.accumulate(counters);
    }
    Ok(total)
}

impl DataplaneMaps for Maps {
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<()> {
        Ok(self.backends.set(id, entry, 0)?)
    }

    fn publish_table(&mut self, index: u32, table: &BackendTable) -> Result<()> {
        publish(&mut self.tables, index, table)
    }

    fn publish_tables(&mut self, tables: &[(u32, BackendTable)]) -> Result<()> {
        publish_batch(&self.tables_data, tables)
    }

    fn reset_cursor(&mut self, index: u32) -> Result<()> {
        Ok(self.cursors.set(index, 0, 0)?)
    }

    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()> {
        Ok(self.services.insert(key, entry, 0)?)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        Ok(self.services.remove(key)?)
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

    fn purge_flows(&mut self, backend_ids: &[u32]) -> Result<usize> {
        self.flows.purge(backend_ids)
    }

    fn publish_prefixes(&mut self, service_id: u32, prefixes: &[(IpNet, u32)]) -> Result<()> {
        // A fresh trie, filled, then swapped in: packets see the old prefixes or the new ones.
        let mut trie = PrefixTrie::create(MAX_PREFIXES_PER_SERVICE, BPF_F_NO_PREALLOC)?;
        for (net, pool) in prefixes {
            let (len, data) = locality::lpm_key(net);
            trie.insert(&Key::new(len, data), pool, 0)
                .with_context(|| format!("adding prefix {net}"))?;
        }
        self.client_pools
            .set(service_id, &trie, 0)
            .with_context(|| format!("publishing the prefixes of service {service_id}"))?;
        Ok(())
    }

    fn spilled(&self, index: u32) -> Result<u64> {
        Ok(self.spilled.get(&index, 0)?.iter().sum())
    }

    fn add_vip(&mut self, key: &VipKey) -> Result<()> {
        Ok(self.vips.insert(key, 1, 0)?)
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        Ok(self.vips.remove(key)?)
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
/// stamps flow entries.
fn monotonic_ns() -> Result<u64> {
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

fn ensure_built(object: &[u8]) -> Result<()> {
    if object.is_empty() {
        bail!(
            "this xlb was built without its XDP programs because bpf-linker was missing; \
             run `cargo xtask setup` and build again"
        );
    }
    Ok(())
}

/// The reference programs (`lb-ebpf/src/noop.rs`): count each packet and pass it, at XDP and at
/// tc. Benchmarks compare the balancer with them. Tests attach the XDP one to the far end of
/// veth links prepared for native XDP: a veth delivers XDP_TX frames to its peer promptly only
/// when the peer runs an XDP program.
pub struct NoopProgram {
    ebpf: Ebpf,
}

impl NoopProgram {
    /// Loads the program (without attaching it).
    pub fn load() -> Result<Self> {
        ensure_built(NOOP_OBJECT)?;
        let mut ebpf = Ebpf::load(NOOP_OBJECT).context("loading the reference XDP object")?;
        let program: &mut Xdp = ebpf
            .program_mut(program_names::NOOP)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::NOOP))?
            .try_into()?;
        program
            .load()
            .context("loading the reference XDP program")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(program_names::NOOP_TC)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::NOOP_TC))?
            .try_into()?;
        program.load().context("loading the reference tc program")?;
        Ok(Self { ebpf })
    }

    /// The tc program, for `BPF_PROG_TEST_RUN`.
    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(program_names::NOOP_TC)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(program_names::NOOP)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The program, for attaching.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(program_names::NOOP)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Attaches it to `interface` in native mode; it stays attached while `self` lives.
    pub fn attach(&mut self, interface: &str) -> Result<()> {
        let ifindex = netif::index(interface)?;
        self.program_mut()
            .attach_to_if_index(ifindex, AyaXdpMode::Driver)
            .with_context(|| format!("attaching the reference program to {interface}"))?;
        Ok(())
    }
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

    #[test]
    fn the_guard_is_on_in_a_window_over_budget_or_after_one_and_off_once_stale() {
        let window = HANDSHAKE_WINDOW_NS;
        let guard = |flows, flooded| HandshakeGuard {
            window_start_ns: 10 * window,
            window_flows: flows,
            budget: 100,
            flooded,
            ..HandshakeGuard::default()
        };
        let now = 10 * window + window / 2;
        assert!(!handshake_guard_on(&guard(99, 0), now));
        assert!(handshake_guard_on(&guard(100, 0), now));
        assert!(handshake_guard_on(&guard(3, 1), now));
        // The window has ended: what counts is whether it ended over budget.
        let ended = 11 * window + window / 2;
        assert!(handshake_guard_on(&guard(100, 0), ended));
        assert!(!handshake_guard_on(&guard(3, 1), ended));
        assert!(!handshake_guard_on(&guard(1_000, 1), 13 * window));
        let off = HandshakeGuard {
            budget: 0,
            ..guard(1_000, 1)
        };
        assert!(!handshake_guard_on(&off, now));
    }
}
