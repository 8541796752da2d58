//! `xlb trace` as lines: when, which service and client, what was decided and why.

use std::fmt::Write as _;

use crate::report::{TraceEventReport, TraceSummary};

/// One event of `xlb trace`: when, which service and client, what was decided and why.
pub(crate) fn trace_event(e: &TraceEventReport) -> String {
    let backend = e.backend.map_or("-".to_owned(), |b| b.to_string());
    let what = match e.decision.as_str() {
        "new_round_robin" | "new_hashed" => {
            let how = if e.decision == "new_round_robin" {
                "round robin".to_owned()
            } else if e.tcp_flags.contains("SYN") {
                "hash: the handshake guard (SYN flood)".to_owned()
            } else {
                "hash: a TCP packet without SYN and without a flow".to_owned()
            };
            let slot = e.slot.map_or(String::new(), |s| format!(", slot {s}"));
            let pools = match (&e.home_pool, &e.backend_pool) {
                (Some(home), Some(pool)) if home != pool => {
                    format!("; pool {home} has no room: spilled to pool {pool}")
                }
                (Some(home), _) => format!("; pool {home}"),
                _ => String::new(),
            };
            let skipped = match e.skipped_suspects {
                0 => String::new(),
                n => format!(", {n} suspect slot(s) skipped"),
            };
            format!("new flow -> {backend} ({how}{slot}{skipped}{pools})")
        }
        "persisted" => {
            format!("new flow -> {backend} (persistence: its client's last new flow's backend)")
        }
        "replaced" => format!(
            "SYN retransmitted, its backend never answered: re-placed -> {backend} (slot {})",
            e.slot.unwrap_or_default()
        ),
        "admission_dropped" => "dropped: over its client prefix's new-flow rate".to_owned(),
        "no_backend" => match &e.home_pool {
            Some(pool) => format!("dropped: no backend can take it (pool {pool})"),
            None => "dropped: no backend can take it".to_owned(),
        },
        "established" if e.direction == "to_client" => format!("reply <- {backend}"),
        "established" => format!("established -> {backend}"),
        "icmp_translated" if e.direction == "to_client" => {
            format!("ICMP error from the backend side, translated for the client ({backend})")
        }
        "icmp_translated" => format!("ICMP error from the client side, translated -> {backend}"),
        other => other.to_owned(),
    };
    let mut line = format!(
        "{:>8.3}s {} {} {} {what}",
        e.seconds, e.service, e.protocol, e.client
    );
    if !e.tcp_flags.is_empty() {
        let _ = write!(line, " [{}]", e.tcp_flags);
    }
    if e.half_open && e.decision == "established" {
        line.push_str(" (half-open)");
    }
    line
}

/// The last line of `xlb trace`.
pub(crate) fn trace_end(s: &TraceSummary) -> String {
    let sampled = if s.sample > 1 {
        format!(" (one in {})", s.sample)
    } else {
        String::new()
    };
    let lost = if s.lost > 0 {
        format!(
            ", {} lost: the ring buffer was full (sample with --sample N)",
            s.lost
        )
    } else {
        String::new()
    };
    format!(
        "trace: {:.1}s, {} packets matched, {} recorded{sampled}{lost}",
        s.seconds, s.matched, s.recorded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(decision: &str) -> TraceEventReport {
        TraceEventReport {
            seconds: 1.25,
            service: "video".into(),
            protocol: "tcp".into(),
            client: "198.18.0.2:40000".parse().unwrap(),
            decision: decision.into(),
            direction: "to_backend".into(),
            backend: Some("198.18.1.21:8080".parse().unwrap()),
            slot: Some(3),
            home_pool: Some("kr".into()),
            backend_pool: Some("jp".into()),
            tcp_flags: "SYN".into(),
            skipped_suspects: 0,
            half_open: true,
        }
    }

    #[test]
    fn each_decision_says_what_and_why() {
        assert_eq!(
            trace_event(&event("new_round_robin")),
            "   1.250s video tcp 198.18.0.2:40000 new flow -> 198.18.1.21:8080 (round robin, \
             slot 3; pool kr has no room: spilled to pool jp) [SYN]"
        );
        let hashed = trace_event(&TraceEventReport {
            backend_pool: Some("kr".into()),
            ..event("new_hashed")
        });
        assert!(
            hashed.contains("(hash: the handshake guard (SYN flood), slot 3; pool kr)"),
            "{hashed}"
        );
        let persisted = trace_event(&event("persisted"));
        assert!(
            persisted.contains(
                "new flow -> 198.18.1.21:8080 (persistence: its client's last new flow's backend)"
            ),
            "{persisted}"
        );
        let reply = trace_event(&TraceEventReport {
            direction: "to_client".into(),
            tcp_flags: "SYN|ACK".into(),
            ..event("established")
        });
        assert!(
            reply.ends_with("reply <- 198.18.1.21:8080 [SYN|ACK] (half-open)"),
            "{reply}"
        );
        let dropped = trace_event(&TraceEventReport {
            backend: None,
            ..event("no_backend")
        });
        assert!(
            dropped.contains("dropped: no backend can take it (pool kr)"),
            "{dropped}"
        );
        let summary = TraceSummary {
            seconds: 10.0,
            matched: 40,
            recorded: 10,
            lost: 2,
            sample: 4,
        };
        assert_eq!(
            trace_end(&summary),
            "trace: 10.0s, 40 packets matched, 10 recorded (one in 4), 2 lost: the ring buffer \
             was full (sample with --sample N)"
        );
    }
}
