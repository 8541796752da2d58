//! Open connections per backend, from the flow tables: what an operator means by "how many
//! connections does this backend have" (`ipvsadm -Ln`'s ActiveConn and InActConn, HAProxy's
//! `scur`). An idle connection counts as long as its entry stands (until `tcp_idle_timeout`);
//! one that closed counts apart, as closing, until its entry is over; half-open handshakes
//! count apart too. Not the activity figure (`active_flows`, flows with a packet in the last
//! epoch), which is the data plane's own count.

use std::collections::HashMap;

use crate::{config::FlowTimeouts, control::DataplaneReads, report::Connections};
use lb_common::{FlowEntry, FlowKey, consts::flow_flags, consts::proto};

/// What state a flow's entry says its connection is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlowState {
    /// A UDP flow.
    Udp,
    /// A TCP handshake not completed.
    HalfOpen,
    /// A TCP connection after a FIN or RST.
    Closing,
    /// An established TCP connection.
    Established,
}

impl FlowState {
    /// The state of the flow of `key` whose entry is `entry` (in the half-open table if
    /// `half_open`).
    pub(crate) fn of(key: &FlowKey, entry: &FlowEntry, half_open: bool) -> Self {
        if key.proto == proto::UDP {
            Self::Udp
        } else if half_open {
            Self::HalfOpen
        } else if entry.flags & flow_flags::CLOSING != 0 {
            Self::Closing
        } else {
            Self::Established
        }
    }

    /// Its name in `xlb flows`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Udp => "active",
            Self::HalfOpen => "half-open",
            Self::Closing => "closing",
            Self::Established => "established",
        }
    }
}

/// The connections of each backend id among `entries` whose entry is not over at `now_ns`.
pub(crate) fn count(
    entries: &[(FlowKey, FlowEntry, bool)],
    timeouts: &FlowTimeouts,
    now_ns: u64,
) -> HashMap<u32, Connections> {
    let mut counts: HashMap<u32, Connections> = HashMap::new();
    for (key, entry, half_open) in entries {
        if timeouts.is_over(key, entry, *half_open, now_ns) {
            continue;
        }
        let backend = counts.entry(entry.backend_id).or_default();
        match FlowState::of(key, entry, *half_open) {
            FlowState::Udp => backend.udp += 1,
            FlowState::HalfOpen => backend.half_open += 1,
            FlowState::Closing => backend.closing += 1,
            FlowState::Established => backend.established += 1,
        }
    }
    counts
}

/// [`count`] over the flow tables of `maps`; empty if they cannot be read (the caller's
/// report says nothing of connections then, rather than failing).
pub(crate) fn read(
    maps: &impl DataplaneReads,
    timeouts: &FlowTimeouts,
) -> HashMap<u32, Connections> {
    match (maps.flows(), maps.now_ns()) {
        (Ok(entries), Ok(now)) => count(&entries, timeouts, now),
        _ => HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn flow(backend_id: u32, proto: u8, flags: u8, last_seen_s: u64) -> (FlowKey, FlowEntry) {
        let key = FlowKey {
            proto,
            ..FlowKey::default()
        };
        let entry = FlowEntry {
            backend_id,
            flags,
            last_seen_ns: last_seen_s * SECOND,
            ..FlowEntry::default()
        };
        (key, entry)
    }

    #[test]
    fn idle_connections_count_and_those_over_do_not() {
        let timeouts = FlowTimeouts {
            tcp_idle: Duration::from_secs(3_600),
            tcp_closing: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
        };
        let now = 10_000;
        let entries: Vec<(FlowKey, FlowEntry, bool)> = [
            // Backend 1: two established (one idle for 50 minutes), one closing, one closed
            // long ago (over), one handshake.
            (flow(1, proto::TCP, 0, now - 1), false),
            (flow(1, proto::TCP, 0, now - 3_000), false),
            (flow(1, proto::TCP, flow_flags::CLOSING, now - 5), false),
            (flow(1, proto::TCP, flow_flags::CLOSING, now - 500), false),
            (flow(1, proto::TCP, 0, now - 1), true),
            // Backend 2: a UDP flow, and one silent past its timeout.
            (flow(2, proto::UDP, 0, now - 30), false),
            (flow(2, proto::UDP, 0, now - 61), false),
        ]
        .into_iter()
        .map(|((key, entry), half_open)| (key, entry, half_open))
        .collect();
        let counts = count(&entries, &timeouts, now * SECOND);
        let one = Connections {
            established: 2,
            half_open: 1,
            closing: 1,
            udp: 0,
        };
        assert_eq!(counts[&1], one);
        assert_eq!(counts[&1].open(), 2);
        assert_eq!(counts[&2].open(), 1);
        assert_eq!(counts.len(), 2);
    }
}
