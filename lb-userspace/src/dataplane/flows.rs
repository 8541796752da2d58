//! The flow tables as userspace sees them: expiring idle and closed flows, counting active
//! flows per backend and the tables' occupancy, purging the flows of a backend that left.
//!
//! The program records flows and stamps them (last packet, FIN or RST seen); deciding when a
//! flow is over is done here, in one batched pass over both tables (`sweep`).

use std::{collections::HashMap as StdHashMap, collections::HashSet, time::Duration};

use anyhow::Result;
use aya::maps::{HashMap, IterableMap as _, MapData};
use lb_common::{
    FlowEntry, FlowKey,
    consts::{flow_flags, proto},
    direction,
};

use super::batch;
use crate::{config::FlowTimeouts, wire};

/// How long an entry may stay silent under `timeouts`: by protocol, state and table.
pub fn limit(
    timeouts: &FlowTimeouts,
    key: &FlowKey,
    entry: &FlowEntry,
    half_open: bool,
) -> Duration {
    if key.proto == proto::UDP {
        timeouts.udp_idle
    } else if half_open || entry.flags & flow_flags::CLOSING != 0 {
        timeouts.tcp_closing
    } else {
        timeouts.tcp_idle
    }
}

/// Whether an entry last seen at `last_seen_ns` is over at `now_ns` (coarse monotonic).
pub fn expired(
    timeouts: &FlowTimeouts,
    key: &FlowKey,
    entry: &FlowEntry,
    half_open: bool,
    now_ns: u64,
) -> bool {
    let idle = now_ns.saturating_sub(entry.last_seen_ns);
    idle > limit(timeouts, key, entry, half_open).as_nanos() as u64
}

/// What one sweep found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Established flows (client-to-backend entries of `FLOWS`) left after the sweep.
    pub established: u64,
    /// Half-open TCP flows left after the sweep.
    pub half_open: u64,
    /// Flows deleted because they were over.
    pub expired: u64,
    /// Per backend id: established flows that saw a packet within the active window.
    pub active: StdHashMap<u32, u64>,
}

/// The two flow tables, `FLOWS` and `HALF_OPEN`.
pub struct FlowTables {
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    half_open: HashMap<MapData, FlowKey, FlowEntry>,
}

impl FlowTables {
    /// Wraps the maps taken from the loaded object.
    pub fn new(
        flows: HashMap<MapData, FlowKey, FlowEntry>,
        half_open: HashMap<MapData, FlowKey, FlowEntry>,
    ) -> Self {
        Self { flows, half_open }
    }

