//! The two entries of a flow (client to backend, backend to client) in a family's flow tables
//! (`FLOWS4`/`HALF_OPEN4`, `FLOWS6`/`HALF_OPEN6`): the other direction's key, the reply entry
//! built from the forward one, the move from the half-open table to the established one when a
//! handshake completes, and what a client's retransmitted SYN means for its half-open flow.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    FlowAddr, FlowEntry,
    consts::{events, flow_flags},
    direction,
    passive::UNANSWERED_AFTER_NS,
};

use crate::{
    clock,
    family::Family,
    forward::NextHop,
    maps::{FlowTable, count_event},
    passive,
    scratch::scratch,
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

/// The peer key of `key`, written to the scratch area (see [`peer_key`]).
#[inline(always)]
pub fn scratch_peer<Fam: Family>(
    key: &Fam::Key,
    entry: &FlowEntry<Fam::Addr>,
) -> Option<&'static Fam::Key> {
    let scratch = scratch()?;
    let peer = Fam::areas(scratch).peer;
    // SAFETY: this CPU's scratch area; its peer key is not otherwise borrowed while this one
    // lives.
    unsafe {
        *peer = peer_key::<Fam>(key, entry);
        Some(&*peer)
    }
}

/// The key of the other direction of the flow whose entry `entry` is stored under `key`.
#[inline(always)]
fn peer_key<Fam: Family>(key: &Fam::Key, entry: &FlowEntry<Fam::Addr>) -> Fam::Key {
    let (src, dst, src_port, dst_port) = Fam::parts(key);
    let protocol = Fam::protocol(key);
    if entry.direction == direction::TO_BACKEND {
        Fam::key(&entry.addr, &src, entry.port, src_port, protocol)
    } else {
        Fam::key(&dst, &entry.addr, dst_port, entry.port, protocol)
    }
}

/// Moves a TCP flow whose handshake completed from the half-open table to the established one:
/// the reply entry first, so a packet that finds the forward entry finds its reply too. The
/// reply entry is rebuilt from the forward one rather than copied, because a flood may have
/// evicted the half-open reply entry while the forward entry survived, and a flow without its
/// reply entry would send the backend's answers untranslated; it keeps the next hop the
/// half-open reply entry resolved for the backend's answer, if that entry is still there (the
/// first reply then needs no FIB lookup). Returns the forward entry in the established table.
#[inline(always)]
pub fn promote<Fam: Family>(
    key: &Fam::Key,
    entry: *mut FlowEntry<Fam::Addr>,
) -> Option<*mut FlowEntry<Fam::Addr>> {
    // SAFETY: a valid map value; the helpers copy it into the other map.
    let forward = unsafe { &*entry };
    // A DSR flow has no reply entry (its backend answers the client directly).
    let reply_key = match forward.flags & flow_flags::DSR {
        0 => Some(write_reply::<Fam>(key, forward, Fam::flows(), true)?),
        _ => None,
    };
    Fam::flows().insert(key, forward, BPF_ANY as u64).ok()?;
    let _ = Fam::half_open().remove(key);
    if let Some(reply_key) = reply_key {
        let _ = Fam::half_open().remove(reply_key);
    }
    count_event(events::FLOW_PROMOTED);
    Fam::flows().get_ptr_mut(key)
}

/// Writes into `table` the reply entry of the flow whose client-to-backend entry `forward` is
/// stored under `key`, built from it (see [`make_reply`]), with the next hop of the half-open
/// reply entry if `keep_hop` and it exists. Returns the reply's key.
#[inline(always)]
fn write_reply<Fam: Family>(
    key: &Fam::Key,
    forward: &FlowEntry<Fam::Addr>,
    table: &FlowTable<Fam::Key, Fam::Addr>,
    keep_hop: bool,
) -> Option<&'static Fam::Key> {
    if forward.direction != direction::TO_BACKEND {
        return None;
    }
    let scratch = scratch()?;
    let reply_key = scratch_peer::<Fam>(key, forward)?;
    // SAFETY: this CPU's scratch area; its entry is not otherwise in use here.
    let reply = unsafe { &mut *Fam::areas(scratch).entry };
    *reply = *forward;
    make_reply::<Fam>(reply, key);
    if keep_hop && let Some(half_open) = Fam::half_open().get_ptr(reply_key) {
        // SAFETY: a valid map value, read at once.
        NextHop::cached(unsafe { &*half_open }).store(reply);
    }
    table.insert(reply_key, &*reply, BPF_ANY as u64).ok()?;
    Some(reply_key)
}

