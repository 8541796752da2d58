//! The flow tables as userspace sees them (`FLOWS4`/`HALF_OPEN4`, `FLOWS6`/`HALF_OPEN6`):
//! the timeouts the program applies, the active-flow counts it keeps, purging the flows of a
//! backend that left, and reading flows for `xlb flows` and `xlb simulate`.
//!
//! No periodic pass reads the tables (but a fleet's refresh, `crate::fleet::carried`): the
//! program deletes a flow it finds silent past its
//! timeout (and treats its packet as a new flow's), a flow no packet touches again is
//! reclaimed by the tables' LRU eviction when room is needed (the tables are allocated whole,
//! so it costs no memory meanwhile), and the active-flow counts come from `ACTIVE_FLOWS`,
//! which the program keeps per backend and activity epoch. Userspace's periodic work is
//! therefore proportional to the backends, not to the flows.

use std::collections::HashSet;

use anyhow::Result;
use aya::{
    Pod,
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray},
};
use lb_common::{
    Addr, FlowAddr, FlowEntry, FlowKey, FlowKey4, VipPort, active_count, active_index,
    consts::{flow_flags, proto},
    epoch,
};

use super::batch;
use crate::{
    config::FlowTimeouts,
    control::{ActiveFlows, Purge},
};

/// One flow table, as userspace holds it.
type Table<K, A> = HashMap<MapData, K, FlowEntry<A>>;

/// A family's two tables: established and half-open.
struct FamilyTables<K, A: FlowAddr> {
    flows: Table<K, A>,
    half_open: Table<K, A>,
    /// The replies' VIPs of shared backends' flows (`REPLY_VIPS4`/`REPLY_VIPS6`).
    replies: HashMap<MapData, K, VipPort<A>>,
}

/// What turns a family's key and entry into the family-neutral forms, and back.
trait FamilyKey: Pod + Default + Copy {
    type Addr: FlowAddr;
    fn of(key: &FlowKey) -> Option<Self>;
    fn neutral(&self) -> FlowKey;
    fn neutral_entry(entry: &FlowEntry<Self::Addr>) -> FlowEntry;
    fn family_entry(entry: &FlowEntry) -> FlowEntry<Self::Addr>;
}

impl FamilyKey for FlowKey4 {
    type Addr = u32;

    fn of(key: &FlowKey) -> Option<Self> {
        FlowKey4::narrow(key)
    }

    fn neutral(&self) -> FlowKey {
        self.widen()
    }

    fn neutral_entry(entry: &FlowEntry<u32>) -> FlowEntry {
        entry.widen()
    }

    fn family_entry(entry: &FlowEntry) -> FlowEntry<u32> {
        entry.narrow()
    }
}

impl FamilyKey for FlowKey {
    type Addr = Addr;

    fn of(key: &FlowKey) -> Option<Self> {
        (key.family == lb_common::consts::family::IPV6).then_some(*key)
    }

    fn neutral(&self) -> FlowKey {
        *self
    }

    fn neutral_entry(entry: &FlowEntry) -> FlowEntry {
        *entry
    }

    fn family_entry(entry: &FlowEntry) -> FlowEntry {
        *entry
    }
}

