//! The balancer's decisions: does this packet belong to a flow, or is it the first packet of a
//! new flow to a service; which backend serves a new flow; and what gets counted.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg},
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    btf_maps::lpm_trie::Key,
    helpers::bpf_ktime_get_coarse_ns,
};
use lb_common::{
    ClientPrefix, FlowEntry, FlowKey, ServiceEntry, ServiceKey,
    consts::{events, flow_flags, limits::MAX_TABLE_SLOTS, proto, timing::LAST_SEEN_REFRESH_NS},
    direction,
    guard::{hashes_syn, starts_flooded, window_ended},
    hash::flow_hash,
    passive::MAX_SKIPS,
    tables::{table_index, table_owner},
    trace::{NO_BACKEND_ID, decision},
};

use crate::{
    counters::{
        count_admission_dropped, count_new_flow, count_no_backend, count_spill, count_traffic,
    },
    flows::{Retransmission, make_reply, promote, retransmitted_syn, scratch_peer, table},
    forward::{Route, resolve, send, send_cached},
    frame::Frame,
    icmp,
    maps::{
        BACKEND_TABLES, BACKENDS, CLIENT_POOLS, FLOWS, HALF_OPEN, HANDSHAKE_GUARD, RR_CURSORS,
        SERVICES, count_event,
    },
    nat::{End, rewrite},
    packet::{Packet, TCP_FIN, TCP_RST, TCP_SYN, parse},
    passive,
    scratch::scratch,
    trace,
};

/// Handles one frame and returns the XDP verdict. One hash lookup decides a packet of an
/// established flow (either direction); a second, the first packet of a new flow.
#[inline(always)]
pub fn process<F: Frame>(frame: &F) -> u32 {
    let Some(scratch) = scratch() else {
        return F::PASS;
    };
    // SAFETY: this CPU's scratch area, used by nobody else while the program runs; the
    // references below are to distinct fields.
    let (pkt, key) = unsafe { (&mut (*scratch).pkt, &mut (*scratch).key) };
    if parse(frame, pkt).is_none() {
        return F::PASS;
    }
    let pkt: &Packet = pkt;
    if pkt.proto != proto::TCP && pkt.proto != proto::UDP {
        return icmp::process(frame, pkt);
    }
    key.src_addr = pkt.src;
    key.dst_addr = pkt.dst;
    key.src_port = pkt.sport;
    key.dst_port = pkt.dport;
    key.proto = pkt.proto;
    key.family = pkt.family;
    key._pad = [0; 2];
    let key: &FlowKey = key;
    if let Some(entry) = FLOWS.get_ptr_mut(key) {
        return established(frame, pkt, key, entry, false);
    }
    let service_key = ServiceKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    let service = SERVICES.get_ptr(&service_key);
    if pkt.proto == proto::TCP
        && let Some(entry) = HALF_OPEN.get_ptr_mut(key)
    {
        // A client packet without SYN completes the handshake; a retransmitted SYN is
        // forwarded (its reply entry put back if a flood evicted it) or, if the backend never
        // answered, placed on another backend; a backend's packet (no service: its
        // destination is the client) may be its answer, or its refusal.
        match service {
            Some(_) if pkt.tcp_flags & TCP_SYN == 0 => {
                if let Some(entry) = promote(key, entry) {
                    return established(frame, pkt, key, entry, false);
                }
            }
            Some(service) => {
                if let Retransmission::Replace(avoid) = retransmitted_syn(key, entry) {
                    return place(frame, pkt, key, service, avoid);
                }
            }
            None => {
                // SAFETY: the helper takes no arguments and only reads the clock.
                let now = unsafe { bpf_ktime_get_coarse_ns() };
                passive::backend_answer(frame, pkt, entry, now);
            }
        }
        return established(frame, pkt, key, entry, true);
    }
    if let Some(service) = service {
        return place(frame, pkt, key, service, NO_BACKEND_ID);
    }
    F::PASS
}

