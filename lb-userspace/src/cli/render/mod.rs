//! How the CLI shows the daemon's answers: tables that fit an 80-column terminal unless an
//! address is too long to (addresses are never cut).

mod flows;
mod leaving;
mod simulation;
mod stats;
mod trace;

use std::{fmt::Write as _, net::SocketAddr};

pub(super) use self::{
    flows::flows,
    simulation::simulation,
    stats::stats,
    trace::{trace_end, trace_event},
};
use crate::{
    health::state::{Admin, Operator, Paused},
    report::{AnnounceReport, BackendStatusReport, PoolStatus, ServiceStatus, StatusReport},
};

/// A number with a k/M/G suffix, for rates.
pub(super) fn si(value: f64) -> String {
    let (scaled, suffix) = if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        return format!("{value:.0}");
    };
    if scaled >= 100.0 {
        format!("{scaled:.0}{suffix}")
    } else {
        format!("{scaled:.1}{suffix}")
    }
}

/// A duration in seconds as "12s", "5m", "3h", "2d".
pub(super) fn age(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Width of the address column: the longest address, at least 21 (an IPv4 address with port).
fn address_width<'a>(addresses: impl Iterator<Item = &'a SocketAddr>) -> usize {
    addresses
        .map(|a| a.to_string().len())
        .max()
        .unwrap_or(0)
        .max(21)
}

/// An operator's setting as `xlb status` shows it: what, who, when.
fn operator_note(operator: &Operator) -> String {
    let mut what = Vec::new();
    match operator.admin {
        Some(Admin::Drain) => what.push("drained".to_owned()),
        Some(Admin::Disable) => what.push("disabled".to_owned()),
        None => {}
    }
    if let Some(weight) = operator.weight {
        what.push(format!("weight {weight}"));
    }
    match operator.checks_paused {
        Some(Paused::Up) => what.push("checks paused while up".to_owned()),
        Some(Paused::Down) => what.push("checks paused while down".to_owned()),
        None => {}
    }
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(operator.at),
    );
    format!("operator: {} by {} at {when}", what.join(", "), operator.by)
}

/// A weight in hundredths of a unit, as a weight: "3", "1.5", "0.25".
fn weight_units(hundredths: u32) -> String {
    let (whole, part) = (hundredths / 100, hundredths % 100);
    match part {
        0 => whole.to_string(),
        part if part % 10 == 0 => format!("{whole}.{}", part / 10),
        part => format!("{whole}.{part:02}"),
    }
}

/// A backend's line: its state (what the balancer does with it) and apart from it what its checks
/// say (CHK; `off` while an operator paused them), the weight in force (an operator's or the
/// configured one) and the weight its table gives it now in the same unit (EFF: slow start, the
/// agent); then its reason, after its pool when the service has several.
fn backend_line(out: &mut String, b: &BackendStatusReport, width: usize) {
    let agent = b
        .agent_weight_percent
        .map_or("-".to_owned(), |p| format!("{p}%"));
    let weight = b
        .operator
        .as_ref()
        .and_then(|o| o.weight)
        .unwrap_or(b.weight);
    let paused = b
        .operator
        .as_ref()
        .is_some_and(|o| o.checks_paused.is_some());
    let check = match b.health.as_str() {
        _ if paused => "off",
        "" | "unknown" => "-",
        verdict => verdict,
    };
    let _ = writeln!(
        out,
        "  {:<width$} {:<10} {:>4} {:>3} {:>5} {:>4} {:>6} {:>6} {:>6} {:>4}",
        b.address.to_string(),
        b.state,
        check,
        weight,
        weight_units(b.effective_weight),
        agent,
        si(b.connections.open() as f64),
        si(b.packets_per_second),
        si(b.bits_per_second),
        age(b.since_seconds),
    );
    let reason = match &b.pool {
        Some(pool) => format!("pool {pool}: {}", b.reason),
        None => b.reason.clone(),
    };
    let _ = writeln!(out, "    {}", truncate(&reason, 76));
    let c = &b.connections;
    if c.half_open > 0 || c.closing > 0 {
        let _ = writeln!(
            out,
            "    also {} half-open, {} closing; {} active flows",
            c.half_open, c.closing, b.active_flows
        );
    }
    if let Some(operator) = &b.operator {
        let _ = writeln!(out, "    {}", operator_note(operator));
    }
}