impl<K, A> FamilyTables<K, A>
where
    K: FamilyKey<Addr = A>,
    A: FlowAddr + Pod,
    FlowEntry<A>: Pod,
    VipPort<A>: Pod,
{
    fn maps(&self) -> [(&Table<K, A>, bool); 2] {
        [(&self.flows, false), (&self.half_open, true)]
    }

    /// The key of the VIP recorded for the replies of the flow of `entry`, stored under `key`,
    /// if its entry says there is one (see `lb_common::reply`).
    fn reply_key(key: &K, entry: &FlowEntry<A>) -> Option<K> {
        if entry.flags & flow_flags::LOCATED == 0 {
            return None;
        }
        let (key, entry) = (key.neutral(), K::neutral_entry(entry));
        K::of(&FlowKey {
            src_addr: entry.addr,
            dst_addr: key.src_addr,
            src_port: entry.port,
            dst_port: key.src_port,
            ..key
        })
    }

    fn purge(&self, retired: &HashSet<u32>, purge: Purge) -> Result<usize> {
        let mut flows = 0;
        // Half-open first: a handshake promoted between the two reads is then in the
        // established table when it is read (read the other way round, it escaped both).
        for (map, half_open) in [(&self.half_open, true), (&self.flows, false)] {
            let doomed: Vec<(K, FlowEntry<A>)> = batch::lookup_all::<K, FlowEntry<A>>(map.map())?
                .into_iter()
                .filter(|(key, entry)| {
                    retired.contains(&entry.backend_id)
                        && (purge == Purge::All || half_open || key.neutral().proto == proto::UDP)
                })
                .collect();
            flows += doomed.len();
            let replies: Vec<K> = doomed
                .iter()
                .filter_map(|(key, entry)| Self::reply_key(key, entry))
                .collect();
            let keys: Vec<K> = doomed.into_iter().map(|(key, _)| key).collect();
            batch::delete(map.map(), &keys)?;
            batch::delete(self.replies.map(), &replies)?;
        }
        Ok(flows)
    }

    fn update(&mut self, key: &FlowKey, change: impl FnOnce(&mut FlowEntry) -> bool) -> bool {
        let Some(key) = K::of(key) else {
            return false;
        };
        let Ok(entry) = self.flows.get(&key, 0) else {
            return false;
        };
        let mut entry = K::neutral_entry(&entry);
        if !change(&mut entry) {
            return false;
        }
        // BPF_EXIST: not over an entry the program or the LRU removed meanwhile.
        self.flows.insert(key, K::family_entry(&entry), 2).is_ok()
    }

    fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        let key = K::of(key)?;
        self.flows
            .get(&key, 0)
            .or_else(|_| self.half_open.get(&key, 0))
            .ok()
            .map(|entry| K::neutral_entry(&entry))
    }

    /// Writes the flow `entry` under `key` into the half-open table or the established one,
    /// with the VIP of its replies if its entry says so; with `only_new`, not over a flow the
    /// table holds. Returns whether it was written.
    fn insert(
        &mut self,
        key: &FlowKey,
        entry: &FlowEntry,
        half_open: bool,
        only_new: bool,
    ) -> bool {
        let Some(family_key) = K::of(key) else {
            return false;
        };
        let entry = K::family_entry(entry);
        let map = if half_open {
            &mut self.half_open
        } else {
            &mut self.flows
        };
        if map.insert(family_key, entry, u64::from(only_new)).is_err() {
            return false;
        }
        if let Some(reply) = Self::reply_key(&family_key, &entry) {
            let vip = VipPort {
                addr: A::from_addr(&key.dst_addr),
                port: key.dst_port,
                _pad: 0,
            };
            let _ = self.replies.insert(reply, vip, 0);
        }
        true
    }

    fn remove(&mut self, key: &FlowKey) {
        if let Some(key) = K::of(key) {
            for half_open in [false, true] {
                let map = if half_open {
                    &mut self.half_open
                } else {
                    &mut self.flows
                };
                if let Ok(entry) = map.get(&key, 0) {
                    let _ = map.remove(&key);
                    if let Some(reply) = Self::reply_key(&key, &entry) {
                        let _ = self.replies.remove(&reply);
                    }
                }
            }
        }
    }

    fn all(&self, out: &mut Vec<(FlowKey, FlowEntry, bool)>) -> Result<()> {
        for (map, half_open) in self.maps() {
            out.extend(
                batch::lookup_all::<K, FlowEntry<A>>(map.map())?
                    .into_iter()
                    .map(|(key, entry)| (key.neutral(), K::neutral_entry(&entry), half_open)),
            );
        }
        Ok(())
    }
}

/// The flow tables of both families, with the timeouts the program applies to them and its
/// active-flow counts.
pub struct FlowTables {
    v4: FamilyTables<FlowKey4, u32>,
    v6: FamilyTables<FlowKey, Addr>,
    timeouts: Array<MapData, lb_common::FlowTimeouts>,
    active: PerCpuArray<MapData, u64>,
}

/// The maps [`FlowTables`] is made of, taken out of the loaded object.
pub struct FlowMaps {
    /// `FLOWS4`.
    pub flows4: HashMap<MapData, FlowKey4, FlowEntry<u32>>,
    /// `HALF_OPEN4`.
    pub half_open4: HashMap<MapData, FlowKey4, FlowEntry<u32>>,
    /// `FLOWS6`.
    pub flows6: HashMap<MapData, FlowKey, FlowEntry>,
    /// `HALF_OPEN6`.
    pub half_open6: HashMap<MapData, FlowKey, FlowEntry>,
    /// `REPLY_VIPS4`.
    pub replies4: HashMap<MapData, FlowKey4, VipPort<u32>>,
    /// `REPLY_VIPS6`.
    pub replies6: HashMap<MapData, FlowKey, VipPort<Addr>>,
    /// `FLOW_TIMEOUTS`.
    pub timeouts: Array<MapData, lb_common::FlowTimeouts>,
    /// `ACTIVE_FLOWS`.
    pub active: PerCpuArray<MapData, u64>,
}

impl FlowTables {
    /// Wraps the maps taken from the loaded object.
    pub fn new(maps: FlowMaps) -> Self {
        Self {
            v4: FamilyTables {
                flows: maps.flows4,
                half_open: maps.half_open4,
                replies: maps.replies4,
            },
            v6: FamilyTables {
                flows: maps.flows6,
                half_open: maps.half_open6,
                replies: maps.replies6,
            },
            timeouts: maps.timeouts,
            active: maps.active,
        }
    }

