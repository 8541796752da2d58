//! How the program finds the flow of a backend's packet (NAT), which has no entry of its own:
//! each flow has one entry, stored under the client's 5-tuple (client, VIP). A backend's packet
//! carries the backend's address and port as its source and the client's as its destination;
//! `BACKEND_VIPS4`/`BACKEND_VIPS6` give the VIPs (address and port) the backend serves, and
//! the flow's key is the packet's destination and that VIP. The program tries up to
//! [`MAX_VIPS_PER_BACKEND`] VIPs, and the entry it finds must name the packet's source as its
//! backend. A backend shared by more NAT services is marked ([`BackendVips::shared`], and
//! `backend_flags::SHARED` in `BACKENDS`): each of its new flows also records its VIP under
//! the reply's 5-tuple (`REPLY_VIPS4`/`REPLY_VIPS6`), which its replies look up first. The
//! VIPs a backend lists keep their order as others come (userspace appends), so a flow made
//! before its backend was shared is still found by its VIP. Before all this, a backend that
//! serves one VIP only (the usual case) gives it at once: `VIP_HINTS4`/`VIP_HINTS6` are arrays
//! with a slot per backend address and port ([`hint_slot`]) holding the one VIP of the
//! backends in that slot, if they serve one; a hint, checked as any candidate.

use crate::FlowAddr;

/// Slots of `VIP_HINTS4`/`VIP_HINTS6` (a power of two).
pub const HINT_SLOTS: u32 = 1 << 16;

/// The slot of `VIP_HINTS4`/`VIP_HINTS6` of a backend at `addr` (an IPv4 address in the first
/// word, the others zero), port `port` (network order): its address and port mixed into a
/// word, then a multiplicative hash's top bits. Backends that share a slot and serve different
/// VIPs leave it empty, and their packets look up `BACKEND_VIPS4`/`6`.
#[inline(always)]
pub fn hint_slot(addr: &crate::Addr, port: u16) -> u32 {
    let mixed = addr[0]
        ^ addr[1].rotate_left(8)
        ^ addr[2].rotate_left(16)
        ^ addr[3].rotate_left(24)
        ^ u32::from(port).rotate_left(12);
    mixed.wrapping_mul(0x9e37_79b1) >> (32 - HINT_SLOTS.trailing_zeros())
}

/// How many NAT services (VIP, port) one backend address, port and protocol may serve.
pub const MAX_VIPS_PER_BACKEND: usize = 4;

/// Key of `BACKEND_VIPS4` (`A = u32`) and `BACKEND_VIPS6` (`A = Addr`): a backend as its
/// packets' source shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendVipKey<A: FlowAddr> {
    /// The backend's address.
    pub addr: A,
    /// The backend's port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding; zero.
    pub _pad: u8,
}

/// One VIP and port a backend serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipPort<A: FlowAddr> {
    /// The VIP.
    pub addr: A,
    /// The service's port, network byte order.
    pub port: u16,
    /// Explicit padding; zero.
    pub _pad: u16,
}

/// Value of `BACKEND_VIPS4`/`BACKEND_VIPS6`: the NAT services a backend serves, the first
/// `count` of `vips`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendVips<A: FlowAddr> {
    /// How many of `vips` are set (1 to [`MAX_VIPS_PER_BACKEND`]).
    pub count: u32,
    /// 1 if the backend serves more NAT services than `vips` holds: its replies look up
    /// `REPLY_VIPS4`/`REPLY_VIPS6` first.
    pub shared: u32,
    /// The services, in no particular order.
    pub vips: [VipPort<A>; MAX_VIPS_PER_BACKEND],
}

/// Value of `LONE_VIPS4`/`LONE_VIPS6`: a NAT backend (address, port, protocol) that serves
/// one VIP, and its ids in that service. With it an instance of a fleet takes over a flow whose
/// backend's packet arrives before the flow's entry does (another instance placed the flow, and
/// ECMP brought the backend's answer here first): the flow's key is the packet's destination
/// and this VIP, and its entry the one [`crate::share::fill_shared_entry`] makes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoneVip<A: FlowAddr> {
    /// The one VIP and port the backend serves.
    pub vip: VipPort<A>,
    /// The backend's id in that service (index into `BACKENDS`).
    pub backend_id: u32,
    /// The service's id.
    pub service_id: u32,
}

const _: () = assert!(size_of::<LoneVip<u32>>() == 16);
const _: () = assert!(size_of::<LoneVip<crate::Addr>>() == 28);
const _: () = assert!(size_of::<BackendVipKey<u32>>() == 8);
const _: () = assert!(size_of::<BackendVipKey<crate::Addr>>() == 20);
const _: () = assert!(size_of::<BackendVips<u32>>() == 40);
const _: () = assert!(size_of::<BackendVips<crate::Addr>>() == 88);
const _: () = assert!(size_of::<VipPort<u32>>() == 8);
const _: () = assert!(size_of::<VipPort<crate::Addr>>() == 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_slots_are_in_range_and_spread_backends() {
        let mut used = std::collections::HashSet::new();
        for last in 0..=255u32 {
            for port in [80u16, 8080, 8443] {
                let slot = hint_slot(&[u32::from_be(0xc612_0100 | last), 0, 0, 0], port.to_be());
                assert!(slot < HINT_SLOTS);
                used.insert(slot);
            }
        }
        // 768 backends of one /24 on three ports: nearly every one a slot of its own.
        assert!(used.len() > 740, "{}", used.len());
        let v6 = hint_slot(&[0xfd00, 0, 0, 0x11], 8080u16.to_be());
        assert_ne!(v6, hint_slot(&[0xfd00, 0, 0, 0x12], 8080u16.to_be()));
    }
}
