//! A backend's packet (NAT) finds its flow: the flow has one entry, stored under its client's
//! 5-tuple (see `lb_common::reply`). The packet's source is the backend, its destination the
//! client; the backend's one VIP (`VIP_HINTS4`/`6`, where its slot has one), else
//! `BACKEND_VIPS4`/`6`, give the VIPs the backend serves, and each makes a candidate key
//! (client, VIP) whose entry must name the packet's source as its backend. A backend shared
//! by more services has the VIP of each of its flows' replies recorded (`REPLY_VIPS4`/`6`),
//! looked up first. A NAT backend's packet with no entry, while the instance shares flows
//! with a fleet, has its flow taken over (`adopt`) or is dropped, never passed with the
//! backend's address (see [`unowned`]).

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    Addr, BackendVipKey, FlowAddr, FlowEntry, VipPort, backend_port_bit,
    consts::{events, flow_flags, proto},
    reply::{MAX_VIPS_PER_BACKEND, hint_slot},
};

use crate::{
    adopt::adopt,
    family::Family,
    maps::{BACKEND_PORTS, SERVICE_PORTS, count_event},
    scratch::Scratch,
};

/// What [`unowned`] found: a packet that is no NAT backend's, ...
pub const NOT_A_BACKENDS: u32 = 0;
/// ... a NAT backend's whose flow was adopted (its entry is made: the program is to run again
/// on it), ...
pub const ADOPTED: u32 = 1;
/// ... or a NAT backend's whose flow this instance neither has nor can take over: to be
/// dropped, never sent on with the backend's address.
pub const UNKNOWN: u32 = 2;

/// The packet in this CPU's `scratch` area, from a backend's port and in no flow (see
/// [`backend_flow`]), while the instance shares flows with a fleet: whether it is a NAT
/// backend's, and whether its flow was adopted (see `adopt`).
#[inline(always)]
pub fn unowned<Fam: Family>(scratch: *mut Scratch) -> u32 {
    if adopt::<Fam>(scratch) {
        return ADOPTED;
    }
    // SAFETY: this CPU's scratch area: the backend's key `adopt` wrote.
    let backend = unsafe { &*Fam::areas(scratch).backend };
    if Fam::backend_vips().get_ptr(backend).is_none() {
        return NOT_A_BACKENDS;
    }
    count_event(events::REPLY_UNADOPTED);
    UNKNOWN
}

/// Whether a backend listens on `port` (`BACKEND_PORTS`): only then may a packet from that
/// port be a backend's.
#[inline(always)]
pub fn from_backend_port(port: u16) -> bool {
    let (word, bit) = backend_port_bit(port);
    BACKEND_PORTS.get(word).is_some_and(|bits| bits & bit != 0)
}

/// Whether a service listens on `port` (`SERVICE_PORTS`): only then may a client's packet to
/// that port belong to a flow or a service.
#[inline(always)]
pub fn to_service_port(port: u16) -> bool {
    let (word, bit) = backend_port_bit(port);
    SERVICE_PORTS.get(word).is_some_and(|bits| bits & bit != 0)
}

/// The entry of the flow of a packet from `backend`:`backend_port` to `client`:`client_port`
/// of protocol `protocol`, and whether it is in the half-open table; the flow's key is left in
/// this CPU's `scratch` area (as the packet's key would be). `None`: the packet is no NAT
/// backend's answer to a flow, and the scratch key holds nothing of use.
#[inline(always)]
pub fn backend_flow<Fam: Family>(
    scratch: *mut Scratch,
    backend: &Addr,
    backend_port: u16,
    client: &Addr,
    client_port: u16,
    protocol: u8,
) -> Option<(*mut FlowEntry<Fam::Addr>, bool)> {
    if !from_backend_port(backend_port) {
        return None;
    }
    let areas = Fam::areas(scratch);
    // SAFETY: this CPU's scratch area; the key is not otherwise borrowed on this path.
    let key = unsafe { &mut *areas.key };
    let client = Fam::Addr::in_addr(client);
    // The backend's one VIP, if its slot has one: no lookup of the backend's VIPs.
    if let Some(hint) = Fam::vip_hints().get(hint_slot(backend, backend_port)) {
        let vip = *hint;
        if vip.port != 0 {
            *key = Fam::key(client, &vip.addr, client_port, vip.port, protocol);
            if let Some(found) = entry_of::<Fam>(key, Fam::Addr::in_addr(backend), backend_port) {
                return Some(found);
            }
        }
    }
    let backend = Fam::Addr::in_addr(backend);
    // SAFETY: this CPU's scratch area; its backend key is used here only.
    let backend_key = unsafe { &mut *areas.backend };
    *backend_key = BackendVipKey {
        addr: *backend,
        port: backend_port,
        proto: protocol,
        _pad: 0,
    };
    let vips = Fam::backend_vips().get_ptr(backend_key)?;
    // SAFETY: a valid map value; userspace replaces it whole (a hash map's update).
    let vips = unsafe { &*vips };
    if vips.shared != 0 {
        // SAFETY: this CPU's scratch area; its reply key is used here only.
        let reply = unsafe { &mut *areas.reply };
        *reply = Fam::key(backend, client, backend_port, client_port, protocol);
        if let Some(vip) = Fam::reply_vips().get_ptr(reply) {
            // SAFETY: a valid map value, copied at once.
            let vip = unsafe { *vip };
            *key = Fam::key(client, &vip.addr, client_port, vip.port, protocol);
            if let Some(found) = entry_of::<Fam>(key, backend, backend_port) {
                return Some(found);
            }
        }
    }
    for index in 0..MAX_VIPS_PER_BACKEND {
        if index as u32 >= vips.count {
            break;
        }
        let vip = &vips.vips[index];
        *key = Fam::key(client, &vip.addr, client_port, vip.port, protocol);
        if let Some(found) = entry_of::<Fam>(key, backend, backend_port) {
            return Some(found);
        }
    }
    None
}

