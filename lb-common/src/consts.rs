//! Every size, code and map name the kernel program and userspace agree on, in one place.

/// Address family codes used in map keys and values (xlb's own codes, not libc's `AF_*`).
pub mod family {
    /// IPv4: the address occupies the first 4 bytes of a 16-byte address field, the rest is zero.
    pub const IPV4: u8 = 4;
    /// IPv6: the address occupies all 16 bytes.
    pub const IPV6: u8 = 6;
}

/// IP protocol numbers (IANA) of the transports xlb balances.
pub mod proto {
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
    /// ICMP for IPv4 (echo to VIPs, errors about balanced flows).
    pub const ICMP: u8 = 1;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// EtherTypes, in host byte order (the data plane compares them, converted with `to_be`, with
/// the frame's field).
pub mod ether_type {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// An 802.1Q VLAN tag.
    pub const VLAN_8021Q: u16 = 0x8100;
    /// An 802.1ad (QinQ) service tag.
    pub const VLAN_8021AD: u16 = 0x88a8;
}

/// The verdicts of an XDP program (`enum xdp_action`), as userspace reads them back from
/// BPF_PROG_TEST_RUN (the program itself returns aya-ebpf's bindings of the same values).
pub mod xdp_action {
    /// The program failed (or chose to); the frame is dropped and a trace event raised.
    pub const ABORTED: u32 = 0;
    /// The frame is dropped.
    pub const DROP: u32 = 1;
    /// The frame goes on to the kernel's stack.
    pub const PASS: u32 = 2;
    /// The frame goes back out of the interface it came in on.
    pub const TX: u32 = 3;
    /// The frame goes out of another interface (`bpf_redirect`).
    pub const REDIRECT: u32 = 4;
    /// Each verdict's name as `enum xdp_action` spells it, indexed by the verdict.
    pub const NAMES: [&str; 5] = [
        "XDP_ABORTED",
        "XDP_DROP",
        "XDP_PASS",
        "XDP_TX",
        "XDP_REDIRECT",
    ];

    /// A verdict's name ("XDP_REDIRECT"), or "unknown verdict".
    pub fn name(verdict: u32) -> &'static str {
        NAMES
            .get(verdict as usize)
            .copied()
            .unwrap_or("unknown verdict")
    }
}

/// TCP flags: bits of the TCP header's 14th byte (offset 13).
pub mod tcp_flags {
    /// FIN: the sender has finished.
    pub const FIN: u8 = 0x01;
    /// SYN: the first packet of a connection (with ACK: the server's answer).
    pub const SYN: u8 = 0x02;
    /// RST: the connection is aborted.
    pub const RST: u8 = 0x04;
    /// PSH: the data is to be delivered at once.
    pub const PSH: u8 = 0x08;
    /// ACK: the acknowledgement number is valid (every packet but a client's SYN).
    pub const ACK: u8 = 0x10;
    /// URG: the urgent pointer is valid.
    pub const URG: u8 = 0x20;
    /// Display names, in the order `xlb trace` lists the flags that are set ("SYN|ACK",
    /// "FIN|ACK").
    pub const NAMES: [(u8, &str); 6] = [
        (SYN, "SYN"),
        (FIN, "FIN"),
        (RST, "RST"),
        (PSH, "PSH"),
        (ACK, "ACK"),
        (URG, "URG"),
    ];
}

/// Values of [`crate::FlowEntry::flags`].
pub mod flow_flags {
    /// A TCP FIN or RST was seen in either direction: the flow expires after
    /// `tcp_closing_timeout` of silence instead of `tcp_idle_timeout`.
    pub const CLOSING: u8 = 1;
    /// The backend answered the flow's SYN (set on the half-open entry when a backend's packet
    /// passes): a retransmitted SYN is then not the backend's fault.
    pub const ANSWERED: u8 = 2;
    /// Direct server return: the flow's packets keep their addresses and only get the
    /// backend's MAC address; the backend answers the client directly, never through xlb.
    pub const DSR: u8 = 4;
    /// The flow's backend is shared by more NAT services than the program tells apart by
    /// their VIPs: the VIP of its replies is also recorded under the reply's 5-tuple
    /// (`REPLY_VIPS4`/`REPLY_VIPS6`), and removed with the flow.
    pub const LOCATED: u8 = 8;
    /// An operator ended the connection (`xlb backend reset`): its next
    /// packet, in either direction, leaves as a RST to its receiver, and the flow is closing.
    /// Set by the daemon with both next hops unresolved, so that the packet takes the refresh.
    pub const RESET: u8 = 16;
    /// With [`DSR`]: the flow's packets to the backend are encapsulated in IPIP (see
    /// `crate::tunnel`) to the entry's backend address, rather than sent to its MAC address.
    pub const IPIP: u8 = 32;
    /// With [`DSR`]: encapsulated in GUE, as [`IPIP`].
    pub const GUE: u8 = 64;
    /// Either encapsulation.
    pub const TUNNEL: u8 = IPIP | GUE;
}

