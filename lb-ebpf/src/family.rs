//! What differs between IPv4 and IPv6 flows: the flow tables (each family has its own, so an
//! IPv4 packet hashes a 16-byte key), the key's form, the address an entry holds, where in
//! the IP header an address is written, and the records of fragmented datagrams. The balancing code is generic over [`Family`] and
//! compiled once for each.

use lb_common::{
    Addr, BackendVipKey, FlowAddr, FlowEntry, FlowKey, FlowKey4, FragmentKey4, FragmentKey6,
    consts::family,
};

use crate::{
    maps::{
        BACKEND_VIPS4, BACKEND_VIPS6, BackendVipsMap, FLOWS4, FLOWS6, FRAGMENTS4, FRAGMENTS6,
        FlowTable, FragmentTable, HALF_OPEN4, HALF_OPEN6, LONE_VIPS4, LONE_VIPS6, LoneVipsMap,
        REPLY_VIPS4, REPLY_VIPS6, ReplyVips, VIP_HINTS4, VIP_HINTS6, VipHints,
    },
    packet::Packet,
    scratch::Scratch,
};

/// Offset of the source address in an IPv4 header (the destination follows it).
pub const IPV4_SRC: usize = 12;
/// Offset of the source address in an IPv6 header (the destination follows it).
pub const IPV6_SRC: usize = 8;

/// One address family's flow tables and keys.
pub trait Family: 'static {
    /// The address a flow entry holds.
    type Addr: FlowAddr;
    /// The flow tables' key.
    type Key: Copy + 'static;
    /// The key of a fragmented datagram (`FRAGMENTS4`, `FRAGMENTS6`).
    type FragmentKey: 'static;
    /// `family::IPV4` or `family::IPV6`.
    const FAMILY: u8;
    /// Offset of the source address in the IP header (the destination follows it).
    const SRC_OFFSET: usize;

    /// Established flows (`FLOWS4`, `FLOWS6`).
    fn flows() -> &'static FlowTable<Self::Key, Self::Addr>;
    /// Half-open TCP flows (`HALF_OPEN4`, `HALF_OPEN6`).
    fn half_open() -> &'static FlowTable<Self::Key, Self::Addr>;
    /// The NAT backends and the VIPs they serve (`BACKEND_VIPS4`, `BACKEND_VIPS6`).
    fn backend_vips() -> &'static BackendVipsMap<Self::Addr>;
    /// The NAT backends that serve one VIP, with their ids (`LONE_VIPS4`, `LONE_VIPS6`).
    fn lone_vips() -> &'static LoneVipsMap<Self::Addr>;
    /// The one VIP of each backend port, where there is one (`VIP_HINTS4`, `VIP_HINTS6`).
    fn vip_hints() -> &'static VipHints<Self::Addr>;
    /// The VIPs of the replies of shared backends' flows (`REPLY_VIPS4`, `REPLY_VIPS6`).
    fn reply_vips() -> &'static ReplyVips<Self::Key, Self::Addr>;
    /// This CPU's scratch areas of this family: the packet's key, a backend's key, an entry.
    fn areas(scratch: *mut Scratch) -> Areas<Self>;
    /// The key of a 5-tuple, addresses and ports (network order) as on the wire.
    fn key(
        src: &Self::Addr,
        dst: &Self::Addr,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> Self::Key;
    /// The family-neutral form of a key (what the daemon reads).
    fn neutral(key: &Self::Key) -> FlowKey;
    /// The source of a key (the client of a flow's key).
    fn src(key: &Self::Key) -> &Self::Addr;
    /// The source port of a key, network order.
    fn src_port(key: &Self::Key) -> u16;
    /// The protocol of a key.
    fn protocol(key: &Self::Key) -> u8;
    /// The destination of a key (the VIP of a flow's key).
    fn dst(key: &Self::Key) -> &Self::Addr;
    /// The destination port of a key, network order.
    fn dst_port(key: &Self::Key) -> u16;
    /// The records of fragmented datagrams (`FRAGMENTS4`, `FRAGMENTS6`).
    fn fragments() -> &'static FragmentTable<Self::FragmentKey>;
    /// The key of the datagram of a fragment from `src` to `dst` of protocol `protocol`, whose
    /// identification is `id` (as in the packet: an IPv4 one in the low 16 bits).
    fn fragment_key(src: &Self::Addr, dst: &Self::Addr, id: u32, protocol: u8)
    -> Self::FragmentKey;
}

/// A family's scratch areas (see [`Family::areas`]).
pub struct Areas<Fam: Family + ?Sized> {
    /// The key of the packet being handled (or of the flow an ICMP error quotes).
    pub key: *mut Fam::Key,
    /// A backend's key in `BACKEND_VIPS4`/`BACKEND_VIPS6`.
    pub backend: *mut BackendVipKey<Fam::Addr>,
    /// The 5-tuple of a flow's replies (`REPLY_VIPS4`/`REPLY_VIPS6`).
    pub reply: *mut Fam::Key,
    /// A flow entry being built.
    pub entry: *mut FlowEntry<Fam::Addr>,
    /// The key of a fragmented datagram.
    pub fragment: *mut Fam::FragmentKey,
}

/// IPv4.
pub struct V4;

impl Family for V4 {
    type Addr = u32;
    type Key = FlowKey4;
    type FragmentKey = FragmentKey4;
    const FAMILY: u8 = family::IPV4;
    const SRC_OFFSET: usize = IPV4_SRC;

