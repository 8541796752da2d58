//! Passive health and per-prefix admission: what the data plane learns from the answers to new
//! flows, and how it limits the new flows of one client prefix. The types are the values of
//! `SERVICE_POLICIES`, `PASSIVE_MARKS`, `SUSPECT_SLOTS`, `ADMISSION` and `PASSIVE_EVENTS`
//! (see `lb-ebpf/src/maps.rs`); the decisions are written once here, taken by the program and
//! tested (and, for the daemon's view, read) in userspace.
//!
//! A backend is *suspect* when, within one window, it refused `refused` handshakes (answered
//! a SYN with a RST that acknowledges exactly that SYN) or left `unanswered` handshakes
//! without a SYN-ACK until the client retransmitted its SYN. New flows skip a suspect backend
//! until the mark's hold ends or the daemon, told at once, clears it or takes the backend
//! Down. At most `max_suspects` backends of a service are suspect at once.

use crate::Addr;

/// Most backends of one service that can be suspect at once, whatever the configured share
/// (the size of a service's [`SuspectSlots`]).
pub const MAX_SUSPECTS: usize = 16;

/// A client's SYN that finds its half-open flow without an answer from the backend for at
/// least this long is a retransmission the backend left unanswered (200 ms, Linux's lowest
/// retransmission timeout; the first SYN retransmission comes after 1 s).
pub const UNANSWERED_AFTER_NS: u64 = 200_000_000;

/// How many table slots after its own a new flow looks at for a backend that is not suspect
/// (slots of one backend are spread through its table, so a few suffice; when all are
/// suspect the flow keeps its first choice).
pub const MAX_SKIPS: usize = 8;

/// Value of `SERVICE_POLICIES`, one per service id: the service's passive health and
/// admission settings. Written by userspace with the service, before it is published; read
/// by the program when a backend refuses or ignores a handshake and for every new flow of a
/// service with admission.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Refused handshakes within a window that make a backend suspect; 0: not counted.
    pub refused: u16,
    /// Unanswered handshakes within a window that make a backend suspect; 0: not counted
    /// (and retransmitted SYNs are not re-placed).
    pub unanswered: u16,
    /// Backends of the service that may be suspect at once (at most [`MAX_SUSPECTS`]).
    pub max_suspects: u16,
    /// Source persistence: a client's new flows go to the backend of its last new flow if
    /// that came at most this many seconds before (`PERSISTENCE`); 0: off. (Once padding:
    /// entries written by earlier daemons say 0.)
    pub persist_s: u16,
    /// The window the counts are kept over (ns).
    pub window_ns: u64,
    /// How long a mark lasts unless the daemon clears it first (ns).
    pub hold_ns: u64,
    /// Admission: one new flow per this many ns per client prefix, on average; 0: no limit.
    pub admit_interval_ns: u64,
    /// Admission: how far ahead of the average a prefix may run (ns; `(burst - 1) *
    /// admit_interval_ns`).
    pub admit_tolerance_ns: u64,
    /// Admission: the mask that makes a client address into its prefix (the service's
    /// family's prefix length, in wire order).
    pub admit_mask: Addr,
}

/// Value of `PASSIVE_MARKS`, one per backend id: the backend's passive counts and mark.
/// Written by the program (counts, mark); cleared by the daemon when it assigns the id and
/// when a confirming check passes; read by the program for every new flow, and by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveMark {
    /// Suspect while the coarse monotonic clock is below this (ns); 0: not suspect.
    pub suspect_until_ns: u64,
    /// When the current counting window began (ns).
    pub window_start_ns: u64,
    /// Refused handshakes counted in the window.
    pub refused: u32,
    /// Unanswered handshakes counted in the window.
    pub unanswered: u32,
}

/// Value of `SUSPECT_SLOTS`, one per service id: the marks a service has handed out, so that
/// no more than `max_suspects` of its backends are suspect at once. A slot is taken with a
/// compare-and-swap of its `until_ns`; it is free once that time has passed or the backend's
/// mark no longer ends then (the daemon cleared it). Written and read by the program only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuspectSlots {
    /// End of each slot's mark (ns); 0: never used.
    pub until_ns: [u64; MAX_SUSPECTS],
    /// The backend each slot marked.
    pub backend_id: [u32; MAX_SUSPECTS],
}