/// `xlb status` (and each frame of `xlb top`). Addresses are never cut, so they can be
/// pasted into `xlb backend`; lines are longer than 80 columns only when they must be.
pub(super) fn status(report: &StatusReport) -> String {
    let mut out = String::new();
    if !report.version.is_empty() {
        version_line(&mut out, report);
    }
    if let Some(announce) = &report.announce {
        announce_lines(&mut out, announce);
    }
    for service in &report.services {
        service_lines(&mut out, service);
    }
    out
}

/// The daemon's version and its interfaces with their hooks.
fn version_line(out: &mut String, report: &StatusReport) {
    let interfaces: Vec<String> = report
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.hook))
        .collect();
    let _ = writeln!(
        out,
        "xlb {}  interfaces: {}",
        report.version,
        if interfaces.is_empty() {
            "none".to_owned()
        } else {
            interfaces.join(", ")
        }
    );
}

/// Route health injection: the device, BIRD, and each VIP announced or withdrawn, and why.
fn announce_lines(out: &mut String, announce: &AnnounceReport) {
    let _ = writeln!(
        out,
        "announce: device {}, {}",
        announce.device, announce.bird
    );
    for vip in &announce.vips {
        let state = if vip.announced {
            "announced"
        } else {
            "withdrawn"
        };
        let _ = writeln!(
            out,
            "  {} {state} for {}: {}",
            vip.vip,
            age(vip.since_seconds),
            vip.reason
        );
    }
}

/// One service: its rates, a line per backend, and its pools if it has several.
fn service_lines(out: &mut String, service: &ServiceStatus) {
    let width = address_width(service.backends.iter().map(|b| &b.address));
    let _ = writeln!(
        out,
        "{} {} {}  {} pkt/s  {}bit/s{}",
        service.name,
        service.protocol,
        service.listen,
        si(service.packets_per_second),
        si(service.bits_per_second),
        availability(service)
    );
    let _ = writeln!(
        out,
        "  {:<width$} {:<10} {:>4} {:>3} {:>5} {:>4} {:>6} {:>6} {:>6} {:>4}",
        "BACKEND", "STATE", "CHK", "WGT", "EFF", "AGNT", "CONN", "PKT/S", "BIT/S", "FOR"
    );
    for backend in &service.backends {
        backend_line(out, backend, width);
    }
    leaving::leaving_lines(out, &service.leaving);
    if !service.pools.is_empty() {
        pool_lines(out, &service.pools);
    }
}

/// What a service line says of its backends for new flows: nothing when all can take them.
fn availability(service: &ServiceStatus) -> String {
    let backends = service.backends.len();
    match service.available {
        0 if backends > 0 => "  NO BACKEND CAN TAKE NEW FLOWS".to_owned(),
        available if available < backends => format!("  {available} of {backends} take new flows"),
        _ => String::new(),
    }
}

