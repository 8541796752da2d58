//! Every BPF map of the balancer: what it holds, who writes it, who reads it. Sizes come from
//! `lb_common::consts::limits`; userspace finds each map by the name of its static.

use aya_ebpf::{
    btf_maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray,
        RingBuf,
    },
    macros::btf_map,
};
use lb_common::{
    Addr, BackendEntry, BackendHop, BackendTable, BackendVipKey, BackendVips, ClientPrefix,
    FlowEntry, FlowKey, FlowKey4, FlowTimeouts, FragmentKey4, FragmentKey6, FragmentPorts,
    HandshakeGuard, LoneVip, MaglevTable, ServiceEntry, ServiceKey, TrafficCounters, VipKey,
    VipPort,
    consts::{events, limits},
    passive::{
        AdmissionKey, PassiveEvent, PassiveMark, PersistEntry, PersistKey, ServicePolicy,
        SuspectSlots,
    },
    share::FlowEvent,
    trace::{TraceConfig, TraceEvent},
    tunnel::TunnelConfig,
};

/// Virtual services: (VIP, port, protocol) -> service id.
/// Written by userspace when it applies a config; read for every packet.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry, { limits::MAX_SERVICES as usize }> =
    HashMap::new();

/// Backend tables, one per (service, pool) at index `service_id * MAX_POOLS_PER_SERVICE + pool`.
/// Each slot holds an inner array map with a single [`BackendTable`].
///
/// Atomic swap: userspace never modifies a published table. It builds the next table in a
/// fresh inner map and then replaces this slot's map reference with one update. The kernel
/// swaps that reference with a single pointer exchange, and a program that looked up the old
/// inner map keeps a valid reference to it until it finishes (inner maps removed from an outer
/// map are freed only after an RCU grace period). So a packet sees the whole old table or the
/// whole new one, never a mix. (A plain hash-map value replace would not do: the kernel reuses
/// freed hash elements without waiting for readers.)
///
/// Written by userspace on every table change; read once per new flow.
#[btf_map]
pub static BACKEND_TABLES: ArrayOfMaps<Array<BackendTable, 1>, { limits::MAX_TABLES as usize }> =
    ArrayOfMaps::new();

/// Maglev tables, for the (service, pool)s of services whose scheduler is Maglev, at the
/// indexes of `BACKEND_TABLES`; each slot holds an inner array map with a single
/// [`MaglevTable`]. Published whole and swapped in with one update, like the backend tables
/// (same reasoning). Written by userspace when the table changes; read once per new flow of a
/// Maglev service, and for a TCP packet without SYN that finds no flow.
#[btf_map]
pub static MAGLEV_TABLES: ArrayOfMaps<Array<MaglevTable, 1>, { limits::MAX_TABLES as usize }> =
    ArrayOfMaps::new();

/// Locality: for each service id with pools, an inner LPM trie mapping client prefixes to the
/// home pool of their new flows. Swapped whole, like the backend tables: a reload builds the
/// next trie in a fresh inner map and replaces the reference with one update, so a packet sees
/// the old mapping or the new one, never a mix. Written by userspace when a service's prefixes
/// change; read once per new flow of a service with pools.
#[btf_map]
pub static CLIENT_POOLS: ArrayOfMaps<
    LpmTrie<ClientPrefix, u32, { limits::MAX_PREFIXES_PER_SERVICE as usize }>,
    { limits::MAX_SERVICES as usize },
> = ArrayOfMaps::new();

/// New flows placed outside their home pool (a spill to a fallback pool), per CPU, at the
/// index of the home pool's table. Written by the program; summed by userspace, which knows
/// which pool each table was serving from.
#[btf_map]
pub static SPILLED: PerCpuArray<u64, { limits::MAX_TABLES as usize }> = PerCpuArray::new();

/// Backend registry: backend id -> address and port.
/// Written by userspace before any table refers to the id; read once per new flow.
#[btf_map]
pub static BACKENDS: Array<BackendEntry, { limits::MAX_BACKENDS as usize }> = Array::new();