/// Values of [`crate::ServiceEntry::scheduler`]: how a new flow's backend is chosen.
pub mod scheduler {
    /// The next slot of the weighted round-robin table (`BACKEND_TABLES`).
    pub const ROUND_ROBIN: u8 = 0;
    /// The slot of the Maglev table (`MAGLEV_TABLES`) that the flow's 5-tuple hashes to: every
    /// instance with the same backends and seed makes the same choice.
    pub const MAGLEV: u8 = 1;
}

/// Values of [`crate::ServiceEntry::forwarding`]: how a flow's packets reach its backend.
pub mod forwarding {
    /// Destination address and port rewritten to the backend's, replies rewritten back.
    pub const NAT: u8 = 0;
    /// Layer-2 direct server return: only the destination MAC is rewritten (the backend holds
    /// the VIP on a loopback), replies go from the backend to the client directly.
    pub const DSR: u8 = 1;
    /// Layer-3 direct server return over IPIP: the packet, unchanged, inside an outer IP
    /// header to the backend's address (see `crate::tunnel`); the backend strips it, holds
    /// the VIP, and answers the client directly.
    pub const IPIP: u8 = 2;
    /// Layer-3 direct server return over GUE: as [`IPIP`], with a UDP header after the outer
    /// IP header (see `crate::tunnel`).
    pub const GUE: u8 = 3;
}

/// Bits of [`crate::MaglevTable::len`]: the slot count, and how new flows hash.
pub mod maglev_len {
    /// New flows hash the client's address (with the VIP) alone, not the 5-tuple: every
    /// connection of a client goes to one backend while the backends stay the same (the
    /// `source-hash` scheduler; IPVS's `sh`, HAProxy's `balance source`).
    pub const CLIENT_HASH: u32 = 1 << 31;
    /// The slot count (the table's prime size).
    pub const SLOTS: u32 = CLIENT_HASH - 1;
}

/// Capacity limits. Maps are sized from these; userspace validation enforces them.
pub mod limits {
    /// Virtual services (VIP, port, protocol) in the `SERVICES` map.
    pub const MAX_SERVICES: u32 = 16_384;
    /// Locality pools per service (a service without pools has one, pool 0).
    pub const MAX_POOLS_PER_SERVICE: u32 = 8;
    /// Client prefixes per service (`CLIENT_POOLS` inner tries; allocated per prefix).
    pub const MAX_PREFIXES_PER_SERVICE: u32 = 1_048_576;
    /// Backend tables: one per (service, pool), indexed `service_id * MAX_POOLS_PER_SERVICE + pool`.
    pub const MAX_TABLES: u32 = MAX_SERVICES * MAX_POOLS_PER_SERVICE;
    /// Backends across all services (the `BACKENDS` registry).
    pub const MAX_BACKENDS: u32 = 65_536;
    /// Backends in one service.
    pub const MAX_BACKENDS_PER_SERVICE: u32 = 1_024;
    /// Round-robin slots in one backend table (a backend of weight w fills about w slots).
    pub const MAX_TABLE_SLOTS: usize = 2_048;
    /// Slots of the largest Maglev table (a prime, 2^17 - 1): room for 100 slots per backend
    /// of a service with `MAX_BACKENDS_PER_SERVICE` backends.
    pub const MAX_MAGLEV_SLOTS: usize = 131_071;
    /// Default number of flows the flow table holds (`flow_table_size` in the config); each flow
    /// takes two entries of `FLOWS`, one per direction.
    pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;
    /// TCP flows waiting for the client's first ACK (`HALF_OPEN`) hold this fraction of
    /// `flow_table_size`: a SYN flood churns this smaller table and never the flows that
    /// completed their handshake.
    pub const HALF_OPEN_DIVISOR: u32 = 4;
    /// Distinct virtual IP addresses (`VIPS`).
    pub const MAX_VIPS: u32 = MAX_SERVICES;
    /// Ports (protocol and port) the host may answer on the VIPs (`host_ports`).
    pub const MAX_HOST_PORTS: u32 = 64;
    /// Highest backend weight, as in HAProxy (0 means: no new flows).
    pub const MAX_WEIGHT: u32 = 256;
    /// Network interfaces xlb can attach to (entries of the `EGRESS_PORTS` devmap).
    pub const MAX_INTERFACES: u32 = 64;
    /// Clients whose last new flow's backend is remembered for source persistence
    /// (`PERSISTENCE`, LRU, across services).
    pub const MAX_PERSISTENT_CLIENTS: u32 = 65_536;
    /// Client prefixes whose new-flow rate is tracked (`ADMISSION`, LRU, across services).
    pub const MAX_ADMISSION_PREFIXES: u32 = 65_536;
    /// Fragmented datagrams whose first fragment's ports are remembered, per family
    /// (`FRAGMENTS4`, `FRAGMENTS6`; LRU): a record is needed only until the datagram's last
    /// fragment has passed, so this bounds the datagrams in flight through xlb at once.
    pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8_192;
}

