//! Keys and values of the BPF maps. Every type is `#[repr(C)]` with explicit padding fields
//! (never implicit padding, which the kernel would hash or compare as garbage), and its size is
//! checked at compile time. Ports are in network byte order, exactly as they are on the wire;
//! addresses are [`Addr`]s.

use crate::{
    FlowEntry, FlowKey,
    consts::limits::{MAX_MAGLEV_SLOTS, MAX_TABLE_SLOTS},
};

/// An IP address in a map: the 16 bytes of an IPv6 address, or the 4 bytes of an IPv4 address
/// followed by 12 zero bytes (see [`crate::consts::family`]), in wire order. It is held as four
/// words loaded in the machine's byte order, so its bytes in memory are the bytes on the wire,
/// and the XDP program copies and compares it a word at a time.
pub type Addr = [u32; 4];

/// Key of `SERVICES`: a virtual service as it appears in a client's packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual IP address.
    pub addr: Addr,
    /// Virtual port, network byte order.
    pub port: u16,
    /// IP protocol number (`proto::TCP` or `proto::UDP`).
    pub proto: u8,
    /// Address family (`family::IPV4` or `family::IPV6`).
    pub family: u8,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Stable id chosen by userspace; indexes the per-service maps (`SERVICE_STATS`, tables).
    pub id: u32,
    /// Number of locality pools; with more than one, a new flow's pool is chosen by its
    /// client's address (`CLIENT_POOLS`). 0 and 1 both mean one pool, pool 0.
    pub pools: u8,
    /// The pool of clients that match no prefix.
    pub default_pool: u8,
    /// How new flows find their backend ([`crate::consts::scheduler`]; 0, round robin, in
    /// entries written before Maglev existed).
    pub scheduler: u8,
    /// How packets reach the backend ([`crate::consts::forwarding`]; 0 is NAT).
    pub forwarding: u8,
}

/// Data of a `CLIENT_POOLS` key: a client address, in wire order (IPv4 in the first 4
/// bytes). The LPM key's prefix length counts bits from its first byte.
pub type ClientPrefix = [u8; 16];

/// Value of `BACKENDS`: where a backend lives. Written by userspace before any table refers to
/// the backend's id, and never changed while one does; cleared when the id is released. A
/// restarted daemon reads these entries to find the ids its flows refer to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendEntry {
    /// Backend IP address.
    pub addr: Addr,
    /// Backend port, network byte order.
    pub port: u16,
    /// Address family of `addr`.
    pub family: u8,
    /// 1 while the id belongs to a backend, 0 once released (a `u8`, not a `bool`, so that
    /// every bit pattern is valid).
    pub in_use: u8,
    /// The service the backend belongs to.
    pub service_id: u32,
    /// The backend's pool in that service.
    pub pool: u32,
    /// [`backend_flags`]: set by userspace (and changed in place while the backend serves).
    pub flags: u32,
}

/// Bits of [`BackendEntry::flags`].
pub mod backend_flags {
    /// The backend's address, port and protocol serve more NAT services than
    /// `reply::MAX_VIPS_PER_BACKEND`: each new flow also records the VIP of its replies in
    /// `REPLY_VIPS4`/`REPLY_VIPS6` (see `crate::reply`).
    pub const SHARED: u32 = 1;
}

/// Words of `BACKEND_PORTS`, a bitmap of the 65,536 ports.
pub const BACKEND_PORT_WORDS: u32 = 1024;

/// Where port `port` (network order, as packets and `BackendEntry` hold it) is in
/// `BACKEND_PORTS`: the word, and the bit in it.
#[inline(always)]
pub const fn backend_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}

/// Key of `HOST_PORTS`: a transport protocol and a port (network order, as packets hold it).
#[inline(always)]
pub const fn host_port_key(proto: u8, port: u16) -> u32 {
    ((proto as u32) << 16) | port as u32
}

/// A backend table: the round-robin sequence of backend ids for new flows of one
/// (service, pool). Built whole in userspace (smooth weighted round robin) and published by
/// swapping it into `BACKEND_TABLES`; the kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BackendTable {
    /// Number of valid slots; 0 means no backend can take new flows.
    pub len: u32,
    /// Increments with every table userspace publishes for this (service, pool).
    pub generation: u32,
    /// Backend ids (indexes into `BACKENDS`); only `slots[..len]` is meaningful.
    pub slots: [u32; MAX_TABLE_SLOTS],
}

impl BackendTable {
    /// A table with no slots: new flows find no backend.
    pub const EMPTY: Self = Self {
        len: 0,
        generation: 0,
        slots: [0; MAX_TABLE_SLOTS],
    };
}