/// The ports backends listen on (network order, as in packets), a bitmap of 65,536 bits
/// (`lb_common::backend_port_bit`). Written by userspace when a backend id is taken (before
/// any table names it) or released; read for every TCP and UDP packet: only a packet whose
/// source port is marked may be a backend's, and is looked up in `BACKEND_VIPS4`/`6`.
#[btf_map]
pub static BACKEND_PORTS: Array<u64, { lb_common::BACKEND_PORT_WORDS as usize }> = Array::new();

/// The ports services listen on (network order), a bitmap as `BACKEND_PORTS`. Written by
/// userspace before a service's entry (a port no service uses any more stays marked); read
/// for every client's TCP and UDP packet: one to a port no service listens on belongs to no
/// flow and no service, and skips their lookups.
#[btf_map]
pub static SERVICE_PORTS: Array<u64, { lb_common::BACKEND_PORT_WORDS as usize }> = Array::new();

/// The map from a NAT backend to the services it serves (`lb_common::reply`) of one family.
/// Not preallocated (`BPF_F_NO_PREALLOC`): memory for the backends there are, not for
/// `MAX_BACKENDS`; only userspace updates it.
pub type BackendVipsMap<A> =
    HashMap<BackendVipKey<A>, BackendVips<A>, { limits::MAX_BACKENDS as usize }, 1>;

/// IPv4 NAT backends (address, port, protocol) -> the VIPs and ports they serve: how a
/// backend's packet finds its flow's entry, stored under the client's 5-tuple. Written by
/// userspace before a table names the backend (and before a service entry names a new VIP),
/// and after the last flow that needs it is gone; read for every packet whose source port is
/// in `BACKEND_PORTS`.
#[btf_map]
pub static BACKEND_VIPS4: BackendVipsMap<u32> = HashMap::new();

/// IPv6 NAT backends, as `BACKEND_VIPS4`.
#[btf_map]
pub static BACKEND_VIPS6: BackendVipsMap<Addr> = HashMap::new();

/// A family's NAT backends that serve one VIP (`lb_common::reply::LoneVip`). Not
/// preallocated, as `BackendVipsMap`.
pub type LoneVipsMap<A> =
    HashMap<BackendVipKey<A>, LoneVip<A>, { limits::MAX_BACKENDS as usize }, 1>;

/// IPv4 NAT backends (address, port, protocol) that serve one VIP -> that VIP and their ids:
/// how an instance of a fleet takes over a flow whose backend's packet comes before its entry
/// (see `adopt`). Written by userspace beside `BACKEND_VIPS4`; read only for a NAT backend's
/// packet with no entry while the instance shares flows (`FLEET`). Not pinned: a restarted
/// daemon writes it again.
#[btf_map]
pub static LONE_VIPS4: LoneVipsMap<u32> = HashMap::new();

/// IPv6 NAT backends that serve one VIP, as `LONE_VIPS4`.
#[btf_map]
pub static LONE_VIPS6: LoneVipsMap<Addr> = HashMap::new();

/// The XDP program itself, in slot 0: a packet whose flow was just adopted runs the program
/// again through it (a tail call), and finds its flow's entry as any packet does. Written by
/// the daemon once the program is loaded; read only for such packets. Not pinned: a program
/// array holds its programs only while the daemon holds it.
#[btf_map]
pub static RERUN_XDP: ProgramArray<1> = ProgramArray::new();

/// The tc program itself, as `RERUN_XDP` (a program array serves programs of one type).
#[btf_map]
pub static RERUN_TC: ProgramArray<1> = ProgramArray::new();

/// The encapsulating XDP program (`xlb_encap`), in slot 0: a tunnel flow's packet, its next
/// hop and backend left in the scratch area, runs it through a tail call from the balancer's
/// top level (see `tunnel`). Written by the daemon once the programs are loaded; pinned, so
/// that tunnel flows keep flowing while no daemon runs.
#[btf_map]
pub static ENCAP_XDP: ProgramArray<1> = ProgramArray::new();

/// The encapsulating tc program (`xlb_tc_encap`), as `ENCAP_XDP`.
#[btf_map]
pub static ENCAP_TC: ProgramArray<1> = ProgramArray::new();

