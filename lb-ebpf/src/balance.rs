//! The balancer's decisions: does this packet belong to a flow, or is it the first packet of a
//! new flow to a service (whose backend `choose` picks); and what gets counted.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    btf_maps::lpm_trie::Key,
    helpers::bpf_ktime_get_coarse_ns,
};
use lb_common::{
    ClientPrefix, FlowEntry, FlowKey, ServiceEntry, ServiceKey,
    consts::{events, flow_flags, forwarding, proto, scheduler, timing::LAST_SEEN_REFRESH_NS},
    direction,
    tables::{table_index, table_owner},
    trace::{NO_BACKEND_ID, decision},
};

use crate::{
    choose,
    counters::{
        count_admission_dropped, count_new_flow, count_no_backend, count_spill, count_traffic,
    },
    flows::{Retransmission, make_reply, promote, retransmitted_syn, scratch_peer, table},
    forward::{Route, resolve, send, send_cached},
    frame::Frame,
    icmp,
    maps::{BACKENDS, CLIENT_POOLS, FLOWS, HALF_OPEN, SERVICES, count_event},
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
    let placement = Placement::new(table_index(service.id, pool), avoid, &service);
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
/// words into two): the table of the service and home pool (low 24 bits), the service's
/// scheduler and forwarding (the next two bytes, as in `ServiceEntry`), and for a
/// retransmitted SYN its backend never answered, that backend (whose flow entries are
/// replaced), else `NO_BACKEND_ID` (the flow is new, and must be admitted).
#[derive(Clone, Copy)]
struct Placement(u64);

/// Bits of [`Placement`] that hold the table index (`MAX_TABLES` is 2^17).
const TABLE_INDEX_BITS: u64 = (1 << 24) - 1;

impl Placement {
    #[inline(always)]
    fn new(table_index: u32, avoid: u32, service: &ServiceEntry) -> Self {
        Self(
            u64::from(avoid) << 32
                | u64::from(service.forwarding) << 28
                | u64::from(service.scheduler & 0xf) << 24
                | u64::from(table_index) & TABLE_INDEX_BITS,
        )
    }

    #[inline(always)]
    fn table_index(self) -> u32 {
        (self.0 & TABLE_INDEX_BITS) as u32
    }

    #[inline(always)]
    fn maglev(self) -> bool {
        (self.0 >> 24) as u8 & 0xf == scheduler::MAGLEV
    }

    #[inline(always)]
    fn dsr(self) -> bool {
        (self.0 >> 28) as u8 & 0xf == forwarding::DSR
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
    let dsr = flow.flags & flow_flags::DSR != 0;
    let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 && flow.flags & flow_flags::CLOSING == 0;
    if closing || now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_REFRESH_NS {
        flow.last_seen_ns = now;
        if closing {
            flow.flags |= flow_flags::CLOSING;
        }
        // (A DSR flow has no reply entry: its backend answers the client directly.)
        let peer = match dsr {
            true => None,
            false => scratch_peer(key, flow).and_then(|peer| table(half_open).get_ptr_mut(peer)),
        };
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
            dsr,
        };
        (End::Destination, route)
    } else {
        let route = Route {
            src: &addr,
            dst: &key.dst_addr,
            sport: flow.port,
            dport: key.dst_port,
            dsr,
        };
        (End::Source, route)
    };
    if !dsr && rewrite(frame, pkt, end, &addr, flow.port).is_none() {
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
    let choice = if placement.maglev() {
        choose::maglev(table_index, pkt, key, now, avoid)
    } else {
        choose::round_robin(table_index, pkt, key, now, avoid)
    };
    let dsr = placement.dsr();
    let backend = match choice.none {
        true => None,
        false => BACKENDS.get_ptr(choice.backend_id),
    };
    let (Some(backend), Some(scratch)) = (backend, scratch()) else {
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
    // (With DSR the backend's port is the service's: configuration makes sure of it.)
    let route = Route {
        src: &key.src_addr,
        dst: &backend.addr,
        sport: key.src_port,
        dport: backend.port,
        dsr,
    };
    // Resolve the next hop before recording the flow, so the entry is complete when written.
    let hop = resolve(frame, pkt, &route);
    entry.addr = backend.addr;
    entry.port = backend.port;
    entry.direction = direction::TO_BACKEND;
    entry.flags = if dsr { flow_flags::DSR } else { 0 };
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
    // The same entry, turned into the reply direction's (none with DSR: the backend answers
    // the client directly).
    if !dsr {
        let Some(reply_key) = scratch_peer(key, entry) else {
            return NewFlow::Done(F::DROP);
        };
        make_reply(entry, key);
        if table.insert(reply_key, &*entry, BPF_ANY as u64).is_err() {
            let _ = table.remove(key);
            count_event(events::FLOW_INSERT_FAILED);
            return NewFlow::Done(F::DROP);
        }
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
            } else if placement.maglev() {
                decision::NEW_MAGLEV
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
    if !dsr && rewrite(frame, pkt, End::Destination, &backend.addr, backend.port).is_none() {
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
