//! The balancer's decisions: is this packet for a service or a reply of a balanced flow, which
//! backend serves a new flow, and what gets counted.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use lb_common::{
    FlowKey, NatEntry, ServiceEntry, ServiceKey, TrafficCounters,
    consts::{
        events,
        limits::{MAX_POOLS_PER_SERVICE, MAX_TABLE_SLOTS},
        timing::LAST_SEEN_REFRESH_NS,
    },
};

use crate::{
    forward::forward_ipv4,
    maps::{
        BACKEND_STATS, BACKEND_TABLES, BACKENDS, FLOWS, REPLIES, RR_CURSORS, SERVICE_STATS,
        SERVICES, count_event,
    },
    nat::{End, rewrite_ipv4},
    packet::{Packet, parse},
};

/// Handles one frame and returns the XDP verdict.
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
    let service_key = ServiceKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    if let Some(service) = SERVICES.get_ptr(&service_key) {
        // SAFETY: copy the value out at once; the element may be replaced after this.
        let service = unsafe { *service };
        return to_backend(ctx, &pkt, &key, &service);
    }
    if let Some(reply) = REPLIES.get_ptr_mut(&key) {
        return to_client(ctx, &pkt, &key, reply);
    }
    xdp_action::XDP_PASS
}

/// A packet from a client to a service: rewrite its destination to the flow's backend.
#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, service: &ServiceEntry) -> u32 {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return xdp_action::XDP_PASS;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = match FLOWS.get_ptr_mut(key) {
        Some(entry) => {
            refresh_last_seen(entry, now);
            // SAFETY: a valid map value; copied out before the packet is changed.
            unsafe { *entry }
        }
        None => match new_flow(pkt, key, service, now) {
            Ok(flow) => flow,
            Err(verdict) => return verdict,
        },
    };
    if rewrite_ipv4(ctx, pkt, End::Destination, &flow.addr, flow.port).is_none() {
        return xdp_action::XDP_PASS;
    }
    count_traffic(
        flow.service_id,
        flow.backend_id,
        pkt.ip_len,
        Direction::ToBackend,
    );
    let rewritten = FlowKey {
        dst_addr: flow.addr,
        dst_port: flow.port,
        ..*key
    };
    forward_ipv4(ctx, pkt, &rewritten)
}

/// A packet from a backend to a client of a balanced flow: rewrite its source back to the VIP.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, reply: *mut NatEntry) -> u32 {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return xdp_action::XDP_PASS;
    }
    refresh_last_seen(reply, unsafe { bpf_ktime_get_ns() });
    // SAFETY: a valid map value; copied out before the packet is changed.
    let reply = unsafe { *reply };
    if rewrite_ipv4(ctx, pkt, End::Source, &reply.addr, reply.port).is_none() {
        return xdp_action::XDP_PASS;
    }
    count_traffic(
        reply.service_id,
        reply.backend_id,
        pkt.ip_len,
        Direction::ToClient,
    );
    let rewritten = FlowKey {
        src_addr: reply.addr,
        src_port: reply.port,
        ..*key
    };
    forward_ipv4(ctx, pkt, &rewritten)
}

/// Chooses the backend of a new flow by round robin over its service's table and records the
/// flow in both directions. `Err` carries the verdict when the flow cannot be placed.
#[inline(always)]
fn new_flow(
    pkt: &Packet,
    key: &FlowKey,
    service: &ServiceEntry,
    now: u64,
) -> Result<NatEntry, u32> {
    let table_index = service.id * MAX_POOLS_PER_SERVICE;
    let Some(backend_id) = next_backend(table_index) else {
        count_no_backend(service.id);
        return Err(xdp_action::XDP_DROP);
    };
    let Some(backend) = BACKENDS.get(backend_id) else {
        count_no_backend(service.id);
        return Err(xdp_action::XDP_DROP);
    };
    let forward = NatEntry {
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
        backend_id,
        service_id: service.id,
        flags: 0,
        last_seen_ns: now,
    };
    if FLOWS.insert(key, &forward, BPF_NOEXIST as u64).is_err() {
        // Another CPU placed this flow between our lookup and insert: follow its choice.
        return match FLOWS.get_ptr(key) {
            // SAFETY: a valid map value, copied out.
            Some(existing) => Ok(unsafe { *existing }),
            None => {
                count_event(events::FLOW_INSERT_FAILED);
                Err(xdp_action::XDP_DROP)
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
    let reply = NatEntry {
        addr: pkt.dst,
        port: pkt.dport,
        ..forward
    };
    if REPLIES.insert(&reply_key, &reply, BPF_ANY as u64).is_err() {
        let _ = FLOWS.remove(key);
        count_event(events::FLOW_INSERT_FAILED);
        return Err(xdp_action::XDP_DROP);
    }
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service.id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).new_flows += 1 };
    }
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*counters).new_flows += 1 };
    }
    Ok(forward)
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
fn refresh_last_seen(entry: *mut NatEntry, now: u64) {
    // SAFETY: a valid map value; a racing writer only ever stores another recent time.
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) > LAST_SEEN_REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
    }
}

/// Which way a packet goes through the balancer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToBackend,
    ToClient,
}

#[inline(always)]
fn count_traffic(service_id: u32, backend_id: u32, bytes: u16, direction: Direction) {
    let add = |counters: *mut TrafficCounters| {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            if direction == Direction::ToBackend {
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
fn count_no_backend(service_id: u32) {
    count_event(events::NO_BACKEND);
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*counters).no_backend += 1 };
    }
}
