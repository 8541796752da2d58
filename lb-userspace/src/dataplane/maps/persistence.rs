//! Source persistence's map as userspace holds it (`PERSISTENCE`, see `lb-ebpf/src/persist.rs`):
//! the daemon deletes the entries of backends that stop taking new flows.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use lb_common::{
    consts::map_names,
    passive::{PersistEntry, PersistKey},
};

use super::take;

/// Per (service, client): the backend of its last new flow.
pub(crate) struct PersistenceMap {
    map: HashMap<MapData, PersistKey, PersistEntry>,
}

impl PersistenceMap {
    /// Takes the map out of the loaded object.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            map: take(ebpf, map_names::PERSISTENCE)?,
        })
    }

    /// The backend and time `key`'s client persists on, if any.
    pub(crate) fn get(&self, key: &PersistKey) -> Option<PersistEntry> {
        self.map.get(key, 0).ok()
    }

    /// Puts `key`'s entry back as it was (`None`: absent), after a simulated flow.
    pub(crate) fn put_back(&mut self, key: &PersistKey, entry: Option<PersistEntry>) -> Result<()> {
        let done = match entry {
            Some(entry) => self.map.insert(key, entry, 0),
            // Absent before, and still absent (a service without persistence): nothing to do.
            None if self.get(key).is_none() => Ok(()),
            None => self.map.remove(key),
        };
        done.with_context(|| format!("restoring {}", map_names::PERSISTENCE))
    }

    /// Deletes every entry whose backend is not in `serving`; returns how many.
    pub(super) fn retain(&mut self, serving: &HashSet<u32>) -> Result<usize> {
        let mut gone = Vec::new();
        for item in self.map.iter() {
            let (key, entry) =
                item.with_context(|| format!("reading {}", map_names::PERSISTENCE))?;
            if !serving.contains(&entry.backend_id) {
                gone.push(key);
            }
        }
        for key in &gone {
            // An entry the LRU evicted meanwhile is gone already.
            let _ = self.map.remove(key);
        }
        Ok(gone.len())
    }
}
