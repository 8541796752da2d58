//! `xlb trace`: the data plane's decisions for the packets an operator asked about, recorded
//! in a ring buffer. The daemon writes a [`TraceConfig`] (which service, which clients, how
//! often, until when); the program checks it for every packet it decides on and, for those
//! that match ([`traced`], also used by the daemon's tests), writes a [`TraceEvent`]. With no
//! trace running, the check is one array lookup and one comparison.

use crate::{Addr, consts::family};

/// What the program decided for a traced packet ([`TraceEvent::decision`]).
pub mod decision {
    /// A new flow, its backend taken from the next slot of the table (round robin).
    pub const NEW_ROUND_ROBIN: u8 = 1;
    /// A new flow, its backend taken from the slot its 5-tuple hashes to (the handshake
    /// guard during a SYN flood, or a TCP packet without SYN whose handshake entry is gone).
    pub const NEW_HASHED: u8 = 2;
    /// A new flow dropped: no backend could take it.
    pub const NO_BACKEND: u8 = 3;
    /// A packet of an established (or half-open) flow, forwarded as its entry says.
    pub const ESTABLISHED: u8 = 4;
    /// An ICMP error quoting a packet of a flow, translated and forwarded.
    pub const ICMP_TRANSLATED: u8 = 5;
    /// A retransmitted SYN whose backend never answered, placed on another backend.
    pub const REPLACED: u8 = 6;
    /// A new flow dropped by its client prefix's admission limit.
    pub const ADMISSION_DROPPED: u8 = 7;
    /// A new flow (or a TCP packet without SYN that found no flow), its backend taken from
    /// the Maglev slot its 5-tuple hashes to.
    pub const NEW_MAGLEV: u8 = 8;
    /// A new flow, its backend the one its client's last new flow got (source persistence).
    pub const PERSISTED: u8 = 9;
}

/// [`TraceConfig::service_id`] for every service.
pub const ANY_SERVICE: u32 = u32::MAX;
/// [`TraceEvent::backend_id`] when there is no backend.
pub const NO_BACKEND_ID: u32 = u32::MAX;

/// The one element of `TRACE_CONFIG`: what to trace. Written by the daemon when a trace
/// starts and when it ends; the counters are written by the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// Trace while the coarse monotonic clock is below this (ns); 0: no trace. The program
    /// stops by itself at this time even if the daemon does not end the trace.
    pub until_ns: u64,
    /// Packets that matched the filter. Written by the program (atomically).
    pub matched: u64,
    /// Events dropped because the ring buffer was full. Written by the program (atomically).
    pub lost: u64,
    /// The client prefix's address (host bits zero).
    pub client: Addr,
    /// The service traced, or [`ANY_SERVICE`].
    pub service_id: u32,
    /// Record one matching packet in this many (1: every one).
    pub sample_every: u32,
    /// The client prefix's family (`consts::family`), or 0 for any client.
    pub family: u8,
    /// The client prefix's length in bits.
    pub prefix_len: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 6],
}

/// A record of `TRACE_EVENTS`: one decision for one packet. Written by the program; read by
/// the daemon, which streams it to `xlb trace`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// Coarse monotonic time of the packet (ns).
    pub time_ns: u64,
    /// The flow's client address (the source of a client's packet, the destination of a
    /// backend's).
    pub client: Addr,
    /// The service.
    pub service_id: u32,
    /// The backend, or [`NO_BACKEND_ID`].
    pub backend_id: u32,
    /// The slot of the table a new flow's backend was taken from.
    pub slot: u32,
    /// The client's port, network byte order.
    pub client_port: u16,
    /// What was decided ([`decision`]).
    pub decision: u8,
    /// `direction::TO_BACKEND` or `direction::TO_CLIENT`.
    pub direction: u8,
    /// Address family (`consts::family`).
    pub family: u8,
    /// IP protocol of the flow.
    pub proto: u8,
    /// TCP flags of the packet (0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// 1 if the flow's handshake has not completed.
    pub half_open: u8,
    /// A new flow's home pool (the client's).
    pub home_pool: u8,
    /// The pool of a new flow's backend (another than the home pool: a spill).
    pub backend_pool: u8,
    /// Slots of suspect backends a new flow skipped to reach `slot`.
    pub skipped: u8,
    /// Explicit padding; zero.
    pub _pad: u8,
}

