//! `xlb trace`: recording what the program decided for a packet the operator asked about (see
//! `lb_common::trace`). Each decision point calls [`record`], which costs one array lookup and
//! one comparison when no trace runs; for a traced packet it fills an event in the ring buffer
//! with what every decision has, lets the caller add the decision's own fields, and submits
//! it.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::maps::ring_buf::RingBufEntry;
use lb_common::{
    Addr,
    trace::{NO_BACKEND_ID, TraceEvent, traced},
};

use crate::{
    maps::{TRACE_CONFIG, TRACE_EVENTS},
    packet::Packet,
};

/// Records a decision for a packet of service `service_id` whose flow's client is
/// `client`:`client_port`, if it is traced at `now`: the common fields, then `fill`'s. Inlined
/// is only the check whether a trace runs; the rest is a function of its own, so that the
/// decision points carry no more than that check when none does.
#[inline(always)]
pub fn record(
    now: u64,
    service_id: u32,
    pkt: &Packet,
    client: (&Addr, u16),
    fill: impl FnOnce(&mut TraceEvent),
) {
    let Some(config) = TRACE_CONFIG.get_ptr(0) else {
        return;
    };
    // SAFETY: the map's single element; `until_ns` is a word the daemon writes whole.
    if unsafe { (*config).until_ns } <= now {
        return;
    }
    if let Some(mut entry) = start(now, service_id, pkt.family, client.0, client.1) {
        // SAFETY: `start` initialised the whole event.
        let event = unsafe { &mut *entry.as_mut_ptr() };
        event.proto = pkt.proto;
        event.tcp_flags = pkt.tcp_flags;
        fill(event);
        entry.submit(0);
    }
}

/// An event for a packet of service `service_id` whose client is `client`:`client_port`
/// (family, protocol), if it is traced at `now` and sampled; `None` otherwise.
#[inline(never)]
fn start(
    now: u64,
    service_id: u32,
    family: u8,
    client: &Addr,
    client_port: u16,
) -> Option<RingBufEntry<TraceEvent>> {
    let config = TRACE_CONFIG.get_ptr_mut(0)?;
    // SAFETY: the map's single element; `until_ns` is a word the daemon writes whole.
    if unsafe { (*config).until_ns } <= now {
        return None;
    }
    // SAFETY: as above; the daemon writes the filter before `until_ns` and the program only
    // reads it; the counters are changed atomically.
    unsafe {
        if !traced(&*config, now, service_id, family, client) {
            return None;
        }
        let seen = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
            core::ptr::addr_of_mut!((*config).matched),
            1,
        );
        let every = u64::from((*config).sample_every.max(1));
        if !seen.is_multiple_of(every) {
            return None;
        }
        let Some(mut entry) = TRACE_EVENTS.reserve(0) else {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
                core::ptr::addr_of_mut!((*config).lost),
                1,
            );
            return None;
        };
        let event = entry.as_mut_ptr();
        core::ptr::write_bytes(event, 0, 1);
        (*event).time_ns = now;
        (*event).client = *client;
        (*event).client_port = client_port;
        (*event).service_id = service_id;
        (*event).backend_id = NO_BACKEND_ID;
        (*event).family = family;
        Some(entry)
    }
}
