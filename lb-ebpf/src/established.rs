//! A packet of a known flow, in either direction: rewritten as its entry says and sent to the
//! entry's cached next hop. The common case touches nothing but the entry, the counters and
//! the packet: the checksum changes were worked out when the entry was made, the clock comes
//! from the CPU's cache, and the next hop from the entry. Once a second per flow (or when the
//! next hop is to be resolved), the entry is refreshed: its timeout checked, its time stamped
//! (the other direction's too), its next hop taken from the FIB again. A FIN or RST stamps
//! both entries closing, and leaves their next hops as they are: a short connection asks the
//! FIB once per direction, not again when it closes.

use lb_common::{
    FlowAddr as _, FlowEntry,
    consts::{events, flow_flags, tcp_flags, timing::LAST_SEEN_REFRESH_NS},
    direction, epoch,
    trace::decision,
};

use crate::{
    clock,
    counters::{count_active, count_traffic},
    family::Family,
    flows::{forget, scratch_peer, table},
    forward::{NextHop, Route, resolve, transmit},
    frame::Frame,
    maps::{FLOW_TIMEOUTS, count_event},
    nat::{Deltas, End, Rewrite, decrement_ttl, rewrite_flow},
    packet::Packet,
    scratch::Scratch,
    trace,
};

/// What [`established`] returns, instead of a verdict, when the packet's flow was over (silent
/// past its timeout, or closed and opened again by the client's SYN): its entries are gone, and
/// the packet is handled as one without a flow. No hook's verdict has this value.
pub const NO_FLOW: u32 = 0xffff_fffe;

/// [`established`] in a function of its own, for the places a packet of a known flow is less
/// common than where an established flow's packets go (half-open flows, a race with another
/// CPU): one copy of its code for all of them.
#[inline(never)]
pub fn established_apart<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    half_open: bool,
) -> u32 {
    established::<F, Fam>(frame, pkt, scratch, entry, half_open)
}

/// Bits of [`refresh`]'s `mode`.
const REFRESH_DUE: u32 = 1;
const REFRESH_CLOSING: u32 = 2;
const REFRESH_HALF_OPEN: u32 = 4;
const REFRESH_REOPENED: u32 = 8;
/// The entry's second is over: its next hop is resolved again (and its peer's, on its next
/// packet).
const REFRESH_AGED: u32 = 16;

/// A packet of the flow whose entry `entry` (in the half-open table if `half_open`) is stored
/// under the packet's key (in this CPU's `scratch` area). A FIN or RST marks both directions closing. Inlined where an established
/// flow's packets arrive (a BPF-to-BPF call and its return cost 13 ns here, with the
/// return-stack mitigation of this CPU); the refresh, about once a second per flow, is a
/// function of its own, so that its locals stay off the stack.
#[inline(always)]
pub fn established<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    half_open: bool,
) -> u32 {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return F::PASS;
    }
    if frame.oversized() {
        // A GSO super-packet on generic XDP: it can be neither rewritten correctly (its
        // checksum is partial) nor transmitted as one frame. The kernel gets it untouched.
        count_event(events::OVERSIZED_PASSED);
        return F::PASS;
    }
    let now = clock::now_in(scratch);
    // SAFETY: a valid map value; fields are read once, and racing writers (other CPUs on the
    // same flow) only store a recent time, the closing flag, the epoch or the same next hop.
    let flow = unsafe { &mut *entry };
    let dsr = flow.flags & flow_flags::DSR != 0;
    let to_backend = flow.direction == direction::TO_BACKEND;
    let closing = pkt.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0
        && flow.flags & flow_flags::CLOSING == 0;
    // A client's SYN on a flow that closed is a new connection on the same ports (the client
    // reused them, before the old flow's timeout): it is placed anew, as any new flow is, and
    // does not follow the old one to its backend, which may since be drained or silent.
    let reopened = pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
        && flow.flags & flow_flags::CLOSING != 0
        && to_backend
        && !half_open;
    let aged = now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_REFRESH_NS;
    let due = closing || reopened || aged;
    let mut unresolved = F::PASS;
    if due || flow.hop_ifindex == 0 {
        let mode = if due { REFRESH_DUE } else { 0 }
            | if closing { REFRESH_CLOSING } else { 0 }
            | if half_open { REFRESH_HALF_OPEN } else { 0 }
            | if reopened { REFRESH_REOPENED } else { 0 }
            | if aged { REFRESH_AGED } else { 0 };
        unresolved = refresh::<F, Fam>(frame, pkt, scratch, entry, mode);
        if unresolved == NO_FLOW {
            return NO_FLOW;
        }
    }
    // A flow counts as active once established: a SYN flood's half-open flows never do.
    if to_backend && !half_open {
        let current = epoch(now);
        if flow.epoch != current as u16 {
            flow.epoch = current as u16;
            count_active(flow.backend_id, current);
        }
    }
    let resolved = flow.hop_ifindex != 0;
    if dsr {
        if resolved && decrement_ttl(frame, pkt).is_none() {
            return F::PASS;
        }
    } else {
        let rewrite = Rewrite {
            end: if to_backend {
                End::Destination
            } else {
                End::Source
            },
            addr: &flow.addr,
            port: flow.port,
            deltas: Deltas {
                addr: flow.csum_addr,
                port: flow.csum_port,
            },
            // The kernel decrements the TTL of a packet it forwards itself.
            ttl: resolved,
        };
        if rewrite_flow::<F, Fam>(frame, pkt, &rewrite).is_none() {
            return F::PASS;
        }
    }
    count_traffic(flow.service_id, flow.backend_id, pkt.ip_len, flow.direction);
    let client = if to_backend {
        (&pkt.src, pkt.sport)
    } else {
        (&pkt.dst, pkt.dport)
    };
    trace::record(now, flow.service_id, pkt, client, |event| {
        event.decision = decision::ESTABLISHED;
        event.direction = flow.direction;
        event.backend_id = flow.backend_id;
        event.half_open = half_open as u8;
    });
    if !resolved {
        return unresolved;
    }
    transmit(frame, &NextHop::cached(flow))
}

