//! `xlb simulate`: where a new flow from a client would go, and its pools.

use std::fmt::Write as _;

use crate::report::SimulationReport;

/// `xlb simulate`.
pub(in crate::cli) fn simulation(report: &SimulationReport) -> String {
    let mut out = simulation_line(report);
    if let Some(home) = &report.home_pool {
        let _ = write!(out, "  home pool {home}");
        match &report.backend_pool {
            Some(pool) if pool != home => {
                let _ = writeln!(out, ", which has no room: spills to pool {pool}");
            }
            Some(_) => out.push_str(", served at home\n"),
            None => out.push('\n'),
        }
    }
    out
}

/// What the simulation says: the backend, and the program's verdict when it is not the one
/// that sends a packet on its way (`redirect`, `tx`).
fn simulation_line(report: &SimulationReport) -> String {
    let verdict = match report.verdict.as_str() {
        "redirect" | "tx" => String::new(),
        other => format!(" ({other})"),
    };
    match report.backend {
        Some(backend) if report.existing_flow => format!(
            "{} from {}: existing flow to {backend}{verdict}\n",
            report.service, report.client
        ),
        Some(backend) => format!(
            "{} from {}: a new flow would go to {backend}{verdict}\n",
            report.service, report.client
        ),
        None => format!(
            "{} from {}: no backend ({})\n",
            report.service, report.client, report.verdict
        ),
    }
}
