//! The balancer's decisions: does this packet belong to a flow (see `established`), or is it
//! the first packet of a new flow to a service (placed by `new_flow`). Everything after the
//! parse is generic over the address family (`family`), so an IPv4 packet only ever touches
//! the IPv4 tables and keys.

use lb_common::{
    Addr, ClientPrefix, FlowEntry, ServiceEntry, ServiceKey,
    consts::{events, family, proto, tcp_flags},
    tables::table_index,
    trace::NO_BACKEND_ID,
};

use crate::{
    adopt::RERUN,
    clock,
    established::{NO_FLOW, established, established_apart, found},
    family::{Family, V4, V6, packet_key},
    flows::{Retransmission, promote, promoted, retransmitted_syn},
    fragment::{self, FIRST_FRAGMENT},
    frame::Frame,
    icmp,
    maps::{CLIENT_POOLS, SERVICES, count_event},
    new_flow::{NewFlow, Placement, new_flow},
    packet::{Packet, Parsed, parse},
    passive, persist,
    reply::{backend_flow, to_service_port},
    scratch::{Scratch, scratch},
    tunnel, unserved,
};

/// Handles one frame and returns the hook's verdict.
#[inline(always)]
pub fn process<F: Frame>(frame: &F) -> u32 {
    let Some(scratch) = scratch() else {
        return F::PASS;
    };
    if !frame.for_this_host(scratch) {
        count_event(events::OTHER_HOST);
        return F::PASS;
    }
    // SAFETY: this CPU's scratch area, used by nobody else while the program runs.
    let pkt = unsafe { &mut (*scratch).pkt };
    match parse(frame, pkt) {
        Parsed::Packet => {}
        // A function of its own, which a whole packet never calls. A first fragment comes back
        // to be handled like any packet of its flow: over IPv4 on the path below (a function
        // of its own would not fit on the stack with those it calls); over IPv6, whose path
        // below is a call, through a call of its own, which leaves that path's code as it was
        // (joining it cost whole IPv6 packets 5 ns at tc).
        Parsed::Fragment => match fragment::process(frame, pkt, scratch) {
            FIRST_FRAGMENT if pkt.family == family::IPV4 => {}
            FIRST_FRAGMENT => return first_fragment::<F, V6>(frame, pkt, scratch),
            verdict => return verdict,
        },
        Parsed::Neither => return F::PASS,
    }
    let pkt: &Packet = pkt;
    if pkt.proto != proto::TCP && pkt.proto != proto::UDP {
        return icmp::process(frame, pkt);
    }
    if pkt.family == family::IPV4 {
        match balance::<F, V4>(frame, pkt, scratch) {
            PLACE => place::<F, V4>(frame, pkt, scratch),
            RERUN => rerun(frame),
            verdict => verdict,
        }
    } else {
        match balance_apart::<F, V6>(frame, pkt, scratch) {
            PLACE => place::<F, V6>(frame, pkt, scratch),
            RERUN => rerun(frame),
            verdict => verdict,
        }
    }
}

/// A first fragment of a TCP or UDP datagram, which `fragment::process` read into `pkt` and
/// recorded: handled like any packet of its flow, through [`balance_apart`].
#[inline(always)]
fn first_fragment<F: Frame, Fam: Family>(frame: &F, pkt: &Packet, scratch: *mut Scratch) -> u32 {
    match balance_apart::<F, Fam>(frame, pkt, scratch) {
        PLACE => place::<F, Fam>(frame, pkt, scratch),
        RERUN => rerun(frame),
        verdict => verdict,
    }
}

/// What [`balance`] returns, instead of a verdict, for the first packet of a flow to place:
/// the placement is in the scratch area. No hook's verdict has this value.
const PLACE: u32 = 0xffff_fffd;

/// The verdict for a packet [`balance`] returned [`RERUN`] for: none if the program runs again
/// on it; dropped if it cannot (the daemon that filled `RERUN_XDP`/`RERUN_TC` is gone: the
/// backend sends the packet again, and finds the flow's entry). Inlined into the top level:
/// made from a function of its own, the tail call did not give the packet the verdict of the
/// program's second run (the packet tests saw drops).
#[inline(always)]
fn rerun<F: Frame>(frame: &F) -> u32 {
    frame.rerun();
    count_event(events::REPLY_UNADOPTED);
    F::DROP
}