    #[inline(always)]
    fn flows() -> &'static FlowTable<FlowKey4, u32> {
        &FLOWS4
    }

    #[inline(always)]
    fn half_open() -> &'static FlowTable<FlowKey4, u32> {
        &HALF_OPEN4
    }

    #[inline(always)]
    fn backend_vips() -> &'static BackendVipsMap<u32> {
        &BACKEND_VIPS4
    }

    #[inline(always)]
    fn lone_vips() -> &'static LoneVipsMap<u32> {
        &LONE_VIPS4
    }

    #[inline(always)]
    fn vip_hints() -> &'static VipHints<u32> {
        &VIP_HINTS4
    }

    #[inline(always)]
    fn reply_vips() -> &'static ReplyVips<FlowKey4, u32> {
        &REPLY_VIPS4
    }

    #[inline(always)]
    fn areas(scratch: *mut Scratch) -> Areas<Self> {
        // SAFETY: field addresses of this CPU's scratch area; nothing is read here.
        unsafe {
            Areas {
                key: &raw mut (*scratch).key4,
                backend: &raw mut (*scratch).backend4,
                reply: &raw mut (*scratch).reply4,
                entry: &raw mut (*scratch).entry4,
                fragment: &raw mut (*scratch).fragment4,
            }
        }
    }

    #[inline(always)]
    fn key(src: &u32, dst: &u32, src_port: u16, dst_port: u16, protocol: u8) -> FlowKey4 {
        FlowKey4 {
            src_addr: *src,
            dst_addr: *dst,
            src_port,
            dst_port,
            proto: protocol,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn neutral(key: &FlowKey4) -> FlowKey {
        key.widen()
    }

    #[inline(always)]
    fn src(key: &FlowKey4) -> &u32 {
        &key.src_addr
    }

    #[inline(always)]
    fn src_port(key: &FlowKey4) -> u16 {
        key.src_port
    }

    #[inline(always)]
    fn protocol(key: &FlowKey4) -> u8 {
        key.proto
    }

    #[inline(always)]
    fn dst(key: &FlowKey4) -> &u32 {
        &key.dst_addr
    }

    #[inline(always)]
    fn dst_port(key: &FlowKey4) -> u16 {
        key.dst_port
    }

    #[inline(always)]
    fn fragments() -> &'static FragmentTable<FragmentKey4> {
        &FRAGMENTS4
    }

    #[inline(always)]
    fn fragment_key(src: &u32, dst: &u32, id: u32, protocol: u8) -> FragmentKey4 {
        FragmentKey4 {
            src_addr: *src,
            dst_addr: *dst,
            id: id as u16,
            proto: protocol,
            _pad: 0,
        }
    }
}

/// IPv6.
pub struct V6;

impl Family for V6 {
    type Addr = Addr;
    type Key = FlowKey;
    type FragmentKey = FragmentKey6;
    const FAMILY: u8 = family::IPV6;
    const SRC_OFFSET: usize = IPV6_SRC;

    #[inline(always)]
    fn flows() -> &'static FlowTable<FlowKey, Addr> {
        &FLOWS6
    }

    #[inline(always)]
    fn half_open() -> &'static FlowTable<FlowKey, Addr> {
        &HALF_OPEN6
    }

    #[inline(always)]
    fn backend_vips() -> &'static BackendVipsMap<Addr> {
        &BACKEND_VIPS6
    }

    #[inline(always)]
    fn lone_vips() -> &'static LoneVipsMap<Addr> {
        &LONE_VIPS6
    }

    #[inline(always)]
    fn vip_hints() -> &'static VipHints<Addr> {
        &VIP_HINTS6
    }

    #[inline(always)]
    fn reply_vips() -> &'static ReplyVips<FlowKey, Addr> {
        &REPLY_VIPS6
    }

    #[inline(always)]
    fn areas(scratch: *mut Scratch) -> Areas<Self> {
        // SAFETY: as for IPv4.
        unsafe {
            Areas {
                key: &raw mut (*scratch).key6,
                backend: &raw mut (*scratch).backend6,
                reply: &raw mut (*scratch).reply6,
                entry: &raw mut (*scratch).entry6,
                fragment: &raw mut (*scratch).fragment6,
            }
        }
    }

    #[inline(always)]
    fn key(src: &Addr, dst: &Addr, src_port: u16, dst_port: u16, protocol: u8) -> FlowKey {
        FlowKey {
            src_addr: *src,
            dst_addr: *dst,
            src_port,
            dst_port,
            proto: protocol,
            family: family::IPV6,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    fn neutral(key: &FlowKey) -> FlowKey {
        *key
    }

    #[inline(always)]
    fn src(key: &FlowKey) -> &Addr {
        &key.src_addr
    }

    #[inline(always)]
    fn src_port(key: &FlowKey) -> u16 {
        key.src_port
    }

    #[inline(always)]
    fn protocol(key: &FlowKey) -> u8 {
        key.proto
    }

    #[inline(always)]
    fn dst(key: &FlowKey) -> &Addr {
        &key.dst_addr
    }

    #[inline(always)]
    fn dst_port(key: &FlowKey) -> u16 {
        key.dst_port
    }

    #[inline(always)]
    fn fragments() -> &'static FragmentTable<FragmentKey6> {
        &FRAGMENTS6
    }

    #[inline(always)]
    fn fragment_key(src: &Addr, dst: &Addr, id: u32, protocol: u8) -> FragmentKey6 {
        FragmentKey6 {
            src_addr: *src,
            dst_addr: *dst,
            id,
            proto: protocol,
            _pad: [0; 3],
        }
    }
}

/// Writes the key of `pkt`'s 5-tuple into `key`.
#[inline(always)]
pub fn packet_key<Fam: Family>(pkt: &Packet, key: &mut Fam::Key) {
    *key = Fam::key(
        Fam::Addr::in_addr(&pkt.src),
        Fam::Addr::in_addr(&pkt.dst),
        pkt.sport,
        pkt.dport,
        pkt.proto,
    );
}
