//! Passive health and admission (`lb_common::passive`): a backend that refuses handshakes, or
//! leaves them unanswered, is marked suspect and new flows skip it until the mark ends or the
//! daemon clears it; a client prefix's new flows are held to its service's rate. Only the
//! backend's answers to half-open flows and new flows pay for any of it.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg},
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    Addr, FlowAddr, FlowEntry,
    consts::{events, flow_flags, tcp_flags},
    passive::{
        AdmissionKey, MAX_SUSPECTS, PassiveEvent, PassiveMark, ServicePolicy, admit, is_suspect,
        passive_event, reaches_threshold, slot_free, window_over,
    },
};

use crate::{
    counters::count_both,
    frame::{Frame, ptr_at},
    maps::{
        ADMISSION, PASSIVE_EVENTS, PASSIVE_MARKS, SERVICE_POLICIES, SUSPECT_SLOTS, count_event,
    },
    packet::Packet,
};

/// Low bits of a suspect slot that hold the backend id (the rest: the mark's end).
const SLOT_ID_BITS: u64 = 0xffff;

/// What a backend did to a handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered the SYN with a RST.
    Refused,
    /// Did not answer before the client retransmitted the SYN.
    Unanswered,
}

/// Whether a backend is suspect at `now`: new flows skip it.
#[inline(always)]
pub fn suspect(backend_id: u32, now: u64) -> bool {
    PASSIVE_MARKS
        .get(backend_id)
        .is_some_and(|mark| is_suspect(mark.suspect_until_ns, now))
}

/// Whether the service counts unanswered handshakes (and so re-places retransmitted SYNs).
#[inline(always)]
pub fn counts_unanswered(service_id: u32) -> bool {
    SERVICE_POLICIES
        .get(service_id)
        .is_some_and(|policy| policy.unanswered != 0)
}

/// The acknowledgement number a backend's answer to this SYN carries: its sequence number
/// plus one (0 if the header cannot be read, which no RST matches by chance only rarely).
#[inline(always)]
pub fn handshake_ack<F: Frame>(frame: &F, pkt: &Packet) -> u32 {
    if pkt.tcp_flags & tcp_flags::SYN == 0 {
        return 0;
    }
    match ptr_at::<F, [u8; 8]>(frame, pkt.l4()) {
        Some(header) => {
            // SAFETY: ptr_at checked that the first 8 bytes of the TCP header lie in the frame.
            let header = unsafe { &*header };
            u32::from_be_bytes([header[4], header[5], header[6], header[7]]).wrapping_add(1)
        }
        None => 0,
    }
}

/// A backend's packet on a half-open flow (its entry `entry`): a SYN-ACK marks the flow
/// answered; a RST that acknowledges exactly the client's SYN, before any answer, is a
/// refused handshake. Only a backend's packets get here (`reply` found their flow), and a RST
/// with another acknowledgement number counts for nothing.
#[inline(always)]
pub fn backend_answer<F: Frame, A: FlowAddr>(
    frame: &F,
    pkt: &Packet,
    entry: *mut FlowEntry<A>,
    now: u64,
) {
    // SAFETY: a valid map value; the flag is only ever set, by this function.
    let flow = unsafe { &mut *entry };
    if flow.flags & flow_flags::ANSWERED != 0 {
        return;
    }
    if pkt.tcp_flags & tcp_flags::RST == 0 {
        if pkt.tcp_flags & tcp_flags::SYN != 0 {
            flow.flags |= flow_flags::ANSWERED;
        }
        return;
    }
    if pkt.tcp_flags & tcp_flags::ACK == 0 || flow.handshake_ack == 0 {
        return;
    }
    let Some(header) = ptr_at::<F, [u8; 12]>(frame, pkt.l4()) else {
        return;
    };
    // SAFETY: ptr_at checked that the first 12 bytes of the TCP header lie in the frame.
    let header = unsafe { &*header };
    let ack = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    if ack != flow.handshake_ack {
        return;
    }
    flow.flags |= flow_flags::ANSWERED;
    observe(flow.service_id, flow.backend_id, Kind::Refused, now);
}