/// [`balance`] in a function of its own (IPv6: its frame stays off the IPv4 path's).
#[inline(never)]
fn balance_apart<F: Frame, Fam: Family>(frame: &F, pkt: &Packet, scratch: *mut Scratch) -> u32 {
    balance::<F, Fam>(frame, pkt, scratch)
}

/// A TCP or UDP packet of family `Fam`. A backend's packet (its source port is a backend's,
/// see `reply`) finds its flow through the VIPs its backend serves; a client's packet, by its
/// own 5-tuple: one hash lookup decides a packet of an established flow, a second the first
/// packet of a new flow, which is returned as [`PLACE`]; the new flow is placed from the
/// program's top level, so that the stack frames of `balance` and `new_flow` are never on the
/// stack at once (the program's stack is 512 bytes for all frames).
#[inline(always)]
fn balance<F: Frame, Fam: Family>(frame: &F, pkt: &Packet, scratch: *mut Scratch) -> u32 {
    if let Some((entry, half_open)) =
        backend_flow::<Fam>(scratch, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto)
    {
        let verdict = from_backend::<F, Fam>(frame, pkt, scratch, entry, half_open);
        if verdict != NO_FLOW {
            return verdict;
        }
    }
    // A client's packet to a port no service listens on belongs to no flow and no service.
    if !to_service_port(pkt.dport) {
        return unserved::in_no_flow::<F, Fam>(frame, pkt);
    }
    // SAFETY: this CPU's scratch area; the key is not otherwise borrowed on this path.
    let key = unsafe { &mut *Fam::areas(scratch).key };
    packet_key::<Fam>(pkt, key);
    let key: &Fam::Key = key;
    if let Some(entry) = Fam::flows().get_ptr_mut(key) {
        // Inlined for IPv4 (see `established`); apart for IPv6, whose frames are larger.
        let verdict = if Fam::FAMILY == family::IPV4 {
            established::<F, Fam>(frame, pkt, scratch, entry, found::CLIENT)
        } else {
            established_apart::<F, Fam>(frame, pkt, scratch, entry, found::CLIENT)
        };
        if verdict != NO_FLOW {
            return verdict;
        }
    }
    // A client's packet without SYN after its SYN completes the handshake (no service lookup:
    // the half-open entry says the flow was placed).
    let syn = pkt.tcp_flags & tcp_flags::SYN != 0;
    if pkt.proto == proto::TCP
        && !syn
        && let Some(entry) = Fam::half_open().get_ptr_mut(key)
    {
        let verdict = complete::<F, Fam>(frame, pkt, scratch, key, entry);
        if verdict != NO_FLOW {
            return verdict;
        }
    }
    // SAFETY: this CPU's scratch area; the service key is not otherwise borrowed.
    let service_key = unsafe { &mut (*scratch).service };
    *service_key = ServiceKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    let Some(service) = SERVICES.get_ptr(service_key) else {
        return unserved::in_no_flow::<F, Fam>(frame, pkt);
    };
    // (A retransmitted SYN is found when its entry cannot be inserted: see `place`.)
    to_place(pkt, service, NO_BACKEND_ID)
}

/// The client's packet that completes the handshake of the half-open flow whose entry `entry`
/// is stored under `key`: the flow moves to the established table (see `promote`), and the
/// packet follows it; if the move failed, the flow stays half-open for now.
#[inline(always)]
fn complete<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    key: &Fam::Key,
    entry: *mut FlowEntry<Fam::Addr>,
) -> u32 {
    if !promote::<Fam>(key, entry, clock::now_in(scratch)) {
        let how = found::CLIENT | found::HALF_OPEN;
        return established_apart::<F, Fam>(frame, pkt, scratch, entry, how);
    }
    let verdict = established_apart::<F, Fam>(frame, pkt, scratch, entry, found::CLIENT);
    promoted::<Fam>(key);
    verdict
}

