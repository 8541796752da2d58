//! Every BPF map of the balancer: what it holds, who writes it, who reads it. Sizes come from
//! `lb_common::consts::limits`; userspace finds each map by the name of its static.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, DevMapHash, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    BackendEntry, BackendTable, FlowEntry, FlowKey, ServiceEntry, ServiceKey, TrafficCounters,
    consts::{events, limits},
};

/// Virtual services: (VIP, port, protocol) -> service id.
/// Written by userspace when it applies a config; read for every packet.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry, { limits::MAX_SERVICES as usize }> =
    HashMap::new();

/// Backend tables, one per (service, pool) at index `service_id * MAX_POOLS_PER_SERVICE + pool`.
/// Each slot holds an inner array map with a single [`BackendTable`].
///
/// Atomic swap: userspace never modifies a published table. It builds the next table in a
/// fresh inner map and then replaces this slot's map reference with one update. The kernel
/// swaps that reference with a single pointer exchange, and a program that looked up the old
/// inner map keeps a valid reference to it until it finishes (inner maps removed from an outer
/// map are freed only after an RCU grace period). So a packet sees the whole old table or the
/// whole new one, never a mix. (A plain hash-map value replace would not do: the kernel reuses
/// freed hash elements without waiting for readers.)
///
/// Written by userspace on every table change; read once per new flow.
#[btf_map]
pub static BACKEND_TABLES: ArrayOfMaps<Array<BackendTable, 1>, { limits::MAX_TABLES as usize }> =
    ArrayOfMaps::new();

/// Backend registry: backend id -> address and port.
/// Written by userspace before any table refers to the id; read once per new flow.
#[btf_map]
pub static BACKENDS: Array<BackendEntry, { limits::MAX_BACKENDS as usize }> = Array::new();

/// Round-robin cursor of each backend table (same index as `BACKEND_TABLES`): the number of
/// new flows that table has placed. The program advances it with an atomic fetch-and-add, so
/// two CPUs never read the same value; userspace only zeroes it when a table index is reused.
#[btf_map]
pub static RR_CURSORS: Array<u64, { limits::MAX_TABLES as usize }> = Array::new();

/// Established flows, both directions, keyed by the 5-tuple as it arrives: client to VIP
/// (rewrite the destination to the backend) and backend to client (rewrite the source back to
/// the VIP), each with its cached next hop. Written by the program on a flow's first packet
/// (both entries at once) and when a next hop is refreshed; read for every packet of a flow;
/// userspace deletes the entries of a backend that goes Down. LRU: the least recently used
/// entries are evicted when it is full (two entries per flow of `flow_table_size`).
#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowEntry, { 2 * limits::DEFAULT_FLOW_TABLE_SIZE as usize }> =
    LruHashMap::new();

/// Interfaces xlb is attached to, by ifindex: where `XDP_REDIRECT` may send a packet.
/// Written by userspace at attach time; read when the next hop is on another interface.
#[btf_map]
pub static EGRESS_PORTS: DevMapHash<{ limits::MAX_INTERFACES as usize }> = DevMapHash::new();

/// Traffic counters per service id, per CPU. Written by the program; summed by userspace.
#[btf_map]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters, { limits::MAX_SERVICES as usize }> =
    PerCpuArray::new();

/// Traffic counters per backend id, per CPU. Written by the program; summed by userspace.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters, { limits::MAX_BACKENDS as usize }> =
    PerCpuArray::new();

/// Data-plane events (`lb_common::consts::events`), per CPU. Written by the program; summed
/// by userspace.
#[btf_map]
pub static EVENTS: PerCpuArray<u64, { events::COUNT as usize }> = PerCpuArray::new();

/// Counts one data-plane event.
#[inline(always)]
pub fn count_event(event: u32) {
    if let Some(counter) = EVENTS.get_ptr_mut(event) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