/// A Maglev lookup table (`MAGLEV_TABLES`): for each slot, the backend id of the new flows
/// whose 5-tuple hashes to it (`crate::hash::flow_hash` with `seed`, modulo `len`). Built whole
/// in userspace from the backends ordered by address, their weights, a prime size and the
/// configured seed, so that instances with the same backends build the same table; published
/// by swapping it in like a [`BackendTable`]. 512 KiB: never on a stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MaglevTable {
    /// Number of valid slots (the table's prime size; `maglev_len::SLOTS`); 0 means no backend
    /// can take new flows. With `maglev_len::CLIENT_HASH` set, new flows hash the client's
    /// address alone ([`crate::hash::client_hash`]).
    pub len: u32,
    /// Seed of the 5-tuple hash, the same on every instance.
    pub seed: u32,
    /// Backend ids; only `slots[..len]` is meaningful.
    pub slots: [u32; MAX_MAGLEV_SLOTS],
}

/// Key of `VIPS`: a virtual IP address, whatever its ports and protocols.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// The address.
    pub addr: Addr,
    /// Address family.
    pub family: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 3],
}

/// Key of `FRAGMENTS4`: an IPv4 datagram that arrived in fragments, as its fragments carry it:
/// addresses (in wire order, loaded natively, as in [`Addr`]), protocol and the header's 16-bit
/// identification (network order). 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey4 {
    /// Source address.
    pub src_addr: u32,
    /// Destination address.
    pub dst_addr: u32,
    /// Identification, network byte order.
    pub id: u16,
    /// IP protocol number (`proto::TCP` or `proto::UDP`).
    pub proto: u8,
    /// Explicit padding; zero.
    pub _pad: u8,
}

/// Key of `FRAGMENTS6`: an IPv6 datagram that arrived in fragments: addresses, the protocol
/// after the fragment header and the header's 32-bit identification (network order). 40
/// bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey6 {
    /// Source address.
    pub src_addr: Addr,
    /// Destination address.
    pub dst_addr: Addr,
    /// Identification, network byte order.
    pub id: u32,
    /// IP protocol number (`proto::TCP` or `proto::UDP`).
    pub proto: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 3],
}

/// Value of `FRAGMENTS4` and `FRAGMENTS6`: the ports of a fragmented datagram, read from its
/// first fragment (the only one with a transport header), network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// Per-CPU traffic counters of one service or one backend (`SERVICE_STATS`, `BACKEND_STATS`).
/// "Forward" is client to backend, "reverse" is backend to client. Userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Packets from clients, rewritten towards a backend.
    pub fwd_packets: u64,
    /// Bytes (L3 and up) of those packets.
    pub fwd_bytes: u64,
    /// Packets from backends, rewritten back to the VIP.
    pub rev_packets: u64,
    /// Bytes (L3 and up) of those packets.
    pub rev_bytes: u64,
    /// Flows created (a backend chosen by round robin, or by hash under a SYN flood).
    pub new_flows: u64,
    /// New flows dropped because no backend could take them (services only).
    pub no_backend: u64,
    /// Handshakes the backend refused: a RST answering the client's SYN (passive health).
    pub refused: u64,
    /// Handshakes the backend left unanswered until the client retransmitted its SYN, which
    /// was then placed on another backend (passive health).
    pub unanswered: u64,
    /// New flows dropped by the per-prefix admission limit (services only).
    pub admission_dropped: u64,
}

impl TrafficCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.fwd_packets += other.fwd_packets;
        self.fwd_bytes += other.fwd_bytes;
        self.rev_packets += other.rev_packets;
        self.rev_bytes += other.rev_bytes;
        self.new_flows += other.new_flows;
        self.no_backend += other.no_backend;
        self.refused += other.refused;
        self.unanswered += other.unanswered;
        self.admission_dropped += other.admission_dropped;
    }
}

/// The handshake guard (`HANDSHAKE_GUARD`): how fast new TCP flows enter the half-open table,
/// and from what rate on a SYN's backend is chosen by hash instead of round robin.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeGuard {
    /// Start (coarse monotonic ns) of the current window of `timing::HANDSHAKE_WINDOW_NS`.
    /// Written by the program, with a compare-and-swap, so one CPU restarts each window.
    pub window_start_ns: u64,
    /// New TCP flows entered into `HALF_OPEN` in the current window. Written by the program.
    pub window_flows: u64,
    /// From this many new TCP flows in a window on, SYNs are placed by hash; 0 keeps SYNs on
    /// round robin (client packets without SYN and without a flow are placed by hash
    /// whatever the budget). Written by userspace when it creates the maps.
    pub budget: u64,
    /// Seed of [`crate::hash::flow_hash`]: random, written by userspace when it creates the
    /// maps.
    pub seed: u32,
    /// 1 if the previous window reached the budget: then every SYN of this window is placed
    /// by hash, not only those past the budget. Written by the program, by the CPU that
    /// restarts the window.
    pub flooded: u32,
}

