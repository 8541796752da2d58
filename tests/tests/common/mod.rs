//! Helpers shared by the end-to-end test files.

use xlb::{
    api::{Response, StatsReport},
    dataplane::NoopProgram,
};
use xlb_tests::{scenario::Xlb, topology::Lab};

/// Attaches the reference XDP program to the far end of each of the balancer's links (see
/// `Lab::balancer_peers`); they stay attached while the returned programs live.
pub fn attach_peer_programs(lab: &Lab) -> Vec<NoopProgram> {
    lab.balancer_peers()
        .into_iter()
        .map(|(host, interface)| {
            host.enter(|| {
                let mut program = NoopProgram::load()?;
                program.attach(interface)?;
                anyhow::Ok(program)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{interface}: {e:#}"))
        })
        .collect()
}

/// `xlb stats` of a running daemon.
#[allow(dead_code)]
pub fn stats(xlb: &Xlb) -> StatsReport {
    let (code, stdout, stderr) = xlb.cli(&["--json", "stats"]).unwrap();
    assert_eq!(code, 0, "xlb stats: {stderr}");
    match serde_json::from_str(&stdout).unwrap() {
        Response::Stats(report) => report,
        other => panic!("stats answered {other:?}"),
    }
}

/// The count of one data-plane event in `stats`.
#[allow(dead_code)]
pub fn event(stats: &StatsReport, name: &str) -> u64 {
    stats
        .events
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("no event {name}"), |(_, count)| *count)
}
