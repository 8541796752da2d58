//! In-memory maps for tests of the control plane and the monitor: every write is recorded, in
//! order, and the contents can be read back.

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;
use ipnet::IpNet;
use lb_common::{
    BackendEntry, BackendTable, FlowEntry, FlowKey, HandshakeGuard, MaglevTable, ServiceEntry,
    ServiceKey, TrafficCounters, VipKey,
    consts::{events, scheduler},
    passive::ServicePolicy,
    tables::table_index,
};

use super::{ActiveFlows, Counted, DataplaneMaps, DataplaneReads, Existing, Purge};

/// In-memory maps that record every write in order.
#[derive(Default)]
pub(crate) struct FakeMaps {
    pub(crate) log: Vec<String>,
    /// Fails the write after this many more have succeeded (then writes succeed again).
    pub(crate) fail_in: Option<usize>,
    pub(crate) backends: HashMap<u32, BackendEntry>,
    pub(crate) tables: HashMap<u32, Vec<u32>>,
    /// Maglev tables: (seed, slots).
    pub(crate) maglev: HashMap<u32, (u32, Vec<u32>)>,
    pub(crate) services: HashMap<ServiceKey, ServiceEntry>,
    pub(crate) flows_by_backend: HashMap<u32, usize>,
    pub(crate) vips: BTreeSet<VipKey>,
    pub(crate) prefixes: HashMap<u32, Vec<(IpNet, u32)>>,
    pub(crate) spilled: HashMap<u32, u64>,
    pub(crate) policies: HashMap<u32, ServicePolicy>,
    /// Counters by service id and by backend id.
    pub(crate) service_counters: HashMap<u32, TrafficCounters>,
    pub(crate) backend_counters: HashMap<u32, TrafficCounters>,
    /// The active flows `active_flows` reports: per backend id.
    pub(crate) active: HashMap<u32, u64>,
    /// What `flows` lists: client-to-backend entries, and whether half-open.
    pub(crate) flow_entries: Vec<(FlowKey, FlowEntry, bool)>,
    /// The clock `now_ns` reads.
    pub(crate) now_ns: u64,
    /// The counters zeroed, in order (not in `log`, which follows the tables' order).
    pub(crate) zeroed: Vec<Counted>,
}