/// A backend's packet of the flow whose entry `entry` is stored under the key in the scratch
/// area (in the half-open table if `half_open`, where the packet may be the backend's answer
/// to the client's SYN, or its refusal): rewritten back to the VIP and sent to the client.
#[inline(always)]
fn from_backend<F: Frame, Fam: Family>(
    frame: &F,
    pkt: &Packet,
    scratch: *mut Scratch,
    entry: *mut FlowEntry<Fam::Addr>,
    half_open: bool,
) -> u32 {
    if !half_open {
        // Inlined for IPv4, as a client's packet is.
        return if Fam::FAMILY == family::IPV4 {
            established::<F, Fam>(frame, pkt, scratch, entry, found::BACKEND)
        } else {
            established_apart::<F, Fam>(frame, pkt, scratch, entry, found::BACKEND)
        };
    }
    passive::backend_answer(frame, pkt, entry, clock::now_in(scratch));
    let how = found::BACKEND | found::HALF_OPEN;
    established_apart::<F, Fam>(frame, pkt, scratch, entry, how)
}

/// Records in the scratch area where a new flow of `service` goes (or where a half-open one is
/// re-placed, away from backend `avoid`), and returns [`PLACE`].
#[inline(always)]
fn to_place(pkt: &Packet, service: *const ServiceEntry, avoid: u32) -> u32 {
    // SAFETY: copy the value out at once; the element may be replaced after this.
    let service = unsafe { *service };
    let pool = home_pool(&service, &pkt.src);
    let Some(scratch) = scratch() else {
        return PLACE;
    };
    // SAFETY: this CPU's scratch area.
    unsafe {
        (*scratch).placement = Placement::new(table_index(service.id, pool), avoid, &service).0
    };
    PLACE
}

/// Places the new flow [`to_place`] recorded. A SYN whose half-open entry exists already
/// (the client retransmitted it) is found by the insert, not by a lookup before it, which a
/// new flow would pay for nothing: it follows that entry or, if the backend never answered or
/// the entry was over, is placed once more (away from that backend: see `retransmitted_syn`).
#[inline(always)]
fn place<F: Frame, Fam: Family>(frame: &F, pkt: &Packet, scratch: *mut Scratch) -> u32 {
    // SAFETY: this CPU's scratch area: the placement and the key `balance` left there.
    let (mut placement, key) =
        unsafe { (Placement((*scratch).placement), &*Fam::areas(scratch).key) };
    let syn = pkt.proto == proto::TCP && pkt.tcp_flags & tcp_flags::SYN != 0;
    let (service_id, now) = (placement.owner().0, clock::now_in(scratch));
    pkt.sticky.set(persist::sticky(service_id, &pkt.src, now));
    // SAFETY: this CPU's scratch area (see `persist`).
    unsafe { (*scratch).placed = NO_BACKEND_ID };
    // Twice at most: the second time away from the backend that never answered.
    for _ in 0..2 {
        let entry = match new_flow::<F, Fam>(frame, pkt, key, placement) {
            NewFlow::Done(verdict) => {
                persist::remember(scratch, service_id, now);
                return tunnel::after_new_flow::<F, Fam>(scratch, verdict);
            }
            NewFlow::Raced(entry) => entry,
        };
        if syn
            && !placement.replacing()
            && let Retransmission::Replace(avoid) = retransmitted_syn::<Fam>(key, entry)
        {
            placement = placement.avoiding(avoid);
            continue;
        }
        let how = found::table(pkt.proto == proto::TCP);
        match established_apart::<F, Fam>(frame, pkt, scratch, entry, how) {
            // The entry was over (a retransmitted SYN's, silent past its timeout) and is
            // gone: the packet starts a new flow.
            NO_FLOW => continue,
            verdict => return verdict,
        }
    }
    F::DROP
}

/// The home pool of a new flow from `client`: the pool of the longest client prefix that
/// matches it, or the service's default pool; pool 0 for a service without pools.
#[inline(always)]
fn home_pool(service: &ServiceEntry, client: &Addr) -> u32 {
    if service.pools <= 1 {
        return 0;
    }
    let Some(scratch) = scratch() else {
        return service.default_pool as u32;
    };
    // SAFETY: this CPU's scratch area; the prefix key is used here only. An Addr's four words
    // hold the address's 16 bytes in wire order.
    let key = unsafe {
        let key = &mut (*scratch).prefix;
        key.prefix_len = 128;
        key.data = core::mem::transmute::<Addr, ClientPrefix>(*client);
        &*key
    };
    match CLIENT_POOLS.get_value_ptr_mut(service.id, key) {
        // SAFETY: a valid map value, read at once.
        Some(pool) if unsafe { *pool } < service.pools as u32 => unsafe { *pool },
        _ => service.default_pool as u32,
    }
}
