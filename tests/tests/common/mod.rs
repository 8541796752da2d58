//! Helpers shared by the end-to-end test files.

use aya::programs::{SchedClassifier, TcAttachType};
use xlb::{cmd::Response, dataplane::NoopProgram, report::StatsReport};
use xlb_tests::{netns::Netns, scenario::Xlb, topology::Lab};

#[allow(dead_code, reason = "each test binary uses a part of these helpers")]
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
#[allow(dead_code, reason = "each test binary uses a part of these helpers")]
pub fn stats(xlb: &Xlb) -> StatsReport {
    let (code, stdout, stderr) = xlb.cli(&["--json", "stats"]).unwrap();
    assert_eq!(code, 0, "xlb stats: {stderr}");
    match serde_json::from_str(&stdout).unwrap() {
        Response::Stats(report) => report,
        other => panic!("stats answered {other:?}"),
    }
}

/// The count of one data-plane event in `stats`.
#[allow(dead_code, reason = "each test binary uses a part of these helpers")]
pub fn event(stats: &StatsReport, name: &str) -> u64 {
    stats
        .events
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| panic!("no event {name}"), |(_, count)| *count)
}

/// The hooks at which some program is attached to `interface` on `host`: "xdp" (any XDP
/// mode), and the names of the tcx ingress programs.
#[allow(dead_code, reason = "each test binary uses a part of these helpers")]
pub fn hooks_attached(host: &Netns, interface: &str) -> Vec<String> {
    let mut hooks = Vec::new();
    let link = host.ip(&format!("link show dev {interface}")).unwrap();
    if link.contains("xdp") {
        hooks.push("xdp".to_owned());
    }
    let programs = host
        .enter(|| SchedClassifier::query_tcx(interface, TcAttachType::Ingress))
        .unwrap()
        .unwrap_or_else(|e| panic!("querying tcx on {interface}: {e}"));
    for program in programs.1 {
        hooks.push(program.name_as_str().unwrap_or("tc program").to_owned());
    }
    hooks
}
