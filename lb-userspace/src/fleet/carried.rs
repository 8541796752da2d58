//! Which flows an instance tells its peers of, beyond the program's events: every established
//! flow, for a peer that asks (a snapshot), and every `refresh` the flows it carried since the
//! last refresh, so that the peers' copies live as long as the flow does and a flow whose
//! event was lost reaches them anyway (conntrackd's "alarm" mode does the same).
//!
//! A copy must never pass for a flow this instance carries, or the copies would refresh each
//! other forever after the flow ended. So when the daemon installs or refreshes a copy, it
//! stamps it a second in the past and marks it with that stamp ([`stamp_copy`]); the program
//! stamps an entry anew at a packet when its stamp is over a second old, which a copy's is
//! from its first packet on, and leaves the mark, which then no longer matches. A refresh
//! sends the entries stamped since the previous one but for marked copies
//! ([`carried_since`]). A copy expires at most a second before the flow's own entry, once
//! refreshed; `refresh` is at most a third of the idle timeouts, so that a copy outlives a
//! lost refresh.

use lb_common::{
    FlowEntry, FlowKey,
    consts::{flow_flags, timing::LAST_SEEN_REFRESH_NS},
    share::{FlowEvent, flow_event},
};

use crate::config::FlowTimeouts;

/// A flow as the tables hold it: key, entry, whether it is half-open.
pub type TableFlow = (FlowKey, FlowEntry, bool);

/// The record that tells a peer of `entry`'s established flow.
fn record(key: &FlowKey, entry: &FlowEntry) -> FlowEvent {
    FlowEvent {
        key: *key,
        backend: entry.addr,
        backend_port: entry.port,
        kind: flow_event::OPENED,
        _pad: [0; 5],
    }
}

/// Whether the flow is established, not closing and not over at `now_ns`.
fn live(flow: &TableFlow, timeouts: &FlowTimeouts, now_ns: u64) -> bool {
    let (key, entry, half_open) = flow;
    !half_open
        && entry.flags & flow_flags::CLOSING == 0
        && !timeouts.is_over(key, entry, false, now_ns)
}

/// The records of a snapshot: every live flow of `flows`.
pub fn snapshot(flows: &[TableFlow], timeouts: &FlowTimeouts, now_ns: u64) -> Vec<FlowEvent> {
    flows
        .iter()
        .filter(|flow| live(flow, timeouts, now_ns))
        .map(|(key, entry, _)| record(key, entry))
        .collect()
}

/// The records of a refresh: the live flows of `flows` whose entry a packet stamped after
/// `since_ns` (the previous refresh), which no marked copy is.
pub fn carried_since(
    flows: &[TableFlow],
    since_ns: u64,
    timeouts: &FlowTimeouts,
    now_ns: u64,
) -> Vec<FlowEvent> {
    flows
        .iter()
        .filter(|flow| {
            let entry = &flow.1;
            entry.last_seen_ns > since_ns
                && !is_untouched_copy(entry)
                && live(flow, timeouts, now_ns)
        })
        .map(|(key, entry, _)| record(key, entry))
        .collect()
}

/// Stamps `entry`, a copy of a peer's flow installed or refreshed at `now_ns`, a second in
/// the past (so that the program stamps it anew at its first packet) and marks it with that
/// stamp; returns whether it changed: not if it was stamped later (a packet here, or a peer's
/// refresh) or is closing.
pub fn stamp_copy(entry: &mut FlowEntry, now_ns: u64) -> bool {
    let stamp = now_ns.saturating_sub(LAST_SEEN_REFRESH_NS);
    if entry.last_seen_ns >= stamp || entry.flags & flow_flags::CLOSING != 0 {
        return false;
    }
    entry.last_seen_ns = stamp;
    entry.handshake_ack = stamp as u32;
    true
}

/// Whether a peer's flow `theirs` should replace this instance's entry `own` of the same
/// key: they name different backends and `own` is idle (no packet for over two of the
/// program's stamping periods). A 5-tuple a client used again (UDP ports come back) is placed
/// anew where it arrives, while another instance may still hold the old placement: the
/// placement a packet just made is the newer one. An entry in use here stays.
pub fn replaces(own: &FlowEntry, theirs: &FlowEntry, now_ns: u64) -> bool {
    (own.addr, own.port) != (theirs.addr, theirs.port)
        && now_ns.saturating_sub(own.last_seen_ns) > 2 * LAST_SEEN_REFRESH_NS
}

/// Whether `entry` is a copy no packet has stamped since the daemon did.
fn is_untouched_copy(entry: &FlowEntry) -> bool {
    entry.handshake_ack == entry.last_seen_ns as u32
}

