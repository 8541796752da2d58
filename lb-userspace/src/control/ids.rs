//! Small integer ids for services and backends (indexes of their counters, tables and
//! entries in the maps).

/// Hands out small integer ids next-fit, like PIDs: a released id is reused only after every
/// other free id has been handed out, so an id is not recycled while a packet that read an old
/// table might still be using it.
#[derive(Clone, Debug)]
pub(super) struct IdAllocator {
    in_use: Vec<bool>,
    next: usize,
}

impl IdAllocator {
    /// Ids 0 to `capacity - 1`, all free.
    pub(super) fn new(capacity: u32) -> Self {
        Self {
            in_use: vec![false; capacity as usize],
            next: 0,
        }
    }

    /// The next free id after the last one handed out, if any is free.
    pub(super) fn allocate(&mut self) -> Option<u32> {
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

    /// Frees `id`.
    pub(super) fn release(&mut self, id: u32) {
        self.in_use[id as usize] = false;
    }

    /// Marks `id` as taken (adopting ids assigned by an earlier daemon).
    pub(super) fn claim(&mut self, id: u32) {
        if let Some(slot) = self.in_use.get_mut(id as usize) {
            *slot = true;
        }
    }
}