/// Turns a flow's client-to-backend entry, stored under `key`, into its reply entry: the
/// backend's packets get their source rewritten to the VIP (the checksum changes are those of
/// the opposite rewrite); the next hop is resolved anew.
#[inline(always)]
pub fn make_reply<Fam: Family>(entry: &mut FlowEntry<Fam::Addr>, key: &Fam::Key) {
    let (_, vip, _, vip_port) = Fam::parts(key);
    entry.csum_addr = Fam::Addr::csum_delta(&entry.addr, &vip);
    entry.csum_port = lb_common::csum::delta16(entry.port, vip_port);
    entry.addr = vip;
    entry.port = vip_port;
    entry.direction = direction::TO_CLIENT;
    entry.hop_ifindex = 0;
}

/// What a client's retransmitted SYN on a half-open flow calls for.
pub enum Retransmission {
    /// Forward it on the flow's entry (after putting back a reply entry a flood evicted).
    Forward,
    /// The backend never answered: place the SYN on another backend than this one. The
    /// flow's reply entry is already removed.
    Replace(u32),
}

/// For a SYN retransmitted by the client of the half-open flow whose forward entry `entry` is
/// stored under `key`: if the backend answered (or the answer may still be on its way), the
/// SYN follows the flow, and a reply entry a flood evicted is put back so that the backend's
/// SYN-ACK is translated; if the backend has not answered for [`UNANSWERED_AFTER_NS`] and the
/// service counts unanswered handshakes, the silence counts toward the backend's suspicion and
/// the SYN is to be placed elsewhere (the backend never answered, so no state is lost).
#[inline(always)]
pub fn retransmitted_syn<Fam: Family>(
    key: &Fam::Key,
    entry: *mut FlowEntry<Fam::Addr>,
) -> Retransmission {
    // SAFETY: a valid map value, read before anything is written.
    let forward = unsafe { &*entry };
    // A DSR flow never sees its backend's answer: its silence means nothing.
    if forward.flags & flow_flags::DSR != 0 {
        return Retransmission::Forward;
    }
    let Some(peer) = scratch_peer::<Fam>(key, forward) else {
        return Retransmission::Forward;
    };
    let Some(reply) = Fam::half_open().get_ptr(peer) else {
        let _ = write_reply::<Fam>(key, forward, Fam::half_open(), false);
        return Retransmission::Forward;
    };
    // SAFETY: a valid map value; the flag is set by the backend's packets only.
    if unsafe { (*reply).flags } & flow_flags::ANSWERED != 0 {
        return Retransmission::Forward;
    }
    let now = clock::now();
    if now.wrapping_sub(forward.last_seen_ns) < UNANSWERED_AFTER_NS
        || !passive::counts_unanswered(forward.service_id)
    {
        return Retransmission::Forward;
    }
    // Removing the reply entry is the claim: of two CPUs with the same retransmission, one
    // re-places it and counts the silence; the other forwards its copy.
    if Fam::half_open().remove(peer).is_err() {
        return Retransmission::Forward;
    }
    let backend_id = forward.backend_id;
    passive::observe(
        forward.service_id,
        backend_id,
        passive::Kind::Unanswered,
        now,
    );
    Retransmission::Replace(backend_id)
}

/// Deletes both entries of a flow (the one stored under `key` and its peer's) from a table:
/// the flow is over.
#[inline(always)]
pub fn forget<Fam: Family>(key: &Fam::Key, entry: &FlowEntry<Fam::Addr>, half_open: bool) {
    let table = table::<Fam>(half_open);
    if entry.flags & flow_flags::DSR == 0
        && let Some(peer) = scratch_peer::<Fam>(key, entry)
    {
        let _ = table.remove(peer);
    }
    let _ = table.remove(key);
}
