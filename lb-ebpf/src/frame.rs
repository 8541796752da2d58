//! The two hooks xlb runs at, behind one interface: XDP (a frame straight from the driver, or
//! from the generic hook after the stack built an skb) and tc ingress (an skb, after GRO).
//!
//! Parsing, balancing, NAT and forwarding are written once, generic over [`Frame`]; what differs
//! between the hooks is small and lives here:
//!
//! - **Reaching the bytes.** An XDP frame is linear; an skb may keep its payload (and, after
//!   GRO, part of its headers) in pages, so the tc hook pulls the headers in first.
//! - **Checksums.** An skb may carry a *partial* checksum (`CHECKSUM_PARTIAL`: the sender left
//!   the TCP/UDP checksum to the NIC, and the field holds only the pseudo-header's sum; every
//!   packet from a local socket through a veth with transmit checksum offload, and every GRO
//!   super-packet, is like this). An RFC 1624 update moves such a field the wrong way. The
//!   kernel's `bpf_l4_csum_replace` knows the skb's checksum state and updates the field (and
//!   `skb->csum` of `CHECKSUM_COMPLETE` packets) correctly; XDP has no such state and no such
//!   helper, so XDP is correct only for frames whose checksums are complete.
//! - **Sizes.** tc forwards GSO super-packets (up to 64 KB) and lets the kernel segment them; the
//!   FIB lookup then checks the skb against the MTU the way the kernel does (`tot_len = 0`).
//!   Generic XDP sees the same super-packets but can neither redirect them nor tell their
//!   checksum state, so it passes them to the kernel, counted (`oversized_passed`).
//! - **Verdicts and transmission.** `XDP_TX` / `XDP_REDIRECT` through the devmap, or
//!   `bpf_redirect` to the egress of any interface; at tc, to a veth whose peer lives in another
//!   network namespace, `bpf_redirect_peer`, which hands the packet to the peer's receive path
//!   directly (see `VETH_PEERS`).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, TC_ACT_REDIRECT, TC_ACT_SHOT,
        TC_ACT_UNSPEC, bpf_adj_room_mode, bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED,
        xdp_action,
    },
    helpers::{
        bpf_check_mtu, bpf_csum_update, bpf_redirect, bpf_redirect_peer, bpf_skb_change_tail,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};

use crate::{
    maps::{
        EGRESS_PORTS, ENCAP_TC, ENCAP_XDP, IFACE_MACS, IFACE_MACS_GENERATION, RERUN_TC, RERUN_XDP,
    },
    scratch::Scratch,
};

/// Frames of a standard 1500-byte MTU are at most this long (Ethernet header included); only
/// longer XDP frames need the MTU check (see [`XdpFrame::oversized`]).
const STANDARD_FRAME: usize = 1514;

/// One packet as a hook hands it to the program. See the module documentation.
pub trait Frame {
    /// True for the tc hook: the packet is an skb, and its checksums must be changed through
    /// the skb helpers (the `skb_*` methods below), never by arithmetic on the field alone.
    const SKB: bool;
    /// Verdict: hand the packet to the kernel's stack.
    const PASS: u32;
    /// Verdict: drop the packet.
    const DROP: u32;

