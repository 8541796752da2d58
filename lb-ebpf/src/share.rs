//! Flows shared with a fleet: while the daemon shares flows (`FLEET`), each flow that becomes
//! established, and each that closes, is told to it through `FLOW_EVENTS`, with its key and
//! backend's address; the daemon sends them to the other instances, which install them. One
//! array lookup when sharing is off.

use lb_common::{FlowAddr, FlowEntry};

use crate::{
    family::Family,
    maps::{FLEET, FLOW_EVENTS, FLOW_EVENTS_LOST},
};

/// Whether the daemon shares this instance's flows with a fleet.
#[inline(always)]
pub fn on() -> bool {
    FLEET.get(0).is_some_and(|on| *on != 0)
}

/// Tells the daemon that the flow stored under `key`, whose entry is `entry`, became what
/// `kind` says (`lb_common::share::flow_event`), if the daemon shares flows.
#[inline(always)]
pub fn tell<Fam: Family>(key: &Fam::Key, entry: &FlowEntry<Fam::Addr>, kind: u8) {
    if !on() {
        return;
    }
    tell_now::<Fam>(key, entry, kind);
}

/// [`tell`], sharing known to be on. The event is written in place, in the ring, field by
/// field: no copy of it on the stack of the packet paths this is inlined into.
#[inline(always)]
fn tell_now<Fam: Family>(key: &Fam::Key, entry: &FlowEntry<Fam::Addr>, kind: u8) {
    match FLOW_EVENTS.reserve(0) {
        Some(mut slot) => {
            let event = slot.as_mut_ptr();
            // SAFETY: the reserved slot is a `FlowEvent`'s size, ours until submitted; every
            // field is written before it is.
            unsafe {
                (*event).key = Fam::neutral(key);
                (*event).backend = entry.addr.to_addr();
                (*event).backend_port = entry.port;
                (*event).kind = kind;
                (*event)._pad = [0; 5];
            }
            slot.submit(0);
        }
        None => {
            if let Some(lost) = FLOW_EVENTS_LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
                unsafe { *lost += 1 };
            }
        }
    }
}