/// Counts a refused or unanswered handshake of `backend_id` (service `service_id`) in its
/// window and, when that reaches the service's threshold, marks the backend suspect for the
/// service's hold time if the service's share cap leaves a slot; tells the daemon either way.
/// Not inlined: two callers, and its locals stay off their stack frames; its steps are inlined.
#[inline(never)]
pub fn observe(service_id: u32, backend_id: u32, kind: Kind, now: u64) {
    let Some(policy) = SERVICE_POLICIES.get(service_id) else {
        return;
    };
    if threshold(policy, kind) == 0 {
        return;
    }
    let Some(mark) = PASSIVE_MARKS.get_ptr_mut(backend_id) else {
        return;
    };
    count_observed(service_id, backend_id, kind);
    // SAFETY: the backend's element, shared by all CPUs and written by the daemon only when it
    // clears the mark (and so in the blocks below).
    let (refused, unanswered) = unsafe { count_in_window(mark, kind, policy.window_ns, now) };
    // SAFETY: as above.
    let Some((current, until)) = (unsafe { set_mark(mark, policy, refused, unanswered, now) })
    else {
        return;
    };
    let marked = take_slot(service_id, backend_id, policy.max_suspects, until, now);
    let event = if marked {
        count_event(events::SUSPECT_MARKED);
        passive_event::MARKED
    } else {
        // The share is full: the mark is taken back.
        // SAFETY: as above; the mark is one aligned word.
        unsafe {
            atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(
                addr_of_mut!((*mark).suspect_until_ns),
                current,
            )
        };
        count_event(events::SUSPECT_CAPPED);
        if !crossed(policy, kind, refused, unanswered) {
            return;
        }
        passive_event::CAPPED
    };
    tell_daemon(|| PassiveEvent {
        time_ns: now,
        // SAFETY: as above; the window's start is one aligned word.
        window_start_ns: unsafe { read_volatile(addr_of_mut!((*mark).window_start_ns)) },
        until_ns: if marked { until } else { 0 },
        backend_id,
        service_id,
        refused,
        unanswered,
        kind: event,
        _pad: [0; 7],
    });
}

/// The service's threshold for handshakes of `kind` within a window: as many make a backend
/// suspect; 0: they are not counted.
#[inline(always)]
fn threshold(policy: &ServicePolicy, kind: Kind) -> u16 {
    if kind == Kind::Refused {
        policy.refused
    } else {
        policy.unanswered
    }
}

/// Whether the window's counts are the ones that crossed the service's threshold for `kind`:
/// the daemon is told of a capped mark once per crossing, not for every handshake after it.
#[inline(always)]
fn crossed(policy: &ServicePolicy, kind: Kind, refused: u32, unanswered: u32) -> bool {
    let count = if kind == Kind::Refused {
        refused
    } else {
        unanswered
    };
    count == u32::from(threshold(policy, kind))
}

/// Counts a handshake of `kind` for the backend and its service, and as an event.
#[inline(always)]
fn count_observed(service_id: u32, backend_id: u32, kind: Kind) {
    if kind == Kind::Refused {
        count_event(events::PASSIVE_REFUSED);
        count_both(service_id, backend_id, |c| c.refused += 1);
    } else {
        count_event(events::PASSIVE_UNANSWERED);
        count_both(service_id, backend_id, |c| c.unanswered += 1);
    }
}

/// Counts a handshake of `kind` in the backend's window (`mark`), which starts anew first if
/// it is over (longer than `window_ns` at `now`): the window's refused and unanswered counts,
/// this one included.
///
/// # Safety
///
/// `mark` is the backend's element of `PASSIVE_MARKS` (see [`observe`]).
#[inline(always)]
unsafe fn count_in_window(
    mark: *mut PassiveMark,
    kind: Kind,
    window_ns: u64,
    now: u64,
) -> (u32, u32) {
    // SAFETY: the caller's element; the window restarts by compare-and-swap of its start (one
    // CPU restarts it), the counts change atomically.
    unsafe {
        let start_ptr = addr_of_mut!((*mark).window_start_ns);
        let refused_ptr = addr_of_mut!((*mark).refused);
        let unanswered_ptr = addr_of_mut!((*mark).unanswered);
        let start = read_volatile(start_ptr);
        if window_over(now, start, window_ns) {
            let (_, restarted) =
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    start_ptr, start, now,
                );
            if restarted {
                atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(refused_ptr, 0);
                atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(unanswered_ptr, 0);
            }
        }
        // Fetching adds, SeqCst: see `choose::round_robin` for why.
        if kind == Kind::Refused {
            let before = atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(refused_ptr, 1);
            (before + 1, read_volatile(unanswered_ptr))
        } else {
            let before = atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(unanswered_ptr, 1);
            (read_volatile(refused_ptr), before + 1)
        }
    }
}

