//! Sends a rewritten packet on its way: the kernel's FIB chooses the next hop and its MAC
//! addresses, then the packet leaves through the interface it arrived on (`XDP_TX`) or another
//! interface xlb is attached to (`XDP_REDIRECT`). When the FIB cannot answer (for example no
//! neighbour entry yet), the packet goes to the kernel, which resolves and forwards it.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{FlowKey, consts::events};
use network_types::eth::EthHdr;

use crate::{
    maps::{EGRESS_PORTS, count_event},
    nat::decrement_ttl_ipv4,
    packet::{Packet, ptr_at},
};

/// `AF_INET` as the FIB helper expects it.
const AF_INET: u8 = 2;

/// Forwards an IPv4 packet whose addresses and ports were rewritten to `tuple`. Returns the
/// XDP verdict.
#[inline(always)]
pub fn forward_ipv4(ctx: &XdpContext, pkt: &Packet, tuple: &FlowKey) -> u32 {
    let (src, dst) = (&tuple.src_addr, &tuple.dst_addr);
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid "no options" request.
    let mut fib: bpf_fib_lookup = unsafe { zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = pkt.proto;
    fib.sport = tuple.src_port;
    fib.dport = tuple.dst_port;
    fib.__bindgen_anon_1.tot_len = pkt.ip_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);

    // SAFETY: the helper reads and writes `fib`, whose size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        count_event(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            events::FIB_NO_NEIGHBOUR
        } else {
            events::FIB_FAILED
        });
        return xdp_action::XDP_PASS;
    }

    let same_interface = fib.ifindex == ctx.ingress_ifindex() as u32;
    if !same_interface && EGRESS_PORTS.get(fib.ifindex).is_none() {
        count_event(events::EGRESS_NOT_XLB);
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    if decrement_ttl_ipv4(ctx, pkt).is_none() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: ptr_at checked the Ethernet header lies inside the frame.
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if same_interface {
        xdp_action::XDP_TX
    } else {
        EGRESS_PORTS
            .redirect(fib.ifindex, 0)
            .unwrap_or(xdp_action::XDP_ABORTED)
    }
}
