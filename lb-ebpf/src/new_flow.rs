//! The first packet of a new flow to a service, which `balance` recorded as a [`Placement`]:
//! its backend chosen (see `choose`), the flow recorded (one entry for both directions), the
//! packet rewritten and sent (see [`new_flow`]).

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    BackendEntry, FlowAddr, FlowEntry, Hop, ServiceEntry, backend_flags,
    consts::{events, flow_flags, forwarding, proto, scheduler, tcp_flags},
    csum, direction, epoch,
    share::flow_event,
    tables::table_owner,
    trace::{NO_BACKEND_ID, decision},
};

use crate::{
    choose::{self, Choice},
    clock,
    counters::{
        count_active, count_admission_dropped, count_new_flow, count_no_backend, count_spill,
        count_traffic,
    },
    family::Family,
    flows::table,
    forward::{Route, arrival_hop, backend_hop, transmit},
    frame::Frame,
    maps::{BACKENDS, count_event},
    nat::{Deltas, End, Rewrite, rewrite_unless_dsr},
    packet::Packet,
    passive, persist,
    reply::record_reply_vip,
    scratch::scratch,
    share, trace,
};

/// Where a new flow is placed, in one 64-bit argument (a BPF function takes at most five
/// arguments in registers, the result's pointer among them, and LLVM splits a struct of two
/// words into two): the table of the service and home pool (low 24 bits), the service's
/// scheduler and forwarding (the next two bytes, as in `ServiceEntry`), and for a
/// retransmitted SYN its backend never answered, that backend (whose flow entries are
/// replaced), else `NO_BACKEND_ID` (the flow is new, and must be admitted).
#[derive(Clone, Copy)]
pub struct Placement(pub u64);

/// The flow flags of each forwarding (`consts::forwarding`), a byte each, by its value.
const FORWARDING_FLAGS: u32 = (flow_flags::DSR as u32) << (8 * forwarding::DSR)
    | ((flow_flags::DSR | flow_flags::IPIP) as u32) << (8 * forwarding::IPIP)
    | ((flow_flags::DSR | flow_flags::GUE) as u32) << (8 * forwarding::GUE);
const _: () = assert!(forwarding::NAT == 0 && forwarding::GUE == 3);

/// Bits of [`Placement`] that hold the table index (`MAX_TABLES` is 2^17).
const TABLE_INDEX_BITS: u64 = (1 << 24) - 1;

