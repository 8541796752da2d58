//! The passive health and admission maps as userspace holds them (see
//! `lb_common::passive`): each service's settings (`SERVICE_POLICIES`), each backend's marks
//! (`PASSIVE_MARKS`, read and cleared), and the marks the program reports
//! (`PASSIVE_EVENTS`), read by a task that waits on the ring buffer's descriptor.

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
};
use lb_common::{
    consts::map_names,
    passive::{PassiveEvent, PassiveMark, ServicePolicy},
};

use super::take;

/// Each service's settings and each backend's marks.
pub struct PassiveMaps {
    policies: Array<MapData, ServicePolicy>,
    marks: Array<MapData, PassiveMark>,
}

impl PassiveMaps {
    /// Takes the maps out of the loaded object.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            policies: take(ebpf, map_names::SERVICE_POLICIES)?,
            marks: take(ebpf, map_names::PASSIVE_MARKS)?,
        })
    }

    /// Sets service `service_id`'s settings.
    pub fn set_policy(&mut self, service_id: u32, policy: &ServicePolicy) -> Result<()> {
        self.policies
            .set(service_id, *policy, 0)
            .with_context(|| format!("writing {}", map_names::SERVICE_POLICIES))
    }

    /// Backend `id`'s counts and mark.
    pub fn mark(&self, id: u32) -> Result<PassiveMark> {
        self.marks
            .get(&id, 0)
            .with_context(|| format!("reading {}", map_names::PASSIVE_MARKS))
    }

    /// Writes backend `id`'s mark as the program would (for benchmarks and tests that need a
    /// suspect backend without making one refuse handshakes).
    pub fn set_mark(&mut self, id: u32, mark: PassiveMark) -> Result<()> {
        self.marks
            .set(id, mark, 0)
            .with_context(|| format!("writing {}", map_names::PASSIVE_MARKS))
    }

    /// Clears backend `id`'s mark and counts (its slot in the service's share is free again).
    pub fn clear_mark(&mut self, id: u32) -> Result<()> {
        self.marks
            .set(id, PassiveMark::default(), 0)
            .with_context(|| format!("writing {}", map_names::PASSIVE_MARKS))
    }
}

/// The ring buffer of marks the program reports; pollable (it is the ring buffer's file
/// descriptor), so a task can wait for them.
pub struct PassiveEvents {
    ring: RingBuf<MapData>,
}

impl PassiveEvents {
    /// Takes the ring buffer out of the loaded object.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            ring: take(ebpf, map_names::PASSIVE_EVENTS)?,
        })
    }

    /// The next report, if any.
    pub fn next_event(&mut self) -> Option<PassiveEvent> {
        let item = self.ring.next()?;
        if item.len() < size_of::<PassiveEvent>() {
            return None;
        }
        // SAFETY: the program writes whole `PassiveEvent`s (checked length); any bit pattern
        // is a valid one, and the read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<PassiveEvent>()) })
    }
}

impl AsRawFd for PassiveEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
