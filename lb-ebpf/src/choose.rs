//! Which backend a new flow gets: the next slot of its table by round robin, or the slot its
//! 5-tuple hashes to (Maglev, and round robin's handshake guard), passing over suspect
//! backends.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd, atomic_xchg},
    ptr::{addr_of_mut, read_volatile},
};

use lb_common::{
    HandshakeGuard,
    consts::{events, limits::MAX_MAGLEV_SLOTS, maglev_len, proto, tcp_flags},
    guard::{hashes_syn, starts_flooded, window_ended},
    hash::tuple_hash,
    passive::MAX_SKIPS,
};

use crate::{
    maps::{BACKEND_TABLES, HANDSHAKE_GUARD, MAGLEV_TABLES, RR_CURSORS, count_event},
    packet::Packet,
    passive,
};

/// Covers every slot of a Maglev table.
const MAGLEV_SLOT_MASK: usize = MAX_MAGLEV_SLOTS.next_power_of_two() - 1;

/// A new flow's backend and how it was chosen: the backend id, the table's slot it was taken
/// from, the slots of suspect (or avoided) backends passed over to reach it, whether it was
/// chosen by hash (Maglev, or the handshake guard) rather than round robin; or none. Every
/// field is always set: an `Option` of a struct was spilled by LLVM with its undefined
/// payload, which the verifier refuses to read, and packing it in one word made the verifier
/// follow every bit operation (load time 3.7 s; this form takes 0.25 s).
#[derive(Clone, Copy)]
pub struct Choice {
    /// The backend.
    pub backend_id: u32,
    /// The table's slot it was taken from.
    pub slot: u32,
    /// Slots of suspect (or avoided) backends passed over to reach `slot`.
    pub skipped: u8,
    /// Chosen by hash, not round robin.
    pub hashed: bool,
    /// No backend: the other fields mean nothing.
    pub none: bool,
}

impl Choice {
    /// No backend can take the flow.
    pub const NONE: Self = Self {
        backend_id: 0,
        slot: 0,
        skipped: 0,
        hashed: false,
        none: true,
    };
}

/// The backend a new flow gets from a round-robin table: the next slot, advancing the table's
/// cursor atomically so that concurrent new flows on different CPUs take different slots; or,
/// for a TCP flow the handshake guard places by hash, the slot its 5-tuple hashes to. A TCP
/// packet without SYN is placed as its SYN was (by the same hash, past the same marks), so it
/// finds the backend its SYN got while the marks stay as they were.
#[inline(always)]
pub fn round_robin(table_index: u32, pkt: &Packet, now: u64, avoid: u32) -> Choice {
    let Some(table) = BACKEND_TABLES.get_value(table_index, &0) else {
        return Choice::NONE;
    };
    let len = table.len as usize;
    // (No upper bound on `len` here: LLVM would use it to drop the slot checks in `pass_over`,
    // which the verifier needs.)
    if len == 0 {
        return Choice::NONE;
    }
    let seed = hash_seed(pkt, now);
    let hashed = seed.is_some();
    let turn = match seed {
        Some(seed) => packet_hash(pkt, seed, false) as u64,
        None => {
            let Some(cursor) = RR_CURSORS.get_ptr_mut(table_index) else {
                return Choice::NONE;
            };
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
    pass_over(&table.slots, len, first, avoid, now, hashed)
}

/// The backend a new flow gets from a Maglev table: the slot its 5-tuple (or, for source
/// hashing, its client's address) hashes to, with the table's seed, which every instance
/// shares. A TCP packet without SYN that finds no flow
/// (its flow went through another instance before a routing change) is placed the same way,
/// and so reaches the backend that instance chose, as long as both see the same backends.
#[inline(always)]
pub fn maglev(table_index: u32, pkt: &Packet, now: u64, avoid: u32) -> Choice {
    let Some(table) = MAGLEV_TABLES.get_value(table_index, &0) else {
        return Choice::NONE;
    };
    let len = (table.len & maglev_len::SLOTS) as usize;
    if len == 0 {
        return Choice::NONE;
    }
    if pkt.proto == proto::TCP && pkt.tcp_flags & tcp_flags::SYN == 0 {
        count_event(events::MIDSTREAM_HASHED);
    }
    count_maglev_syn(pkt, now);
    // LLVM divides in 32 bits, and the verifier knows nothing of a remainder's bounds: the
    // mask (which changes nothing, as `len` is at most MAX_MAGLEV_SLOTS < 2^17) bounds it.
    let hash = packet_hash(pkt, table.seed, table.len & maglev_len::CLIENT_HASH != 0);
    let first = (hash % len as u32) as usize & MAGLEV_SLOT_MASK;
    pass_over(&table.slots, len, first, avoid, now, true)
}

/// The flow hash (`lb_common::hash`) of a packet's 5-tuple under `seed`, the value userspace
/// computes from the flow's key; `by_client`: of the client's address and the VIP alone
/// (`lb_common::hash::client_hash`). The ports and protocol are masked out rather than
/// branched around: a branch here doubles what the verifier walks through on every path
/// that places a flow.
#[inline(always)]
fn packet_hash(pkt: &Packet, seed: u32, by_client: bool) -> u32 {
    let keep = u32::from(by_client).wrapping_sub(1);
    tuple_hash(
        &pkt.src,
        &pkt.dst,
        (u32::from(pkt.sport) | u32::from(pkt.dport) << 16) & keep,
        (u32::from(pkt.proto) & keep) | u32::from(pkt.family) << 8,
        seed,
    )
}

/// From slot `first` of a table of `len` slots, passes over the slots of suspect backends
/// and of `avoid` to the next one, up to `MAX_SKIPS` slots (then it keeps `first`), and
/// returns the choice.
#[inline(always)]
fn pass_over<const N: usize>(
    slots: &[u32; N],
    len: usize,
    first: usize,
    avoid: u32,
    now: u64,
    hashed: bool,
) -> Choice {
    let mut slot = first;
    let mut skipped = 0;
    while skipped < MAX_SKIPS {
        if slot >= N {
            return Choice::NONE;
        }
        let id = slots[slot];
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
    if slot >= N {
        return Choice::NONE;
    }
    Choice {
        backend_id: slots[slot],
        slot: slot as u32,
        skipped: skipped as u8,
        hashed,
        none: false,
    }
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
    let flows = count_in_window(guard, now);
    // SAFETY: as in `count_in_window`; `budget` and `seed` are written by userspace before the
    // program is attached, `flooded` only by the CPU that restarted the window.
    unsafe {
        if pkt.tcp_flags & tcp_flags::SYN == 0 {
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

/// Counts a new TCP flow of a Maglev service in the handshake guard's window: Maglev needs no
/// guard (its SYNs are placed by hash already), but its flows share `HALF_OPEN` with the
/// round-robin services the guard protects.
#[inline(always)]
fn count_maglev_syn(pkt: &Packet, now: u64) {
    if pkt.proto == proto::TCP
        && pkt.tcp_flags & tcp_flags::SYN != 0
        && let Some(guard) = HANDSHAKE_GUARD.get_ptr_mut(0)
    {
        count_in_window(guard, now);
    }
}

/// Counts one new TCP flow in the guard's current window (restarting the window when it has
/// ended) and returns the count before it.
#[inline(always)]
fn count_in_window(guard: *mut HandshakeGuard, now: u64) -> u64 {
    // SAFETY: the guard's single element, shared by all CPUs, used through raw pointers only:
    // the fields several CPUs write (window start, count) change atomically, and `flooded` is
    // written only by the CPU that restarted the window.
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
        // See `round_robin` for the ordering.
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(flows_ptr, 1)
    }
}