    /// Deletes the flows that are over, and counts what stays: flows per table, and per
    /// backend the established flows with a packet within `active_window` (entries refresh
    /// their time at most once a second).
    pub fn sweep(
        &mut self,
        timeouts: &FlowTimeouts,
        now_ns: u64,
        active_window: Duration,
    ) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        for half_open in [false, true] {
            let map = if half_open {
                &self.half_open
            } else {
                &self.flows
            };
            let entries: Vec<(FlowKey, FlowEntry)> = batch::lookup_all(map.map())?;
            let mut doomed = Vec::new();
            for (key, entry) in &entries {
                let forward = entry.direction == direction::TO_BACKEND;
                if expired(timeouts, key, entry, half_open, now_ns) {
                    doomed.push(*key);
                    report.expired += u64::from(forward);
                    continue;
                }
                if !forward {
                    continue;
                }
                if half_open {
                    report.half_open += 1;
                } else {
                    report.established += 1;
                    if now_ns.saturating_sub(entry.last_seen_ns) <= active_window.as_nanos() as u64
                    {
                        *report.active.entry(entry.backend_id).or_default() += 1;
                    }
                }
            }
            batch::delete(map.map(), &doomed)?;
        }
        Ok(report)
    }

    /// Deletes the entries (both directions, both tables) of the flows whose backend is in
    /// `backend_ids`; returns how many flows.
    pub fn purge(&mut self, backend_ids: &[u32]) -> Result<usize> {
        let retired: HashSet<u32> = backend_ids.iter().copied().collect();
        let mut flows = 0;
        for map in [&self.flows, &self.half_open] {
            let doomed: Vec<(FlowKey, FlowEntry)> =
                batch::lookup_all::<FlowKey, FlowEntry>(map.map())?
                    .into_iter()
                    .filter(|(_, entry)| retired.contains(&entry.backend_id))
                    .collect();
            flows += doomed
                .iter()
                .filter(|(_, e)| e.direction == direction::TO_BACKEND)
                .count();
            let keys: Vec<FlowKey> = doomed.into_iter().map(|(key, _)| key).collect();
            batch::delete(map.map(), &keys)?;
        }
        Ok(flows)
    }

    /// The entry of one direction of a flow, from whichever table holds it.
    pub fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flows
            .get(key, 0)
            .or_else(|_| self.half_open.get(key, 0))
            .ok()
    }

    /// Deletes both entries of the flow whose client-to-backend key is `key`, served by
    /// `backend`, from both tables.
    pub fn remove(&mut self, key: &FlowKey, backend: std::net::SocketAddr) {
        let reply = FlowKey {
            src_addr: wire::addr_field(backend.ip()),
            dst_addr: key.src_addr,
            src_port: wire::port_field(backend.port()),
            dst_port: key.src_port,
            ..*key
        };
        for map in [&mut self.flows, &mut self.half_open] {
            let _ = map.remove(&reply);
            let _ = map.remove(key);
        }
    }

    /// Deletes the entry stored under `key` (one direction of a flow) from both tables, as an
    /// LRU eviction would.
    pub fn remove_direction(&mut self, key: &FlowKey) {
        for map in [&mut self.flows, &mut self.half_open] {
            let _ = map.remove(key);
        }
    }

    /// Every flow, by its client-to-backend entry, and whether it is still half-open.
    pub fn all(&self) -> Result<Vec<(FlowKey, FlowEntry, bool)>> {
        let mut all = Vec::new();
        for (map, half_open) in [(&self.flows, false), (&self.half_open, true)] {
            all.extend(
                batch::lookup_all::<FlowKey, FlowEntry>(map.map())?
                    .into_iter()
                    .filter(|(_, entry)| entry.direction == direction::TO_BACKEND)
                    .map(|(key, entry)| (key, entry, half_open)),
            );
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn flow(protocol: u8, flags: u8, last_seen_s: u64) -> (FlowKey, FlowEntry) {
        (
            FlowKey {
                proto: protocol,
                ..FlowKey::default()
            },
            FlowEntry {
                flags,
                last_seen_ns: last_seen_s * SECOND,
                ..FlowEntry::default()
            },
        )
    }

    #[test]
    fn each_kind_of_flow_has_its_timeout() {
        let timeouts = FlowTimeouts {
            tcp_idle: Duration::from_secs(900),
            tcp_closing: Duration::from_secs(10),
            udp_idle: Duration::from_secs(30),
        };
        let now = 1_000 * SECOND;
        let cases = [
            // (protocol, flags, half-open, last seen, expired)
            (proto::TCP, 0, false, 1_000 - 899, false),
            (proto::TCP, 0, false, 1_000 - 901, true),
            (proto::TCP, flow_flags::CLOSING, false, 1_000 - 9, false),
            (proto::TCP, flow_flags::CLOSING, false, 1_000 - 11, true),
            (proto::TCP, 0, true, 1_000 - 9, false),
            (proto::TCP, 0, true, 1_000 - 11, true),
            (proto::UDP, 0, false, 1_000 - 29, false),
            (proto::UDP, 0, false, 1_000 - 31, true),
            // A time in the future (another CPU stamped it after `now` was read): not idle.
            (proto::UDP, 0, false, 1_001, false),
        ];
        for (protocol, flags, half_open, last_seen, over) in cases {
            let (key, entry) = flow(protocol, flags, last_seen);
            assert_eq!(
                expired(&timeouts, &key, &entry, half_open, now),
                over,
                "proto {protocol} flags {flags} half-open {half_open} last seen {last_seen}"
            );
        }
    }

    #[test]
    fn sweeps_come_often_enough_for_the_shortest_timeout() {
        assert_eq!(
            FlowTimeouts::default().sweep_every(),
            Duration::from_millis(2_500)
        );
        let short = FlowTimeouts {
            tcp_closing: Duration::from_secs(2),
            ..FlowTimeouts::default()
        };
        assert_eq!(short.sweep_every(), Duration::from_secs(1));
        let long = FlowTimeouts {
            tcp_idle: Duration::from_secs(3_600),
            tcp_closing: Duration::from_secs(120),
            udp_idle: Duration::from_secs(300),
        };
        assert_eq!(long.sweep_every(), Duration::from_secs(10));
    }
}
