//! The balancer's decisions: does this packet belong to a flow, or is it the first packet of a
//! new flow to a service; which backend serves a new flow; and what gets counted.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use lb_common::{
    FlowEntry, FlowKey, ServiceEntry, ServiceKey, TrafficCounters,
    consts::{
        events,
        limits::{MAX_POOLS_PER_SERVICE, MAX_TABLE_SLOTS},
        timing::LAST_SEEN_REFRESH_NS,
    },
    direction,
};

use crate::{
    forward::{resolve, send, send_cached},
    maps::{
        BACKEND_STATS, BACKEND_TABLES, BACKENDS, FLOWS, RR_CURSORS, SERVICE_STATS, SERVICES,
        count_event,
    },
    nat::{End, rewrite_ipv4},
    packet::{Packet, parse},
};

/// Handles one frame and returns the XDP verdict. One hash lookup decides a packet of an
/// established flow (either direction); a second, the first packet of a new flow.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let Some(pkt) = parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let key = FlowKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.sport,
        dst_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if let Some(entry) = FLOWS.get_ptr_mut(&key) {
        return established(ctx, &pkt, &key, entry);
    }
    let service_key = ServiceKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    if let Some(service) = SERVICES.get_ptr(&service_key) {
        // SAFETY: copy the value out at once; the element may be replaced after this.
        let service = unsafe { *service };
        return new_flow(ctx, &pkt, &key, &service);
    }
    xdp_action::XDP_PASS
}

/// A packet of a known flow, in either direction: rewrite it as its entry says and send it to
/// the entry's next hop.
#[inline(always)]
fn established(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, entry: *mut FlowEntry) -> u32 {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return xdp_action::XDP_PASS;
    }
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a valid map value; fields are read once, and racing writers (other CPUs on the
    // same flow) only store a recent time or the same next hop.
    let flow = unsafe { &mut *entry };
    if now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_REFRESH_NS {
        flow.last_seen_ns = now;
    }
    let (end, rewritten) = if flow.direction == direction::TO_BACKEND {
        let rewritten = FlowKey {
            dst_addr: flow.addr,
            dst_port: flow.port,
            ..*key
        };
        (End::Destination, rewritten)
    } else {
        let rewritten = FlowKey {
            src_addr: flow.addr,
            src_port: flow.port,
            ..*key
        };
        (End::Source, rewritten)
    };
    if rewrite_ipv4(ctx, pkt, end, &flow.addr, flow.port).is_none() {
        return xdp_action::XDP_PASS;
    }
    count_traffic(flow.service_id, flow.backend_id, pkt.ip_len, flow.direction);
    send_cached(ctx, pkt, &rewritten, flow, now)
}

/// The first packet of a flow to a service: choose a backend by round robin, record both
/// directions of the flow, rewrite, send.
#[inline(always)]
fn new_flow(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, service: &ServiceEntry) -> u32 {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return xdp_action::XDP_PASS;
    }
    let table_index = service.id * MAX_POOLS_PER_SERVICE;
    let Some(backend_id) = next_backend(table_index) else {
        count_no_backend(service.id);
        return xdp_action::XDP_DROP;
    };
    let Some(backend) = BACKENDS.get(backend_id) else {
        count_no_backend(service.id);
        return xdp_action::XDP_DROP;
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let rewritten = FlowKey {
        dst_addr: backend.addr,
        dst_port: backend.port,
        ..*key
    };
    // Resolve the next hop before recording the flow, so the entry is complete when written.
    let hop = resolve(ctx, pkt, &rewritten);
    let mut forward = FlowEntry {
        addr: backend.addr,
        port: backend.port,
        direction: direction::TO_BACKEND,
        backend_id,
        service_id: service.id,
        last_seen_ns: now,
        ..FlowEntry::default()
    };
    if let Ok(hop) = &hop {
        hop.store(&mut forward, now);
    }
    if FLOWS.insert(key, &forward, BPF_NOEXIST as u64).is_err() {
        // Another CPU recorded this flow between our lookup and insert: follow its choice.
        return match FLOWS.get_ptr_mut(key) {
            Some(entry) => established(ctx, pkt, key, entry),
            None => {
                count_event(events::FLOW_INSERT_FAILED);
                xdp_action::XDP_DROP
            }
        };
    }
    let reply_key = FlowKey {
        src_addr: backend.addr,
        dst_addr: pkt.src,
        src_port: backend.port,
        dst_port: pkt.sport,
        ..*key
    };
    let reply = FlowEntry {
        addr: pkt.dst,
        port: pkt.dport,
        direction: direction::TO_CLIENT,
        backend_id,
        service_id: service.id,
        last_seen_ns: now,
        ..FlowEntry::default()
    };
    if FLOWS.insert(&reply_key, &reply, BPF_ANY as u64).is_err() {
        let _ = FLOWS.remove(key);
        count_event(events::FLOW_INSERT_FAILED);
        return xdp_action::XDP_DROP;
    }
    count_new_flow(service.id, backend_id);
    if rewrite_ipv4(ctx, pkt, End::Destination, &backend.addr, backend.port).is_none() {
        return xdp_action::XDP_PASS;
    }
    count_traffic(service.id, backend_id, pkt.ip_len, direction::TO_BACKEND);
    match hop {
        Ok(hop) => send(ctx, pkt, &hop),
        Err(verdict) => verdict,
    }
}

/// The next backend id of a table, advancing its round-robin cursor atomically so that
/// concurrent new flows on different CPUs take different slots.
#[inline(always)]
fn next_backend(table_index: u32) -> Option<u32> {
    let table = BACKEND_TABLES.get_value(table_index, &0)?;
    let len = table.len as u64;
    if len == 0 {
        return None;
    }
    let cursor = RR_CURSORS.get_ptr_mut(table_index)?;
    // SAFETY: the cursor is a valid, 8-byte aligned u64 in an array map shared by all CPUs.
    // `core::sync::atomic` offers no fetch_add on BPF (the target has no compare-and-swap),
    // so the intrinsic is used directly. It must be SeqCst: with Relaxed, LLVM 22 selects the
    // non-fetching BPF_ADD and then uses the register as if it held the old value, so every
    // flow would get the same slot. SeqCst yields BPF_ADD | BPF_FETCH (`lock xadd` on x86),
    // which is what the kernel runs for any fetching atomic anyway. Packet tests check that
    // consecutive flows take consecutive slots.
    let turn = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) };
    let slot = (turn % len) as usize;
    if slot >= MAX_TABLE_SLOTS {
        return None;
    }
    Some(table.slots[slot])
}

#[inline(always)]
fn count_traffic(service_id: u32, backend_id: u32, bytes: u16, flow_direction: u8) {
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

#[inline(always)]
fn count_new_flow(service_id: u32, backend_id: u32) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).new_flows += 1 };
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*counters).new_flows += 1 };
    }
}

#[inline(always)]
fn count_no_backend(service_id: u32) {
    count_event(events::NO_BACKEND);
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).no_backend += 1 };
    }
}