/// The outer headers' source addresses and GUE's port (`lb_common::tunnel::TunnelConfig`).
/// Written by the daemon from `[tunnel]`; read by the encapsulating programs. Not pinned:
/// each daemon writes it from its config.
#[btf_map]
pub static TUNNEL: Array<TunnelConfig, 1> = Array::new();

/// Per slot of a backend address and port (`lb_common::reply::hint_slot`), the one VIP and
/// port that the NAT backends of that slot serve in one family, if they serve exactly one;
/// zero otherwise. A hint: a backend's packet tries that flow first, checked as any candidate
/// (its entry must name the packet's source as its backend), and looks up `BACKEND_VIPS4`/`6`
/// only when the hint is missing or finds nothing, so a stale or half-written hint costs a
/// lookup, never a wrong flow. An array, which the verifier inlines: the common case pays no
/// hash lookup.
pub type VipHints<A> = Array<VipPort<A>, { lb_common::reply::HINT_SLOTS as usize }>;

/// IPv4 backends' VIP hints. Written by userspace when a backend id is taken or released, or
/// its service changes; read for every packet whose source port is in `BACKEND_PORTS`. Not
/// pinned: a restarted daemon writes them again.
#[btf_map]
pub static VIP_HINTS4: VipHints<u32> = Array::new();

/// IPv6 backends' VIP hints, as `VIP_HINTS4`.
#[btf_map]
pub static VIP_HINTS6: VipHints<Addr> = Array::new();

/// The VIPs of the replies of one family's flows whose backend is shared by more NAT services
/// than `BACKEND_VIPS4`/`6` lists (`lb_common::reply`): the reply's 5-tuple as it arrives
/// (backend to client) -> the VIP and port. LRU, a quarter of the flow table's size (set by
/// userspace at load).
pub type ReplyVips<K, A> =
    LruHashMap<K, VipPort<A>, { limits::DEFAULT_FLOW_TABLE_SIZE as usize / 4 }>;

/// IPv4 replies' VIPs. Written by the program with a new flow of a shared backend (the flow's
/// entry is marked `LOCATED`), deleted with the flow by the program or userspace; read for a
/// packet from a shared backend.
#[btf_map]
pub static REPLY_VIPS4: ReplyVips<FlowKey4, u32> = LruHashMap::new();

/// IPv6 replies' VIPs, as `REPLY_VIPS4`.
#[btf_map]
pub static REPLY_VIPS6: ReplyVips<FlowKey, Addr> = LruHashMap::new();

/// The next hop toward each backend, by backend id, and when the FIB gave it: a new flow
/// takes it if it is less than a second old (`lb_common::BackendHop::fresh`) and asks the FIB
/// otherwise. Written and read by the program (a new flow that asks the FIB, and the
/// once-a-second refresh of a flow toward its backend); not pinned: a restarted program asks
/// the FIB again.
#[btf_map]
pub static BACKEND_HOPS: Array<BackendHop, { limits::MAX_BACKENDS as usize }> = Array::new();

/// Round-robin cursor of each backend table (same index as `BACKEND_TABLES`): the number of
/// new flows that table has placed. The program advances it with an atomic fetch-and-add, so
/// two CPUs never read the same value; userspace only zeroes it when a table index is reused.
#[btf_map]
pub static RR_CURSORS: Array<u64, { limits::MAX_TABLES as usize }> = Array::new();

/// The handshake guard, one element. A SYN flood churns `HALF_OPEN`: when SYNs arrive faster
/// than it can keep each for `timing::HANDSHAKE_KEEP_NS`, a legitimate handshake may lose its
/// entry before the client's ACK, and a round-robin choice cannot be made again. So the
/// program counts new TCP flows per `timing::HANDSHAKE_WINDOW_NS`, and above the budget (and
/// for the whole window after one that reached it) it places SYNs by a seeded hash of the
/// 5-tuple over the same weighted table; a client TCP packet without SYN that finds no entry
/// is placed by the same hash, and so reaches the backend its SYN got. Userspace writes the
/// budget and the seed when it creates the maps; the program writes the window (restarted by
/// one CPU, through a compare-and-swap of its start), its count and the flooded flag. The
/// count is approximate: flows counted while a window restarts may land in the old one.
#[btf_map]
pub static HANDSHAKE_GUARD: Array<HandshakeGuard, 1> = Array::new();

