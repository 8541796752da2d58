//! The flows the program tells the daemon of while it shares them with a fleet (see
//! `lb_common::share`): whether it does (`FLEET`), the events (`FLOW_EVENTS`, read by a task
//! that waits on the ring buffer's descriptor) and those lost to a full ring
//! (`FLOW_EVENTS_LOST`).

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
};
use lb_common::{consts::map_names, share::FlowEvent};

use super::take;

/// The switch that turns the program's flow events on (`FLEET`).
pub struct FleetSwitch {
    on: Array<MapData, u32>,
}

impl FleetSwitch {
    /// Takes the map out of the loaded object.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            on: take(ebpf, map_names::FLEET)?,
        })
    }

    /// Turns the events on (or off).
    pub fn share_flows(&mut self, on: bool) -> Result<()> {
        self.on
            .set(0, u32::from(on), 0)
            .with_context(|| format!("writing {}", map_names::FLEET))
    }
}

/// The program's flow events, and those lost to a full ring.
pub struct FlowEvents {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl FlowEvents {
    /// Takes the maps out of the loaded object.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            ring: take(ebpf, map_names::FLOW_EVENTS)?,
            lost: take(ebpf, map_names::FLOW_EVENTS_LOST)?,
        })
    }

    /// The next event, if any.
    pub fn next_event(&mut self) -> Option<FlowEvent> {
        let item = self.ring.next()?;
        if item.len() < size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: the program writes whole `FlowEvent`s (checked length); any bit pattern is
        // a valid one, and the read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) })
    }

    /// Events lost to a full ring, over every CPU.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