    /// Address of the first byte of directly accessible packet data (the Ethernet header).
    fn data(&self) -> usize;
    /// Address one past the last directly accessible byte.
    fn data_end(&self) -> usize;
    /// Length of the whole packet from the Ethernet header, including data not directly
    /// accessible (an skb's pages).
    fn len(&self) -> usize;
    /// Index of the interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;
    /// Whether the frame is addressed to the interface it arrived on (unicast to its MAC), as
    /// the kernel would accept it for itself: a frame another host's MAC (a bridge flooding
    /// it), broadcast or multicast is not balanced. Interfaces whose MAC is not known pass.
    fn for_this_host(&self, scratch: *mut Scratch) -> bool;
    /// The context pointer helpers take.
    fn raw(&self) -> *mut c_void;
    /// Makes the first `len` bytes (at most the packet's length) directly accessible. Every
    /// packet pointer taken before is invalid afterwards.
    fn pull(&self, len: usize);
    /// Whether the packet is too big to be transmitted as one frame (a GSO super-packet that
    /// only generic XDP can see, and cannot handle).
    fn oversized(&self) -> bool;
    /// The `tot_len` to give the FIB lookup for a packet whose IP length is `ip_len`: the
    /// lookup checks it against the egress MTU; 0 lets it check the skb as the kernel would.
    fn fib_tot_len(&self, ip_len: u16) -> u16;
    /// Sends the packet out of interface `ifindex` (the one it came in on, or another one xlb
    /// is attached to) and returns the verdict that does it. `peer` (tc only; XDP ignores it):
    /// hand it to the veth peer of `ifindex` instead, as if `ifindex` had sent it.
    fn transmit(&self, ifindex: u32, peer: bool) -> u32;
    /// Runs this hook's program again on the frame, from its start (a tail call through
    /// `RERUN_XDP`/`RERUN_TC`, which the daemon fills with the programs it loaded); returns
    /// only if that cannot be done (the daemon that filled it is gone).
    fn rerun(&self);
    /// Runs this hook's encapsulating program on the frame (a tail call through
    /// `ENCAP_XDP`/`ENCAP_TC`, see `tunnel`); returns only if that cannot be done.
    fn encapsulate(&self);
    /// Whether `verdict` sends the packet on (`transmit`'s, when it succeeds).
    fn sent(verdict: u32) -> bool;
    /// Makes room for `len` bytes of outer headers between the Ethernet header and the IP
    /// header: at XDP, the frame's start moves `len` bytes back (the Ethernet header is then
    /// written anew); at tc, `bpf_skb_adjust_room` inserts them after the MAC header with the
    /// encapsulation `flags`, so that a GSO packet's segments are cut to fit. Packet pointers
    /// taken before are invalid after. `None` if the kernel refused.
    fn grow_head(&self, len: u32, flags: u64) -> Option<()>;
    /// Cuts the frame to its first `len` bytes. `None` if the kernel refused.
    fn truncate(&self, len: usize) -> Option<()>;
    /// tc only: adds `sum`, the one's-complement sum of bytes just written in front of the
    /// packet, to a `CHECKSUM_COMPLETE` skb's `csum` (which covers the packet from its IP
    /// header), so that the sum stays that of the bytes the skb holds.
    fn csum_added(&self, sum: u32);
    /// tc only: `bpf_l4_csum_replace` on the checksum at `offset`.
    fn skb_l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()>;
    /// tc only: stores `bytes` at `offset`, updating `skb->csum` of a `CHECKSUM_COMPLETE`
    /// packet for the change (for fields no checksum in the packet compensates).
    fn skb_store_recompute(&self, offset: usize, bytes: &[u32; 4], len: usize) -> Option<()>;
}