/// Marks the backend suspect (`mark`) for the service's hold time if its window's counts
/// reach the service's threshold, unless it is suspect already or the service's share allows
/// no suspect (one backend: it only counts). By compare-and-swap, so that one CPU marks a
/// backend; and before its slot is taken, so that a slot is never seen taken while its
/// backend's mark is not yet written (which would read as a mark the daemon cleared, and free
/// the slot for another backend). Returns the mark replaced and the new one (whose low bits are
/// left for the backend id in the service's slot); `None`: no mark, or another CPU changed it
/// first.
///
/// # Safety
///
/// `mark` is the backend's element of `PASSIVE_MARKS` (see [`observe`]).
#[inline(always)]
unsafe fn set_mark(
    mark: *mut PassiveMark,
    policy: &ServicePolicy,
    refused: u32,
    unanswered: u32,
    now: u64,
) -> Option<(u64, u64)> {
    // SAFETY: the caller's element; the mark is one aligned word.
    unsafe {
        let mark_ptr = addr_of_mut!((*mark).suspect_until_ns);
        let current = read_volatile(mark_ptr);
        if policy.max_suspects == 0
            || !reaches_threshold(policy, refused, unanswered)
            || is_suspect(current, now)
        {
            return None;
        }
        let until = (now + policy.hold_ns) & !SLOT_ID_BITS;
        let (_, won) = atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            mark_ptr, current, until,
        );
        won.then_some((current, until))
    }
}

/// Tells the daemon of a mark set or refused for the share cap (`PASSIVE_EVENTS`), with the
/// event `event` makes, if the ring has room.
#[inline(always)]
fn tell_daemon(event: impl FnOnce() -> PassiveEvent) {
    if let Some(mut entry) = PASSIVE_EVENTS.reserve(0) {
        entry.write(event());
        entry.submit(0);
    }
}

/// Takes one of the service's first `max_suspects` slots for a mark of `backend_id` ending at
/// `until` (low bits clear): a slot whose mark has ended, whose backend's mark the daemon
/// cleared, or that names this backend (whose mark the caller has just set). `false`: the
/// service has as many suspects as its share allows.
#[inline(always)]
fn take_slot(service_id: u32, backend_id: u32, max_suspects: u16, until: u64, now: u64) -> bool {
    let Some(slots) = SUSPECT_SLOTS.get_ptr_mut(service_id) else {
        return false;
    };
    let claim = until | (u64::from(backend_id) & SLOT_ID_BITS);
    let mut i = 0;
    while i < MAX_SUSPECTS && i < max_suspects as usize {
        // SAFETY: the service's element; each slot is one aligned word, changed only by
        // compare-and-swap.
        unsafe {
            let slot_ptr = addr_of_mut!((*slots).until_ns[i]);
            let slot = read_volatile(slot_ptr);
            let holder = (slot & SLOT_ID_BITS) as u32;
            let holder_until = PASSIVE_MARKS.get(holder).map_or(0, |m| m.suspect_until_ns);
            // A slot naming this backend is free for it: its mark is the one being set now.
            if holder == backend_id || slot_free(slot & !SLOT_ID_BITS, holder_until, now) {
                let (_, taken) =
                    atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                        slot_ptr, slot, claim,
                    );
                if taken {
                    return true;
                }
            }
        }
        i += 1;
    }
    false
}

/// Whether a new flow from `client` to service `service_id` is admitted by its prefix's limit
/// (always, for a service without one), with `burst` times the limit's burst. Not inlined:
/// its key stays off the new flow's stack frame.
#[inline(never)]
pub fn admitted(service_id: u32, client: &Addr, now: u64, burst: u64) -> bool {
    let Some(policy) = SERVICE_POLICIES.get(service_id) else {
        return true;
    };
    if policy.admit_interval_ns == 0 {
        return true;
    }
    let mask = &policy.admit_mask;
    let prefix = AdmissionKey {
        prefix: [
            client[0] & mask[0],
            client[1] & mask[1],
            client[2] & mask[2],
            client[3] & mask[3],
        ],
        service_id,
    };
    match ADMISSION.get_ptr_mut(&prefix) {
        // SAFETY: a valid map value, one word; CPUs racing on one prefix may each admit a
        // flow the other would have dropped (the limit is approximate under contention).
        Some(due) => unsafe {
            match admit(
                *due,
                now,
                policy.admit_interval_ns,
                (policy.admit_tolerance_ns + policy.admit_interval_ns) * burst
                    - policy.admit_interval_ns,
            ) {
                Some(next) => {
                    *due = next;
                    true
                }
                None => false,
            }
        },
        None => {
            let next = now + policy.admit_interval_ns;
            let _ = ADMISSION.insert(&prefix, &next, BPF_NOEXIST as u64);
            true
        }
    }
}