/// Kinds of [`PassiveEvent`].
pub mod passive_event {
    /// A backend was marked suspect.
    pub const MARKED: u8 = 1;
    /// A backend reached a threshold, but the service already had `max_suspects` suspects.
    pub const CAPPED: u8 = 2;
}

/// A record of `PASSIVE_EVENTS`: a backend marked (or not, for the cap). Written by the
/// program; read by the daemon, which confirms the mark with a check at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveEvent {
    /// When (coarse monotonic ns).
    pub time_ns: u64,
    /// When the counts' window began (ns).
    pub window_start_ns: u64,
    /// The mark's end (ns); 0 for [`passive_event::CAPPED`].
    pub until_ns: u64,
    /// The backend.
    pub backend_id: u32,
    /// Its service.
    pub service_id: u32,
    /// Refused handshakes in the window.
    pub refused: u32,
    /// Unanswered handshakes in the window.
    pub unanswered: u32,
    /// [`passive_event`].
    pub kind: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 7],
}

/// Key of `PERSISTENCE`: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    /// The client's address (IPv4 in the first word, the rest zero).
    pub client: Addr,
    /// The service.
    pub service_id: u32,
}

/// Value of `PERSISTENCE`: the backend a client's last new flow to a service got, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistEntry {
    /// The backend.
    pub backend_id: u32,
    /// Explicit padding; zero.
    pub _pad: u32,
    /// When the client's last new flow came (the program's coarse clock, ns).
    pub last_ns: u64,
}

/// Whether a client's last new flow at `last_ns` still holds its next one at `now_ns`, for a
/// service that persists `persist_s` seconds (0: not at all).
#[inline(always)]
pub const fn persists(now_ns: u64, last_ns: u64, persist_s: u16) -> bool {
    now_ns.wrapping_sub(last_ns) as i64 <= persist_s as i64 * 1_000_000_000 && persist_s != 0
}

/// Key of `ADMISSION`: a client prefix of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AdmissionKey {
    /// The client's address masked by the service's `admit_mask`.
    pub prefix: Addr,
    /// The service.
    pub service_id: u32,
}

/// Whether a counting window that began at `start_ns` is over at `now_ns` (signed: another
/// CPU may have restarted it after this packet read the clock).
#[inline(always)]
pub const fn window_over(now_ns: u64, start_ns: u64, window_ns: u64) -> bool {
    now_ns.wrapping_sub(start_ns) as i64 > window_ns as i64
}

/// Whether counts of `refused` and `unanswered` handshakes (this packet's included) make a
/// backend suspect under `policy`.
#[inline(always)]
pub const fn reaches_threshold(policy: &ServicePolicy, refused: u32, unanswered: u32) -> bool {
    (policy.refused != 0 && refused >= policy.refused as u32)
        || (policy.unanswered != 0 && unanswered >= policy.unanswered as u32)
}

/// Whether a backend whose mark ends at `suspect_until_ns` is suspect at `now_ns`.
#[inline(always)]
pub const fn is_suspect(suspect_until_ns: u64, now_ns: u64) -> bool {
    now_ns < suspect_until_ns
}

/// Whether a service's suspect slot, whose mark ended at `slot_until_ns`, can be taken at
/// `now_ns`; `mark_until_ns` is the current mark of the backend it names: a mark the daemon
/// cleared (or that a later mark replaced) frees its slot early.
#[inline(always)]
pub const fn slot_free(slot_until_ns: u64, mark_until_ns: u64, now_ns: u64) -> bool {
    !is_suspect(slot_until_ns, now_ns) || mark_until_ns != slot_until_ns
}

/// Admission of a new flow by the generic cell rate algorithm (a token bucket kept as one
/// time per prefix, the "theoretical arrival time" `tat_ns` of its next flow): admitted if
/// `tat_ns` is at most `tolerance_ns` ahead of `now_ns`; then returns the prefix's next
/// `tat_ns`. `None`: over the rate, dropped (the time stays).
#[inline(always)]
pub const fn admit(tat_ns: u64, now_ns: u64, interval_ns: u64, tolerance_ns: u64) -> Option<u64> {
    let start = if tat_ns > now_ns { tat_ns } else { now_ns };
    if start - now_ns > tolerance_ns {
        return None;
    }
    Some(start + interval_ns)
}