#[cfg(test)]
mod tests {
    use lb_common::consts::{family, proto};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn flow(port: u16, protocol: u8, last_seen_s: u64, flags: u8, half_open: bool) -> TableFlow {
        let key = FlowKey {
            src_port: port.to_be(),
            proto: protocol,
            family: family::IPV4,
            ..FlowKey::default()
        };
        let entry = FlowEntry {
            last_seen_ns: last_seen_s * S,
            flags,
            ..FlowEntry::default()
        };
        (key, entry, half_open)
    }

    fn ports(records: &[FlowEvent]) -> Vec<u16> {
        records
            .iter()
            .map(|r| u16::from_be(r.key.src_port))
            .collect()
    }

    #[test]
    fn a_refresh_sends_the_live_flows_stamped_since_the_last_and_a_snapshot_every_live_one() {
        let timeouts = FlowTimeouts::default();
        let now = 1_000 * S;
        let flows = [
            flow(1, proto::TCP, 995, 0, false),
            // Carried before the last refresh (at 990 s): a snapshot's, not this refresh's.
            flow(2, proto::TCP, 985, 0, false),
            flow(3, proto::TCP, 995, flow_flags::CLOSING, false),
            flow(4, proto::TCP, 995, 0, true),
            // Silent past the UDP timeout (60 s).
            flow(5, proto::UDP, 930, 0, false),
            flow(6, proto::UDP, 999, 0, false),
        ];
        assert_eq!(
            ports(&carried_since(&flows, 990 * S, &timeouts, now)),
            [1, 6]
        );
        assert_eq!(ports(&snapshot(&flows, &timeouts, now)), [1, 2, 6]);
        let record = &carried_since(&flows, 990 * S, &timeouts, now)[0];
        assert_eq!(
            (record.kind, record.key, record.backend_port),
            (flow_event::OPENED, flows[0].0, 0)
        );
    }

    #[test]
    fn a_copy_installed_or_refreshed_is_never_taken_for_a_carried_flow() {
        let timeouts = FlowTimeouts::default();
        let previous = 990 * S;
        // Written at any time, before or after the previous refresh read the tables.
        for written_ms in [989_500u64, 990_001, 990_500, 995_000, 999_999] {
            let written = written_ms * 1_000_000;
            let (key, mut entry, _) = flow(7, proto::TCP, 0, 0, false);
            assert!(stamp_copy(&mut entry, written), "{written_ms}");
            // The program stamps it anew at a packet after the write: over a second after.
            assert_eq!(written - entry.last_seen_ns, LAST_SEEN_REFRESH_NS);
            let next = 1_000 * S;
            let copy = (key, entry, false);
            assert!(
                carried_since(&[copy], previous, &timeouts, next).is_empty(),
                "{written_ms}"
            );
            // A packet on it after the previous refresh, which the program stamps, makes it
            // carried.
            let used = (
                key,
                FlowEntry {
                    last_seen_ns: written.max(previous) + S / 10,
                    ..entry
                },
                false,
            );
            assert_eq!(carried_since(&[used], previous, &timeouts, next).len(), 1);
        }
    }

    #[test]
    fn a_copy_is_stamped_only_forward_and_never_when_closing() {
        let (_, mut entry, _) = flow(7, proto::TCP, 500, 0, false);
        assert!(stamp_copy(&mut entry, 600 * S));
        assert_eq!(
            (entry.last_seen_ns, entry.handshake_ack),
            (599 * S, (599 * S) as u32)
        );
        assert!(!stamp_copy(&mut entry, 599 * S), "not backwards");
        let (_, mut closing, _) = flow(7, proto::TCP, 500, flow_flags::CLOSING, false);
        assert!(!stamp_copy(&mut closing, 600 * S));
        assert_eq!(closing.last_seen_ns, 500 * S);
    }

    #[test]
    fn a_newer_placement_replaces_an_idle_entry_of_another_backend_only() {
        let entry = |last_seen_s: u64, port: u16| FlowEntry {
            last_seen_ns: last_seen_s * S,
            port: port.to_be(),
            ..FlowEntry::default()
        };
        let theirs = entry(100, 8080);
        assert!(
            replaces(&entry(90, 8081), &theirs, 100 * S),
            "idle, another backend"
        );
        assert!(!replaces(&entry(99, 8081), &theirs, 100 * S), "in use here");
        assert!(
            !replaces(&entry(90, 8080), &theirs, 100 * S),
            "the same backend"
        );
    }
}