/// A flow table: the client's 5-tuple as it arrives -> how to rewrite the flow's packets and
/// where to send them, both directions (one table per family and state; see
/// `lb_common::flow`). LRU: when full, the least recently used entries are evicted; userspace
/// sets each table's size at load (one entry per flow of `flow_table_size`, a quarter of that
/// for the half-open tables).
pub type FlowTable<K, A> =
    LruHashMap<K, FlowEntry<A>, { limits::DEFAULT_FLOW_TABLE_SIZE as usize }>;

/// Established IPv4 flows, one entry each, keyed by the client's 5-tuple as it arrives (client
/// to VIP): the client's packets get the backend as their destination, the backend's (found
/// through `BACKEND_VIPS4`) the VIP back as their source, each direction with its cached next
/// hop. UDP flows are written here on their first packet;
/// TCP flows move here from `HALF_OPEN4` on the client's first packet after the SYN. The
/// program refreshes `last_seen_ns`, `flags` and `epoch`, and deletes a flow it finds silent
/// past its timeout; userspace deletes the flows of a backend that goes Down (and, for
/// `xlb flows`, reads them).
#[btf_map]
pub static FLOWS4: FlowTable<FlowKey4, u32> = LruHashMap::new();

/// IPv4 TCP flows whose handshake has not completed (the client has sent a SYN, nothing
/// since), one entry each, as in `FLOWS4`. Kept apart so that a flood of spoofed SYNs evicts
/// only other half-open flows, never an established one. Written by the program on a SYN to a
/// service; read for packets that miss `FLOWS4`; userspace deletes the flows of a backend that
/// goes Down.
#[btf_map]
pub static HALF_OPEN4: FlowTable<FlowKey4, u32> = LruHashMap::new();

/// Established IPv6 flows, as `FLOWS4` for IPv4.
#[btf_map]
pub static FLOWS6: FlowTable<FlowKey, Addr> = LruHashMap::new();

/// Half-open IPv6 TCP flows, as `HALF_OPEN4` for IPv4.
#[btf_map]
pub static HALF_OPEN6: FlowTable<FlowKey, Addr> = LruHashMap::new();

/// The records of fragmented datagrams of one family: the datagram (addresses, protocol,
/// identification) -> the ports of its first fragment, the only one with a transport header.
/// LRU, `limits::MAX_FRAGMENTED_DATAGRAMS` each: a record is needed only until the datagram's
/// last fragment has passed, and the oldest go first when the table is full. Not pinned: a
/// restart loses only the datagrams in flight at that instant.
pub type FragmentTable<K> =
    LruHashMap<K, FragmentPorts, { limits::MAX_FRAGMENTED_DATAGRAMS as usize }>;

/// IPv4 fragmented datagrams. Written by the program for every first fragment of a TCP or UDP
/// datagram (with more to come); read for each later fragment, which takes the ports to find
/// its flow in `FLOWS4` (or `HALF_OPEN4`) and goes where the flow goes. Userspace only
/// creates it.
#[btf_map]
pub static FRAGMENTS4: FragmentTable<FragmentKey4> = LruHashMap::new();

/// IPv6 fragmented datagrams (keyed by the fragment header's identification), as `FRAGMENTS4`.
#[btf_map]
pub static FRAGMENTS6: FragmentTable<FragmentKey6> = LruHashMap::new();

/// The flow timeouts, one element. Written by userspace from the config (at start and on
/// reload); read by the program when it refreshes a flow's entry (at most once a second per
/// flow): a flow silent past its timeout is deleted and its packet handled as one without a
/// flow.
#[btf_map]
pub static FLOW_TIMEOUTS: Array<FlowTimeouts, 1> = Array::new();