/// Places a new flow of `service` (or re-places a half-open one away from backend `avoid`).
#[inline(always)]
fn place<F: Frame>(
    frame: &F,
    pkt: &Packet,
    key: &FlowKey,
    service: *const ServiceEntry,
    avoid: u32,
) -> u32 {
    // SAFETY: copy the value out at once; the element may be replaced after this.
    let service = unsafe { *service };
    let pool = home_pool(&service, &pkt.src);
    let placement = Placement::new(table_index(service.id, pool), avoid);
    match new_flow(frame, pkt, key, placement) {
        NewFlow::Done(verdict) => verdict,
        NewFlow::Raced(entry, half_open) => established(frame, pkt, key, entry, half_open),
    }
}

/// The home pool of a new flow from `client`: the pool of the longest client prefix that
/// matches it, or the service's default pool; pool 0 for a service without pools.
#[inline(always)]
fn home_pool(service: &ServiceEntry, client: &lb_common::Addr) -> u32 {
    if service.pools <= 1 {
        return 0;
    }
    // SAFETY: an Addr's four words hold the address's 16 bytes in wire order.
    let bytes: ClientPrefix = unsafe { core::mem::transmute(*client) };
    let key = Key::new(128, bytes);
    match CLIENT_POOLS.get_value_ptr_mut(service.id, &key) {
        // SAFETY: a valid map value, read at once.
        Some(pool) if unsafe { *pool } < service.pools as u32 => unsafe { *pool },
        _ => service.default_pool as u32,
    }
}

/// Where a new flow is placed, in one 64-bit argument (a BPF function takes at most five
/// arguments in registers, the result's pointer among them, and LLVM splits a struct of two
/// words into two): the table of the service and home pool, and for a retransmitted SYN its
/// backend never answered, that backend (whose flow entries are replaced), else
/// `NO_BACKEND_ID` (the flow is new, and must be admitted).
#[derive(Clone, Copy)]
struct Placement(u64);

impl Placement {
    #[inline(always)]
    fn new(table_index: u32, avoid: u32) -> Self {
        Self(u64::from(avoid) << 32 | u64::from(table_index))
    }

    #[inline(always)]
    fn table_index(self) -> u32 {
        self.0 as u32
    }

