//! Backends removed from the config that drain, as `xlb status` shows them under their
//! service's backends.

use std::fmt::Write as _;

use super::age;
use crate::report::LeavingBackendReport;

/// "leaving" lines: each backend removed from the config, its connections and when they are
/// cut unless they end first.
pub(super) fn leaving_lines(out: &mut String, leaving: &[LeavingBackendReport]) {
    for backend in leaving {
        let c = &backend.connections;
        let total = c.open() + c.half_open + c.closing;
        let connections = match total {
            1 => "1 connection".to_owned(),
            n => format!("{n} connections"),
        };
        let _ = writeln!(
            out,
            "  {} removed from the config {} ago: draining, {connections}; cut in {} unless they end",
            backend.address,
            age(backend.since_seconds),
            age(backend.cut_in_seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Connections;

    #[test]
    fn a_leaving_backend_says_it_drains_and_how_many_connections_it_keeps() {
        let mut out = String::new();
        let backend = |established, closing| LeavingBackendReport {
            address: "198.18.1.13:8080".parse().unwrap(),
            connections: Connections {
                established,
                closing,
                ..Connections::default()
            },
            since_seconds: 12.0,
            cut_in_seconds: 288.0,
        };
        leaving_lines(&mut out, &[backend(3, 1), backend(1, 0)]);
        assert_eq!(
            out,
            "  198.18.1.13:8080 removed from the config 12s ago: draining, 4 connections; cut in 4m unless they end\n\
             \x20 198.18.1.13:8080 removed from the config 12s ago: draining, 1 connection; cut in 4m unless they end\n"
        );
    }
}
