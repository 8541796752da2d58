//! Sends a rewritten packet on its way. The kernel's FIB chooses the next hop and its MAC
//! addresses; each direction of a flow caches that answer in its flow entry and asks the FIB
//! again about once a second (when the entry is refreshed), so established packets skip the
//! lookup. The
//! packet leaves through the interface it arrived on or another interface xlb is attached to
//! (`XDP_TX` / `XDP_REDIRECT`, or `bpf_redirect` on tc). When the FIB cannot answer (for
//! example no neighbour entry yet, or a packet too big for the egress MTU), the packet goes to
//! the kernel, which resolves and forwards it; a DSR packet, which the kernel could not
//! forward, is dropped (the backend's health checks keep its neighbour entry resolved).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
};
use lb_common::{Addr, FlowAddr, FlowEntry, consts::events};
use network_types::eth::EthHdr;

use crate::{
    frame::{Frame, ptr_at},
    maps::{EGRESS_PORTS, VETH_PEERS, count_event},
    nat::decrement_ttl,
    packet::Packet,
    scratch::scratch,
};

/// `AF_INET` and `AF_INET6` as the FIB helper expects them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a packet goes next.
pub struct NextHop {
    ifindex: u32,
    /// Hand the packet to the interface's veth peer (tc only, see `VETH_PEERS`).
    peer: bool,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
}

impl NextHop {
    /// Caches this next hop in a flow entry.
    #[inline(always)]
    pub fn store<A: FlowAddr>(&self, entry: &mut FlowEntry<A>) {
        entry.hop_ifindex = self.ifindex;
        entry.hop_peer = self.peer as u8;
        entry.hop_dst_mac = self.dst_mac;
        entry.hop_src_mac = self.src_mac;
    }

    /// The next hop cached in a flow entry (none yet, to be resolved, if its `hop_ifindex` is 0).
    #[inline(always)]
    pub fn cached<A: FlowAddr>(entry: &FlowEntry<A>) -> Self {
        Self {
            ifindex: entry.hop_ifindex,
            peer: entry.hop_peer != 0,
            dst_mac: entry.hop_dst_mac,
            src_mac: entry.hop_src_mac,
        }
    }
}

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
pub fn resolve<F: Frame>(frame: &F, pkt: &Packet, route: &Route) -> Result<NextHop, u32> {
    let (src, dst) = (route.src, route.dst);
    let Some(scratch) = scratch() else {
        return Err(F::PASS);
    };
    // SAFETY: this CPU's scratch area, used by nobody else while the program runs.
    let fib = unsafe { &mut (*scratch).fib };
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
    let rc = unsafe { fib_lookup(frame.raw(), fib, size_of::<bpf_fib_lookup>() as i32, 0) };
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
    Ok(NextHop {
        ifindex: fib.ifindex,
        // SAFETY: a lookup by a key on the stack; only presence is read.
        peer: F::SKB && unsafe { VETH_PEERS.get(&fib.ifindex) }.is_some(),
        dst_mac: fib.dmac,
        src_mac: fib.smac,
    })
}

/// Sends a rewritten packet to `hop`: TTL or hop limit decremented as a router does, MAC
/// addresses set, out of the same interface or another one (see [`Frame::transmit`]).
#[inline(always)]
pub fn send<F: Frame>(frame: &F, pkt: &Packet, hop: &NextHop) -> u32 {
    if decrement_ttl(frame, pkt).is_none() {
        return F::PASS;
    }
    transmit(frame, hop)
}

/// Sends a packet whose TTL has been decremented already to `hop`: MAC addresses set, out of
/// the same interface or another one (or, at tc, straight to the interface's veth peer).
#[inline(always)]
pub fn transmit<F: Frame>(frame: &F, hop: &NextHop) -> u32 {
    // After the TTL (whose change may go through a helper, which invalidates packet pointers).
    let Some(eth) = ptr_at::<F, EthHdr>(frame, 0) else {
        return F::PASS;
    };
    // SAFETY: ptr_at checked the Ethernet header lies inside the frame.
    unsafe {
        (*eth).dst_addr = hop.dst_mac;
        (*eth).src_addr = hop.src_mac;
    }
    frame.transmit(hop.ifindex, hop.peer)
}
