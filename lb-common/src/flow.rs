//! The flow tables' keys and values, and the rules both sides apply to them: when an entry is
//! over (its timeout), and which activity epoch a packet falls in.
//!
//! Each address family has its own tables (`FLOWS4`/`HALF_OPEN4`, `FLOWS6`/`HALF_OPEN6`), so
//! that an IPv4 packet hashes and compares a 16-byte key, not the 40 bytes an IPv6 5-tuple
//! needs. The entry type is one generic struct, [`FlowEntry<A>`], over the address it holds
//! ([`FlowAddr`]: a `u32` for IPv4, an [`Addr`] for IPv6), so that the data plane's code is
//! written once for both. Userspace works with the family-neutral forms, [`FlowKey`] and
//! `FlowEntry<Addr>`, which is also what the IPv6 tables hold.

use crate::{
    Addr, Hop,
    consts::{family, flow_flags, proto},
    csum,
};

/// Key of `FLOWS6` and `HALF_OPEN6`, and the family-neutral form of any flow's key in
/// userspace: a packet's 5-tuple as it arrives at xlb.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src_addr: Addr,
    /// Destination address.
    pub dst_addr: Addr,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Address family.
    pub family: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 2],
}

/// Key of `FLOWS4` and `HALF_OPEN4`: an IPv4 packet's 5-tuple as it arrives at xlb, 16 bytes
/// (addresses in wire order, loaded natively, as in [`Addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Source address.
    pub src_addr: u32,
    /// Destination address.
    pub dst_addr: u32,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 3],
}

impl FlowKey4 {
    /// The family-neutral form of this key.
    pub const fn widen(&self) -> FlowKey {
        FlowKey {
            src_addr: [self.src_addr, 0, 0, 0],
            dst_addr: [self.dst_addr, 0, 0, 0],
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
            family: family::IPV4,
            _pad: [0; 2],
        }
    }

    /// The IPv4 key of a family-neutral one; `None` for an IPv6 key.
    pub const fn narrow(key: &FlowKey) -> Option<Self> {
        if key.family != family::IPV4 {
            return None;
        }
        Some(Self {
            src_addr: key.src_addr[0],
            dst_addr: key.dst_addr[0],
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
            _pad: [0; 3],
        })
    }
}

/// The address a flow entry writes into its packets: `u32` for IPv4, [`Addr`] for IPv6. It
/// carries the padding that keeps [`FlowEntry`] free of implicit padding in both sizes.
pub trait FlowAddr: Copy + Default + PartialEq + Eq + core::fmt::Debug {
    /// Explicit tail padding of a `FlowEntry<Self>`: none for IPv4, four bytes for IPv6.
    type Pad: Copy + Default + PartialEq + Eq + core::fmt::Debug;
    /// The address as an [`Addr`] (IPv4 in the first word, the rest zero).
    fn to_addr(&self) -> Addr;
    /// The address of this family in an [`Addr`].
    fn from_addr(addr: &Addr) -> Self;
    /// The same, as a reference into the [`Addr`] (no copy).
    fn in_addr(addr: &Addr) -> &Self;
    /// Calls `f` with the address as an [`Addr`] (a copy only where the forms differ).
    fn with_addr<R>(&self, f: impl FnOnce(&Addr) -> R) -> R;
    /// The one's-complement difference of a change from `old` to `new`, folded: what
    /// [`csum::apply`] adds to a checksum that covers the address.
    fn csum_delta(old: &Self, new: &Self) -> u16;
}

impl FlowAddr for u32 {
    type Pad = [u8; 0];

    #[inline(always)]
    fn to_addr(&self) -> Addr {
        [*self, 0, 0, 0]
    }

    #[inline(always)]
    fn from_addr(addr: &Addr) -> Self {
        addr[0]
    }

    #[inline(always)]
    fn in_addr(addr: &Addr) -> &Self {
        &addr[0]
    }

    #[inline(always)]
    fn with_addr<R>(&self, f: impl FnOnce(&Addr) -> R) -> R {
        f(&[*self, 0, 0, 0])
    }

    #[inline(always)]
    fn csum_delta(old: &Self, new: &Self) -> u16 {
        csum::delta32(*old, *new)
    }
}

impl FlowAddr for Addr {
    type Pad = [u8; 4];

