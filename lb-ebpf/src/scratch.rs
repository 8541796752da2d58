//! Per-CPU scratch space for the packet being processed: what does not fit on the 512-byte BPF
//! stack, which all of the program's functions share.

use aya_ebpf::{bindings::bpf_fib_lookup, btf_maps::PerCpuArray, macros::btf_map};
use lb_common::{FlowEntry, FlowKey};

use crate::packet::Packet;

/// What one packet needs beyond registers: its parsed headers, its flow key, the key of the
/// other direction, an entry being built, and the FIB helper's parameter block.
#[repr(C)]
pub struct Scratch {
    /// The parsed packet.
    pub pkt: Packet,
    /// Its 5-tuple as it arrived (or, for ICMP errors, the quoted flow's).
    pub key: FlowKey,
    /// The key of the other direction of a flow.
    pub peer: FlowKey,
    /// A flow entry being built.
    pub entry: FlowEntry,
    /// Parameters and answer of `bpf_fib_lookup`.
    pub fib: bpf_fib_lookup,
}

/// Per-CPU scratch space for one packet at a time, so that these structures stay off the
/// 512-byte BPF stack, which the program's functions share. Written and read only by the
/// program, within one packet (both hooks run a packet to completion on its CPU).
#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// This CPU's scratch area.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}
