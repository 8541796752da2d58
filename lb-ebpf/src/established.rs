//! A packet of a known flow, in either direction: rewritten as its entry says and sent to the
//! entry's cached next hop for that direction. The common case touches nothing but the entry,
//! the counters and the packet: the checksum changes were worked out when the entry was made
//! (the backend's packets add their complement), the clock comes from the CPU's cache, and the
//! next hop from the entry. Once a second per flow (or when the direction's next hop is to be
//! resolved), the entry is refreshed: its timeout checked, its time stamped, the packet's
//! direction's next hop taken from the FIB again (and the other direction's marked to be, on
//! its next packet). A FIN or RST stamps the entry closing, and leaves its next hops as they
//! are: a short connection asks the FIB nothing when it closes.

use lb_common::{
    FlowAddr, FlowEntry, Hop,
    consts::{events, flow_flags, proto, tcp_flags, timing::LAST_SEEN_REFRESH_NS},
    csum, direction, epoch,
    share::flow_event,
    trace::decision,
};

use crate::{
    clock,
    counters::{count_active, count_traffic},
    family::Family,
    flows::forget,
    forward::{Route, cache_backend_hop, resolve, transmit},
    frame::Frame,
    maps::{FLOW_TIMEOUTS, count_event},
    nat::{self, Deltas, End, Rewrite, rewrite_unless_dsr},
    packet::Packet,
    scratch::Scratch,
    share, trace, tunnel,
};

/// What [`established`] returns, instead of a verdict, when the packet's flow was over (silent
/// past its timeout, or closed and opened again by the client's SYN): its entries are gone, and
/// the packet is handled as one without a flow. No hook's verdict has this value.
pub const NO_FLOW: u32 = 0xffff_fffe;

/// How a packet found its flow's entry, in one argument (a BPF function takes five): which
/// table, and whose packet it is.
pub mod found {
    /// A client's packet, in the established table.
    pub const CLIENT: u32 = 0;
    /// The entry is in the half-open table.
    pub const HALF_OPEN: u32 = 1;
    /// A backend's packet (NAT), found through the VIPs its backend serves.
    pub const BACKEND: u32 = 2;

    /// [`HALF_OPEN`] for an entry in the half-open table, else nothing.
    #[inline(always)]
    pub const fn table(half_open: bool) -> u32 {
        if half_open { HALF_OPEN } else { CLIENT }
    }
}

/// [`established`] in a function of its own, for the places a packet of a known flow is less
/// common than where an established flow's packets go (half-open flows, a race with another
/// CPU): one copy of its code for all of them.
#[inline(never)]
pub fn established_apart<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    how: u32,
) -> u32 {
    established::<F, Fam>(frame, pkt, scratch, entry, how)
}

/// Bits of [`refresh`]'s `mode`.
const REFRESH_DUE: u32 = 1;
const REFRESH_CLOSING: u32 = 2;
const REFRESH_HALF_OPEN: u32 = 4;
const REFRESH_REOPENED: u32 = 8;
/// The entry's second is over: the packet's direction's next hop is resolved again (and the
/// other's, on its next packet).
const REFRESH_AGED: u32 = 16;
/// The packet is the backend's.
const REFRESH_FROM_BACKEND: u32 = 32;