    #[inline(always)]
    fn to_addr(&self) -> Addr {
        *self
    }

    #[inline(always)]
    fn from_addr(addr: &Addr) -> Self {
        *addr
    }

    #[inline(always)]
    fn in_addr(addr: &Addr) -> &Self {
        addr
    }

    #[inline(always)]
    fn with_addr<R>(&self, f: impl FnOnce(&Addr) -> R) -> R {
        f(self)
    }

    #[inline(always)]
    fn csum_delta(old: &Self, new: &Self) -> u16 {
        csum::delta128(old, new)
    }
}

/// Directions of a flow's packets (counters and trace events).
pub mod direction {
    /// Client to VIP: the destination is rewritten to the backend.
    pub const TO_BACKEND: u8 = 0;
    /// Backend to client: the source is rewritten back to the VIP.
    pub const TO_CLIENT: u8 = 1;
}

/// Value of the flow tables: one entry per flow, stored under the client's 5-tuple as it
/// arrives at xlb (client, VIP), for both directions. The client's packets get the backend as
/// their destination; the backend's packets (NAT), found through `BACKEND_VIPS` (see
/// `crate::reply`), get the VIP of the entry's key back as their source, with the opposite
/// checksum changes. `FlowEntry<u32>` (80 bytes) in the IPv4 tables, `FlowEntry<Addr>` (96
/// bytes) in the IPv6 tables and in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry<A: FlowAddr = Addr> {
    /// Coarse monotonic time (ns) a packet of the flow (either direction) was last seen,
    /// refreshed at most once per `timing::LAST_SEEN_REFRESH_NS`.
    pub last_seen_ns: u64,
    /// The backend's address: the client's packets' new destination.
    pub addr: A,
    /// The backend's port, network byte order.
    pub port: u16,
    /// Flow state, [`crate::consts::flow_flags`].
    pub flags: u8,
    /// Explicit padding; zero.
    pub _pad: u8,
    /// Backend that serves the flow (index into `BACKENDS` and `BACKEND_STATS`).
    pub backend_id: u32,
    /// Service the flow belongs to (index into `SERVICE_STATS`).
    pub service_id: u32,
    /// The client-to-backend rewrite's checksum change for the address, folded
    /// ([`FlowAddr::csum_delta`] of the VIP and [`Self::addr`]): worked out once, when the
    /// entry is made. The backend-to-client rewrite adds its one's complement.
    pub csum_addr: u16,
    /// The same for the port.
    pub csum_port: u16,
    /// Next hop of the client's packets, toward the backend (from `BACKEND_HOPS` when the flow
    /// is made, from the FIB at each refresh).
    pub to_backend: Hop,
    /// Next hop of the backend's packets, toward the client (NAT): the frame of the flow's
    /// first packet, turned around, until the FIB's answer at the first refresh.
    pub to_client: Hop,
    /// The low 16 bits of the activity epoch ([`epoch`]) of the last client packet counted in
    /// `ACTIVE_FLOWS`.
    pub epoch: u16,
    /// Explicit padding; zero.
    pub _pad2: u16,
    /// When the flow began: coarse monotonic time in whole seconds.
    pub created_s: u32,
    /// While the flow is half-open: the acknowledgement number that the backend's answer to
    /// the client's SYN carries (the SYN's sequence number plus one, host order), so that only
    /// a RST answering that very SYN counts as refused (passive health). Unused by the program
    /// afterwards; on an established copy of a fleet peer's flow, the daemon's mark (the low
    /// 32 bits of the stamp it wrote), which tells it the program has not stamped the entry
    /// since.
    pub handshake_ack: u32,
    /// Explicit tail padding; zero.
    pub _tail: A::Pad,
}

impl FlowEntry<u32> {
    /// The family-neutral form of an IPv4 entry.
    pub fn widen(&self) -> FlowEntry {
        FlowEntry {
            last_seen_ns: self.last_seen_ns,
            addr: self.addr.to_addr(),
            port: self.port,
            flags: self.flags,
            _pad: 0,
            backend_id: self.backend_id,
            service_id: self.service_id,
            csum_addr: self.csum_addr,
            csum_port: self.csum_port,
            to_backend: self.to_backend,
            to_client: self.to_client,
            epoch: self.epoch,
            _pad2: 0,
            created_s: self.created_s,
            handshake_ack: self.handshake_ack,
            _tail: [0; 4],
        }
    }
}