/// A pointer to a `T` at `offset` in the directly accessible data, if the whole `T` lies there.
#[inline(always)]
pub fn ptr_at<F: Frame, T>(frame: &F, offset: usize) -> Option<*mut T> {
    if offset > MAX_OFFSET {
        return None;
    }
    let start = frame.data();
    if start + offset + size_of::<T>() > frame.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// `skb->pkt_type` of a frame addressed to the host (`PACKET_HOST` in linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// Offsets beyond this are refused before they touch a packet pointer (headers are always
/// near the start). The check also gives the verifier a bound on offsets that were stored in
/// the scratch map, whose values it cannot know.
const MAX_OFFSET: usize = 0x3fff;

/// `bpf_l4_csum_replace` flags for a TCP or UDP checksum: the header-field size, and for UDP
/// over IPv4 "a zero checksum means none, and a computed zero is sent as all ones".
#[inline(always)]
pub fn l4_csum_flags(size: u64, udp: bool, pseudo_header: bool) -> u64 {
    let mut flags = size;
    if udp {
        flags |= BPF_F_MARK_MANGLED_0 as u64;
    }
    if pseudo_header {
        flags |= BPF_F_PSEUDO_HDR as u64;
    }
    flags
}

/// The XDP hook (native or generic).
pub struct XdpFrame(pub XdpContext);

impl Frame for XdpFrame {
    const SKB: bool = false;
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

    // The context fields are read with volatile loads: the verifier accepts only loads of
    // exactly their 32 bits, and LLVM may otherwise merge `data` and `data_end` into one
    // 64-bit load.
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: `ctx` points to the program's context for the whole run.
        unsafe { core::ptr::read_volatile(&(*self.0.ctx).data) as usize }
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as in `data`.
        unsafe { core::ptr::read_volatile(&(*self.0.ctx).data_end) as usize }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: as in `data`.
        unsafe { core::ptr::read_volatile(&(*self.0.ctx).ingress_ifindex) }
    }

    #[inline(always)]
    fn for_this_host(&self, scratch: *mut Scratch) -> bool {
        let ifindex = self.ingress_ifindex();
        // SAFETY: this CPU's scratch area, used by nobody else while the program runs.
        let cache = unsafe { &mut (*scratch).mac };
        let generation = IFACE_MACS_GENERATION.get(0).copied().unwrap_or(0);
        if cache.ifindex != ifindex || cache.generation != generation {
            let Some(mac) = IFACE_MACS.get_ptr(&ifindex) else {
                return true;
            };
            // SAFETY: the map's value, valid while the program runs.
            cache.mac = unsafe { *mac };
            cache.ifindex = ifindex;
            cache.generation = generation;
        }
        let Some(destination) = ptr_at::<Self, [u8; 6]>(self, 0) else {
            // Shorter than an Ethernet header: the parser refuses it.
            return true;
        };
        // SAFETY: ptr_at checked the six bytes lie inside the frame.
        let destination = unsafe { *destination };
        destination
            == [
                cache.mac[0],
                cache.mac[1],
                cache.mac[2],
                cache.mac[3],
                cache.mac[4],
                cache.mac[5],
            ]
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn pull(&self, _len: usize) {}

    /// Native XDP frames never exceed the MTU. Generic XDP runs after GRO and on GSO packets
    /// from the local stack, whose frames may be up to 64 KB; `bpf_check_mtu` (Linux 5.12)
    /// tells them apart, and only frames longer than a standard one pay for the call.
    #[inline(always)]
    fn oversized(&self) -> bool {
        if self.len() <= STANDARD_FRAME {
            return false;
        }
        let mut mtu: u32 = 0;
        // SAFETY: the helper reads the context and writes `mtu`.
        let rc = unsafe { bpf_check_mtu(self.raw(), 0, &mut mtu, 0, 0) };
        rc == BPF_MTU_CHK_RET_FRAG_NEEDED as i64
    }

    #[inline(always)]
    fn fib_tot_len(&self, ip_len: u16) -> u16 {
        ip_len
    }

    #[inline(always)]
    fn transmit(&self, ifindex: u32, _peer: bool) -> u32 {
        if ifindex == self.ingress_ifindex() {
            xdp_action::XDP_TX
        } else {
            EGRESS_PORTS
                .redirect(ifindex, 0)
                .unwrap_or(xdp_action::XDP_ABORTED)
        }
    }

    #[inline(always)]
    fn skb_l4_csum_replace(&self, _: usize, _: u64, _: u64, _: u64) -> Option<()> {
        None
    }

    #[inline(always)]
    fn skb_store_recompute(&self, _: usize, _: &[u32; 4], _: usize) -> Option<()> {
        None
    }

    #[inline(always)]
    fn rerun(&self) {
        // SAFETY: a tail call into the XDP program the daemon put in slot 0 (this one).
        unsafe { RERUN_XDP.tail_call(&self.0, 0) };
    }

    #[inline(always)]
    fn sent(verdict: u32) -> bool {
        verdict == xdp_action::XDP_TX || verdict == xdp_action::XDP_REDIRECT
    }

    #[inline(always)]
    fn encapsulate(&self) {
        // SAFETY: a tail call into the encapsulating XDP program the daemon put in slot 0.
        unsafe { ENCAP_XDP.tail_call(&self.0, 0) };
    }

    #[inline(always)]
    fn grow_head(&self, len: u32, _flags: u64) -> Option<()> {
        // SAFETY: the helper moves the frame's start within its headroom.
        let rc = unsafe { bpf_xdp_adjust_head(self.0.ctx, -(len as i32)) };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn truncate(&self, len: usize) -> Option<()> {
        let cut = self.len().checked_sub(len)?;
        // SAFETY: the helper moves the frame's end back within the frame.
        let rc = unsafe { bpf_xdp_adjust_tail(self.0.ctx, -(cut as i32)) };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn csum_added(&self, _sum: u32) {}
}

/// The tc ingress hook (tcx, or clsact on kernels before 6.6).
pub struct TcFrame(pub TcContext);

impl Frame for TcFrame {
    const SKB: bool = true;
    // "Not decided here": the next tcx program, or the stack.
    const PASS: u32 = TC_ACT_UNSPEC as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;

    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: `skb` points to the program's context for the whole run.
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).data) as usize }
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as in `data`.
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).data_end) as usize }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: as in `data`.
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).ifindex) }
    }

    #[inline(always)]
    fn for_this_host(&self, _scratch: *mut Scratch) -> bool {
        // SAFETY: as in `data`. The kernel set the skb's packet type from its destination
        // MAC (eth_type_trans) before tc ingress.
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).pkt_type) == PACKET_HOST }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn pull(&self, len: usize) {
        let len = if len < self.len() { len } else { self.len() };
        if self.data() + len > self.data_end() {
            // A failure leaves the data as it was; the bounds checks then refuse the packet.
            let _ = self.0.pull_data(len as u32);
        }
    }

    #[inline(always)]
    fn oversized(&self) -> bool {
        false
    }

    #[inline(always)]
    fn fib_tot_len(&self, _ip_len: u16) -> u16 {
        0
    }

    #[inline(always)]
    fn transmit(&self, ifindex: u32, peer: bool) -> u32 {
        // SAFETY: the helpers only record where the packet goes.
        let verdict = unsafe {
            if peer {
                bpf_redirect_peer(ifindex, 0)
            } else {
                bpf_redirect(ifindex, 0)
            }
        };
        if verdict == TC_ACT_REDIRECT as i64 {
            TC_ACT_REDIRECT as u32
        } else {
            TC_ACT_SHOT as u32
        }
    }

    #[inline(always)]
    fn skb_l4_csum_replace(&self, offset: usize, from: u64, to: u64, flags: u64) -> Option<()> {
        self.0.l4_csum_replace(offset, from, to, flags).ok()
    }

    #[inline(always)]
    fn skb_store_recompute(&self, offset: usize, bytes: &[u32; 4], len: usize) -> Option<()> {
        // SAFETY: the helper copies `len` (at most 16) bytes from `bytes` into the packet.
        let rc = unsafe {
            aya_ebpf::helpers::bpf_skb_store_bytes(
                self.0.skb.skb,
                offset as u32,
                bytes.as_ptr().cast(),
                len as u32,
                BPF_F_RECOMPUTE_CSUM as u64,
            )
        };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn rerun(&self) {
        // SAFETY: a tail call into the tc program the daemon put in slot 0 (this one).
        unsafe { RERUN_TC.tail_call(&self.0, 0) };
    }

    #[inline(always)]
    fn sent(verdict: u32) -> bool {
        verdict == TC_ACT_REDIRECT as u32
    }

    #[inline(always)]
    fn encapsulate(&self) {
        // SAFETY: a tail call into the encapsulating tc program the daemon put in slot 0.
        unsafe { ENCAP_TC.tail_call(&self.0, 0) };
    }

    #[inline(always)]
    fn grow_head(&self, len: u32, flags: u64) -> Option<()> {
        self.0
            .adjust_room(len as i32, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, flags)
            .ok()
    }

    #[inline(always)]
    fn truncate(&self, len: usize) -> Option<()> {
        // SAFETY: the helper cuts the skb's data at `len`.
        let rc = unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) };
        (rc == 0).then_some(())
    }

    #[inline(always)]
    fn csum_added(&self, sum: u32) {
        // SAFETY: the helper changes only a CHECKSUM_COMPLETE skb's csum (others: an error,
        // ignored: their sums do not cover the packet).
        let _ = unsafe { bpf_csum_update(self.0.skb.skb, sum) };
    }
}