/// Refreshes a flow's entry (see the module documentation), as `mode` says: if the refresh is
/// due, the flow may be over or reopened ([`NO_FLOW`]: its entries are gone) or is stamped;
/// its next hop is resolved again if its second is over or it has none. Returns the verdict
/// for the packet if the next hop could not be resolved (`hop_ifindex` is then 0). A function of its own: its locals stay off the frames of the
/// functions `established` is inlined into.
#[inline(never)]
fn refresh<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    mode: u32,
) -> u32 {
    // SAFETY: as in `established`; the key is this CPU's scratch area's.
    let (flow, key) = unsafe { (&mut *entry, &*Fam::areas(scratch).key) };
    let half_open = mode & REFRESH_HALF_OPEN != 0;
    let now = clock::now_in(scratch);
    if mode & REFRESH_DUE != 0 {
        let reopened = mode & REFRESH_REOPENED != 0;
        if reopened || over(pkt, flow, half_open, now) {
            forget::<Fam>(key, flow, half_open);
            count_event(if reopened {
                events::FLOW_REOPENED
            } else {
                events::FLOW_EXPIRED
            });
            return NO_FLOW;
        }
        stamp::<Fam>(key, flow, half_open, mode, now);
    }
    // A close within the entry's second keeps the next hop it has.
    if mode & REFRESH_AGED == 0 && flow.hop_ifindex != 0 {
        return F::PASS;
    }
    // The route of the packet after its rewrite (the FIB is asked about that one).
    let dsr = flow.flags & flow_flags::DSR != 0;
    let to_backend = flow.direction == direction::TO_BACKEND;
    let resolved = flow.addr.with_addr(|addr| {
        let route = if to_backend {
            Route {
                src: &pkt.src,
                dst: addr,
                sport: pkt.sport,
                dport: flow.port,
                dsr,
            }
        } else {
            Route {
                src: addr,
                dst: &pkt.dst,
                sport: flow.port,
                dport: pkt.dport,
                dsr,
            }
        };
        resolve(frame, pkt, &route)
    });
    match resolved {
        Ok(hop) => {
            hop.store(flow);
            F::PASS
        }
        Err(verdict) => {
            flow.hop_ifindex = 0;
            verdict
        }
    }
}

/// Whether the flow of `flow` (in the half-open table if `half_open`) was silent past its
/// timeout before this packet.
#[inline(always)]
fn over<A: lb_common::FlowAddr>(
    pkt: &Packet,
    flow: &FlowEntry<A>,
    half_open: bool,
    now: u64,
) -> bool {
    FLOW_TIMEOUTS.get(0).is_some_and(|timeouts| {
        timeouts.expired(pkt.proto, flow.flags, half_open, flow.last_seen_ns, now)
    })
}

/// Stamps a flow's entries as seen at `now` (and closing, if `mode` says this packet closes
/// it): this one and the other direction's. If the entry's second is over, this one's next hop
/// is then resolved again, and the other's is marked to be resolved on its next packet: so the
/// two entries age together, and each direction asks the FIB about once a second. (A close
/// within the second stamps both and leaves both next hops: a route change then reaches the
/// other direction of a closing flow within two seconds rather than one.)
#[inline(always)]
fn stamp<Fam: Family>(
    key: &Fam::Key,
    flow: &mut FlowEntry<Fam::Addr>,
    half_open: bool,
    mode: u32,
    now: u64,
) {
    let closing = mode & REFRESH_CLOSING != 0;
    let aged = mode & REFRESH_AGED != 0;
    flow.last_seen_ns = now;
    if closing {
        flow.flags |= flow_flags::CLOSING;
    }
    // (A DSR flow has no reply entry: its backend answers the client directly.)
    if flow.flags & flow_flags::DSR != 0 {
        return;
    }
    if let Some(peer) =
        scratch_peer::<Fam>(key, flow).and_then(|peer| table::<Fam>(half_open).get_ptr_mut(peer))
    {
        // SAFETY: a valid map value; as for `flow`.
        unsafe {
            (*peer).last_seen_ns = now;
            if aged {
                (*peer).hop_ifindex = 0;
            }
            if closing {
                (*peer).flags |= flow_flags::CLOSING;
            }
        }
    }
}