impl FlowEntry {
    /// The IPv4 form of a family-neutral entry (its address's first word).
    pub fn narrow(&self) -> FlowEntry<u32> {
        FlowEntry {
            last_seen_ns: self.last_seen_ns,
            addr: self.addr[0],
            port: self.port,
            flags: self.flags,
            _pad: 0,
            backend_id: self.backend_id,
            service_id: self.service_id,
            csum_addr: self.csum_addr,
            csum_port: self.csum_port,
            to_backend: self.to_backend,
            to_client: self.to_client,
            epoch: self.epoch,
            _pad2: 0,
            created_s: self.created_s,
            handshake_ack: self.handshake_ack,
            _tail: [],
        }
    }
}

/// The flow timeouts (`FLOW_TIMEOUTS`, one element), in nanoseconds: how long an entry may stay
/// silent before it is over. Written by userspace from the config (at start and on reload);
/// read by the program when it refreshes an entry, at most once a second per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// An established TCP flow.
    pub tcp_idle_ns: u64,
    /// A TCP flow after a FIN or RST, and a TCP flow whose handshake has not completed.
    pub tcp_closing_ns: u64,
    /// A UDP flow.
    pub udp_idle_ns: u64,
}

impl FlowTimeouts {
    /// How long an entry of protocol `protocol` with `flags`, in the half-open table or not,
    /// may stay silent.
    #[inline(always)]
    pub const fn limit_ns(&self, protocol: u8, flags: u8, half_open: bool) -> u64 {
        if protocol == proto::UDP {
            self.udp_idle_ns
        } else if half_open || flags & flow_flags::CLOSING != 0 {
            self.tcp_closing_ns
        } else {
            self.tcp_idle_ns
        }
    }

    /// Whether an entry of protocol `protocol` with `flags`, last seen at `last_seen_ns`, is
    /// over at `now_ns`. A time after `now_ns` (another CPU stamped it after `now_ns` was read)
    /// is not idle. All zero (no timeouts written yet) means nothing is over.
    #[inline(always)]
    pub const fn expired(
        &self,
        protocol: u8,
        flags: u8,
        half_open: bool,
        last_seen_ns: u64,
        now_ns: u64,
    ) -> bool {
        let limit = self.limit_ns(protocol, flags, half_open);
        limit != 0 && now_ns > last_seen_ns && now_ns - last_seen_ns > limit
    }
}

/// Activity epochs last 2^33 ns (about 8.6 s): a flow counts as active in an epoch if its
/// client sent a packet during it (`ACTIVE_FLOWS`).
pub const EPOCH_SHIFT: u32 = 33;

/// The length of an activity epoch, in nanoseconds.
pub const EPOCH_NS: u64 = 1 << EPOCH_SHIFT;

/// Epochs `ACTIVE_FLOWS` holds per backend: the one under way and the one before. Each count is
/// tagged with its epoch, so the program starts a slot afresh when a new epoch reaches it and
/// nobody has to clear it.
pub const EPOCH_SLOTS: u32 = 2;

/// The activity epoch of coarse monotonic time `now_ns` (an entry keeps its low 16 bits, which
/// it only compares with the current epoch's).
#[inline(always)]
pub const fn epoch(now_ns: u64) -> u32 {
    (now_ns >> EPOCH_SHIFT) as u32
}

/// The element of `ACTIVE_FLOWS` that counts backend `backend_id`'s flows active in `epoch`.
#[inline(always)]
pub const fn active_index(epoch: u32, backend_id: u32) -> u32 {
    (epoch % EPOCH_SLOTS) * crate::consts::limits::MAX_BACKENDS + backend_id
}

/// An `ACTIVE_FLOWS` element (the epoch in the high word, the count in the low one) with one
/// more flow counted in `epoch`: the count goes up if the element is that epoch's, and starts
/// at one if it still holds an older epoch's.
#[inline(always)]
pub const fn active_add(tagged: u64, epoch: u32) -> u64 {
    if (tagged >> 32) as u32 == epoch {
        tagged + 1
    } else {
        (epoch as u64) << 32 | 1
    }
}

