//! Source persistence (`persistence` on a service, IPVS's `-p`): a client's new flow goes to
//! the backend its last new flow to the service got, if that came within the service's
//! persistence and the backend still takes new flows (the daemon deletes the entries of a
//! backend that stops, before its id can be given again) and is not suspect.
//!
//! The verifier is at its limits here. So the lookup is a global function (checked once, on
//! its own) called before the flow is placed, whose answer waits in the scratch area; the
//! choice takes it without a branch; and the flow's backend is remembered after `new_flow`,
//! from the scratch area too: the new flow's frame stays as it was.

use lb_common::{
    Addr,
    passive::{PersistEntry, PersistKey, persists},
    trace::NO_BACKEND_ID,
};

use crate::{
    choose::Choice,
    maps::{PERSISTENCE, SERVICE_POLICIES},
    passive,
    scratch::Scratch,
};

/// The slot a persisted choice says it came from: none of the table's.
pub const PERSISTED_SLOT: u32 = u32::MAX;

/// What [`sticky`] says of a service without persistence (and [`NO_BACKEND_ID`], the one
/// above it, of a client without a backend to persist on): no backend id is this high, and
/// [`remember`] then reads no policy again.
pub const NOT_PERSISTENT: u32 = NO_BACKEND_ID - 1;

/// `choice`, or the `sticky` backend in its place unless that is `NOT_PERSISTENT`,
/// `NO_BACKEND_ID` or `avoid`.
/// Without a branch: one here made the verifier walk the rest of a new flow twice, past its
/// million instructions (so the table's choice is made, and a round-robin turn taken, either
/// way).
#[inline(always)]
#[expect(
    clippy::transmute_int_to_bool,
    reason = "`!= 0` is a branch in BPF, which would double what the verifier walks"
)]
pub fn over(choice: Choice, sticky: u32, avoid: u32) -> Choice {
    // 1 when `sticky` is `NOT_PERSISTENT` or `NO_BACKEND_ID` (the two highest u32s), else 0.
    let none = ((u64::from(sticky) + 2) >> 32) as u32;
    // 1 when `sticky` is not `avoid`, else 0.
    let other = ((u64::from(sticky ^ avoid) + u64::from(u32::MAX)) >> 32) as u32;
    let held = (other & !none & 1).wrapping_neg();
    let table = (!held & 1) as u8;
    Choice {
        backend_id: sticky & held | choice.backend_id & !held,
        slot: PERSISTED_SLOT & held | choice.slot & !held,
        // SAFETY: 0 or 1, the two values of a `bool` (a comparison would be a branch).
        none: unsafe { core::mem::transmute::<u8, bool>(choice.none as u8 & table) },
        ..choice
    }
}

/// The backend a new flow from `client` to service `service_id` persists on at `now`;
/// `NO_BACKEND_ID` if none, `NOT_PERSISTENT` if the service has no persistence.
#[inline(always)]
pub fn sticky(service_id: u32, client: &Addr, now: u64) -> u32 {
    let low = u64::from(client[0]) | u64::from(client[1]) << 32;
    let high = u64::from(client[2]) | u64::from(client[3]) << 32;
    xlb_persist_sticky(service_id, low, high, now)
}

/// [`sticky`], as a global function: the verifier checks it once, on its own, and its callers
/// see one unknown result rather than each of its returns. Its arguments are scalars (the
/// client's address in two words), as a global function's must be.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xlb_persist_sticky(
    service_id: u32,
    client_low: u64,
    client_high: u64,
    now: u64,
) -> u32 {
    let persist_s = SERVICE_POLICIES.get(service_id).map_or(0, |p| p.persist_s);
    if persist_s == 0 {
        return NOT_PERSISTENT;
    }
    let key = PersistKey {
        client: [
            client_low as u32,
            (client_low >> 32) as u32,
            client_high as u32,
            (client_high >> 32) as u32,
        ],
        service_id,
    };
    let Some(entry) = PERSISTENCE.get_ptr(&key) else {
        return NO_BACKEND_ID;
    };
    // SAFETY: a valid map value, read field by field; another CPU may write it meanwhile: a
    // torn read gives a backend the checks below vet, or a time that persists or not.
    let (id, last_ns) = unsafe { ((*entry).backend_id, (*entry).last_ns) };
    if !persists(now, last_ns, persist_s) || passive::suspect(id, now) {
        return NO_BACKEND_ID;
    }
    id
}

/// Remembers the backend the new flow from the packet's client to service `service_id` was
/// recorded on (`Scratch::placed`, if it was) at `now`, if the service persists (as
/// [`sticky`] said before the flow was placed: `Packet::sticky`).
#[inline(never)]
pub fn remember(scratch: *mut Scratch, service_id: u32, now: u64) {
    // SAFETY: this CPU's scratch area: the packet, and what `new_flow` recorded.
    let (persistent, backend_id) = unsafe {
        (
            (*scratch).pkt.sticky.get() != NOT_PERSISTENT,
            (*scratch).placed,
        )
    };
    if !persistent || backend_id == NO_BACKEND_ID {
        return;
    }
    // SAFETY: as above.
    let client = unsafe { (*scratch).pkt.src };
    let key = PersistKey { client, service_id };
    if let Some(entry) = PERSISTENCE.get_ptr_mut(&key) {
        // SAFETY: a valid map value. The same backend again (the common case): its time is
        // moved on in place, which costs a lookup, not an LRU insert's allocation.
        unsafe {
            if (*entry).backend_id == backend_id {
                (*entry).last_ns = now;
                return;
            }
        }
    }
    let entry = PersistEntry {
        backend_id,
        _pad: 0,
        last_ns: now,
    };
    let _ = PERSISTENCE.insert(&key, &entry, 0);
}