    /// Gives the program the flow timeouts (it applies them when it refreshes a flow).
    pub fn set_timeouts(&mut self, timeouts: &FlowTimeouts) -> Result<()> {
        Ok(self.timeouts.set(0, timeouts.in_nanoseconds(), 0)?)
    }

    /// The active flows of `backend_ids` as of `now_ns` (coarse monotonic): per backend, the
    /// flows whose client sent a packet in the last complete activity epoch and in the one
    /// under way. One batched read per epoch of the elements up to the highest id asked for;
    /// nothing else.
    pub fn active(&self, backend_ids: &[u32], now_ns: u64) -> Result<ActiveFlows> {
        let mut flows = ActiveFlows::default();
        let Some(&highest) = backend_ids.iter().max() else {
            return Ok(flows);
        };
        let current = epoch(now_ns);
        let previous = current.wrapping_sub(1);
        let counts = |epoch: u32| -> Result<Vec<u64>> {
            let tagged =
                batch::lookup_percpu_range(self.active.map(), active_index(epoch, 0), highest + 1)?;
            let cpus = tagged.len() / (highest as usize + 1);
            Ok(tagged
                .chunks(cpus)
                .map(|element| {
                    element
                        .iter()
                        .map(|tagged| u64::from(active_count(*tagged, epoch)))
                        .sum()
                })
                .collect())
        };
        let (before, now) = (counts(previous)?, counts(current)?);
        for &id in backend_ids {
            let id_index = id as usize;
            flows
                .by_backend
                .insert(id, (before[id_index], now[id_index]));
        }
        Ok(flows)
    }

    /// Deletes the entries (both directions) of the flows whose backend is in `backend_ids`:
    /// all of them, or (`Purge::Unestablished`) the UDP flows and TCP handshakes, leaving
    /// established connections. Returns how many flows. Reads every table: run when a backend
    /// leaves or goes Down.
    pub fn purge(&mut self, backend_ids: &[u32], purge: Purge) -> Result<usize> {
        let retired: HashSet<u32> = backend_ids.iter().copied().collect();
        Ok(self.v4.purge(&retired, purge)? + self.v6.purge(&retired, purge)?)
    }

    /// The entry of a flow, by its key (the client's 5-tuple), from whichever table holds it.
    pub fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.v4.get(key).or_else(|| self.v6.get(key))
    }

    /// Writes `flows` (key, entry, half-open) into their family's tables, each with the VIP
    /// of its replies if its entry is marked `LOCATED`; with `only_new`, not over flows the
    /// tables hold (`BPF_NOEXIST`). Returns how many were written.
    pub fn insert(&mut self, flows: &[(FlowKey, FlowEntry, bool)], only_new: bool) -> usize {
        flows
            .iter()
            .filter(|(key, entry, half_open)| {
                self.v4.insert(key, entry, *half_open, only_new)
                    || self.v6.insert(key, entry, *half_open, only_new)
            })
            .count()
    }

    /// Changes the established entry of the flow `key` by `change`, which says whether it
    /// changed anything to write. Returns whether the entry was written. The entry is read and
    /// written whole: what a packet changes between the two is lost.
    pub fn update(&mut self, key: &FlowKey, change: impl FnOnce(&mut FlowEntry) -> bool) -> bool {
        if <FlowKey4 as FamilyKey>::of(key).is_some() {
            self.v4.update(key, change)
        } else {
            self.v6.update(key, change)
        }
    }

    /// Deletes the entry of the flow whose key is `key` from every table, as an LRU eviction
    /// would.
    pub fn remove(&mut self, key: &FlowKey) {
        self.v4.remove(key);
        self.v6.remove(key);
    }

    /// Every flow, by its entry, and whether it is still half-open: what
    /// the tables hold, flows over but not yet reclaimed included (see
    /// [`FlowTimeouts::is_over`]).
    pub fn all(&self) -> Result<Vec<(FlowKey, FlowEntry, bool)>> {
        let mut all = Vec::new();
        self.v4.all(&mut all)?;
        self.v6.all(&mut all)?;
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_backend_is_as_active_as_the_busier_of_its_two_epochs() {
        let mut flows = ActiveFlows::default();
        flows.by_backend.insert(1, (10, 3));
        flows.by_backend.insert(2, (4, 9));
        assert_eq!(flows.of(1), 10);
        assert_eq!(flows.of(2), 9);
        assert_eq!(flows.of(3), 0);
        assert_eq!(flows.total(), 19);
    }

    #[test]
    fn the_program_gets_the_timeouts_in_nanoseconds() {
        let timeouts = FlowTimeouts {
            tcp_idle: Duration::from_secs(900),
            tcp_closing: Duration::from_millis(10_500),
            udp_idle: Duration::from_secs(30),
        };
        assert_eq!(
            timeouts.in_nanoseconds(),
            lb_common::FlowTimeouts {
                tcp_idle_ns: 900_000_000_000,
                tcp_closing_ns: 10_500_000_000,
                udp_idle_ns: 30_000_000_000,
            }
        );
    }
}
