//! Per-CPU scratch space for the packet being processed: what does not fit on the 512-byte BPF
//! stack, which all of the program's functions share.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::{PerCpuArray, lpm_trie::Key},
    macros::btf_map,
};
use lb_common::{
    Addr, BackendVipKey, ClientPrefix, FlowEntry, FlowKey, FlowKey4, FragmentKey4, FragmentKey6,
    Hop, ServiceKey,
};

use crate::{
    clock::ClockCache,
    packet::{Packet, Quote},
};

/// What one packet needs beyond registers: its parsed headers, its flow key, a backend's key,
/// an entry being built, a fragment's datagram key (each in its family's
/// form: see `family`), and the FIB helper's parameter block.
#[repr(C)]
pub struct Scratch {
    /// The parsed packet.
    pub pkt: Packet,
    /// An IPv4 packet's 5-tuple as it arrived (or, for ICMP errors, the quoted flow's).
    pub key4: FlowKey4,
    /// An IPv4 backend's key (`BACKEND_VIPS4`).
    pub backend4: BackendVipKey<u32>,
    /// The 5-tuple of an IPv4 flow's replies (`REPLY_VIPS4`).
    pub reply4: FlowKey4,
    /// An IPv4 flow entry being built.
    pub entry4: FlowEntry<u32>,
    /// An IPv6 packet's 5-tuple, as `key4`.
    pub key6: FlowKey,
    /// An IPv6 backend's key (`BACKEND_VIPS6`).
    pub backend6: BackendVipKey<Addr>,
    /// The 5-tuple of an IPv6 flow's replies (`REPLY_VIPS6`).
    pub reply6: FlowKey,
    /// An IPv6 flow entry being built.
    pub entry6: FlowEntry<Addr>,
    /// An IPv4 fragment's datagram (`FRAGMENTS4`).
    pub fragment4: FragmentKey4,
    /// An IPv6 fragment's datagram (`FRAGMENTS6`).
    pub fragment6: FragmentKey6,
    /// The key of the service a packet may be for.
    pub service: ServiceKey,
    /// The packet an ICMP error quotes.
    pub quote: Quote,
    /// Where a new flow goes (`balance::Placement`).
    pub placement: u64,
    /// The backend a new flow was recorded on, or `NO_BACKEND_ID`: set when it is recorded,
    /// read to remember it (`persist`).
    pub placed: u32,
    /// A client's address as the key of a service's prefixes (`CLIENT_POOLS`).
    pub prefix: Key<ClientPrefix>,
    /// A tunnel flow's packet's way to its backend, for the encapsulating program.
    pub tunnel: TunnelJob,
    /// Parameters and answer of `bpf_fib_lookup`.
    pub fib: bpf_fib_lookup,
    /// The CPU's last reading of the clock: unlike the rest, kept from one packet to the next.
    pub clock: ClockCache,
    /// The MAC address of the interface the CPU's last XDP frame arrived on, kept from one
    /// packet to the next (see `frame::XdpFrame::for_this_host`).
    pub mac: MacCache,
}

/// An interface's MAC address (`IFACE_MACS`), as last looked up on this CPU.
#[repr(C)]
pub struct MacCache {
    /// The interface; 0 (no interface has it) before the first lookup.
    pub ifindex: u32,
    /// `IFACE_MACS_GENERATION` when it was looked up.
    pub generation: u32,
    /// Its address, and two bytes of padding.
    pub mac: [u8; 8],
}

/// Per-CPU scratch space for one packet at a time, so that these structures stay off the
/// 512-byte BPF stack, which the program's functions share. Written and read only by the
/// program, within one packet (but for the clock cache) (both hooks run a packet to completion on its CPU).
#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// This CPU's scratch area.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// A tunnel flow's packet's way to its backend, left in the scratch area by the balancer for
/// the encapsulating program (see `tunnel`).
#[repr(C)]
pub struct TunnelJob {
    /// The next hop toward the backend (the FIB's answer for the backend's address).
    pub hop: Hop,
    /// The flow's flags: which encapsulation (`flow_flags::IPIP` or `GUE`).
    pub flags: u8,
    /// Explicit padding.
    pub _pad: [u8; 5],
    /// The backend's address, the outer destination (IPv4: the first word).
    pub backend: Addr,
}