impl FakeMaps {
    /// Fails if this is the write `fail_in` was set to fail.
    fn fault(&mut self) -> Result<()> {
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                self.log.push("failed".into());
                anyhow::bail!("injected failure")
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl DataplaneMaps for FakeMaps {
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<()> {
        self.fault()?;
        self.log.push(format!("backend {id}"));
        self.backends.insert(id, *entry);
        Ok(())
    }
    fn publish_table(&mut self, index: u32, table: &BackendTable) -> Result<()> {
        self.fault()?;
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
    fn publish_maglev(&mut self, index: u32, table: Option<&MaglevTable>) -> Result<()> {
        self.fault()?;
        match table {
            Some(table) => {
                let slots = table.slots[..table.len as usize].to_vec();
                assert!(
                    slots.iter().all(|id| self.backends.contains_key(id)),
                    "Maglev table {index} names a backend before it was written"
                );
                self.log.push(format!("maglev {index} {}", slots.len()));
                self.maglev.insert(index, (table.seed, slots));
            }
            None => {
                assert!(
                    !self
                        .services
                        .values()
                        .any(|s| s.scheduler == scheduler::MAGLEV
                            && (0..u32::from(s.pools.max(1)))
                                .any(|p| table_index(s.id, p) == index)),
                    "Maglev table {index} removed while its service uses it"
                );
                self.log.push(format!("maglev- {index}"));
                self.maglev.remove(&index);
            }
        }
        Ok(())
    }
    fn set_policy(&mut self, service_id: u32, policy: &ServicePolicy) -> Result<()> {
        self.fault()?;
        self.log.push(format!("policy {service_id}"));
        self.policies.insert(service_id, *policy);
        Ok(())
    }
    fn clear_mark(&mut self, id: u32) -> Result<()> {
        self.fault()?;
        self.log.push(format!("mark- {id}"));
        Ok(())
    }
    fn zero_counters(&mut self, counters: Counted) -> Result<()> {
        self.fault()?;
        match counters {
            Counted::Service(id) => self.service_counters.remove(&id),
            Counted::Backend(id) => self.backend_counters.remove(&id),
            Counted::Spills(index) => self.spilled.remove(&index).map(|_| Default::default()),
        };
        self.zeroed.push(counters);
        Ok(())
    }
    fn reset_cursor(&mut self, index: u32) -> Result<()> {
        self.fault()?;
        self.log.push(format!("cursor {index}"));
        Ok(())
    }
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<()> {
        self.fault()?;
        assert!(
            self.tables.contains_key(&table_index(entry.id, 0)),
            "service before its table"
        );
        assert!(
            entry.scheduler != scheduler::MAGLEV
                || self.maglev.contains_key(&table_index(entry.id, 0)),
            "Maglev service before its Maglev table"
        );
        self.log.push(format!("service+ {}", entry.id));
        self.services.insert(*key, *entry);
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.fault()?;
        // Removed before, by an apply that failed later: the next removes it again.
        match self.services.remove(key) {
            Some(entry) => self.log.push(format!("service- {}", entry.id)),
            None => self.log.push("service- (absent)".into()),
        }
        Ok(())
    }
    fn release_backend(&mut self, id: u32) -> Result<()> {
        self.fault()?;
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
        self.fault()?;
        self.log
            .push(format!("prefixes {service_id} {}", prefixes.len()));
        self.prefixes.insert(service_id, prefixes.to_vec());
        Ok(())
    }
    fn add_vip(&mut self, key: &VipKey) -> Result<()> {
        self.fault()?;
        // Added before, by an apply that failed later: the next adds it again.
        let again = if self.vips.insert(*key) {
            ""
        } else {
            " (again)"
        };
        self.log.push(format!("vip+{again}"));
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.fault()?;
        if self.vips.remove(key) {
            self.log.push("vip-".into());
        } else {
            self.log.push("vip- (absent)".into());
        }
        Ok(())
    }
    fn forget_persistence(&mut self, serving: &std::collections::HashSet<u32>) -> Result<usize> {
        self.fault()?;
        let mut ids: Vec<u32> = serving.iter().copied().collect();
        ids.sort_unstable();
        self.log.push(format!("persist keep {ids:?}"));
        Ok(0)
    }

    fn purge_flows(&mut self, backend_ids: &[u32], purge: Purge) -> Result<usize> {
        self.fault()?;
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
        let what = match purge {
            Purge::All => "",
            Purge::Unestablished => " unestablished",
        };
        self.log.push(format!("purge{what} {ids:?}"));
        Ok(backend_ids
            .iter()
            .map(|id| self.flows_by_backend.remove(id).unwrap_or(0))
            .sum())
    }
}

impl DataplaneReads for FakeMaps {
    fn service_counters(&self, service_id: u32) -> Result<TrafficCounters> {
        Ok(self
            .service_counters
            .get(&service_id)
            .copied()
            .unwrap_or_default())
    }
    fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters> {
        Ok(self
            .backend_counters
            .get(&backend_id)
            .copied()
            .unwrap_or_default())
    }
    fn events(&self) -> Result<[u64; events::COUNT as usize]> {
        Ok([0; events::COUNT as usize])
    }
    fn handshake_guard(&self) -> Result<HandshakeGuard> {
        Ok(HandshakeGuard::default())
    }
    fn handshake_guard_on(&self) -> Result<bool> {
        Ok(false)
    }
    fn active_flows(&self, backend_ids: &[u32]) -> Result<ActiveFlows> {
        Ok(ActiveFlows {
            by_backend: backend_ids
                .iter()
                .map(|id| (*id, (0, self.active.get(id).copied().unwrap_or(0))))
                .collect(),
        })
    }
    fn spilled(&self, index: u32) -> Result<u64> {
        Ok(self.spilled.get(&index).copied().unwrap_or(0))
    }
    fn vips_unserved(&self) -> Result<Vec<(VipKey, u64)>> {
        Ok(self.vips.iter().map(|vip| (*vip, 0)).collect())
    }
    fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry, bool)>> {
        Ok(self.flow_entries.clone())
    }
    fn now_ns(&self) -> Result<u64> {
        Ok(self.now_ns)
    }
}