/// Active flows, per CPU: at `lb_common::active_index(epoch, backend)`, the flows of the
/// backend whose client sent a packet during the activity epoch (counted once per flow and
/// epoch, through the entry's `epoch`), tagged with the epoch (`lb_common::active_add`).
/// Written by the program; read by userspace (the epoch under way and the one before).
#[btf_map]
pub static ACTIVE_FLOWS: PerCpuArray<
    u64,
    { (lb_common::EPOCH_SLOTS * limits::MAX_BACKENDS) as usize },
> = PerCpuArray::new();

/// Virtual IP addresses of the services, whatever their ports: ICMP echo requests to them are
/// answered, and TCP and UDP packets to them that no flow or service takes are dropped. The
/// value counts those drops. Written by userspace with the services (a new VIP at 0); read
/// for ICMP echo requests and for packets no service took, which add to the count; read by
/// userspace for `xlb stats` and the metrics.
#[btf_map]
pub static VIPS: HashMap<VipKey, u32, { limits::MAX_VIPS as usize }> = HashMap::new();

/// Ports the host itself answers on the VIPs (`host_ports`): a TCP or UDP packet to a VIP
/// that no flow or service takes passes to the kernel if its (protocol, destination port) is
/// here (`lb_common::host_port_key`). Written by userspace at start and reload (not pinned);
/// read for packets no service took.
#[btf_map]
pub static HOST_PORTS: HashMap<u32, u8, { limits::MAX_HOST_PORTS as usize }> = HashMap::new();

/// The MAC address of each interface xlb is attached to, by ifindex (6 bytes and 2 of
/// padding): the XDP program balances only frames addressed to their interface's MAC, as the
/// kernel accepts only those (tc reads the kernel's own verdict, `skb->pkt_type`). Written by
/// userspace at attach time, and again when an interface's address changes (not pinned);
/// read for the first frame of an interface on a CPU, then kept in the scratch area until
/// `IFACE_MACS_GENERATION` changes.
#[btf_map]
pub static IFACE_MACS: HashMap<u32, [u8; 8], { limits::MAX_INTERFACES as usize }> = HashMap::new();

/// How many times userspace changed `IFACE_MACS`: a CPU whose cached MAC is of an older
/// generation looks it up again. Written by userspace after each change; read for every XDP
/// frame (an array lookup).
#[btf_map]
pub static IFACE_MACS_GENERATION: Array<u32, 1> = Array::new();

/// Interfaces xlb is attached to, by ifindex: where `XDP_REDIRECT` may send a packet.
/// Written by userspace at attach time; read when the next hop is on another interface.
#[btf_map]
pub static EGRESS_PORTS: DevMapHash<{ limits::MAX_INTERFACES as usize }> = DevMapHash::new();

/// Interfaces, by ifindex, that are veths whose peer lives in another network namespace and
/// whose packets the tc program hands straight to that peer (`bpf_redirect_peer`: the packet
/// skips the veth's transmit path and the peer's backlog queue). Written by userspace after it
/// attached at tc (unless the config turns it off); read at tc when a next hop is resolved,
/// which caches the answer in the flow entry (`hop_peer`). Not pinned.
#[btf_map]
pub static VETH_PEERS: HashMap<u32, u32, { limits::MAX_INTERFACES as usize }> = HashMap::new();

/// Traffic counters per service id, per CPU. Written by the program; summed by userspace.
#[btf_map]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters, { limits::MAX_SERVICES as usize }> =
    PerCpuArray::new();

/// Traffic counters per backend id, per CPU. Written by the program; summed by userspace.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters, { limits::MAX_BACKENDS as usize }> =
    PerCpuArray::new();

/// Data-plane events (`lb_common::consts::events`), per CPU. Written by the program; summed
/// by userspace.
#[btf_map]
pub static EVENTS: PerCpuArray<u64, { events::COUNT as usize }> = PerCpuArray::new();

/// Passive health and admission settings per service id (`lb_common::passive`). Written by
/// userspace with the service, before the service is published; read by the program when a
/// backend refuses or ignores a handshake, and for every new flow (admission).
#[btf_map]
pub static SERVICE_POLICIES: Array<ServicePolicy, { limits::MAX_SERVICES as usize }> = Array::new();

