//! Sends a rewritten packet on its way. The kernel's FIB chooses the next hop and its MAC
//! addresses; a flow's entry caches that answer for each direction and asks the FIB again
//! about once a second (when the entry is refreshed), so established packets skip the lookup.
//! A new flow asks nothing: its next hop toward the backend is the one cached for the backend
//! (`BACKEND_HOPS`, at most a second old), and its next hop toward the client is where its
//! first packet came from (see [`arrival_hop`]). The packet leaves through the interface it arrived on or another interface xlb is attached to
//! (`XDP_TX` / `XDP_REDIRECT`, or `bpf_redirect` on tc). When the FIB cannot answer (for
//! example no neighbour entry yet, or a packet too big for the egress MTU), the packet goes to
//! the kernel, which resolves and forwards it; a DSR packet, which the kernel could not
//! forward, is dropped (the backend's health checks keep its neighbour entry resolved).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
};
use lb_common::{Addr, BackendHop, Hop, consts::events};
use network_types::eth::EthHdr;

use crate::{
    frame::{Frame, ptr_at},
    maps::{BACKEND_HOPS, EGRESS_PORTS, VETH_PEERS, count_event},
    nat::decrement_ttl,
    packet::Packet,
    scratch::scratch,
};

/// `AF_INET` and `AF_INET6` as the FIB helper expects them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The addresses and ports of a packet after its rewrite: what the FIB is asked about (the
/// protocol and family are the packet's). References, not copies: the stack is small.
pub struct Route<'a> {
    /// Source address.
    pub src: &'a Addr,
    /// Destination address.
    pub dst: &'a Addr,
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// Direct server return: the packet keeps the VIP as its destination, so the kernel could
    /// not forward it to the backend (it would route it back towards the clients, or take it
    /// for itself): when the FIB cannot answer, the packet is dropped, not passed.
    pub dsr: bool,
}

/// Asks the FIB for the next hop of a packet rewritten to `route`. `Err` carries the verdict
/// when the packet must go to the kernel instead.
#[inline(always)]
pub fn resolve<F: Frame>(frame: &F, pkt: &Packet, route: &Route) -> Result<Hop, u32> {
    let Some(scratch) = scratch() else {
        return Err(F::PASS);
    };
    // SAFETY: this CPU's scratch area, used by nobody else while the program runs.
    let fib = unsafe { &mut (*scratch).fib };
    let rc = ask(frame, pkt, route, fib);
    let unresolved = if route.dsr { F::DROP } else { F::PASS };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        count_event(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            events::FIB_NO_NEIGHBOUR
        } else {
            events::FIB_FAILED
        });
        return Err(unresolved);
    }
    if fib.ifindex != frame.ingress_ifindex() && EGRESS_PORTS.get(fib.ifindex).is_none() {
        count_event(events::EGRESS_NOT_XLB);
        return Err(unresolved);
    }
    Ok(Hop {
        ifindex: fib.ifindex,
        dst_mac: fib.dmac,
        src_mac: fib.smac,
        peer: veth_peer::<F>(fib.ifindex) as u8,
        _pad: 0,
        _tail: 0,
    })
}

/// Asks the FIB about a packet rewritten to `route`, in `fib`: the helper's answer.
#[inline(always)]
fn ask<F: Frame>(frame: &F, pkt: &Packet, route: &Route, fib: &mut bpf_fib_lookup) -> i64 {
    let (src, dst) = (route.src, route.dst);
    // Every input field is set: a request without options.
    fib.__bindgen_anon_2.flowinfo = 0;
    fib.l4_protocol = pkt.proto;
    fib.sport = route.sport;
    fib.dport = route.dport;
    fib.__bindgen_anon_1.tot_len = frame.fib_tot_len(pkt.ip_len);
    fib.ifindex = frame.ingress_ifindex();
    if pkt.is_ipv6() {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = dst[0];
    }
    // SAFETY: the helper reads and writes `fib`, whose size we pass.
    unsafe { fib_lookup(frame.raw(), fib, size_of::<bpf_fib_lookup>() as i32, 0) }
}