/// A packet of the flow whose entry `entry` is stored under the key in this CPU's `scratch`
/// area, found as `how` says (see [`found`]): refreshed if due, rewritten as the entry says
/// for its direction, counted and sent. A FIN or RST marks the flow closing. Inlined where an
/// established flow's packets arrive (a BPF-to-BPF call and its return cost 13 ns here, with
/// the return-stack mitigation of this CPU), and so are its steps; the refresh, about once a
/// second per flow, is a function of its own, so that its locals stay off the stack.
#[inline(always)]
pub fn established<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    how: u32,
) -> u32 {
    if for_kernel(frame, pkt) {
        return F::PASS;
    }
    let half_open = how & found::HALF_OPEN != 0;
    let to_backend = how & found::BACKEND == 0;
    let now = clock::now_in(scratch);
    // SAFETY: a valid map value; fields are read once, and racing writers (other CPUs on the
    // same flow) only store a recent time, the closing flag, the epoch or the same next hop.
    let flow = unsafe { &mut *entry };
    let dsr = flow.flags & flow_flags::DSR != 0;
    let reasons = Reasons::of(pkt, flow, to_backend, half_open, now);
    let mut unresolved = F::PASS;
    if reasons.due() || !hop_of(flow, to_backend).resolved() {
        let mode = reasons.mode(half_open, to_backend);
        unresolved = refresh::<F, Fam>(frame, pkt, scratch, entry, mode);
        if unresolved == NO_FLOW {
            return NO_FLOW;
        }
    }
    // A flow counts as active once established: a SYN flood's half-open flows never do.
    if to_backend && !half_open {
        count_epoch(flow, now);
    }
    let hop = hop_of(flow, to_backend);
    let resolved = hop.resolved();
    if rewrite::<F, Fam>(frame, pkt, scratch, flow, dsr, to_backend, resolved).is_none() {
        return F::PASS;
    }
    count_traffic(
        flow.service_id,
        flow.backend_id,
        pkt.ip_len,
        direction_of(to_backend),
    );
    trace_established(pkt, flow, to_backend, half_open, now);
    if !resolved {
        return unresolved;
    }
    if to_backend {
        return tunnel::to_backend(frame, scratch, hop, flow.flags, &flow.addr);
    }
    transmit(frame, hop)
}

/// The next hop of a direction of the flow.
#[inline(always)]
pub fn hop_of<A: FlowAddr>(flow: &FlowEntry<A>, to_backend: bool) -> &Hop {
    if to_backend {
        &flow.to_backend
    } else {
        &flow.to_client
    }
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
    /// `half_open`, for a client's packet if `to_backend`.
    #[inline(always)]
    fn mode(self, half_open: bool, to_backend: bool) -> u32 {
        (if self.due() { REFRESH_DUE } else { 0 })
            | if to_backend { 0 } else { REFRESH_FROM_BACKEND }
            | if self.closing { REFRESH_CLOSING } else { 0 }
            | if half_open { REFRESH_HALF_OPEN } else { 0 }
            | if self.reopened { REFRESH_REOPENED } else { 0 }
            | if self.aged { REFRESH_AGED } else { 0 }
    }
}

/// Counts the flow active in the current epoch (`ACTIVE_FLOWS`), if its first packet of the
/// epoch is this one.
#[inline(always)]
pub fn count_epoch<A: FlowAddr>(flow: &mut FlowEntry<A>, now: u64) {
    let current = epoch(now);
    if flow.epoch != current as u16 {
        flow.epoch = current as u16;
        count_active(flow.backend_id, current);
    }
}

/// Rewrites the packet as its entry says (see [`flow_rewrite`]), with the TTL decremented if
/// the next hop is `resolved` (the kernel decrements the TTL of a packet it forwards itself).
/// `None`: the headers are no longer where `pkt` says.
#[inline(always)]
fn rewrite<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    flow: &FlowEntry<Fam::Addr>,
    dsr: bool,
    to_backend: bool,
    resolved: bool,
) -> Option<()> {
    // SAFETY: this CPU's scratch area: the flow's key.
    let key = unsafe { &*Fam::areas(scratch).key };
    let rewrite = flow_rewrite::<Fam>(flow, key, to_backend, resolved);
    rewrite_unless_dsr::<F, Fam>(frame, pkt, dsr, &rewrite)
}

/// The rewrite of a packet of the flow of `flow`, stored under `key`: toward the backend, the
/// destination becomes the backend; toward the client, the source becomes the VIP again (the
/// key's destination), with the complement of the checksum changes.
#[inline(always)]
pub fn flow_rewrite<'a, Fam: Family>(
    flow: &'a FlowEntry<Fam::Addr>,
    key: &'a Fam::Key,
    to_backend: bool,
    ttl: bool,
) -> Rewrite<'a, Fam::Addr> {
    if to_backend {
        Rewrite {
            end: End::Destination,
            addr: &flow.addr,
            port: flow.port,
            deltas: Deltas {
                addr: flow.csum_addr,
                port: flow.csum_port,
            },
            ttl,
        }
    } else {
        Rewrite {
            end: End::Source,
            addr: Fam::dst(key),
            port: Fam::dst_port(key),
            deltas: Deltas {
                addr: csum::negate(flow.csum_addr),
                port: csum::negate(flow.csum_port),
            },
            ttl,
        }
    }
}

