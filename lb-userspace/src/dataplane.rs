//! The loaded XDP program and its maps: loading the embedded object, attaching it to
//! interfaces, and the map writes of [`DataplaneMaps`].

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, DevMapHash, HashMap, IterableMap as _, MapData, PerCpuArray},
    programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use lb_common::{
    BackendEntry, BackendTable, FlowEntry, FlowKey, ServiceEntry, ServiceKey, TrafficCounters,
    consts::{events, map_names, program_names},
    direction,
};
use tracing::{info, warn};

use crate::{config::XdpMode, control::DataplaneMaps, netif};

/// The balancer's XDP object, built from `lb-ebpf` by build.rs.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// The reference program's object (see [`NoopProgram`]).
static NOOP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-noop"));

/// The outer map of the backend tables, as userspace holds it.
type TableMap = ArrayOfMaps<MapData, Array<MapData, BackendTable>>;

/// Typed handles on the maps the control plane writes and reads.
pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    tables: TableMap,
    tables_id: u32,
    /// A second handle on the outer map, for batch updates (aya has no batch API).
    tables_data: MapData,
    backends: Array<MapData, BackendEntry>,
    cursors: Array<MapData, u64>,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    egress_ports: DevMapHash<MapData>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    events: PerCpuArray<MapData, u64>,
}

/// An interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// The mode the program runs in there.
    pub mode: XdpMode,
    link: XdpLinkId,
}

/// The XDP program, loaded and verified, with its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The maps.
    pub maps: Maps,
    attachments: Vec<Attachment>,
}

