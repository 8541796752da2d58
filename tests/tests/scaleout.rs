//! Tier 3: several instances behind ECMP, with real parts: a router running BIRD with BGP
//! sessions to three balancers, each running xlb and its own BIRD (the configs of
//! contrib/bird/), backends in DSR mode prepared by contrib/dsr-backend.sh, links at their
//! defaults. Needs root: run with `cargo xtask test`.
//!
//! 300 long-lived connections echo 1 KB every 200 ms for 6 s, each byte checked. With Maglev:
//! (a) the router spreads them over the three instances; (b) one instance's xlb is killed
//! with SIGKILL: its announcement device goes, its BIRD withdraws the VIP, the connections
//! the router moves to the others keep their backend, and at least 99% complete; (c) it is
//! started again: at least 99% complete while the router moves flows back to it. (d) The same
//! with round robin, reported beside it: there an instance that receives a moved flow places
//! it by its own hash over its own table.

use xlb_tests::scaleout::{LOAD, MAGLEV, ROUND_ROBIN, Report, run};

fn print(scheduler: &str, report: &Report) {
    eprintln!(
        "{scheduler}: spread before the kill {:?}; kill: {} of {} completed ({:.1}%), failed \
         {:?}, route withdrawn after {:?}; restart: {} of {} completed ({:.1}%), failed {:?}, \
         ready after {:?}, route back after {:?}; flows placed per instance {:?}",
        report.spread,
        report.kill.completed,
        report.kill.total(),
        report.kill.completed_percent(),
        report.kill.failed,
        report.withdrawn_after,
        report.restart.completed,
        report.restart.total(),
        report.restart.completed_percent(),
        report.restart.failed,
        report.ready_after,
        report.announced_after,
        report.placed,
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn maglev_instances_keep_connections_through_a_kill_and_a_restart() {
    let maglev = run(MAGLEV, LOAD).unwrap();
    print("maglev", &maglev);
    let round_robin = run(ROUND_ROBIN, LOAD).unwrap();
    print("round robin", &round_robin);

    // (a) Every instance got a fair part of the 300 connections (a third is 100).
    assert_eq!(maglev.spread.len(), 3);
    for placed in &maglev.spread {
        assert!(*placed >= 50, "spread {:?}", maglev.spread);
    }
    // (b) and (c).
    for (what, outcome) in [("kill", &maglev.kill), ("restart", &maglev.restart)] {
        assert_eq!(outcome.total(), LOAD.connections, "{what}");
        assert!(
            outcome.completed_percent() >= 99.0,
            "{what}: {} of {} completed, failed {:?}",
            outcome.completed,
            outcome.total(),
            outcome.failed
        );
    }
    // The route followed the daemon both ways, for both schedulers, and came back while the
    // connections of the second round still ran (so that flows did move back).
    for report in [&maglev, &round_robin] {
        assert!(
            report.withdrawn_after.as_secs() < 5,
            "{:?}",
            report.withdrawn_after
        );
        assert!(
            report.announced_after + LOAD.event_at < LOAD.duration,
            "{:?}",
            report.announced_after
        );
        assert_eq!(
            report.kill.total() + report.restart.total(),
            2 * LOAD.connections
        );
    }
}