/// Timing constants of the data plane (times from `bpf_ktime_get_coarse_ns`, the coarse
/// monotonic clock).
pub mod timing {
    /// A flow entry's `last_seen_ns` is refreshed only when it is older than this, so that an
    /// established flow does not write to its entry on every packet (1 s in nanoseconds). The
    /// refresh also checks the flow's timeout and takes the next hop from the FIB again (the
    /// other direction's on its next packet), so route and neighbour changes reach established
    /// flows within about this time.
    pub const LAST_SEEN_REFRESH_NS: u64 = 1_000_000_000;
    /// The handshake guard counts new TCP flows in windows of this length (100 ms).
    pub const HANDSHAKE_WINDOW_NS: u64 = 100_000_000;
    /// How long a half-open flow should stay in `HALF_OPEN` at the least, however fast SYNs
    /// arrive (2 s: a handshake delayed by a loaded host or one SYN retransmission). Above
    /// the rate at which LRU eviction would cut that short, SYNs are placed by hash, so a
    /// handshake whose entry was evicted still finds its backend.
    pub const HANDSHAKE_KEEP_NS: u64 = 2_000_000_000;
}

/// Names of the BPF maps, as declared by `lb-ebpf` and looked up by `lb-userspace`.
pub mod map_names {
    /// See `lb-ebpf/src/maps.rs` for what each map holds and who reads and writes it.
    pub const SERVICES: &str = "SERVICES";
    /// Outer map of the per-(service, pool) backend tables.
    pub const BACKEND_TABLES: &str = "BACKEND_TABLES";
    /// Maglev tables, an array of maps (same indexes as `BACKEND_TABLES`).
    pub const MAGLEV_TABLES: &str = "MAGLEV_TABLES";
    /// Backend registry: id -> address.
    pub const BACKENDS: &str = "BACKENDS";
    /// The ports backends listen on, a bitmap.
    pub const BACKEND_PORTS: &str = "BACKEND_PORTS";
    /// The ports services listen on, a bitmap.
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    /// The handshake guard: window count of new TCP flows, budget and hash seed.
    pub const HANDSHAKE_GUARD: &str = "HANDSHAKE_GUARD";
    /// Round-robin cursors, one per backend table.
    pub const RR_CURSORS: &str = "RR_CURSORS";
    /// IPv4 flows, one entry each: the client's 5-tuple -> rewrites and next hops.
    pub const FLOWS4: &str = "FLOWS4";
    /// IPv4 TCP flows whose handshake has not completed.
    pub const HALF_OPEN4: &str = "HALF_OPEN4";
    /// IPv6 flows, one entry each.
    pub const FLOWS6: &str = "FLOWS6";
    /// IPv6 TCP flows whose handshake has not completed.
    pub const HALF_OPEN6: &str = "HALF_OPEN6";
    /// IPv4 NAT backends (address, port, protocol) -> the VIPs they serve: how a backend's
    /// packet finds its flow.
    pub const BACKEND_VIPS4: &str = "BACKEND_VIPS4";
    /// IPv6 NAT backends, as `BACKEND_VIPS4`.
    pub const BACKEND_VIPS6: &str = "BACKEND_VIPS6";
    /// IPv4 NAT backends that serve one VIP -> that VIP and their ids (not pinned).
    pub const LONE_VIPS4: &str = "LONE_VIPS4";
    /// IPv6 NAT backends that serve one VIP, as `LONE_VIPS4`.
    pub const LONE_VIPS6: &str = "LONE_VIPS6";
    /// Per backend port, the one VIP its IPv4 NAT backends serve, if one (not pinned).
    pub const VIP_HINTS4: &str = "VIP_HINTS4";
    /// The same for IPv6 NAT backends.
    pub const VIP_HINTS6: &str = "VIP_HINTS6";
    /// IPv4 flows of backends shared by more than `reply::MAX_VIPS_PER_BACKEND` NAT
    /// services: the reply's 5-tuple -> its VIP and port.
    pub const REPLY_VIPS4: &str = "REPLY_VIPS4";
    /// IPv6 flows of such backends, as `REPLY_VIPS4`.
    pub const REPLY_VIPS6: &str = "REPLY_VIPS6";
    /// Per backend id: the next hop toward it, cached for new flows (not pinned).
    pub const BACKEND_HOPS: &str = "BACKEND_HOPS";
    /// The flow timeouts, one element.
    pub const FLOW_TIMEOUTS: &str = "FLOW_TIMEOUTS";
    /// Per CPU, per (activity epoch slot, backend): flows whose client sent a packet.
    pub const ACTIVE_FLOWS: &str = "ACTIVE_FLOWS";
    /// The flow tables: (name, half-open, IPv6).
    pub const FLOW_TABLES: [(&str, bool, bool); 4] = [
        (FLOWS4, false, false),
        (HALF_OPEN4, true, false),
        (FLOWS6, false, true),
        (HALF_OPEN6, true, true),
    ];
    /// Maps that earlier versions pinned and this one no longer has (one flow table for both
    /// families): finding one pinned means the pins are another version's.
    pub const RETIRED: [&str; 2] = ["FLOWS", "HALF_OPEN"];
    /// Virtual IP addresses, for ICMP, with the packets to them that no service took.
    pub const VIPS: &str = "VIPS";
    /// Ports the host answers on the VIPs itself (not pinned: each daemon fills it from its
    /// config).
    pub const HOST_PORTS: &str = "HOST_PORTS";
    /// Per service, client prefix -> home pool.
    pub const CLIENT_POOLS: &str = "CLIENT_POOLS";
    /// Per-CPU count of new flows placed outside their home pool, per (service, home pool).
    pub const SPILLED: &str = "SPILLED";
    /// Interfaces xlb may redirect to.
    pub const EGRESS_PORTS: &str = "EGRESS_PORTS";
    /// The MAC address of each interface xlb is attached to (not pinned: each daemon fills it
    /// as it attaches).
    pub const IFACE_MACS: &str = "IFACE_MACS";
    /// A count of changes to `IFACE_MACS`, one element (not pinned).
    pub const IFACE_MACS_GENERATION: &str = "IFACE_MACS_GENERATION";
    /// Interfaces whose packets the tc program hands to the veth peer (not pinned: each
    /// daemon fills it for the interfaces it attached).
    pub const VETH_PEERS: &str = "VETH_PEERS";
    /// Per-CPU traffic counters per service.
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    /// Per-CPU traffic counters per backend.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Per-CPU data-plane event counters (see [`super::events`]).
    pub const EVENTS: &str = "EVENTS";
    /// IPv4 fragmented datagrams: (addresses, protocol, identification) -> the ports of the
    /// first fragment (not pinned: a record lives as long as its datagram's fragments).
    pub const FRAGMENTS4: &str = "FRAGMENTS4";
    /// IPv6 fragmented datagrams, as `FRAGMENTS4` (not pinned).
    pub const FRAGMENTS6: &str = "FRAGMENTS6";

