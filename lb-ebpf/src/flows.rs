//! A flow's one entry in a family's flow tables (`FLOWS4`/`HALF_OPEN4`, `FLOWS6`/`HALF_OPEN6`):
//! the move from the half-open table to the established one when a handshake completes, what a
//! client's retransmitted SYN means for its half-open flow, and the end of a flow.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    FlowEntry,
    consts::{events, flow_flags},
    passive::UNANSWERED_AFTER_NS,
    share::flow_event,
};

use crate::{
    clock,
    established::count_epoch,
    family::Family,
    maps::{FlowTable, count_event},
    passive,
    reply::forget_reply_vip,
    scratch::Scratch,
    share,
};

/// A family's flow table: half-open or established.
#[inline(always)]
pub fn table<Fam: Family>(half_open: bool) -> &'static FlowTable<Fam::Key, Fam::Addr> {
    if half_open {
        Fam::half_open()
    } else {
        Fam::flows()
    }
}

/// Copies a TCP flow whose handshake completed (its entry `entry`, stored under `key`) into
/// the established table, counted active from this packet on (as the packet that completes a
/// handshake counts it), and returns whether it did. The half-open entry stays until the packet
/// has followed it (see [`promoted`]): one insert and, after the packet, one delete, with no
/// lookup of the copy.
#[inline(always)]
pub fn promote<Fam: Family>(key: &Fam::Key, entry: *mut FlowEntry<Fam::Addr>, now: u64) -> bool {
    // SAFETY: a valid map value; the helper copies it into the other map.
    let entry = unsafe { &mut *entry };
    count_epoch(entry, now);
    if Fam::flows().insert(key, &*entry, BPF_ANY as u64).is_err() {
        return false;
    }
    count_event(events::FLOW_PROMOTED);
    share::tell::<Fam>(key, entry, flow_event::OPENED);
    true
}

/// Deletes the half-open entry of a flow [`promote`] copied, once the packet that completed
/// its handshake has followed it.
#[inline(always)]
pub fn promoted<Fam: Family>(key: &Fam::Key) {
    let _ = Fam::half_open().remove(key);
}

/// What a client's retransmitted SYN on a half-open flow calls for.
pub enum Retransmission {
    /// Forward it on the flow's entry.
    Forward,
    /// The backend never answered: place the SYN on another backend than this one. The
    /// flow's entry is already removed.
    Replace(u32),
}

/// For a SYN retransmitted by the client of the half-open flow whose entry `entry` is stored
/// under `key`: if the backend answered (or the answer may still be on its way), the SYN
/// follows the flow; if the backend has not answered for [`UNANSWERED_AFTER_NS`] and the
/// service counts unanswered handshakes, the silence counts toward the backend's suspicion and
/// the SYN is to be placed elsewhere (the backend never answered, so no state is lost).
#[inline(always)]
pub fn retransmitted_syn<Fam: Family>(
    key: &Fam::Key,
    entry: *mut FlowEntry<Fam::Addr>,
) -> Retransmission {
    // SAFETY: a valid map value, read before anything is written.
    let flow = unsafe { &*entry };
    // A DSR flow never sees its backend's answer: its silence means nothing.
    if flow.flags & (flow_flags::DSR | flow_flags::ANSWERED) != 0 {
        return Retransmission::Forward;
    }
    let now = clock::now();
    if now.wrapping_sub(flow.last_seen_ns) < UNANSWERED_AFTER_NS
        || !passive::counts_unanswered(flow.service_id)
    {
        return Retransmission::Forward;
    }
    let (service_id, backend_id) = (flow.service_id, flow.backend_id);
    // Removing the entry is the claim: of two CPUs with the same retransmission, one re-places
    // it and counts the silence; the other forwards its copy.
    if Fam::half_open().remove(key).is_err() {
        return Retransmission::Forward;
    }
    passive::observe(service_id, backend_id, passive::Kind::Unanswered, now);
    Retransmission::Replace(backend_id)
}

/// Deletes the entry `entry` of a flow, stored under `key`, from a table (and the VIP of its
/// replies, if recorded): the flow is over.
#[inline(always)]
pub fn forget<Fam: Family>(
    scratch: *mut Scratch,
    key: &Fam::Key,
    entry: &FlowEntry<Fam::Addr>,
    half_open: bool,
) {
    forget_reply_vip::<Fam>(scratch, key, entry);
    let _ = table::<Fam>(half_open).remove(key);
}
