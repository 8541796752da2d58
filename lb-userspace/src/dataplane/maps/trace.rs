//! The trace maps as userspace holds them (see `lb_common::trace`): starting and ending a
//! trace by writing `TRACE_CONFIG`, and reading the events the program writes to
//! `TRACE_EVENTS`. The [`Tracer`] is pollable (it is the ring buffer's file descriptor), so a
//! task can wait for events.

use std::os::fd::{AsRawFd, RawFd};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
};
use lb_common::{
    consts::map_names,
    trace::{TraceConfig, TraceEvent},
};

use super::take;

/// Both trace maps.
pub struct Tracer {
    config: Array<MapData, TraceConfig>,
    events: RingBuf<MapData>,
}

impl Tracer {
    /// Takes the trace maps out of the loaded object.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: take(ebpf, map_names::TRACE_CONFIG)?,
            events: take(ebpf, map_names::TRACE_EVENTS)?,
        })
    }

    /// Starts tracing as `config` says (its counters are reset). The filter is written before
    /// the deadline, so no packet is traced under half of a config.
    pub fn begin(&mut self, config: TraceConfig) -> Result<()> {
        let fresh = TraceConfig {
            matched: 0,
            lost: 0,
            ..config
        };
        let write = |config: &mut Array<MapData, TraceConfig>, value| {
            config
                .set(0, value, 0)
                .with_context(|| format!("writing {}", map_names::TRACE_CONFIG))
        };
        write(
            &mut self.config,
            TraceConfig {
                until_ns: 0,
                ..fresh
            },
        )?;
        write(&mut self.config, fresh)
    }

    /// Ends the trace; returns the config as the program left it (its counters).
    pub fn end(&mut self) -> Result<TraceConfig> {
        let last = self
            .config
            .get(&0, 0)
            .with_context(|| format!("reading {}", map_names::TRACE_CONFIG))?;
        self.config
            .set(
                0,
                TraceConfig {
                    until_ns: 0,
                    ..last
                },
                0,
            )
            .with_context(|| format!("writing {}", map_names::TRACE_CONFIG))?;
        Ok(last)
    }

    /// The next event the program wrote, if any.
    pub fn next_event(&mut self) -> Option<TraceEvent> {
        let item = self.events.next()?;
        if item.len() < size_of::<TraceEvent>() {
            return None;
        }
        // SAFETY: the program writes whole `TraceEvent`s (checked length); any bit pattern is
        // a valid one, and the read is unaligned-safe.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) })
    }
}

impl AsRawFd for Tracer {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}