    #[inline(always)]
    fn avoid(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// What became of a new flow's first packet.
enum NewFlow {
    /// Handled, with this verdict.
    Done(u32),
    /// Another CPU recorded the flow first: the packet follows that entry (in `HALF_OPEN` if
    /// the flag says so). Returned rather than handled inside `new_flow`, so that the two
    /// functions' stack frames are never on the stack at once.
    Raced(*mut FlowEntry, bool),
}

/// A packet of a known flow, in either direction: rewrite it as its entry says and send it to
/// the entry's next hop. A FIN or RST marks both directions closing; the time a direction was
/// last seen is refreshed at most once a second, together with the other direction's, so the
/// two entries of a flow age together. Not inlined: it is called from four places, and one
/// copy of its locals on the stack is all the 512-byte BPF stack has room for.
#[inline(never)]
fn established<F: Frame>(
    frame: &F,
    pkt: &Packet,
    key: &FlowKey,
    entry: *mut FlowEntry,
    half_open: bool,
) -> u32 {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return F::PASS;
    }
    if frame.oversized() {
        // A GSO super-packet on generic XDP: it can be neither rewritten correctly (its
        // checksum is partial) nor transmitted as one frame. The kernel gets it untouched.
        count_event(events::OVERSIZED_PASSED);
        return F::PASS;
    }
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a valid map value; fields are read once, and racing writers (other CPUs on the
    // same flow) only store a recent time, the closing flag or the same next hop.
    let flow = unsafe { &mut *entry };
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 && flow.flags & flow_flags::CLOSING == 0;
    if closing || now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_REFRESH_NS {
        flow.last_seen_ns = now;
        if closing {
            flow.flags |= flow_flags::CLOSING;
        }
        let peer = scratch_peer(key, flow).and_then(|peer| table(half_open).get_ptr_mut(peer));
        if let Some(peer) = peer {
            // SAFETY: as above.
            unsafe {
                (*peer).last_seen_ns = now;
                if closing {
                    (*peer).flags |= flow_flags::CLOSING;
                }
            }
        }
    }
    let addr = flow.addr;
    let (end, route) = if flow.direction == direction::TO_BACKEND {
        let route = Route {
            src: &key.src_addr,
            dst: &addr,
            sport: key.src_port,
            dport: flow.port,
        };
        (End::Destination, route)
    } else {
        let route = Route {
            src: &addr,
            dst: &key.dst_addr,
            sport: flow.port,
            dport: key.dst_port,
        };
        (End::Source, route)
    };
    if rewrite(frame, pkt, end, &addr, flow.port).is_none() {
        return F::PASS;
    }
    count_traffic(flow.service_id, flow.backend_id, pkt.ip_len, flow.direction);
    let client = if flow.direction == direction::TO_BACKEND {
        (&key.src_addr, key.src_port)
    } else {
        (&key.dst_addr, key.dst_port)
    };
    trace::record(now, flow.service_id, pkt, client, |event| {
        event.decision = decision::ESTABLISHED;
        event.direction = flow.direction;
        event.backend_id = flow.backend_id;
        event.half_open = half_open as u8;
    });
    send_cached(frame, pkt, &route, flow, now)
}

/// The first packet of a flow to a service: choose a backend (see [`next_backend`]), record both
/// directions of the flow (TCP in `HALF_OPEN` until the handshake completes, UDP in `FLOWS`),
/// rewrite, send. Not inlined, for the stack as `established`.
#[inline(never)]
fn new_flow<F: Frame>(frame: &F, pkt: &Packet, key: &FlowKey, placement: Placement) -> NewFlow {
    let (table_index, avoid) = (placement.table_index(), placement.avoid());
    let (service_id, pool) = table_owner(table_index);
    let replacing = avoid != NO_BACKEND_ID;
    let half_open = pkt.proto == proto::TCP;
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        abandon(replacing, key);
        return NewFlow::Done(F::PASS);
    }
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Admission applies to flows that start here (a SYN, UDP); a TCP packet without SYN
    // belongs to a connection already established (its entry was lost), never limited.
    let starts = pkt.proto != proto::TCP || pkt.tcp_flags & TCP_SYN != 0;
    if !replacing && starts && !passive::admitted(service_id, key, now) {
        count_admission_dropped(service_id);
        trace::record(
            now,
            service_id,
            pkt,
            (&key.src_addr, key.src_port),
            |event| event.decision = decision::ADMISSION_DROPPED,
        );
        return NewFlow::Done(F::DROP);
    }
    let choice = next_backend(table_index, pkt, key, now, avoid);
    let backend = choice.and_then(|c| BACKENDS.get_ptr(c.backend_id));
    let (Some(choice), Some(backend), Some(scratch)) = (choice, backend, scratch()) else {
        count_no_backend(service_id);
        abandon(replacing, key);
        trace::record(
            now,
            service_id,
            pkt,
            (&key.src_addr, key.src_port),
            |event| {
                event.decision = decision::NO_BACKEND;
                event.home_pool = pool as u8;
            },
        );
        return NewFlow::Done(F::DROP);
    };
    let backend_id = choice.backend_id;
    // SAFETY: a valid map value, and this CPU's scratch area.
    let (backend, entry) = unsafe { (&*backend, &mut (*scratch).entry) };
    let route = Route {
        src: &key.src_addr,
        dst: &backend.addr,
        sport: key.src_port,
        dport: backend.port,
    };
    // Resolve the next hop before recording the flow, so the entry is complete when written.
    let hop = resolve(frame, pkt, &route);
    entry.addr = backend.addr;
    entry.port = backend.port;
    entry.direction = direction::TO_BACKEND;
    entry.flags = 0;
    entry.backend_id = backend_id;
    entry.service_id = service_id;
    entry.last_seen_ns = now;
    entry.created_s = (now / 1_000_000_000) as u32;
    entry.hop_ifindex = 0;
    entry.handshake_ack = passive::handshake_ack(frame, pkt);
    entry._pad = 0;
    if let Ok(hop) = &hop {
        hop.store(entry, now);
    }
    let table = table(half_open);
    // A re-placed flow replaces its entry; a new one must not overwrite another CPU's.
    let insert_flags = if replacing { BPF_ANY } else { BPF_NOEXIST };
    if table.insert(key, &*entry, insert_flags as u64).is_err() {
        if replacing {
            abandon(replacing, key);
            count_event(events::FLOW_INSERT_FAILED);
            return NewFlow::Done(F::DROP);
        }
        // Another CPU recorded this flow between our lookup and insert: follow its choice.
        return match table.get_ptr_mut(key) {
            Some(existing) => NewFlow::Raced(existing, half_open),
            None => {
                count_event(events::FLOW_INSERT_FAILED);
                NewFlow::Done(F::DROP)
            }
        };
    }
    // The same entry, turned into the reply direction's.
    let Some(reply_key) = scratch_peer(key, entry) else {
        return NewFlow::Done(F::DROP);
    };
    make_reply(entry, key);
    if table.insert(reply_key, &*entry, BPF_ANY as u64).is_err() {
        let _ = table.remove(key);
        count_event(events::FLOW_INSERT_FAILED);
        return NewFlow::Done(F::DROP);
    }
    count_new_flow(service_id, backend_id);
    if replacing {
        count_event(events::SYN_REPLACED);
    }
    if backend.pool != pool {
        count_spill(table_index);
    }
    trace::record(
        now,
        service_id,
        pkt,
        (&key.src_addr, key.src_port),
        |event| {
            event.decision = if replacing {
                decision::REPLACED
            } else if choice.hashed {
                decision::NEW_HASHED
            } else {
                decision::NEW_ROUND_ROBIN
            };
            event.backend_id = backend_id;
            event.slot = choice.slot;
            event.skipped = choice.skipped;
            event.home_pool = pool as u8;
            event.backend_pool = backend.pool as u8;
            event.half_open = half_open as u8;
        },
    );
    if rewrite(frame, pkt, End::Destination, &backend.addr, backend.port).is_none() {
        return NewFlow::Done(F::PASS);
    }
    count_traffic(service_id, backend_id, pkt.ip_len, direction::TO_BACKEND);
    NewFlow::Done(match hop {
        Ok(hop) => send(frame, pkt, &hop),
        Err(verdict) => verdict,
    })
}

/// A re-placement that cannot complete leaves the flow without entries (its reply entry is
/// already gone), so the client's next retransmission starts it anew rather than following a
/// forward entry to the backend it was to avoid.
#[inline(always)]
fn abandon(replacing: bool, key: &FlowKey) {
    if replacing {
        let _ = HALF_OPEN.remove(key);
    }
}

/// A new flow's backend and how it was chosen.
#[derive(Clone, Copy)]
struct Choice {
    backend_id: u32,
    /// The table's slot it was taken from.
    slot: u16,
    /// Chosen by hash (the handshake guard), not round robin.
    hashed: bool,
    /// Slots of suspect (or avoided) backends passed over to reach `slot`.
    skipped: u8,
}

/// The backend a new flow gets from a table: the next slot by round robin, advancing the
/// table's cursor atomically so that concurrent new flows on different CPUs take different
/// slots; or, for a TCP flow the handshake guard places by hash, the slot its 5-tuple hashes
/// to. Every placement passes over the slots of suspect backends and of `avoid` to the next
/// one, up to `MAX_SKIPS` slots (then it keeps its first slot): a TCP packet without SYN is
/// placed as its SYN was (by the same hash, past the same marks), so it finds the backend its
/// SYN got while the marks stay as they were.
#[inline(always)]
fn next_backend(
    table_index: u32,
    pkt: &Packet,
    key: &FlowKey,
    now: u64,
    avoid: u32,
) -> Option<Choice> {
    let table = BACKEND_TABLES.get_value(table_index, &0)?;
    let len = table.len as usize;
    // (No upper bound on `len` here: LLVM would use it to drop the slot checks below, which
    // the verifier needs.)
    if len == 0 {
        return None;
    }
    let seed = hash_seed(pkt, now);
    let turn = match seed {
        Some(seed) => flow_hash(key, seed) as u64,
        None => {
            let cursor = RR_CURSORS.get_ptr_mut(table_index)?;
            // SAFETY: the cursor is a valid, 8-byte aligned u64 in an array map shared by all
            // CPUs. `core::sync::atomic` offers no fetch_add on BPF (the target has no
            // compare-and-swap), so the intrinsic is used directly. It must be SeqCst: with
            // Relaxed, LLVM 22 selects the non-fetching BPF_ADD and then uses the register as
            // if it held the old value, so every flow would get the same slot. SeqCst yields
            // BPF_ADD | BPF_FETCH (`lock xadd` on x86), which is what the kernel runs for any
            // fetching atomic anyway. Packet tests check that consecutive flows take
            // consecutive slots.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) }
        }
    };
    let first = (turn % len as u64) as usize;
    let mut slot = first;
    let mut skipped = 0;
    {
        while skipped < MAX_SKIPS {
            if slot >= MAX_TABLE_SLOTS {
                return None;
            }
            let id = table.slots[slot];
            if id != avoid && !passive::suspect(id, now) {
                break;
            }
            slot = if slot + 1 >= len { 0 } else { slot + 1 };
            skipped += 1;
        }
        if skipped == MAX_SKIPS {
            (slot, skipped) = (first, 0);
        } else if skipped > 0 {
            count_event(events::SUSPECT_SKIPPED);
        }
    }
    if slot >= MAX_TABLE_SLOTS {
        return None;
    }
    Some(Choice {
        backend_id: table.slots[slot],
        slot: slot as u16,
        hashed: seed.is_some(),
        skipped: skipped as u8,
    })
}

/// The handshake guard's decision for a new flow (see `HANDSHAKE_GUARD`), counting the flow in
/// the current window: `Some(seed)` if its backend is chosen by hash — a TCP packet without
/// SYN (its handshake's entry is gone), or a SYN in a window that has seen more new TCP flows
/// than the budget, or that follows such a window — `None` for round robin.
#[inline(always)]
fn hash_seed(pkt: &Packet, now: u64) -> Option<u32> {
    if pkt.proto != proto::TCP {
        return None;
    }
    let guard = HANDSHAKE_GUARD.get_ptr_mut(0)?;
    // SAFETY: the guard's single element, shared by all CPUs, used through raw pointers only:
    // the fields several CPUs write (window start, count) change atomically, and `flooded` is
    // written only by the CPU that restarted the window. `budget` and `seed` are written by
    // userspace before the program is attached.
    unsafe {
        let start_ptr = addr_of_mut!((*guard).window_start_ns);
        let flows_ptr = addr_of_mut!((*guard).window_flows);
        // A plain aligned 8-byte load (BPF has no atomic load instruction; this is one).
        let start = read_volatile(start_ptr);
        // Signed: another CPU may have restarted the window after this packet read the clock.
        let elapsed = now.wrapping_sub(start) as i64;
        if window_ended(elapsed) {
            // One CPU restarts the window: the one whose compare-and-swap moves its start.
            let (_, restarted) =
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    start_ptr, start, now,
                );
            if restarted {
                let ended = atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(flows_ptr, 0);
                (*guard).flooded = starts_flooded(elapsed, ended, (*guard).budget) as u32;
            }
        }
        // See `next_backend` for the ordering.
        let flows = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(flows_ptr, 1);
        if pkt.tcp_flags & TCP_SYN == 0 {
            count_event(events::MIDSTREAM_HASHED);
            return Some((*guard).seed);
        }
        if hashes_syn(flows, (*guard).budget, (*guard).flooded != 0) {
            count_event(events::SYN_HASHED);
            return Some((*guard).seed);
        }
    }
    None
}
