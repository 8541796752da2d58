//! What the daemon reports, as plain data: the answers of `xlb status`, `stats`, `flows`,
//! `trace` and `simulate`. The monitor builds them, the control API carries them as JSON, the
//! CLI renders them and the metrics endpoint encodes parts of them; none of those shapes
//! reaches the others through here, since this layer knows only the data.

mod flows;
mod seconds;
mod simulation;
mod stats;
mod status;
mod trace;

pub use self::{
    flows::{FlowReport, FlowsReport},
    simulation::SimulationReport,
    stats::{BackendCounters, Counters, FlowTableStats, ServiceStats, StatsReport, Zeroed},
    status::{
        AnnounceReport, BackendStatusReport, Connections, InterfaceHook, LeavingBackendReport,
        PoolStatus, ServiceStatus, StatusReport, VipReport,
    },
    trace::{TraceEventReport, TraceSummary, TraceUpdate},
};