/// Key and value sizes of the pinned maps whose entries have xlb's own layout, by name (maps
/// of maps and the devmap hold descriptors and interface indexes, whose size never changes).
/// A map pinned by a version of xlb with another layout cannot be taken over: userspace checks
/// these before it loads the program onto pinned maps.
pub const PINNED_LAYOUTS: [(&str, usize, usize); 28] = {
    use crate::{
        FlowKey4, FlowTimeouts,
        consts::map_names as n,
        passive::{
            AdmissionKey, PassiveMark, PersistEntry, PersistKey, ServicePolicy, SuspectSlots,
        },
    };
    [
        (
            n::SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceEntry>(),
        ),
        (n::BACKENDS, 4, size_of::<BackendEntry>()),
        (n::RR_CURSORS, 4, 8),
        (n::HANDSHAKE_GUARD, 4, size_of::<HandshakeGuard>()),
        (
            n::FLOWS4,
            size_of::<FlowKey4>(),
            size_of::<FlowEntry<u32>>(),
        ),
        (
            n::HALF_OPEN4,
            size_of::<FlowKey4>(),
            size_of::<FlowEntry<u32>>(),
        ),
        (n::FLOWS6, size_of::<FlowKey>(), size_of::<FlowEntry>()),
        (n::HALF_OPEN6, size_of::<FlowKey>(), size_of::<FlowEntry>()),
        (n::FLOW_TIMEOUTS, 4, size_of::<FlowTimeouts>()),
        (n::ACTIVE_FLOWS, 4, 8),
        (n::VIPS, size_of::<VipKey>(), 4),
        (n::SPILLED, 4, 8),
        (n::SERVICE_STATS, 4, size_of::<TrafficCounters>()),
        (n::BACKEND_STATS, 4, size_of::<TrafficCounters>()),
        (n::EVENTS, 4, 8),
        (n::SERVICE_POLICIES, 4, size_of::<ServicePolicy>()),
        (n::PASSIVE_MARKS, 4, size_of::<PassiveMark>()),
        (n::SUSPECT_SLOTS, 4, size_of::<SuspectSlots>()),
        (n::ADMISSION, size_of::<AdmissionKey>(), 8),
        (
            n::PERSISTENCE,
            size_of::<PersistKey>(),
            size_of::<PersistEntry>(),
        ),
        (n::BACKEND_PORTS, 4, 8),
        (n::SERVICE_PORTS, 4, 8),
        (n::ENCAP_XDP, 4, 4),
        (n::ENCAP_TC, 4, 4),
        (
            n::BACKEND_VIPS4,
            size_of::<crate::BackendVipKey<u32>>(),
            size_of::<crate::BackendVips<u32>>(),
        ),
        (
            n::BACKEND_VIPS6,
            size_of::<crate::BackendVipKey<Addr>>(),
            size_of::<crate::BackendVips<Addr>>(),
        ),
        (
            n::REPLY_VIPS4,
            size_of::<FlowKey4>(),
            size_of::<crate::VipPort<u32>>(),
        ),
        (
            n::REPLY_VIPS6,
            size_of::<FlowKey>(),
            size_of::<crate::VipPort<Addr>>(),
        ),
    ]
};

const _: () = assert!(size_of::<ServiceKey>() == 20);
const _: () = assert!(size_of::<ServiceEntry>() == 8);
const _: () = assert!(size_of::<BackendEntry>() == 32);
const _: () = assert!(size_of::<crate::passive::PersistKey>() == 20);
const _: () = assert!(size_of::<crate::passive::PersistEntry>() == 16);
const _: () = assert!(size_of::<BackendTable>() == 8 + 4 * MAX_TABLE_SLOTS);
const _: () = assert!(size_of::<MaglevTable>() == 8 + 4 * MAX_MAGLEV_SLOTS);
const _: () = assert!(size_of::<VipKey>() == 20);
const _: () = assert!(size_of::<FragmentKey4>() == 12);
const _: () = assert!(size_of::<FragmentKey6>() == 40);
const _: () = assert!(size_of::<FragmentPorts>() == 4);
const _: () = assert!(size_of::<TrafficCounters>() == 72);
const _: () = assert!(size_of::<HandshakeGuard>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;

    /// Implements `aya::Pod` for each map key and value type.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {
            $(
                // SAFETY: every map type is `#[repr(C)]`, contains only integers and integer
                // arrays, and has no implicit padding (the size asserts above would fail if it
                // had), so every bit pattern is a valid value.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }

    pod!(
        ServiceKey,
        ServiceEntry,
        BackendEntry,
        BackendTable,
        MaglevTable,
        FlowKey,
        crate::FlowKey4,
        VipKey,
        FragmentKey4,
        FragmentKey6,
        FragmentPorts,
        FlowEntry,
        FlowEntry<u32>,
        crate::FlowTimeouts,
        TrafficCounters,
        HandshakeGuard,
        crate::trace::TraceConfig,
        crate::trace::TraceEvent,
        crate::passive::ServicePolicy,
        crate::passive::PassiveMark,
        crate::passive::SuspectSlots,
        crate::passive::PassiveEvent,
        crate::share::FlowEvent,
        crate::passive::AdmissionKey,
        crate::passive::PersistKey,
        crate::passive::PersistEntry,
        crate::BackendHop,
        crate::tunnel::TunnelConfig,
        crate::tunnel::DecapConfig,
        crate::BackendVipKey<u32>,
        crate::BackendVipKey<Addr>,
        crate::BackendVips<u32>,
        crate::BackendVips<Addr>,
        crate::VipPort<u32>,
        crate::VipPort<Addr>,
        crate::LoneVip<u32>,
        crate::LoneVip<Addr>,
    );
}