/// The GCRA settings of a rate (new flows per second, at least 1) and a burst (flows, at
/// least 1): (interval, tolerance) in ns.
pub const fn admission_times(rate_per_s: u64, burst: u64) -> (u64, u64) {
    let interval = 1_000_000_000 / rate_per_s;
    let interval = if interval == 0 { 1 } else { interval };
    (interval, (burst - 1) * interval)
}

/// How many of a service's `backends` may be suspect at once under a share of `percent`:
/// rounded down, at most [`MAX_SUSPECTS`] (so a service of one backend never has one).
pub const fn max_suspects(backends: usize, percent: u32) -> u16 {
    let n = backends * percent as usize / 100;
    if n > MAX_SUSPECTS {
        MAX_SUSPECTS as u16
    } else {
        n as u16
    }
}

const _: () = assert!(size_of::<ServicePolicy>() == 56);
const _: () = assert!(size_of::<PassiveMark>() == 24);
const _: () = assert!(size_of::<SuspectSlots>() == 12 * MAX_SUSPECTS);
const _: () = assert!(size_of::<PassiveEvent>() == 48);
const _: () = assert!(size_of::<AdmissionKey>() == 20);

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn thresholds_count_each_kind_on_its_own() {
        let policy = ServicePolicy {
            refused: 1,
            unanswered: 2,
            ..ServicePolicy::default()
        };
        assert!(reaches_threshold(&policy, 1, 0));
        assert!(!reaches_threshold(&policy, 0, 1));
        assert!(reaches_threshold(&policy, 0, 2));
        let off = ServicePolicy::default();
        assert!(!reaches_threshold(&off, 100, 100), "0 turns a kind off");
    }

    #[test]
    fn windows_end_after_their_length_and_tolerate_a_later_start() {
        assert!(!window_over(1000 * MS, 500 * MS, 1000 * MS));
        assert!(window_over(1501 * MS, 500 * MS, 1000 * MS));
        // Another CPU restarted the window after this packet read the clock.
        assert!(!window_over(500 * MS, 501 * MS, 1000 * MS));
    }

    #[test]
    fn a_slot_is_free_when_its_mark_ended_or_was_cleared() {
        let now = 10_000 * MS;
        assert!(slot_free(0, 0, now), "never used");
        assert!(slot_free(now - 1, now - 1, now), "ended");
        assert!(!slot_free(now + 5, now + 5, now), "in force");
        assert!(slot_free(now + 5, 0, now), "cleared by the daemon");
        assert!(!is_suspect(0, now));
        assert!(is_suspect(now + 1, now));
    }

    #[test]
    fn the_bucket_admits_its_burst_then_its_rate() {
        // 100 flows/s, burst 5.
        let (interval, tolerance) = admission_times(100, 5);
        assert_eq!((interval, tolerance), (10 * MS, 40 * MS));
        let now = 1_000 * MS;
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..20 {
            if let Some(next) = admit(tat, now, interval, tolerance) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5, "the burst, at one instant");
        assert!(admit(tat, now + 5 * MS, interval, tolerance).is_none());
        // One more each interval after that.
        let next = admit(tat, now + 10 * MS, interval, tolerance).expect("one interval later");
        assert!(admit(next, now + 10 * MS, interval, tolerance).is_none());
        // A second of silence refills the whole burst, no more.
        let mut tat = next;
        let later = now + 2_000 * MS;
        let mut admitted = 0;
        for _ in 0..20 {
            if let Some(t) = admit(tat, later, interval, tolerance) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn the_share_rounds_down_and_is_capped() {
        assert_eq!(max_suspects(3, 50), 1);
        assert_eq!(max_suspects(4, 50), 2);
        assert_eq!(max_suspects(1, 50), 0);
        assert_eq!(max_suspects(100, 50), MAX_SUSPECTS as u16);
        assert_eq!(max_suspects(10, 0), 0);
    }
}
