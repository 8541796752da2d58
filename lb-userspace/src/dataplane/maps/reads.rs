//! What the daemon reads from the data plane (`DataplaneReads` for [`Maps`]): counters,
//! events, the handshake guard, active flows, spills, the VIPs' unserved packets, the flows.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use lb_common::{
    FlowEntry, FlowKey, HandshakeGuard, TrafficCounters, VipKey,
    consts::{events, map_names},
    guard::next_syn_hashed,
};

use super::{Maps, monotonic_ns};
use crate::control::{ActiveFlows, DataplaneReads};

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

impl DataplaneReads for Maps {
    fn service_counters(&self, service_id: u32) -> Result<TrafficCounters> {
        sum_counters(&self.service_stats, service_id)
    }

    fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters> {
        sum_counters(&self.backend_stats, backend_id)
    }

    fn events(&self) -> Result<[u64; events::COUNT as usize]> {
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

    fn handshake_guard(&self) -> Result<HandshakeGuard> {
        self.handshake_guard
            .get(&0, 0)
            .with_context(|| format!("reading {}", map_names::HANDSHAKE_GUARD))
    }

    fn handshake_guard_on(&self) -> Result<bool> {
        Ok(next_syn_hashed(&self.handshake_guard()?, monotonic_ns()?))
    }

    fn active_flows(&self, backend_ids: &[u32]) -> Result<ActiveFlows> {
        self.flows.active(backend_ids, monotonic_ns()?)
    }

    fn spilled(&self, index: u32) -> Result<u64> {
        Ok(self.spilled.get(&index, 0)?.iter().sum())
    }

    fn vips_unserved(&self) -> Result<Vec<(VipKey, u64)>> {
        let mut vips = Vec::new();
        for entry in self.vips.iter() {
            let (key, count) = entry?;
            vips.push((key, u64::from(count)));
        }
        vips.sort();
        Ok(vips)
    }

    fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry, bool)>> {
        self.flows.all()
    }

    fn now_ns(&self) -> Result<u64> {
        monotonic_ns()
    }
}

impl Maps {
    /// The entry of a flow, by its key (the client's 5-tuple), if a flow table has it.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows.get(key)
    }

    /// The entry a packet with the 5-tuple `key` follows, as the program finds it: the one
    /// stored under `key` (a client's packet), or, for a NAT backend's packet, the flow whose
    /// key is the packet's destination and a VIP the backend serves, and whose backend is the
    /// packet's source (see `lb_common::reply`).
    pub fn flow_of_packet(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flow(key).or_else(|| {
            let vips = self
                .backend_vips
                .read(&key.src_addr, key.src_port, key.proto, key.family);
            vips.into_iter().find_map(|(vip, vip_port)| {
                let flow_key = FlowKey {
                    src_addr: key.dst_addr,
                    dst_addr: vip,
                    src_port: key.dst_port,
                    dst_port: vip_port,
                    ..*key
                };
                self.flow(&flow_key)
                    .filter(|entry| (entry.addr, entry.port) == (key.src_addr, key.src_port))
            })
        })
    }
}
