//! A TCP or UDP packet that no flow and no service takes: passed, unless it is addressed to a
//! VIP (see [`not_served`]), or, in a fleet, a NAT backend's (see [`in_no_flow`]).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use lb_common::{VipKey, consts::events, host_port_key};

use crate::{
    adopt::RERUN,
    family::Family,
    forward::to_this_host,
    frame::Frame,
    maps::{HOST_PORTS, VIPS, count_event},
    packet::Packet,
    reply::{ADOPTED, UNKNOWN, from_backend_port, unowned},
    scratch::scratch,
    share,
};

/// A TCP or UDP packet of family `Fam` in no flow and for no service. While the instance shares
/// flows with a fleet, a NAT backend's packet may be of a flow another instance placed (see
/// `reply::unowned`): [`RERUN`] once its flow is adopted, dropped if it cannot be; unless it
/// is addressed to this host (a health check's answer). Anything else as [`not_served`]
/// says. In a function of its own: only such packets pay for it.
#[inline(never)]
pub fn in_no_flow<F: Frame, Fam: Family>(frame: &F, pkt: &Packet) -> u32 {
    if share::on()
        && from_backend_port(pkt.sport)
        && !to_this_host(frame, pkt)
        && let Some(scratch) = scratch()
    {
        match unowned::<Fam>(scratch) {
            ADOPTED => return RERUN,
            UNKNOWN => return F::DROP,
            _ => {}
        }
    }
    not_served::<F>(pkt)
}

/// A TCP or UDP packet in no flow and for no service. To a VIP it is dropped and counted in
/// the VIP's entry (passed, it would reach the host's own sockets, the VIP being a local
/// address when xlb announces it, or go back out by the default route to the router that
/// sent it, until its TTL runs out), unless the operator lets the host answer its port
/// (`HOST_PORTS`). Anything else (the host's own traffic, a backend's packet to a client in
/// no flow) passes. In a function of its own: only such packets pay for it.
#[inline(never)]
pub fn not_served<F: Frame>(pkt: &Packet) -> u32 {
    let vip = VipKey {
        addr: pkt.dst,
        family: pkt.family,
        _pad: [0; 3],
    };
    let Some(unserved) = VIPS.get_ptr_mut(&vip) else {
        return F::PASS;
    };
    if HOST_PORTS
        .get_ptr(&host_port_key(pkt.proto, pkt.dport))
        .is_some()
    {
        return F::PASS;
    }
    // SAFETY: the VIP's u32 in a hash map shared by all CPUs, valid while the program runs;
    // the result is not used, so a relaxed (non-fetching) add is enough.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(unserved, 1) };
    count_event(events::VIP_UNSERVED);
    F::DROP
}