/// The entry stored under `key` (established, or half-open for TCP) if its backend is
/// `backend`:`port`, and whether it is half-open.
#[inline(always)]
fn entry_of<Fam: Family>(
    key: &Fam::Key,
    backend: &Fam::Addr,
    port: u16,
) -> Option<(*mut FlowEntry<Fam::Addr>, bool)> {
    if let Some(entry) = Fam::flows().get_ptr_mut(key)
        && serves::<Fam>(entry, backend, port)
    {
        return Some((entry, false));
    }
    if Fam::protocol(key) == proto::TCP
        && let Some(entry) = Fam::half_open().get_ptr_mut(key)
        && serves::<Fam>(entry, backend, port)
    {
        return Some((entry, true));
    }
    None
}

/// The 5-tuple of the replies of the flow whose entry `entry` is stored under `key`, written
/// to this CPU's `scratch` area.
#[inline(always)]
fn reply_key<Fam: Family>(
    scratch: *mut Scratch,
    key: &Fam::Key,
    entry: &FlowEntry<Fam::Addr>,
) -> &'static Fam::Key {
    // SAFETY: this CPU's scratch area; its reply key is used here only.
    let reply = unsafe { &mut *Fam::areas(scratch).reply };
    *reply = Fam::key(
        &entry.addr,
        Fam::src(key),
        entry.port,
        Fam::src_port(key),
        Fam::protocol(key),
    );
    reply
}

/// Records the VIP of the replies of a new flow of a shared backend (its entry `entry`,
/// marked `LOCATED`, stored under `key`). `false` if it could not be recorded.
#[inline(always)]
pub fn record_reply_vip<Fam: Family>(
    scratch: *mut Scratch,
    key: &Fam::Key,
    entry: &FlowEntry<Fam::Addr>,
) -> bool {
    let vip = VipPort {
        addr: *Fam::dst(key),
        port: Fam::dst_port(key),
        _pad: 0,
    };
    let reply = reply_key::<Fam>(scratch, key, entry);
    Fam::reply_vips()
        .insert(reply, &vip, BPF_ANY as u64)
        .is_ok()
}

/// Deletes the VIP recorded for the replies of a flow that ends (its entry `entry`, stored
/// under `key`), if its entry says there is one.
#[inline(always)]
pub fn forget_reply_vip<Fam: Family>(
    scratch: *mut Scratch,
    key: &Fam::Key,
    entry: &FlowEntry<Fam::Addr>,
) {
    if entry.flags & flow_flags::LOCATED != 0 {
        let reply = reply_key::<Fam>(scratch, key, entry);
        let _ = Fam::reply_vips().remove(reply);
    }
}

/// Whether the flow of `entry` has `backend`:`port` as its backend (and so is the flow of that
/// backend's packet, not another service's flow of the same client port).
#[inline(always)]
fn serves<Fam: Family>(entry: *const FlowEntry<Fam::Addr>, backend: &Fam::Addr, port: u16) -> bool {
    // SAFETY: a valid map value; the backend's address and port never change once written.
    let entry = unsafe { &*entry };
    entry.addr == *backend && entry.port == port
}