impl Placement {
    /// The placement of a flow to `service`, in its table `table_index`, away from `avoid`.
    #[inline(always)]
    pub fn new(table_index: u32, avoid: u32, service: &ServiceEntry) -> Self {
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
    fn forwarding(self) -> u8 {
        (self.0 >> 28) as u8 & 0xf
    }

    /// Direct server return, at layer 2 or through a tunnel: the backend answers the client.
    #[inline(always)]
    fn dsr(self) -> bool {
        self.forwarding() != forwarding::NAT
    }

    /// The flags of the flow's entry that say how its packets reach the backend: none for
    /// NAT, `DSR`, `DSR | IPIP` or `DSR | GUE`. Read from a constant by shifts, not chosen by
    /// branches, so that the verifier walks the rest of a new flow once, not once per kind.
    #[inline(always)]
    fn forwarding_flags(self) -> u8 {
        (FORWARDING_FLAGS >> (u32::from(self.forwarding() & 3) * 8)) as u8
    }

    #[inline(always)]
    fn avoid(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The same placement, away from backend `avoid` (a retransmitted SYN's, whose backend
    /// never answered).
    #[inline(always)]
    pub fn avoiding(self, avoid: u32) -> Self {
        Self(self.0 & u64::from(u32::MAX) | u64::from(avoid) << 32)
    }

    /// A retransmitted SYN's flow, re-placed away from [`Self::avoid`].
    #[inline(always)]
    pub fn replacing(self) -> bool {
        self.avoid() != NO_BACKEND_ID
    }

    /// The service and home pool whose table this is.
    #[inline(always)]
    pub fn owner(self) -> (u32, u32) {
        table_owner(self.table_index())
    }
}

/// What became of a new flow's first packet. It is returned through the caller's stack, where
/// the verifier knows a value stored in an 8-byte slot only until something else is written to
/// the slot: with `repr(C, u8)` the tag is alone in the first slot and the fields start in the
/// next, so the caller's `match` knows which variant `new_flow` returned whatever order LLVM
/// writes them in, and never follows `Raced` with a `Done`'s bytes. Two slots, no more (the
/// half-open flag is the packet's protocol): the tc program's stack is at its limit.
#[repr(C, u8)]
pub enum NewFlow<A: FlowAddr> {
    /// Handled, with this verdict.
    Done(u32),
    /// Another CPU recorded the flow first: the packet follows that entry (in the half-open
    /// table if the packet is TCP). Returned rather than handled inside `new_flow`, so that
    /// the two functions' stack frames are never on the stack at once.
    Raced(*mut FlowEntry<A>),
}

/// The first packet of a flow to a service: choose a backend (see `choose`), record the flow
/// (TCP in the half-open table until the handshake completes, UDP in the established one),
/// rewrite, send. Not inlined, for the stack as `established`; its steps
/// are inlined.
#[inline(never)]
pub fn new_flow<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    key: &Fam::Key,
    placement: Placement,
) -> NewFlow<Fam::Addr> {
    let replacing = placement.replacing();
    let half_open = pkt.proto == proto::TCP;
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        abandon::<Fam>(replacing, key);
        return NewFlow::Done(F::PASS);
    }
    let now = clock::now();
    if !replacing && admission_drops::<Fam>(pkt, key, placement.owner().0, now) {
        return NewFlow::Done(F::DROP);
    }
    let choice = choose_backend(placement, pkt, now);
    let (Some(backend), Some(scratch)) = (chosen_backend(&choice), scratch()) else {
        // A SYN the client retransmitted keeps its half-open flow's backend, as any packet of
        // a flow keeps its backend when the table has none left.
        if let Some(existing) = retransmitted::<Fam>(pkt, key, replacing) {
            return NewFlow::Raced(existing);
        }
        no_backend::<Fam>(pkt, key, placement, now);
        return NewFlow::Done(F::DROP);
    };
    // SAFETY: a valid map value, and this CPU's scratch area.
    let (backend, entry) = unsafe { (&*backend, &mut *Fam::areas(scratch).entry) };
    let chosen = Chosen {
        placement,
        choice,
        backend,
        half_open,
        replacing,
        now,
    };
    // (With DSR the backend's port is the service's: configuration makes sure of it.)
    let route = Route {
        src: &pkt.src,
        dst: &backend.addr,
        sport: pkt.sport,
        dport: backend.port,
        dsr: placement.dsr(),
    };
    // The next hop before the flow is recorded, so the entry is complete when written.
    let hop = backend_hop(frame, pkt, &route, chosen.choice.backend_id, now);
    let deltas = Deltas {
        addr: Fam::Addr::csum_delta(
            Fam::Addr::in_addr(&pkt.dst),
            Fam::Addr::in_addr(&backend.addr),
        ),
        port: csum::delta16(pkt.dport, backend.port),
    };
    fill_entry::<F, Fam>(frame, pkt, &chosen, deltas, entry);
    if let Ok(hop) = &hop {
        entry.to_backend = *hop;
    }
    // (A DSR flow's backend answers the client directly.)
    if !placement.dsr()
        && let Some(back) = arrival_hop(frame)
    {
        entry.to_client = back;
    }
    if let Err(outcome) = record::<F, Fam>(key, entry, &chosen) {
        return outcome;
    }
    // SAFETY: this CPU's scratch area (see `persist::remember`).
    unsafe { (*scratch).placed = chosen.choice.backend_id };
    if entry.flags & flow_flags::LOCATED != 0 && !record_reply_vip::<Fam>(scratch, key, entry) {
        count_event(events::FLOW_INSERT_FAILED);
    }
    count_placed(&chosen);
    trace_placed(pkt, &chosen);
    NewFlow::Done(send_first::<F, Fam>(frame, pkt, &chosen, deltas, hop))
}

/// A new flow whose backend is chosen: what its entries, its counters and its trace say.
struct Chosen<'a> {
    /// Where the flow goes: its service's table, scheduler and forwarding, and the backend a
    /// re-placed flow avoids.
    placement: Placement,
    /// The backend, and how it was chosen.
    choice: Choice,
    /// The backend's entry (`BACKENDS`).
    backend: &'a BackendEntry,
    /// A TCP flow, recorded in the half-open table until its handshake completes.
    half_open: bool,
    /// A retransmitted SYN's flow, re-placed (see [`Placement::replacing`]).
    replacing: bool,
    /// The coarse clock when the first packet came.
    now: u64,
}

/// How many times a prefix's admission burst a TCP packet without SYN that makes an entry may
/// use (see [`admission_drops`]).
const MIDSTREAM_BURST: u64 = 4;