    /// Per service: passive health and admission settings.
    pub const SERVICE_POLICIES: &str = "SERVICE_POLICIES";
    /// Per backend: passive counts and the suspect mark.
    pub const PASSIVE_MARKS: &str = "PASSIVE_MARKS";
    /// Per service: the suspect marks it handed out (the share cap).
    pub const SUSPECT_SLOTS: &str = "SUSPECT_SLOTS";
    /// Per (service, client prefix): the admission bucket.
    pub const ADMISSION: &str = "ADMISSION";
    /// Per (service, client): the backend of its last new flow (source persistence).
    pub const PERSISTENCE: &str = "PERSISTENCE";
    /// Marks for the daemon to confirm, a ring buffer (not pinned: read by the daemon that
    /// loaded the program; a restarted daemon reads `PASSIVE_MARKS`).
    pub const PASSIVE_EVENTS: &str = "PASSIVE_EVENTS";

    /// What `xlb trace` traces (not pinned: a trace belongs to one program instance).
    pub const TRACE_CONFIG: &str = "TRACE_CONFIG";
    /// The traced decisions, a ring buffer (not pinned).
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";

    /// Whether the daemon shares flows with a fleet (not pinned).
    pub const FLEET: &str = "FLEET";
    /// The flows made established or closed, for the fleet, a ring buffer (not pinned).
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    /// The XDP program, for a packet whose flow it adopted to run it again (not pinned).
    pub const RERUN_XDP: &str = "RERUN_XDP";
    /// The tc program, as `RERUN_XDP` (not pinned).
    pub const RERUN_TC: &str = "RERUN_TC";
    /// The encapsulating XDP program, in slot 0 (pinned: tunnel flows keep flowing while no
    /// daemon runs).
    pub const ENCAP_XDP: &str = "ENCAP_XDP";
    /// The encapsulating tc program, as `ENCAP_XDP`.
    pub const ENCAP_TC: &str = "ENCAP_TC";
    /// The outer source addresses and GUE's port, one element.
    pub const TUNNEL: &str = "TUNNEL";
    /// Flow events the ring had no room for, per CPU (not pinned).
    pub const FLOW_EVENTS_LOST: &str = "FLOW_EVENTS_LOST";