/// The direction of a packet toward the backend if `to_backend`, else toward the client
/// (`lb_common::direction`).
#[inline(always)]
pub fn direction_of(to_backend: bool) -> u8 {
    if to_backend {
        direction::TO_BACKEND
    } else {
        direction::TO_CLIENT
    }
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
        event.direction = direction_of(to_backend);
        event.backend_id = flow.backend_id;
        event.half_open = half_open as u8;
    });
}

/// Refreshes a flow's entry (see the module documentation), as `mode` says: if the refresh is
/// due, the flow may be over or reopened ([`NO_FLOW`]: its entry is gone) or is stamped; the
/// packet's direction's next hop is resolved again if its second is over or it has none (the
/// next hop toward the backend is then cached for the backend's new flows too). Returns the
/// verdict for the packet if the next hop could not be resolved (its `ifindex` is then 0). A
/// function of its own: its locals stay off the frames of the functions `established` is
/// inlined into.
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
    let to_backend = mode & REFRESH_FROM_BACKEND == 0;
    let now = clock::now_in(scratch);
    if mode & REFRESH_DUE != 0 {
        let reopened = mode & REFRESH_REOPENED != 0;
        if reopened || over(pkt, flow, half_open, now) {
            forget::<Fam>(scratch, key, flow, half_open);
            count_event(if reopened {
                events::FLOW_REOPENED
            } else {
                events::FLOW_EXPIRED
            });
            return NO_FLOW;
        }
        stamp(flow, mode, now);
        if mode & REFRESH_CLOSING != 0 && !half_open {
            share::tell::<Fam>(key, flow, flow_event::CLOSING);
        }
    }
    // An operator ended the connection: this packet tells its receiver so.
    if flow.flags & flow_flags::RESET != 0 && pkt.proto == proto::TCP {
        if nat::set_rst(frame, pkt).is_none() {
            return F::PASS;
        }
        flow.flags = flow.flags & !flow_flags::RESET | flow_flags::CLOSING;
    }
    // A close within the entry's second keeps the next hop it has.
    if mode & REFRESH_AGED == 0 && hop_of(flow, to_backend).resolved() {
        return F::PASS;
    }
    // The route of the packet after its rewrite (the FIB is asked about that one).
    let dsr = flow.flags & flow_flags::DSR != 0;
    let resolved = if to_backend {
        flow.addr.with_addr(|addr| {
            let route = Route {
                src: &pkt.src,
                dst: addr,
                sport: pkt.sport,
                dport: flow.port,
                dsr,
            };
            resolve(frame, pkt, &route)
        })
    } else {
        Fam::dst(key).with_addr(|vip| {
            let route = Route {
                src: vip,
                dst: &pkt.dst,
                sport: Fam::dst_port(key),
                dport: pkt.dport,
                dsr,
            };
            resolve(frame, pkt, &route)
        })
    };
    let hop = if to_backend {
        &mut flow.to_backend
    } else {
        &mut flow.to_client
    };
    match resolved {
        Ok(answer) => {
            *hop = answer;
            if to_backend {
                cache_backend_hop(flow.backend_id, &answer, now);
            }
            F::PASS
        }
        Err(verdict) => {
            hop.ifindex = 0;
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

/// Stamps a flow's entry as seen at `now` (and closing, if `mode` says this packet closes it).
/// If the entry's second is over, the packet's direction's next hop is then resolved again,
/// and the other direction's is marked to be resolved on its next packet: so each direction
/// asks the FIB about once a second.
#[inline(always)]
fn stamp<A: FlowAddr>(flow: &mut FlowEntry<A>, mode: u32, now: u64) {
    flow.last_seen_ns = now;
    if mode & REFRESH_CLOSING != 0 {
        flow.flags |= flow_flags::CLOSING;
    }
    if mode & REFRESH_AGED != 0 {
        if mode & REFRESH_FROM_BACKEND == 0 {
            flow.to_client.ifindex = 0;
        } else {
            flow.to_backend.ifindex = 0;
        }
    }
}
