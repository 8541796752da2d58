//! Encapsulation toward backends on other networks (`forwarding = "ipip"` or `"gue"`): what the
//! balancer's encapsulating programs and `xlb decap` both need to agree on, and what the
//! daemon checks a configuration against (the bytes each encapsulation adds).
//!
//! IPIP puts the client's packet, unchanged, behind an outer IP header of its own family (IPv4
//! in IPv4, protocol 4; IPv6 in IPv6, next header 41). GUE puts it behind an outer IP header and
//! a UDP header, with no GUE header: GUE's variant 1 (draft-ietf-intarea-gue), where the first
//! nibble of the inner packet, its IP version, says what follows; the UDP source port comes
//! from the flow's hash, so that a backend's NIC spreads flows across its queues.

use crate::Addr;

/// Value of `TUNNEL` (one element): the outer header's source addresses, this instance's, and
/// the UDP port GUE packets go to. Written by the daemon from `[tunnel]`; read by the
/// encapsulating programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Outer IPv4 source address, network order; 0: none configured.
    pub source4: u32,
    /// Outer IPv6 source address, network order; all zero: none configured.
    pub source6: Addr,
    /// GUE's destination port, network order.
    pub gue_port: u16,
    /// Explicit padding; zero.
    pub _pad: u16,
}

const _: () = assert!(size_of::<TunnelConfig>() == 24);
const _: () = assert!(size_of::<DecapConfig>() == 4);

/// Bytes an outer IPv4 header adds.
pub const IPV4_OVERHEAD: u16 = 20;
/// Bytes an outer IPv6 header adds.
pub const IPV6_OVERHEAD: u16 = 40;
/// Bytes GUE's UDP header adds to the outer IP header.
pub const UDP_OVERHEAD: u16 = 8;
/// The outer hop limit (TTL) of encapsulated packets, as the kernel's tunnels default to.
pub const OUTER_TTL: u8 = 64;
/// `xlb decap`'s and the config's default GUE port (Katran's).
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// The bytes an encapsulation adds: outer IP header of the family (`ipv6`), plus UDP for GUE.
#[inline(always)]
pub const fn overhead(ipv6: bool, gue: bool) -> u16 {
    (if ipv6 { IPV6_OVERHEAD } else { IPV4_OVERHEAD }) + if gue { UDP_OVERHEAD } else { 0 }
}

/// GUE's UDP source port for a flow of hash `hash`, host order: in the ephemeral range
/// 49152–65535, as the kernel's own UDP tunnels choose (`udp_flow_src_port`).
#[inline(always)]
pub const fn gue_source_port(hash: u32) -> u16 {
    0xc000 | (hash & 0x3fff) as u16
}

/// Indexes into `xlb decap`'s per-CPU counters (`DECAP_COUNTERS`).
pub mod decap_counters {
    /// Encapsulated packets from a balancer to a VIP, stripped and handed to the stack.
    pub const DECAPSULATED: u32 = 0;
    /// Encapsulated packets too short for their headers, or with an inner header that does
    /// not match the outer one (wrong version, length): dropped.
    pub const MALFORMED: u32 = 1;
    /// Encapsulated packets from an address outside the balancer prefixes, or to an address
    /// that is not a configured VIP: dropped.
    pub const FOREIGN: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
    /// Display names, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = ["decapsulated", "malformed", "foreign"];
}

/// Value of `DECAP_CONFIG` (one element), the decapsulating program's settings. Written by
/// `xlb decap`; read by its program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// GUE's port, network order; 0: GUE packets are not decapsulated.
    pub gue_port: u16,
    /// Explicit padding; zero.
    pub _pad: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overheads_are_the_headers_sizes() {
        assert_eq!(overhead(false, false), 20);
        assert_eq!(overhead(true, false), 40);
        assert_eq!(overhead(false, true), 28);
        assert_eq!(overhead(true, true), 48);
    }

    #[test]
    fn gue_source_ports_are_ephemeral() {
        for hash in [0, 1, 0x3fff, 0x4000, u32::MAX] {
            assert!(gue_source_port(hash) >= 49152);
        }
        assert_ne!(gue_source_port(1), gue_source_port(2));
    }
}