    /// Every map that is pinned (all but the per-CPU scratch space, which holds nothing
    /// between packets, the fragment records, which hold nothing for longer than a datagram
    /// takes to pass, and the trace's maps).
    pub const PINNED: [&str; 32] = [
        SERVICES,
        BACKEND_TABLES,
        MAGLEV_TABLES,
        BACKENDS,
        BACKEND_PORTS,
        SERVICE_PORTS,
        BACKEND_VIPS4,
        BACKEND_VIPS6,
        REPLY_VIPS4,
        REPLY_VIPS6,
        RR_CURSORS,
        HANDSHAKE_GUARD,
        FLOWS4,
        HALF_OPEN4,
        FLOWS6,
        HALF_OPEN6,
        FLOW_TIMEOUTS,
        ACTIVE_FLOWS,
        VIPS,
        CLIENT_POOLS,
        SPILLED,
        EGRESS_PORTS,
        SERVICE_STATS,
        BACKEND_STATS,
        EVENTS,
        SERVICE_POLICIES,
        PASSIVE_MARKS,
        SUSPECT_SLOTS,
        ADMISSION,
        PERSISTENCE,
        ENCAP_XDP,
        ENCAP_TC,
    ];
}

/// Names of the BPF programs.
pub mod program_names {
    /// The balancer at the XDP hook (object `xlb`); its maps are named by [`super::map_names`]
    /// (each the name of its `static` in `lb-ebpf/src/maps.rs`).
    pub const BALANCER: &str = "xlb";
    /// The same balancer at the tc ingress hook (object `xlb`).
    pub const BALANCER_TC: &str = "xlb_tc";
    /// The reference program that counts and passes, at XDP (object `xlb-noop`).
    pub const NOOP: &str = "xlb_noop";
    /// The same at tc (object `xlb-noop`).
    pub const NOOP_TC: &str = "xlb_noop_tc";
    /// The floor: one flow lookup and a redirect (object `xlb-noop`).
    pub const FLOOR: &str = "xlb_floor";
    /// The encapsulation of a tunnel flow's packet, at XDP (object `xlb`): the balancer's
    /// tail call (`ENCAP_XDP`).
    pub const ENCAP: &str = "xlb_encap";
    /// The same at tc (object `xlb`; `ENCAP_TC`).
    pub const ENCAP_TC: &str = "xlb_tc_encap";
    /// `xlb decap`'s program, at tc ingress on a backend (object `xlb-decap`).
    pub const DECAP: &str = "xlb_decap";
}

