//! The per-CPU counters of services and backends (`SERVICE_STATS`, `BACKEND_STATS`), of
//! spills (`SPILLED`) and of active flows (`ACTIVE_FLOWS`), as the data plane's decisions add
//! to them.

use lb_common::{TrafficCounters, active_add, active_index, consts::events, direction};

use crate::maps::{ACTIVE_FLOWS, BACKEND_STATS, SERVICE_STATS, SPILLED, count_event};

/// Counts a packet of a flow (and its bytes) in its direction.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u16, flow_direction: u8) {
    let add = |counters: *mut TrafficCounters| {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            if flow_direction == direction::TO_BACKEND {
                (*counters).fwd_packets += 1;
                (*counters).fwd_bytes += bytes as u64;
            } else {
                (*counters).rev_packets += 1;
                (*counters).rev_bytes += bytes as u64;
            }
        }
    };
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        add(counters);
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        add(counters);
    }
}

/// Counts a flow of backend `backend_id` as active in activity epoch `epoch` (once per flow
/// and epoch: the caller checks the flow's entry).
#[inline(always)]
pub fn count_active(backend_id: u32, epoch: u32) {
    if let Some(count) = ACTIVE_FLOWS.get_ptr_mut(active_index(epoch, backend_id)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *count = active_add(*count, epoch) };
    }
}

/// Counts a new flow.
#[inline(always)]
pub fn count_new_flow(service_id: u32, backend_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).new_flows += 1 };
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*counters).new_flows += 1 };
    }
}

/// Counts a new flow placed outside its home pool, at its home table's index.
#[inline(always)]
pub fn count_spill(table_index: u32) {
    if let Some(spilled) = SPILLED.get_ptr_mut(table_index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *spilled += 1 };
    }
}

/// Counts a new flow dropped for want of a backend.
#[inline(always)]
pub fn count_no_backend(service_id: u32) {
    count_event(events::NO_BACKEND);
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).no_backend += 1 };
    }
}

/// Counts one passive observation for a service and its backend: `add` adds it to a set of
/// counters.
#[inline(always)]
pub fn count_both(service_id: u32, backend_id: u32, add: impl Fn(&mut TrafficCounters)) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        add(unsafe { &mut *counters });
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        add(unsafe { &mut *counters });
    }
}

/// Counts a new flow dropped by its prefix's admission limit.
#[inline(always)]
pub fn count_admission_dropped(service_id: u32) {
    count_event(events::ADMISSION_DROPPED);
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).admission_dropped += 1 };
    }
}
