//! The flows the program tells the daemon of while it shares them with a fleet (see
//! `lb_common::share`): whether it does (`FLEET`), the events (`FLOW_EVENTS`, read by a task
//! that waits on the ring buffer's descriptor) and those lost to a full ring
//! (`FLOW_EVENTS_LOST`); and the program arrays through which a NAT backend's packet whose
//! flow the program just adopted runs the program again (`RERUN_XDP`, `RERUN_TC`).

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    consts::{map_names, program_names},
    share::FlowEvent,
};

use super::{program_arrays::program_array, take};

/// The switch that turns the program's flow events on (`FLEET`), and the program arrays each
/// program runs itself again through (held while the daemon runs: a program array keeps its
/// programs only while a process or a pin holds it).
pub struct FleetSwitch {
    on: Array<MapData, u32>,
    _reruns: [ProgramArray<MapData>; 2],
}

impl FleetSwitch {
    /// Takes the maps out of the loaded object, and puts each loaded program in its own
    /// program array.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let reruns = [
            program_array(ebpf, map_names::RERUN_XDP, program_names::BALANCER)?,
            program_array(ebpf, map_names::RERUN_TC, program_names::BALANCER_TC)?,
        ];
        Ok(Self {
            on: take(ebpf, map_names::FLEET)?,
            _reruns: reruns,
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