/// The flows an `ACTIVE_FLOWS` element counts for `epoch`: none if it holds another epoch's.
#[inline(always)]
pub const fn active_count(tagged: u64, epoch: u32) -> u32 {
    if (tagged >> 32) as u32 == epoch {
        tagged as u32
    } else {
        0
    }
}

const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowKey4>() == 16);
const _: () = assert!(size_of::<FlowEntry<u32>>() == 80);
const _: () = assert!(size_of::<FlowEntry<Addr>>() == 96);
const _: () = assert!(size_of::<FlowTimeouts>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn each_kind_of_flow_has_its_timeout() {
        let timeouts = FlowTimeouts {
            tcp_idle_ns: 900 * SECOND,
            tcp_closing_ns: 10 * SECOND,
            udp_idle_ns: 30 * SECOND,
        };
        let now = 1_000 * SECOND;
        let cases = [
            // (protocol, flags, half-open, last seen, expired)
            (proto::TCP, 0, false, 1_000 - 899, false),
            (proto::TCP, 0, false, 1_000 - 901, true),
            (proto::TCP, flow_flags::CLOSING, false, 1_000 - 9, false),
            (proto::TCP, flow_flags::CLOSING, false, 1_000 - 11, true),
            (proto::TCP, 0, true, 1_000 - 9, false),
            (proto::TCP, 0, true, 1_000 - 11, true),
            (proto::UDP, 0, false, 1_000 - 29, false),
            (proto::UDP, 0, false, 1_000 - 31, true),
            // A time in the future (another CPU stamped it after `now` was read): not idle.
            (proto::UDP, 0, false, 1_001, false),
        ];
        for (protocol, flags, half_open, last_seen, over) in cases {
            assert_eq!(
                timeouts.expired(protocol, flags, half_open, last_seen * SECOND, now),
                over,
                "proto {protocol} flags {flags} half-open {half_open} last seen {last_seen}"
            );
        }
        assert!(!FlowTimeouts::default().expired(proto::UDP, 0, false, 0, now));
    }

    #[test]
    fn keys_and_entries_keep_their_fields_between_forms() {
        let key = FlowKey4 {
            src_addr: 0x0200_12c6,
            dst_addr: 0x0164_12c6,
            src_port: 40_000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        assert_eq!(FlowKey4::narrow(&key.widen()), Some(key));
        assert_eq!(key.widen().family, family::IPV4);
        let six = FlowKey {
            family: family::IPV6,
            ..key.widen()
        };
        assert_eq!(FlowKey4::narrow(&six), None);
        let entry = FlowEntry::<u32> {
            last_seen_ns: 7,
            addr: 0x0b01_12c6,
            port: 8080u16.to_be(),
            backend_id: 3,
            service_id: 2,
            csum_addr: 0x1234,
            to_backend: Hop {
                ifindex: 5,
                dst_mac: [2, 0, 0, 0, 1, 0x11],
                ..Hop::default()
            },
            to_client: Hop {
                ifindex: 6,
                peer: 1,
                ..Hop::default()
            },
            epoch: 9,
            created_s: 11,
            handshake_ack: 13,
            ..FlowEntry::default()
        };
        assert_eq!(entry.widen().narrow(), entry);
        assert_eq!(entry.widen().addr, [0x0b01_12c6, 0, 0, 0]);
    }

    #[test]
    fn epochs_advance_every_epoch_ns_and_their_counts_start_afresh() {
        assert_eq!(epoch(EPOCH_NS - 1), 0);
        assert_eq!(epoch(EPOCH_NS), 1);
        let backend = 7;
        assert_ne!(active_index(4, backend), active_index(5, backend));
        assert_eq!(active_index(4, backend), active_index(6, backend));
        // Counted in epoch 4, then 4 again, then epoch 6 reaches the same slot.
        let mut slot = 0;
        slot = active_add(slot, 4);
        slot = active_add(slot, 4);
        assert_eq!((active_count(slot, 4), active_count(slot, 6)), (2, 0));
        slot = active_add(slot, 6);
        assert_eq!((active_count(slot, 4), active_count(slot, 6)), (0, 1));
        // An untouched slot counts nothing for epoch 0 either (tag 0, count 0).
        assert_eq!(active_count(0, 0), 0);
    }
}