/// Whether the client's prefix limit drops this first packet (see `passive::admitted`), which
/// is then counted and traced. A TCP packet without SYN that makes an entry (its connection's
/// entry was lost, or it went through another instance) is held to the limit too, with
/// [`MIDSTREAM_BURST`] times its burst: a flood of them from one prefix would otherwise take
/// two entries per packet and reach the backends at full rate, while the connections an
/// instance takes over after a failure come in a burst of their own. A SYN the client
/// retransmitted (its flow, stored under `key`, is half-open) is not dropped: it is no new
/// flow, and finds its entry when it is recorded (see `record`).
#[inline(always)]
fn admission_drops<Fam: Family>(pkt: &Packet, key: &Fam::Key, service_id: u32, now: u64) -> bool {
    let syn = pkt.proto == proto::TCP && pkt.tcp_flags & tcp_flags::SYN != 0;
    let starts = pkt.proto != proto::TCP || syn;
    let burst = if starts { 1 } else { MIDSTREAM_BURST };
    if passive::admitted(service_id, &pkt.src, now, burst) {
        return false;
    }
    if syn && Fam::half_open().get_ptr(key).is_some() {
        return false;
    }
    count_admission_dropped(service_id);
    trace::record(now, service_id, pkt, (&pkt.src, pkt.sport), |event| {
        event.decision = decision::ADMISSION_DROPPED
    });
    true
}

/// The backend the flow gets: the one its client persists on (see `persist`), or else from
/// its table, by the service's scheduler (Maglev or round robin), past suspect backends and
/// the one a re-placed flow avoids.
#[inline(always)]
fn choose_backend(placement: Placement, pkt: &Packet, now: u64) -> Choice {
    let (table_index, avoid) = (placement.table_index(), placement.avoid());
    let choice = if placement.maglev() {
        choose::maglev(table_index, pkt, now, avoid)
    } else {
        choose::round_robin(table_index, pkt, now, avoid)
    };
    persist::over(choice, pkt.sticky.get(), avoid)
}

/// The entry of the chosen backend (`BACKENDS`); `None` if there is none.
#[inline(always)]
fn chosen_backend(choice: &Choice) -> Option<*const BackendEntry> {
    match choice.none {
        true => None,
        false => BACKENDS.get_ptr(choice.backend_id),
    }
}

/// The half-open entry of a flow whose SYN the client retransmitted (stored under `key`), for a
/// packet that could not be placed: a new flow's first packet (not a re-placement) pays for
/// this lookup only then, as its entry's insert finds retransmissions otherwise.
#[inline(always)]
fn retransmitted<Fam: Family>(
    pkt: &Packet,
    key: &Fam::Key,
    replacing: bool,
) -> Option<*mut FlowEntry<Fam::Addr>> {
    if replacing || pkt.proto != proto::TCP || pkt.tcp_flags & tcp_flags::SYN == 0 {
        return None;
    }
    Fam::half_open().get_ptr_mut(key)
}

/// No backend can take the flow: counted, traced, and a re-placed flow abandoned.
#[inline(always)]
fn no_backend<Fam: Family>(pkt: &Packet, key: &Fam::Key, placement: Placement, now: u64) {
    let (service_id, pool) = placement.owner();
    count_no_backend(service_id);
    abandon::<Fam>(placement.replacing(), key);
    trace::record(now, service_id, pkt, (&pkt.src, pkt.sport), |event| {
        event.decision = decision::NO_BACKEND;
        event.home_pool = pool as u8;
    });
}

/// Fills `entry` (this CPU's scratch area) as the new flow's entry: the backend's address and
/// port and the checksum `deltas` of the rewrite to them, the flow's ids and times, no next
/// hops yet.
#[inline(always)]
fn fill_entry<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    chosen: &Chosen,
    deltas: Deltas,
    entry: &mut FlowEntry<Fam::Addr>,
) {
    let (backend, now) = (chosen.backend, chosen.now);
    let current = epoch(now);
    entry.last_seen_ns = now;
    entry.addr = *Fam::Addr::in_addr(&backend.addr);
    entry.port = backend.port;
    entry.flags = if chosen.placement.dsr() {
        chosen.placement.forwarding_flags()
    } else if backend.flags & backend_flags::SHARED != 0 {
        flow_flags::LOCATED
    } else {
        0
    };
    entry.backend_id = chosen.choice.backend_id;
    entry.service_id = chosen.placement.owner().0;
    entry.csum_addr = deltas.addr;
    entry.csum_port = deltas.port;
    entry._pad = 0;
    entry.to_backend = Hop::default();
    entry.to_client = Hop::default();
    // A UDP flow is active from its first packet; a TCP flow from its first packet once
    // established (an epoch that cannot be the current one makes that packet count it).
    entry.epoch = if chosen.half_open {
        (current as u16).wrapping_sub(1)
    } else {
        current as u16
    };
    entry._pad2 = 0;
    entry.created_s = (now / 1_000_000_000) as u32;
    entry.handshake_ack = passive::handshake_ack(frame, pkt);
    entry._tail = Default::default();
}