impl Dataplane {
    /// Loads the program into the kernel (without attaching it) with flow tables of
    /// `flow_table_size` entries each.
    pub fn load(flow_table_size: u32) -> Result<Self> {
        ensure_built(XDP_OBJECT)?;
        let mut ebpf = EbpfLoader::new()
            // Two entries per flow, one per direction.
            .map_max_entries(map_names::FLOWS, flow_table_size.saturating_mul(2))
            .load(XDP_OBJECT)
            .context("loading the XDP object")?;
        let program: &mut Xdp = ebpf
            .program_mut(program_names::BALANCER)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::BALANCER))?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program (verifier)")?;
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            attachments: Vec::new(),
        })
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(program_names::BALANCER)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(program_names::BALANCER)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Attaches the program to every interface, or to none: if one attach fails, the ones
    /// already made are undone and the error names the interface.
    pub fn attach_all(&mut self, interfaces: &[String], mode: XdpMode) -> Result<()> {
        for interface in interfaces {
            if let Err(error) = self.attach(interface, mode) {
                self.detach_all();
                return Err(error);
            }
        }
        Ok(())
    }

    fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<()> {
        let ifindex = netif::index(interface)?;
        self.maps.add_egress_port(ifindex)?;
        let program = self.program_mut();
        let attached =
            match mode {
                XdpMode::Native => attach_in(program, ifindex, AyaXdpMode::Driver)
                    .map(|link| (link, XdpMode::Native)),
                XdpMode::Generic => attach_in(program, ifindex, AyaXdpMode::Skb)
                    .map(|link| (link, XdpMode::Generic)),
                XdpMode::Auto => match attach_in(program, ifindex, AyaXdpMode::Driver) {
                    Ok(link) => Ok((link, XdpMode::Native)),
                    Err(native_error) => {
                        warn!(
                            interface,
                            "native XDP unavailable ({native_error:#}); using generic mode"
                        );
                        attach_in(program, ifindex, AyaXdpMode::Skb)
                            .map(|link| (link, XdpMode::Generic))
                    }
                },
            };
        let (link, mode) = match attached {
            Ok(attached) => attached,
            Err(error) => {
                let _ = self.maps.egress_ports.remove(ifindex);
                return Err(error.context(format!("attaching to interface {interface}")));
            }
        };
        info!(interface, ifindex, ?mode, "attached");
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            ifindex,
            mode,
            link,
        });
        Ok(())
    }

    /// Detaches the program from every interface.
    pub fn detach_all(&mut self) {
        for attachment in std::mem::take(&mut self.attachments) {
            let _ = self.maps.egress_ports.remove(attachment.ifindex);
            match self.program_mut().detach(attachment.link) {
                Ok(()) => info!(interface = attachment.interface, "detached"),
                Err(error) => warn!(interface = attachment.interface, "detach failed: {error}"),
            }
        }
    }

    /// The interfaces the program is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn attach_in(program: &mut Xdp, ifindex: u32, mode: AyaXdpMode) -> Result<XdpLinkId> {
    Ok(program.attach_to_if_index(ifindex, mode)?)
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
            flows: take(ebpf, map_names::FLOWS)?,
            egress_ports: take(ebpf, map_names::EGRESS_PORTS)?,
            service_stats: take(ebpf, map_names::SERVICE_STATS)?,
            backend_stats: take(ebpf, map_names::BACKEND_STATS)?,
            events: take(ebpf, map_names::EVENTS)?,
        })
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
            *total = self.events.get(&(event as u32), 0)?.iter().sum();
        }
        Ok(totals)
    }

    /// Active flows per backend id: flows whose client-to-backend direction saw a packet within
    /// `window` (entries refresh their time at most once a second).
    pub fn active_flows(
        &self,
        window: std::time::Duration,
    ) -> Result<std::collections::HashMap<u32, u64>> {
        let now = monotonic_ns()?;
        let window = window.as_nanos() as u64;
        let mut counts = std::collections::HashMap::new();
        for (_, entry) in self.flows.iter().filter_map(Result::ok) {
            if entry.direction == direction::TO_BACKEND
                && now.saturating_sub(entry.last_seen_ns) <= window
            {
                *counts.entry(entry.backend_id).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// The flows, by their client-to-backend entry (key as received, entry with the backend).
    pub fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        self.flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| entry.direction == direction::TO_BACKEND)
            .collect()
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

    fn purge_flows(&mut self, backend_ids: &[u32]) -> Result<usize> {
        let retired: HashSet<u32> = backend_ids.iter().copied().collect();
        Ok(purge(&mut self.flows, &retired))
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
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    /// `BPF_MAP_UPDATE_BATCH` (kernel 5.6).
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

    if entries.is_empty() {
        return Ok(());
    }
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
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: fds.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: tables.fd().as_fd().as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` points to `keys` and `fds`, which outlive the call, and holds their length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr,
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        let error = std::io::Error::last_os_error();
        bail!(
            "publishing {} tables (BPF_MAP_UPDATE_BATCH): {error}; {} were published",
            keys.len(),
            attr.count
        );
    }
    Ok(())
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

/// Deletes the entries (both directions) of the flows whose backend is in `retired`; returns
/// how many flows.
fn purge(table: &mut HashMap<MapData, FlowKey, FlowEntry>, retired: &HashSet<u32>) -> usize {
    let doomed: Vec<(FlowKey, u8)> = table
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, entry)| retired.contains(&entry.backend_id))
        .map(|(key, entry)| (key, entry.direction))
        .collect();
    for (key, _) in &doomed {
        // The LRU may have evicted the entry since the scan; that is fine.
        let _ = table.remove(key);
    }
    doomed
        .iter()
        .filter(|(_, d)| *d == direction::TO_BACKEND)
        .count()
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

/// The reference XDP program (`lb-ebpf/src/noop.rs`): counts each packet and passes it.
/// Benchmarks compare the balancer with it. Tests attach it to the far end of veth links: a
/// veth delivers XDP_TX frames to its peer promptly only when the peer runs an XDP program.
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
        Ok(Self { ebpf })
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
        attach_in(self.program_mut(), ifindex, AyaXdpMode::Driver)
            .with_context(|| format!("attaching the reference program to {interface}"))?;
        Ok(())
    }
}