/// Passive health per backend id: the window's counts of refused and unanswered handshakes,
/// and the suspect mark. Written by the program (counts atomically, the mark after taking a
/// slot in `SUSPECT_SLOTS`); cleared by userspace when it assigns an id and when a check
/// disproves a mark; read by the program for every new flow (a suspect backend's slot is
/// skipped) and by the daemon.
#[btf_map]
pub static PASSIVE_MARKS: Array<PassiveMark, { limits::MAX_BACKENDS as usize }> = Array::new();

/// The share cap: per service id, the marks it has handed out, each slot one `u64` holding
/// the mark's end (high bits) and the backend id (low 16 bits), taken with a compare-and-swap
/// so that two CPUs never take the same slot. Written and read by the program only.
#[btf_map]
pub static SUSPECT_SLOTS: Array<SuspectSlots, { limits::MAX_SERVICES as usize }> = Array::new();

/// Source persistence: per (service, client), the backend of the client's last new flow and
/// when it came. Written by the program at every new flow of a service that persists
/// (`ServicePolicy::persist_s`), read at the next; entries of a backend that stops taking new
/// flows are deleted by the daemon. LRU: clients that stop coming are forgotten first.
#[btf_map]
pub static PERSISTENCE: LruHashMap<
    PersistKey,
    PersistEntry,
    { limits::MAX_PERSISTENT_CLIENTS as usize },
> = LruHashMap::new();

/// Admission: per (service, client prefix), the time its next new flow is due (GCRA, see
/// `lb_common::passive::admit`). Written and read by the program for the new flows of
/// services with an admission limit. LRU: prefixes that stop sending are forgotten first.
#[btf_map]
pub static ADMISSION: LruHashMap<AdmissionKey, u64, { limits::MAX_ADMISSION_PREFIXES as usize }> =
    LruHashMap::new();

/// Marks for the daemon: one `PassiveEvent` when a backend is marked suspect (or reaches a
/// threshold while its service is at its cap). Written by the program; read by the daemon,
/// which runs a confirming check at once. 64 KiB. Not pinned.
#[btf_map]
pub static PASSIVE_EVENTS: RingBuf<PassiveEvent, { 64 * 1024 }> = RingBuf::new();

/// What `xlb trace` traces, one element (`until_ns` 0: nothing). Written by the daemon when a
/// trace starts and ends; read for every packet the program decides on (an array lookup the
/// verifier inlines, and one comparison, when no trace runs); its counters are written by the
/// program. Not pinned: a trace belongs to the program instance it was started on.
#[btf_map]
pub static TRACE_CONFIG: Array<TraceConfig, 1> = Array::new();

/// The decisions traced: one `TraceEvent` per traced packet. Written by the program; read by
/// the daemon while `xlb trace` runs. 256 KiB (5461 events); when full, events are counted
/// as lost in `TRACE_CONFIG`. Not pinned.
#[btf_map]
pub static TRACE_EVENTS: RingBuf<TraceEvent, { 256 * 1024 }> = RingBuf::new();

/// Whether the daemon shares this instance's flows with a fleet, one element (0: no, the
/// default). Written by the daemon at start when the config has a `[fleet]`; read by the
/// program whenever a flow becomes established or closes. Not pinned: it belongs to the
/// program instance the daemon started.
#[btf_map]
pub static FLEET: Array<u32, 1> = Array::new();

/// The flows this instance made established or closed, for the fleet: one `FlowEvent` each.
/// Written by the program while `FLEET` says so; read by the daemon, which sends them to the
/// other instances. 1 MiB (16,384 events); when full, events are counted in
/// `FLOW_EVENTS_LOST`. Not pinned.
#[btf_map]
pub static FLOW_EVENTS: RingBuf<FlowEvent, { 1024 * 1024 }> = RingBuf::new();

/// Flow events the ring had no room for, per CPU. Written by the program; read by the daemon
/// (metrics). Not pinned.
#[btf_map]
pub static FLOW_EVENTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Counts one data-plane event.
#[inline(always)]
pub fn count_event(event: u32) {
    if let Some(counter) = EVENTS.get_ptr_mut(event) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
