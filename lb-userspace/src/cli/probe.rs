//! `xlb status --check`: the status as a monitoring probe sees it (the Nagios plugin
//! convention, which Icinga, Sensu and Zabbix's external checks follow): one line, and an
//! exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

use std::fmt::Write as _;

use crate::report::StatusReport;

/// A probe's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Every backend of every service can take new flows.
    Ok = 0,
    /// A service has backends that cannot (Down, drained, overloaded while others have room).
    Warning = 1,
    /// A service has no backend that can take new flows: its new flows are dropped.
    Critical = 2,
    /// The daemon did not answer.
    Unknown = 3,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// The verdict on `report` and its line: the services in trouble, worst first, then the
/// performance data (backends that take new flows, per service, out of all).
pub(super) fn verdict(report: &StatusReport) -> (Verdict, String) {
    let services = &report.services;
    let out: Vec<&str> = services
        .iter()
        .filter(|s| s.available == 0 && !s.backends.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    let short: Vec<String> = services
        .iter()
        .filter(|s| s.available > 0 && s.available < s.backends.len())
        .map(|s| format!("{} {} of {}", s.name, s.available, s.backends.len()))
        .collect();
    let verdict = if !out.is_empty() {
        Verdict::Critical
    } else if !short.is_empty() {
        Verdict::Warning
    } else {
        Verdict::Ok
    };
    let mut line = format!("XLB {} - ", verdict.word());
    let mut parts = Vec::new();
    if !out.is_empty() {
        parts.push(format!("no backend can take new flows: {}", out.join(", ")));
    }
    if !short.is_empty() {
        parts.push(format!(
            "backends that take new flows: {}",
            short.join(", ")
        ));
    }
    if parts.is_empty() {
        let backends: usize = services.iter().map(|s| s.backends.len()).sum();
        parts.push(format!(
            "{} services, all {backends} backends take new flows",
            services.len()
        ));
    }
    line += &parts.join("; ");
    let mut perfdata = String::new();
    for s in services {
        let _ = write!(
            perfdata,
            " '{}'={};;1;0;{}",
            s.name,
            s.available,
            s.backends.len()
        );
    }
    if !perfdata.is_empty() {
        line += " |";
        line += &perfdata;
    }
    (verdict, line)
}

/// The verdict when the daemon does not answer.
pub(super) fn unreachable(error: &anyhow::Error) -> (Verdict, String) {
    (Verdict::Unknown, format!("XLB UNKNOWN - {error:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cli::render::tests::backend, report::ServiceStatus};

    fn service(name: &str, available: usize, backends: usize) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            listen: "198.18.100.1:80".parse().unwrap(),
            protocol: "tcp".into(),
            packets_per_second: 0.0,
            bits_per_second: 0.0,
            backends: vec![backend("198.18.1.1:80"); backends],
            available,
            leaving: Vec::new(),
            pools: Vec::new(),
        }
    }

    fn report(services: Vec<ServiceStatus>) -> StatusReport {
        StatusReport {
            services,
            ..StatusReport::default()
        }
    }

    #[test]
    fn the_worst_service_decides_and_the_line_names_it() {
        assert_eq!(
            verdict(&report(vec![service("web", 3, 3), service("dns", 2, 2)])),
            (
                Verdict::Ok,
                "XLB OK - 2 services, all 5 backends take new flows | 'web'=3;;1;0;3 'dns'=2;;1;0;2"
                    .into()
            )
        );
        assert_eq!(
            verdict(&report(vec![service("web", 2, 3), service("dns", 2, 2)])),
            (
                Verdict::Warning,
                "XLB WARNING - backends that take new flows: web 2 of 3 | 'web'=2;;1;0;3 'dns'=2;;1;0;2"
                    .into()
            )
        );
        assert_eq!(
            verdict(&report(vec![service("web", 2, 3), service("dns", 0, 2)])),
            (
                Verdict::Critical,
                "XLB CRITICAL - no backend can take new flows: dns; backends that take new flows: \
                 web 2 of 3 | 'web'=2;;1;0;3 'dns'=0;;1;0;2"
                    .into()
            )
        );
        let (verdict, line) = unreachable(&anyhow::anyhow!("no daemon at /run/xlb.sock"));
        assert_eq!(verdict, Verdict::Unknown);
        assert_eq!(line, "XLB UNKNOWN - no daemon at /run/xlb.sock");
    }
}
