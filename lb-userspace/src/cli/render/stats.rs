//! `xlb stats`: each service's and backend's counters, the data plane's events, and the
//! flow tables' fill.

use std::fmt::Write as _;

use super::{address_width, si};
use crate::report::{Counters, StatsReport};

fn counters_line(out: &mut String, label: &str, c: &Counters, width: usize) {
    let _ = writeln!(
        out,
        "  {:<width$} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
        label,
        si(c.packets_to_backend as f64),
        si(c.bytes_to_backend as f64),
        si(c.packets_to_client as f64),
        si(c.bytes_to_client as f64),
        si(c.new_flows as f64),
        si(c.no_backend as f64),
    );
}

/// `xlb stats`.
pub(in crate::cli) fn stats(report: &StatsReport) -> String {
    let mut out = String::new();
    if let Some(zeroed) = &report.since {
        let _ = writeln!(
            out,
            "counters since zeroed by {} at {}",
            zeroed.by,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(zeroed.at)
            )
        );
    }
    for service in &report.services {
        let width = address_width(service.backends.iter().map(|b| &b.address));
        let _ = writeln!(out, "{}", service.name);
        let _ = writeln!(
            out,
            "  {:<width$} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            "", "PKTS IN", "BYTES IN", "PKTS OUT", "BYTES OUT", "FLOWS", "NO BKND"
        );
        counters_line(&mut out, "(service)", &service.counters, width);
        for backend in &service.backends {
            counters_line(
                &mut out,
                &backend.address.to_string(),
                &backend.counters,
                width,
            );
        }
    }
    let nonzero: Vec<String> = report
        .events
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "events: {}",
        if nonzero.is_empty() {
            "none".into()
        } else {
            nonzero.join(", ")
        }
    );
    let unserved: Vec<String> = report
        .unserved
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(vip, n)| format!("{vip} {n}"))
        .collect();
    if !unserved.is_empty() {
        let _ = writeln!(
            out,
            "dropped, to a VIP for no service: {}",
            unserved.join(", ")
        );
    }
    let t = &report.flow_table;
    let _ = writeln!(
        out,
        "flows: {} active IPv4 ({} of {}), {} IPv6 ({} of {}); {} expired",
        t.active_ipv4,
        percent(t.active_ipv4, t.capacity),
        t.capacity,
        t.active_ipv6,
        percent(t.active_ipv6, t.capacity_ipv6),
        t.capacity_ipv6,
        t.expired
    );
    if t.handshake_guard_on {
        let _ = writeln!(
            out,
            "  SYN flood: handshake guard on, SYNs placed by hash (over {} new per 100 ms)",
            t.handshake_budget
        );
    }
    let nearly_full = |active: u64, capacity: u64| capacity > 0 && active * 10 >= capacity * 9;
    if nearly_full(t.active_ipv4, t.capacity) || nearly_full(t.active_ipv6, t.capacity_ipv6) {
        let _ = writeln!(
            out,
            "  the flow table is nearly full: the least recently used flows are being evicted \
             (raise flow_table_size or flow_table_size_ipv6)"
        );
    }
    if report.zeroed_now {
        let _ = writeln!(
            out,
            "zeroed: `xlb stats` counts from now (the metrics endpoint keeps counting)"
        );
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::FlowTableStats;

    #[test]
    fn stats_say_when_the_handshake_guard_is_on() {
        let mut report = StatsReport {
            services: Vec::new(),
            events: vec![("syn_hashed".into(), 250_000), ("vlan".into(), 0)],
            flow_table: FlowTableStats {
                active_ipv4: 10,
                active_ipv6: 0,
                capacity: 65_536,
                capacity_ipv6: 65_536,
                half_open_capacity: 16_384,
                expired: 0,
                handshake_budget: 819,
                handshake_guard_on: false,
            },
            unserved: vec![
                ("198.18.100.1".parse().unwrap(), 0),
                ("198.18.100.2".parse().unwrap(), 31),
            ],
            ..StatsReport::default()
        };
        let calm = stats(&report);
        assert!(!calm.contains("handshake guard"), "{calm}");
        assert!(
            calm.contains("dropped, to a VIP for no service: 198.18.100.2 31\n"),
            "{calm}"
        );
        assert!(calm.contains("events: syn_hashed 250000\n"), "{calm}");
        report.flow_table.handshake_guard_on = true;
        let flood = stats(&report);
        let line = "  SYN flood: handshake guard on, SYNs placed by hash (over 819 new per 100 ms)";
        assert!(flood.contains(line), "{flood}");
        assert!(flood.lines().all(|l| l.chars().count() <= 80), "{flood}");

        // Zeroed counters say since when; the answer to --zero says they were just zeroed.
        report.since = Some(crate::report::Zeroed {
            by: "root (uid 0)".into(),
            at: 1_700_000_000,
        });
        report.zeroed_now = true;
        let zeroed = stats(&report);
        assert!(
            zeroed.starts_with("counters since zeroed by root (uid 0) at 2023-11-14T22:13:20Z\n"),
            "{zeroed}"
        );
        assert!(
            zeroed.ends_with(
                "zeroed: `xlb stats` counts from now (the metrics endpoint keeps counting)\n"
            ),
            "{zeroed}"
        );
    }
}