/// Records the flow under `key` (`entry`). A re-placed flow replaces its entry; a new one
/// must not overwrite another CPU's. `Err`: what became of the packet when the flow could not
/// be recorded.
#[inline(always)]
fn record<F: Frame, Fam: Family>(
    key: &Fam::Key,
    entry: &mut FlowEntry<Fam::Addr>,
    chosen: &Chosen,
) -> Result<(), NewFlow<Fam::Addr>> {
    let (replacing, half_open) = (chosen.replacing, chosen.half_open);
    let table = table::<Fam>(half_open);
    let insert_flags = if replacing { BPF_ANY } else { BPF_NOEXIST };
    if table.insert(key, &*entry, insert_flags as u64).is_ok() {
        if !half_open {
            share::tell::<Fam>(key, entry, flow_event::OPENED);
        }
        return Ok(());
    }
    if replacing {
        abandon::<Fam>(replacing, key);
        count_event(events::FLOW_INSERT_FAILED);
        return Err(NewFlow::Done(F::DROP));
    }
    // Another CPU recorded this flow between our lookup and insert: follow its choice.
    Err(match table.get_ptr_mut(key) {
        Some(existing) => NewFlow::Raced(existing),
        None => {
            count_event(events::FLOW_INSERT_FAILED);
            NewFlow::Done(F::DROP)
        }
    })
}

/// Counts the new flow: for its service and backend, as active (UDP; TCP once established),
/// as a re-placement, and as a spill if the backend is outside the flow's home pool.
#[inline(always)]
fn count_placed(chosen: &Chosen) {
    let (service_id, pool) = chosen.placement.owner();
    let backend_id = chosen.choice.backend_id;
    count_new_flow(service_id, backend_id);
    if !chosen.half_open {
        count_active(backend_id, epoch(chosen.now));
    }
    if chosen.replacing {
        count_event(events::SYN_REPLACED);
    }
    if chosen.backend.pool != pool {
        count_spill(chosen.placement.table_index());
    }
}

/// Traces the new flow's placement: how its backend was chosen, and from which pool.
#[inline(always)]
fn trace_placed(pkt: &Packet, chosen: &Chosen) {
    let (service_id, pool) = chosen.placement.owner();
    let (placement, choice) = (chosen.placement, chosen.choice);
    let client = (&pkt.src, pkt.sport);
    trace::record(chosen.now, service_id, pkt, client, |event| {
        event.decision = if chosen.replacing {
            decision::REPLACED
        } else if choice.slot == persist::PERSISTED_SLOT {
            decision::PERSISTED
        } else if placement.maglev() {
            decision::NEW_MAGLEV
        } else if choice.hashed {
            decision::NEW_HASHED
        } else {
            decision::NEW_ROUND_ROBIN
        };
        event.backend_id = choice.backend_id;
        event.slot = choice.slot;
        event.skipped = choice.skipped;
        event.home_pool = pool as u8;
        event.backend_pool = chosen.backend.pool as u8;
        event.half_open = chosen.half_open as u8;
    });
}

/// Rewrites the first packet toward the backend (with DSR, only its TTL) and sends it to `hop`,
/// or returns the verdict that gives it to the kernel (or drops it) when the next hop is not
/// resolved.
#[inline(always)]
fn send_first<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    chosen: &Chosen,
    deltas: Deltas,
    hop: Result<Hop, u32>,
) -> u32 {
    let backend = chosen.backend;
    let rewrite = Rewrite {
        end: End::Destination,
        addr: Fam::Addr::in_addr(&backend.addr),
        port: backend.port,
        deltas,
        ttl: hop.is_ok(),
    };
    if rewrite_unless_dsr::<F, Fam>(frame, pkt, chosen.placement.dsr(), &rewrite).is_none() {
        return F::PASS;
    }
    let (service_id, _) = chosen.placement.owner();
    count_traffic(
        service_id,
        chosen.choice.backend_id,
        pkt.ip_len,
        direction::TO_BACKEND,
    );
    match hop {
        Ok(hop) => transmit(frame, &hop),
        Err(verdict) => verdict,
    }
}

/// A re-placement that cannot complete leaves the flow without an entry (the claim removed
/// it), so the client's next retransmission starts it anew rather than following an entry to
/// the backend it was to avoid.
#[inline(always)]
fn abandon<Fam: Family>(replacing: bool, key: &Fam::Key) {
    if replacing {
        let _ = Fam::half_open().remove(key);
    }
}