/// Indexes into the `EVENTS` per-CPU array: things the data plane did that an operator may
/// need to know about. Each counts packets.
pub mod events {
    /// A new flow to a service that had no backend available: dropped.
    pub const NO_BACKEND: u32 = 0;
    /// A new flow could not be inserted into `FLOWS`: dropped.
    pub const FLOW_INSERT_FAILED: u32 = 1;
    /// After NAT, the kernel's FIB had no neighbour entry for the next hop: passed to the
    /// kernel, which resolves it and forwards the packet.
    pub const FIB_NO_NEIGHBOUR: u32 = 2;
    /// After NAT, the FIB lookup failed for another reason (no route, forwarding disabled,
    /// needs fragmentation, ...): passed to the kernel, which forwards or rejects it.
    pub const FIB_FAILED: u32 = 3;
    /// After NAT, the next hop is on an interface without xlb: passed to the kernel.
    pub const EGRESS_NOT_XLB: u32 = 4;
    /// A service packet with TTL/hop limit <= 1: passed untouched so the kernel answers it.
    pub const TTL_EXPIRED: u32 = 5;
    /// An IPv4 or IPv6 fragment passed to the kernel untouched: a fragment of an ICMP message,
    /// a TCP or UDP fragment after the first whose first fragment was of no flow, or one that
    /// has no record of its first fragment and is not addressed to a VIP (the host's own
    /// traffic, or a backend's reply whose first fragment has not come yet). A first fragment
    /// is handled like any packet of its flow and not counted here.
    pub const FRAGMENT: u32 = 6;
    /// An IP packet whose header is malformed (bad IHL or lengths, a UDP checksum of zero over
    /// IPv6): passed untouched.
    pub const MALFORMED: u32 = 7;
    /// An ICMP or ICMPv6 echo request to a VIP, answered by xlb.
    pub const ICMP_ECHO_ANSWERED: u32 = 8;
    /// An ICMP or ICMPv6 error quoting a balanced flow, translated and sent on.
    pub const ICMP_ERROR_TRANSLATED: u32 = 9;
    /// An IPv6 packet with an extension header xlb does not skip (routing, fragment, or an
    /// unknown one, or more than `MAX_IPV6_EXTENSIONS`): passed untouched.
    pub const IPV6_EXTENSION: u32 = 10;
    /// A VLAN-tagged frame: passed untouched.
    pub const VLAN: u32 = 11;
    /// A TCP flow completed its handshake and moved from `HALF_OPEN` to `FLOWS`.
    pub const FLOW_PROMOTED: u32 = 12;
    /// A SYN arrived while new TCP flows came faster than the half-open table can keep them
    /// (a SYN flood): its backend was chosen by hash of its 5-tuple, not by round robin.
    pub const SYN_HASHED: u32 = 13;
    /// A TCP packet without SYN to a service and without a flow entry (its handshake's entry
    /// was evicted, or the flow began before xlb): its backend was chosen by hash of its
    /// 5-tuple, which finds the backend of a SYN that was placed by hash.
    pub const MIDSTREAM_HASHED: u32 = 14;
    /// A packet of a flow too big to be sent as one frame (a GRO/GSO super-packet, which only
    /// generic XDP sees, with a partial checksum it cannot update): passed to the kernel
    /// untouched. Generic mode needs GRO off on its interfaces; tc mode handles these packets.
    pub const OVERSIZED_PASSED: u32 = 15;
    /// A backend answered a client's SYN with a RST acknowledging that SYN: it refused the
    /// handshake (passive health counts it).
    pub const PASSIVE_REFUSED: u32 = 16;
    /// A client retransmitted the SYN of a half-open flow whose backend never answered
    /// (passive health counts it).
    pub const PASSIVE_UNANSWERED: u32 = 17;
    /// Such a retransmitted SYN was placed on another backend.
    pub const SYN_REPLACED: u32 = 18;
    /// A backend was marked suspect: new flows skip it until the mark ends or the daemon
    /// clears it.
    pub const SUSPECT_MARKED: u32 = 19;
    /// A backend reached a passive threshold, but its service already had as many suspects
    /// as its share allows: not marked.
    pub const SUSPECT_CAPPED: u32 = 20;
    /// A new flow skipped a suspect backend's slot for the next one.
    pub const SUSPECT_SKIPPED: u32 = 21;
    /// A new flow was dropped by its client prefix's admission limit.
    pub const ADMISSION_DROPPED: u32 = 22;
    /// A packet found its flow silent past its timeout: the flow's entries were deleted and
    /// the packet handled as one without a flow.
    pub const FLOW_EXPIRED: u32 = 23;
    /// A client's SYN (without ACK) found its flow closing: the client opened a new connection
    /// on the ports of one that had ended. The old flow's entries were deleted and the SYN
    /// placed as a new flow, not sent to the old flow's backend.
    pub const FLOW_REOPENED: u32 = 24;
    /// A TCP or UDP packet to a VIP, in no flow and for no service, was dropped (and counted
    /// in its VIP's entry of `VIPS`): passed, it would reach the host's own sockets or loop
    /// back to the router. Ports listed in `host_ports` pass instead.
    pub const VIP_UNSERVED: u32 = 25;
    /// A frame not addressed to the interface it arrived on (another host's unicast MAC, as a
    /// bridge floods when it has forgotten where a MAC is; or broadcast, multicast): passed
    /// to the kernel untouched, never balanced (another instance may be balancing it).
    pub const OTHER_HOST: u32 = 26;
    /// A TCP or UDP fragment after the first, which carries no ports, found the ports its first
    /// fragment recorded (`FRAGMENTS4`, `FRAGMENTS6`) and went where that flow goes, only its
    /// IP header rewritten.
    pub const FRAGMENT_FOLLOWED: u32 = 27;
    /// A TCP or UDP fragment after the first, addressed to a VIP, with no record of its first
    /// fragment (it has not arrived yet, came through another instance, or its record was
    /// evicted): dropped, since nothing tells which backend its datagram went to.
    pub const FRAGMENT_UNMATCHED: u32 = 28;
    /// While the instance shares flows with a fleet, a NAT backend's packet with no entry
    /// here: another instance placed its flow, and ECMP brought the backend's answer here
    /// before the flow's entry came. Its backend serves one VIP (`LONE_VIPS4`/`6`), so the
    /// flow is known: its entry was made from the packet (half-open for a SYN-ACK), which
    /// went on, translated, to the client.
    pub const FLOW_ADOPTED: u32 = 29;
    /// While the instance shares flows with a fleet, a NAT backend's packet with no entry
    /// here that could not be adopted (its backend serves several VIPs, or the table was
    /// full): dropped, never sent on with the backend's address. Its flow's entry, once
    /// shared, carries its retransmission.
    pub const REPLY_UNADOPTED: u32 = 30;
    /// A packet to a backend over a tunnel that the encapsulation would make too big for the
    /// next hop's MTU, with DF set (all IPv6): answered to the client with ICMP
    /// fragmentation-needed or packet-too-big naming the MTU that fits, not sent.
    pub const TUNNEL_TOO_BIG: u32 = 31;
    /// A packet to a backend over a tunnel that could not be encapsulated (no room for the
    /// outer header, an offload the kernel cannot encapsulate, or the encapsulating program
    /// missing): dropped.
    pub const TUNNEL_FAILED: u32 = 32;
    /// Number of event counters.
    pub const COUNT: u32 = 33;

    /// Display names, indexed by event code.
    pub const NAMES: [&str; COUNT as usize] = [
        "no_backend",
        "flow_insert_failed",
        "fib_no_neighbour",
        "fib_failed",
        "egress_not_xlb",
        "ttl_expired",
        "fragment",
        "malformed",
        "icmp_echo_answered",
        "icmp_error_translated",
        "ipv6_extension",
        "vlan",
        "flow_promoted",
        "syn_hashed",
        "midstream_hashed",
        "oversized_passed",
        "passive_refused",
        "passive_unanswered",
        "syn_replaced",
        "suspect_marked",
        "suspect_capped",
        "suspect_skipped",
        "admission_dropped",
        "flow_expired",
        "flow_reopened",
        "vip_unserved",
        "other_host",
        "fragment_followed",
        "fragment_unmatched",
        "flow_adopted",
        "reply_unadopted",
        "tunnel_too_big",
        "tunnel_failed",
    ];
}

// A table must have room for one slot per backend of a service.
const _: () = assert!(limits::MAX_BACKENDS_PER_SERVICE as usize <= limits::MAX_TABLE_SLOTS);
