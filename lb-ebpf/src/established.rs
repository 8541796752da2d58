//! A packet of a known flow, in either direction: rewritten as its entry says and sent to the
//! entry's cached next hop. The common case touches nothing but the entry, the counters and
//! the packet: the checksum changes were worked out when the entry was made, the clock comes
//! from the CPU's cache, and the next hop from the entry. Once a second per flow (or when the
//! next hop is to be resolved), the entry is refreshed: its timeout checked, its time stamped
//! (the other direction's too), its next hop taken from the FIB again. A FIN or RST stamps
//! both entries closing, and leaves their next hops as they are: a short connection asks the
//! FIB once per direction, not again when it closes.

use lb_common::{
    FlowAddr, FlowEntry,
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
    nat::{Deltas, End, Rewrite, rewrite_unless_dsr},
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
/// under the packet's key (in this CPU's `scratch` area): refreshed if due, rewritten as the
/// entry says, counted and sent. A FIN or RST marks both directions closing. Inlined where an
/// established flow's packets arrive (a BPF-to-BPF call and its return cost 13 ns here, with
/// the return-stack mitigation of this CPU), and so are its steps; the refresh, about once a
/// second per flow, is a function of its own, so that its locals stay off the stack.
#[inline(always)]
pub fn established<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    half_open: bool,
) -> u32 {
    if for_kernel(frame, pkt) {
        return F::PASS;
    }
    let now = clock::now_in(scratch);
    // SAFETY: a valid map value; fields are read once, and racing writers (other CPUs on the
    // same flow) only store a recent time, the closing flag, the epoch or the same next hop.
    let flow = unsafe { &mut *entry };
    let dsr = flow.flags & flow_flags::DSR != 0;
    let to_backend = flow.direction == direction::TO_BACKEND;
    let reasons = Reasons::of(pkt, flow, to_backend, half_open, now);
    let mut unresolved = F::PASS;
    if reasons.due() || flow.hop_ifindex == 0 {
        let mode = reasons.mode(half_open);
        unresolved = refresh::<F, Fam>(frame, pkt, scratch, entry, mode);
        if unresolved == NO_FLOW {
            return NO_FLOW;
        }
    }
    // A flow counts as active once established: a SYN flood's half-open flows never do.
    if to_backend && !half_open {
        count_epoch(flow, now);
    }
    let resolved = flow.hop_ifindex != 0;
    if rewrite::<F, Fam>(frame, pkt, flow, dsr, to_backend, resolved).is_none() {
        return F::PASS;
    }
    count_traffic(flow.service_id, flow.backend_id, pkt.ip_len, flow.direction);
    trace_established(pkt, flow, to_backend, half_open, now);
    if !resolved {
        return unresolved;
    }
    transmit(frame, &NextHop::cached(flow))
}

/// Whether the packet goes to the kernel untouched: its TTL would expire, or it is a GSO
/// super-packet on generic XDP, which can be neither rewritten correctly (its checksum is
/// partial) nor transmitted as one frame.
#[inline(always)]
pub fn for_kernel<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    if pkt.ttl <= 1 {
        count_event(events::TTL_EXPIRED);
        return true;
    }
    if frame.oversized() {
        count_event(events::OVERSIZED_PASSED);
        return true;
    }
    false
}

/// What the packet does to its flow's entry: whether it closes the flow (a FIN or RST, the
/// first), reopens it (see [`Reasons::of`]), or comes after the entry's second is over. Each
/// makes a refresh due (see [`refresh`]).
#[derive(Clone, Copy)]
struct Reasons {
    closing: bool,
    reopened: bool,
    aged: bool,
}

impl Reasons {
    /// The reasons the packet gives. A client's SYN on a flow that closed is a new connection
    /// on the same ports (the client reused them, before the old flow's timeout): it is placed
    /// anew, as any new flow is, and does not follow the old one to its backend, which may since
    /// be drained or silent.
    #[inline(always)]
    fn of<A: FlowAddr>(
        pkt: &Packet,
        flow: &FlowEntry<A>,
        to_backend: bool,
        half_open: bool,
        now: u64,
    ) -> Self {
        Self {
            closing: pkt.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0
                && flow.flags & flow_flags::CLOSING == 0,
            reopened: pkt.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
                && flow.flags & flow_flags::CLOSING != 0
                && to_backend
                && !half_open,
            aged: now.wrapping_sub(flow.last_seen_ns) > LAST_SEEN_REFRESH_NS,
        }
    }

    /// Whether a refresh is due.
    #[inline(always)]
    fn due(self) -> bool {
        self.closing || self.reopened || self.aged
    }

    /// The [`refresh`] mode for these reasons, of an entry in the half-open table if
    /// `half_open`.
    #[inline(always)]
    fn mode(self, half_open: bool) -> u32 {
        (if self.due() { REFRESH_DUE } else { 0 })
            | if self.closing { REFRESH_CLOSING } else { 0 }
            | if half_open { REFRESH_HALF_OPEN } else { 0 }
            | if self.reopened { REFRESH_REOPENED } else { 0 }
            | if self.aged { REFRESH_AGED } else { 0 }
    }
}

/// Counts the flow active in the current epoch (`ACTIVE_FLOWS`), if its first packet of the
/// epoch is this one.
#[inline(always)]
fn count_epoch<A: FlowAddr>(flow: &mut FlowEntry<A>, now: u64) {
    let current = epoch(now);
    if flow.epoch != current as u16 {
        flow.epoch = current as u16;
        count_active(flow.backend_id, current);
    }
}

/// Rewrites the packet as its entry says: the backend's end toward the backend, the VIP's
/// toward the client, with the TTL decremented if the next hop is `resolved` (the kernel
/// decrements the TTL of a packet it forwards itself). `None`: the headers are no longer
/// where `pkt` says.
#[inline(always)]
fn rewrite<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    flow: &FlowEntry<Fam::Addr>,
    dsr: bool,
    to_backend: bool,
    resolved: bool,
) -> Option<()> {
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
        ttl: resolved,
    };
    rewrite_unless_dsr::<F, Fam>(frame, pkt, dsr, &rewrite)
}

/// Traces the packet (`xlb trace`), as one of its flow's client's.
#[inline(always)]
pub fn trace_established<A: FlowAddr>(
    pkt: &Packet,
    flow: &FlowEntry<A>,
    to_backend: bool,
    half_open: bool,
    now: u64,
) {
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
fn over<A: FlowAddr>(pkt: &Packet, flow: &FlowEntry<A>, half_open: bool, now: u64) -> bool {
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