/// Whether the packet, as it is, is addressed to this host (the FIB would not forward it: a
/// local address, or broadcast): a health check's answer, say, to the balancer itself.
#[inline(always)]
pub fn to_this_host<F: Frame>(frame: &F, pkt: &Packet) -> bool {
    let Some(scratch) = scratch() else {
        return true;
    };
    // SAFETY: this CPU's scratch area, used by nobody else while the program runs.
    let fib = unsafe { &mut (*scratch).fib };
    let route = Route {
        src: &pkt.src,
        dst: &pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        dsr: false,
    };
    ask(frame, pkt, &route, fib) == BPF_FIB_LKUP_RET_NOT_FWDED as i64
}

/// Whether the tc program hands packets for `ifindex` straight to its veth peer (`VETH_PEERS`).
#[inline(always)]
fn veth_peer<F: Frame>(ifindex: u32) -> bool {
    // SAFETY: a lookup by a key on the stack; only presence is read.
    F::SKB && unsafe { VETH_PEERS.get(&ifindex) }.is_some()
}

/// The next hop toward backend `backend_id` for a new flow's first packet, rewritten to
/// `route`: the one cached in `BACKEND_HOPS` if it is fresh (see `BackendHop::fresh`), else
/// the FIB's answer, which is cached for the next new flows.
#[inline(always)]
pub fn backend_hop<F: Frame>(
    frame: &F,
    pkt: &Packet,
    route: &Route,
    backend_id: u32,
    now: u64,
) -> Result<Hop, u32> {
    if let Some(cached) = BACKEND_HOPS.get(backend_id)
        && cached.fresh(now)
    {
        return Ok(cached.hop);
    }
    let hop = resolve(frame, pkt, route)?;
    cache_backend_hop(backend_id, &hop, now);
    Ok(hop)
}

/// Caches the FIB's answer `hop` for backend `backend_id` at `now` (`BACKEND_HOPS`). Other
/// CPUs may write the same element at the same time; each writes a whole answer of the FIB,
/// and a reader that sees a mix of two (only while the answer itself changes) uses it for one
/// flow's first second at most.
#[inline(always)]
pub fn cache_backend_hop(backend_id: u32, hop: &Hop, now: u64) {
    if let Some(cached) = BACKEND_HOPS.get_ptr_mut(backend_id) {
        // SAFETY: the backend's element of an array, shared by the CPUs (see above).
        unsafe {
            *cached = BackendHop {
                resolved_ns: now,
                hop: *hop,
                _pad: 0,
            }
        };
    }
}

/// The next hop back to where the frame came from: its interface, its source MAC as the
/// destination and its destination MAC as the source. A new NAT flow's replies take it toward
/// the client until the flow's first refresh (within a second) asks the FIB: with routes
/// that are symmetric, as they are on almost every host, the same answer, with no lookup on
/// the handshake's path. `None` if the Ethernet header cannot be read.
#[inline(always)]
pub fn arrival_hop<F: Frame>(frame: &F) -> Option<Hop> {
    let eth = ptr_at::<F, EthHdr>(frame, 0)?;
    let ifindex = frame.ingress_ifindex();
    // SAFETY: ptr_at checked the Ethernet header lies inside the frame.
    let (dst_mac, src_mac) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    Some(Hop {
        ifindex,
        dst_mac,
        src_mac,
        peer: veth_peer::<F>(ifindex) as u8,
        _pad: 0,
        _tail: 0,
    })
}

/// Sends a rewritten packet to `hop`: TTL or hop limit decremented as a router does, MAC
/// addresses set, out of the same interface or another one (see [`Frame::transmit`]).
#[inline(always)]
pub fn send<F: Frame>(frame: &F, pkt: &Packet, hop: &Hop) -> u32 {
    if decrement_ttl(frame, pkt).is_none() {
        return F::PASS;
    }
    transmit(frame, hop)
}

/// Sends a packet whose TTL has been decremented already to `hop`: MAC addresses set, out of
/// the same interface or another one (or, at tc, straight to the interface's veth peer).
#[inline(always)]
pub fn transmit<F: Frame>(frame: &F, hop: &Hop) -> u32 {
    // After the TTL (whose change may go through a helper, which invalidates packet pointers).
    let Some(eth) = ptr_at::<F, EthHdr>(frame, 0) else {
        return F::PASS;
    };
    // SAFETY: ptr_at checked the Ethernet header lies inside the frame.
    unsafe {
        (*eth).dst_addr = hop.dst_mac;
        (*eth).src_addr = hop.src_mac;
    }
    frame.transmit(hop.ifindex, hop.peer != 0)
}