/// A service's pools: backends up, where their new flows go, and what spilled where.
fn pool_lines(out: &mut String, pools: &[PoolStatus]) {
    let _ = writeln!(
        out,
        "  {:<21} {:>5}  {:<16} SPILLED",
        "POOL", "UP", "NEW FLOWS GO TO"
    );
    for pool in pools {
        let spilled: Vec<String> = pool
            .spilled
            .iter()
            .map(|(to, n)| format!("{} to {to}", si(*n as f64)))
            .collect();
        let _ = writeln!(
            out,
            "  {:<21} {:>5}  {:<16} {}",
            truncate(&pool.name, 21),
            format!("{}/{}", pool.up, pool.backends),
            truncate(&pool.serving, 16),
            truncate(&spilled.join(", "), 30)
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::report::{
        AnnounceReport, Counters, PoolStatus, ServiceStatus, StatsReport, VipReport,
    };

    #[test]
    fn numbers_and_ages_are_short() {
        assert_eq!(si(999.0), "999");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(250_000_000.0), "250M");
        assert_eq!(age(59.9), "59s");
        assert_eq!(age(3_600.0), "1h");
    }

    #[test]
    fn status_fits_80_columns() {
        let report = StatusReport {
            version: "0.1.0 (abc)".into(),
            interfaces: vec![crate::report::InterfaceHook {
                name: "eth0".into(),
                hook: "tc".into(),
            }],
            services: vec![ServiceStatus {
                name: "web".into(),
                listen: "198.18.100.1:80".parse().unwrap(),
                protocol: "tcp".into(),
                packets_per_second: 12_345.0,
                bits_per_second: 98_765_432.0,
                available: 1,
                leaving: Vec::new(),
                backends: vec![BackendStatusReport {
                    address: "198.18.101.111:65535".parse().unwrap(),
                    state: "Overloaded".into(),
                    reason: "agent weight 10% (overloaded below 20%), 12345 active flows (max 10000) and more".into(),
                    since_seconds: 75.0,
                    weight: 256,
                    effective_weight: 25_600,
                    agent_weight_percent: Some(100),
                    active_flows: 1_234_567,
                    connections: crate::report::Connections {
                        established: 1_234_567,
                        ..Default::default()
                    },
                    packets_per_second: 123_456.0,
                    bits_per_second: 1.5e9,
                    operator: Some(Operator {
                        admin: Some(Admin::Drain),
                        weight: Some(3),
                        checks_paused: None,
                        by: "alice (uid 1000)".into(),
                        at: 1_700_000_000,
                    }),
                    suspect: None,
                    passive_marks: 0,
                    health: "up".into(),
                    pool: Some("a-rather-long-pool-name-for-seoul".into()),
                }],
                pools: vec![PoolStatus {
                    name: "a-rather-long-pool-name-for-seoul".into(),
                    up: 1_000,
                    backends: 1_024,
                    serving: "tokyo-and-osaka-combined".into(),
                    spilled: vec![("tokyo".into(), 123_456), ("osaka".into(), 7)],
                }],
            }],
            announce: Some(AnnounceReport {
                device: "xlb-vip".into(),
                bird: "BIRD 2.0.12 at /run/bird/bird.ctl".into(),
                bird_reachable: true,
                vips: vec![VipReport {
                    vip: "198.18.100.1".parse().unwrap(),
                    announced: true,
                    reason: "web takes new flows".into(),
                    since_seconds: 75.0,
                    announcements: 1,
                    withdrawals: 0,
                }],
            }),
        };
        let text = status(&report);
        assert!(
            text.contains("announce: device xlb-vip, BIRD 2.0.12 at /run/bird/bird.ctl\n  198.18.100.1 announced for 1m: web takes new flows\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "a-rather-long-pool-n… 1000/1024  tokyo-and-osaka… 123k to tokyo, 7 to osaka"
            ),
            "{text}"
        );
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(
            text.contains(
                "198.18.101.111:65535  Overloaded   up   3   256 100%   1.2M   123k   1.5G   1m"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "    operator: drained, weight 3 by alice (uid 1000) at 2023-11-14T22:13:20Z\n"
            ),
            "{text}"
        );
        assert!(text.starts_with("xlb 0.1.0 (abc)  interfaces: eth0 (tc)\n"));
    }

    #[test]
    fn a_backends_line_shows_the_weight_in_force_its_share_now_and_its_checks_apart() {
        let mut b = backend("198.18.1.11:8080");
        b.state = "Down".into();
        b.reason = "disabled by the operator".into();
        b.effective_weight = 0;
        b.operator = Some(Operator {
            admin: Some(Admin::Disable),
            weight: Some(3),
            checks_paused: None,
            by: "root".into(),
            at: 0,
        });
        b.pool = Some("kr".into());
        let mut out = String::new();
        backend_line(&mut out, &b, 16);
        assert!(
            out.starts_with("  198.18.1.11:8080 Down         up   3     0    -"),
            "{out}"
        );
        assert!(
            out.contains("\n    pool kr: disabled by the operator\n"),
            "{out}"
        );
        // Paused checks say nothing: the state holds their last verdict.
        b.operator.as_mut().unwrap().checks_paused = Some(Paused::Down);
        let mut out = String::new();
        backend_line(&mut out, &b, 16);
        assert!(
            out.starts_with("  198.18.1.11:8080 Down        off"),
            "{out}"
        );
        let units = [300, 150, 25, 0].map(weight_units);
        assert_eq!(units, ["3", "1.5", "0.25", "0"]);
    }

    /// An Up backend at `address`, every figure zero (the probe's tests use it too).
    pub(in crate::cli) fn backend(address: &str) -> BackendStatusReport {
        BackendStatusReport {
            address: address.parse().unwrap(),
            state: "Up".into(),
            reason: "checks pass".into(),
            since_seconds: 1.0,
            weight: 1,
            effective_weight: 100,
            agent_weight_percent: None,
            active_flows: 0,
            connections: Default::default(),
            packets_per_second: 0.0,
            bits_per_second: 0.0,
            operator: None,
            suspect: None,
            passive_marks: 0,
            health: "up".into(),
            pool: None,
        }
    }

    #[test]
    fn the_service_line_says_how_many_backends_take_new_flows_when_not_all_do() {
        let service = |available| StatusReport {
            services: vec![ServiceStatus {
                name: "web".into(),
                listen: "198.18.100.1:80".parse().unwrap(),
                protocol: "tcp".into(),
                packets_per_second: 0.0,
                bits_per_second: 0.0,
                backends: vec![backend("198.18.1.1:80"), backend("198.18.1.2:80")],
                available,
                leaving: Vec::new(),
                pools: Vec::new(),
            }],
            ..StatusReport::default()
        };
        let first_line = |available| {
            status(&service(available))
                .lines()
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(first_line(2), "web tcp 198.18.100.1:80  0 pkt/s  0bit/s");
        assert!(first_line(1).ends_with("  1 of 2 take new flows"));
        assert!(first_line(0).ends_with("  NO BACKEND CAN TAKE NEW FLOWS"));
    }

    #[test]
    fn long_addresses_are_never_cut_and_columns_stay_aligned() {
        let long = "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535";
        let report = StatusReport {
            services: vec![ServiceStatus {
                name: "web".into(),
                listen: "[fd00::1]:80".parse().unwrap(),
                protocol: "tcp".into(),
                packets_per_second: 0.0,
                bits_per_second: 0.0,
                backends: vec![backend(long), backend("198.18.1.1:80")],
                available: 2,
                leaving: Vec::new(),
                pools: Vec::new(),
            }],
            ..StatusReport::default()
        };
        let text = status(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].starts_with(&format!("  {long} Up")), "{text}");
        let state_column = |line: &str| line.find(" Up ").unwrap();
        assert_eq!(state_column(lines[2]), state_column(lines[4]), "{text}");
        let stats = stats(&StatsReport {
            services: vec![crate::report::ServiceStats {
                name: "web".into(),
                counters: Counters::default(),
                backends: vec![crate::report::BackendCounters {
                    address: long.parse().unwrap(),
                    counters: Counters::default(),
                }],
            }],
            ..StatsReport::default()
        });
        assert!(stats.contains(long), "{stats}");
    }
}
