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
//! before its backend was shared is still found by its VIP.

use crate::FlowAddr;

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

const _: () = assert!(size_of::<BackendVipKey<u32>>() == 8);
const _: () = assert!(size_of::<BackendVipKey<crate::Addr>>() == 20);
const _: () = assert!(size_of::<BackendVips<u32>>() == 40);
const _: () = assert!(size_of::<BackendVips<crate::Addr>>() == 88);
const _: () = assert!(size_of::<VipPort<u32>>() == 8);
const _: () = assert!(size_of::<VipPort<crate::Addr>>() == 20);
