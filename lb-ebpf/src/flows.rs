//! The two entries of a flow (client to backend, backend to client) in `FLOWS` and
//! `HALF_OPEN`: the other direction's key, the reply entry built from the forward one, the
//! move from `HALF_OPEN` to `FLOWS` when a handshake completes, and what a client's
//! retransmitted SYN means for its half-open flow.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    FlowEntry, FlowKey,
    consts::{events, flow_flags},
    direction,
    passive::UNANSWERED_AFTER_NS,
};

use crate::{
    maps::{FLOWS, FlowTable, HALF_OPEN, count_event},
    passive,
    scratch::scratch,
};

/// The flow table: `HALF_OPEN` or `FLOWS`.
#[inline(always)]
pub fn table(half_open: bool) -> &'static FlowTable {
    if half_open { &HALF_OPEN } else { &FLOWS }
}

/// The peer key of `key`, written to the scratch area (see [`peer_key`]).
#[inline(always)]
pub fn scratch_peer(key: &FlowKey, entry: &FlowEntry) -> Option<&'static FlowKey> {
    let scratch = scratch()?;
    // SAFETY: this CPU's scratch area; `peer` is not otherwise borrowed while this one lives.
    let peer = unsafe { &mut (*scratch).peer };
    *peer = peer_key(key, entry);
    Some(peer)
}

/// The key of the other direction of the flow whose entry `entry` is stored under `key`.
#[inline(always)]
fn peer_key(key: &FlowKey, entry: &FlowEntry) -> FlowKey {
    if entry.direction == direction::TO_BACKEND {
        FlowKey {
            src_addr: entry.addr,
            src_port: entry.port,
            dst_addr: key.src_addr,
            dst_port: key.src_port,
            ..*key
        }
    } else {
        FlowKey {
            src_addr: key.dst_addr,
            src_port: key.dst_port,
            dst_addr: entry.addr,
            dst_port: entry.port,
            ..*key
        }
    }
}

/// Moves a TCP flow whose handshake completed from `HALF_OPEN` to `FLOWS`: the reply entry
/// first, so a packet that finds the forward entry finds its reply too. The reply entry is
/// rebuilt from the forward one rather than copied, because a flood may have evicted the
/// half-open reply entry while the forward entry survived, and a flow without its reply entry
/// would send the backend's answers untranslated. Returns the forward entry in `FLOWS`.
#[inline(always)]
pub fn promote(key: &FlowKey, entry: *mut FlowEntry) -> Option<*mut FlowEntry> {
    // SAFETY: a valid map value; the helpers copy it into the other map.
    let forward = unsafe { &*entry };
    // A DSR flow has no reply entry (its backend answers the client directly).
    let reply_key = match forward.flags & flow_flags::DSR {
        0 => Some(write_reply(key, forward, &FLOWS)?),
        _ => None,
    };
    FLOWS.insert(key, forward, BPF_ANY as u64).ok()?;
    let _ = HALF_OPEN.remove(key);
    if let Some(reply_key) = reply_key {
        let _ = HALF_OPEN.remove(reply_key);
    }
    count_event(events::FLOW_PROMOTED);
    FLOWS.get_ptr_mut(key)
}

/// Writes into `table` the reply entry of the flow whose client-to-backend entry `forward` is
/// stored under `key`, built from it (see [`make_reply`]). Returns the reply's key.
#[inline(always)]
fn write_reply(key: &FlowKey, forward: &FlowEntry, table: &FlowTable) -> Option<&'static FlowKey> {
    if forward.direction != direction::TO_BACKEND {
        return None;
    }
    let scratch = scratch()?;
    let reply_key = scratch_peer(key, forward)?;
    // SAFETY: this CPU's scratch area; its `entry` is not otherwise in use here.
    let reply = unsafe { &mut (*scratch).entry };
    *reply = *forward;
    make_reply(reply, key);
    table.insert(reply_key, &*reply, BPF_ANY as u64).ok()?;
    Some(reply_key)
}

/// Turns a flow's client-to-backend entry, stored under `key`, into its reply entry: the
/// backend's packets get their source rewritten to the VIP; the next hop is resolved anew.
#[inline(always)]
pub fn make_reply(entry: &mut FlowEntry, key: &FlowKey) {
    entry.addr = key.dst_addr;
    entry.port = key.dst_port;
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
pub fn retransmitted_syn(key: &FlowKey, entry: *mut FlowEntry) -> Retransmission {
    // SAFETY: a valid map value, read before anything is written.
    let forward = unsafe { &*entry };
    // A DSR flow never sees its backend's answer: its silence means nothing.
    if forward.flags & flow_flags::DSR != 0 {
        return Retransmission::Forward;
    }
    let Some(peer) = scratch_peer(key, forward) else {
        return Retransmission::Forward;
    };
    let Some(reply) = HALF_OPEN.get_ptr(peer) else {
        let _ = write_reply(key, forward, &HALF_OPEN);
        return Retransmission::Forward;
    };
    // SAFETY: a valid map value; the flag is set by the backend's packets only.
    if unsafe { (*reply).flags } & flow_flags::ANSWERED != 0 {
        return Retransmission::Forward;
    }
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(forward.last_seen_ns) < UNANSWERED_AFTER_NS
        || !passive::counts_unanswered(forward.service_id)
    {
        return Retransmission::Forward;
    }
    // Removing the reply entry is the claim: of two CPUs with the same retransmission, one
    // re-places it and counts the silence; the other forwards its copy.
    if HALF_OPEN.remove(peer).is_err() {
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