/// Whether the bits of `addr` within the first `len` bits equal those of `prefix` (both in
/// wire order, as stored in an [`Addr`]).
#[inline(always)]
pub fn prefix_matches(prefix: &Addr, len: u8, addr: &Addr) -> bool {
    let mut i = 0;
    while i < 4 {
        let start = 32 * i as u32;
        let len = len as u32;
        if len <= start {
            return true;
        }
        let bits = len - start;
        // The first `bits` bits of a word, in wire order.
        let mask = if bits >= 32 {
            u32::MAX
        } else {
            (u32::MAX << (32 - bits)).to_be()
        };
        if (prefix[i] ^ addr[i]) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether a packet of service `service_id` from (or to) `client` of `family` is traced at
/// `now_ns` under `config` (before sampling).
#[inline(always)]
pub fn traced(
    config: &TraceConfig,
    now_ns: u64,
    service_id: u32,
    family: u8,
    client: &Addr,
) -> bool {
    if now_ns >= config.until_ns {
        return false;
    }
    if config.service_id != ANY_SERVICE && config.service_id != service_id {
        return false;
    }
    if config.family == 0 {
        return true;
    }
    config.family == family && prefix_matches(&config.client, config.prefix_len, client)
}

/// The longest prefix of a family, in bits.
pub const fn max_prefix_len(family_code: u8) -> u8 {
    if family_code == family::IPV6 { 128 } else { 32 }
}

const _: () = assert!(size_of::<TraceConfig>() == 56);
const _: () = assert!(size_of::<TraceEvent>() == 48);

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr {
        [u32::from_ne_bytes([a, b, c, d]), 0, 0, 0]
    }

    fn v6(words: [u16; 8]) -> Addr {
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
        }
        core::array::from_fn(|i| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
    }

    #[test]
    fn prefixes_match_on_their_bits_only() {
        let net = v4(198, 18, 0, 0);
        assert!(prefix_matches(&net, 15, &v4(198, 19, 7, 1)));
        assert!(!prefix_matches(&net, 16, &v4(198, 19, 7, 1)));
        assert!(prefix_matches(&net, 0, &v4(10, 0, 0, 1)));
        assert!(prefix_matches(&v4(198, 18, 0, 2), 32, &v4(198, 18, 0, 2)));
        assert!(!prefix_matches(&v4(198, 18, 0, 2), 32, &v4(198, 18, 0, 3)));
        let net6 = v6([0xfd00, 0x1, 0, 0, 0, 0, 0, 0]);
        assert!(prefix_matches(
            &net6,
            48,
            &v6([0xfd00, 0x1, 0, 9, 0, 0, 0, 1])
        ));
        assert!(!prefix_matches(
            &net6,
            48,
            &v6([0xfd00, 0x2, 0, 0, 0, 0, 0, 1])
        ));
        let nibble = v6([0xfd00, 0x1000, 0, 0, 0, 0, 0, 0]);
        assert!(prefix_matches(
            &nibble,
            20,
            &v6([0xfd00, 0x1fff, 0, 0, 0, 0, 0, 1])
        ));
        assert!(!prefix_matches(
            &nibble,
            20,
            &v6([0xfd00, 0x2000, 0, 0, 0, 0, 0, 1])
        ));
        assert!(prefix_matches(&net6, 128, &net6));
    }

    #[test]
    fn a_trace_filters_by_time_service_and_client() {
        let config = TraceConfig {
            until_ns: 1_000,
            client: v4(198, 18, 0, 0),
            service_id: 3,
            sample_every: 1,
            family: family::IPV4,
            prefix_len: 24,
            ..TraceConfig::default()
        };
        let client = v4(198, 18, 0, 9);
        assert!(traced(&config, 999, 3, family::IPV4, &client));
        assert!(!traced(&config, 1_000, 3, family::IPV4, &client), "over");
        assert!(
            !traced(&config, 10, 4, family::IPV4, &client),
            "another service"
        );
        assert!(
            !traced(&config, 10, 3, family::IPV6, &client),
            "another family"
        );
        assert!(!traced(&config, 10, 3, family::IPV4, &v4(198, 18, 1, 9)));
        let any = TraceConfig {
            service_id: ANY_SERVICE,
            family: 0,
            ..config
        };
        assert!(traced(&any, 10, 7, family::IPV6, &client));
        assert!(!traced(&TraceConfig::default(), 0, 0, 0, &client), "off");
    }
}
