//! Tier 3: passive health and admission with real servers and clients, on links left at
//! their defaults. Needs root: run with `cargo xtask test`.
//!
//! About 800 new connections per second go through the VIP while one of three backends
//! fails, once with active checks alone and once with passive health on, in the same test:
//! (a) its server is killed (the host answers with resets), (b) its host drops the clients'
//! SYNs while xlb's checks still pass. A backend that takes no new connection at all (its
//! host drops every SYN, the checks' too) while it serves long-lived ones. Then a SYN flood
//! from one prefix under an admission limit, while another client connects and downloads.

mod common;

use std::{collections::BTreeMap, net::SocketAddr, sync::Mutex, time::Duration};

use common::{event, stats};
use xlb::cmd::Response;
use xlb_tests::{
    client::{Session, payload},
    failover::{Fault, HEALTH, LOAD, Load, Outcome, paced_connections, run, silence},
    flood::legitimate_traffic_under_flood,
    scenario::{HTTP_PORT, TCP_SERVICE_PORT, balancer_config_with, start_backends, start_xlb},
    topology::{Lab, VIP, Wiring},
};

/// The tests of this file share two CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One run (see `xlb_tests::failover::run`), printed: the outcome and the daemon's log.
fn failover(fault: Fault, passive: bool) -> (Outcome, String) {
    let report = run(fault, passive, LOAD).unwrap();
    eprintln!(
        "{fault:?}, passive {passive}: {} connections, served {:?}, failed {:?}, {} slow, {} \
         failed on live backends; events: {:?}",
        report.outcome.attempts,
        report.outcome.served,
        report.outcome.failed,
        report.outcome.slow,
        report.live_failures,
        report
            .events
            .iter()
            .filter(|(_, count)| **count > 0)
            .collect::<BTreeMap<_, _>>(),
    );
    assert_eq!(
        report.live_failures, 0,
        "{fault:?}, passive {passive}: connections to live backends failed"
    );
    (report.outcome, report.log)
}

/// `fault` with active checks alone, then with passive health: both outcomes, and the log of
/// the second run.
fn both_settings(fault: Fault) -> (Outcome, Outcome, String) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (active, _) = failover(fault, false);
    let (passive, log) = failover(fault, true);
    assert!(
        active.failures() > 0,
        "active checks alone must lose some connections, or the test shows nothing: {active:?}"
    );
    (active, passive, log)
}

/// (a) A killed server: with active checks alone, every new flow sent to the dead backend
/// until its second failed check fails; with passive health, its first reset marks it, and
/// the check run at once takes it Down. No connection to a live backend fails either way.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn passive_health_takes_a_killed_backend_out_before_active_checks() {
    let (active, passive, log) = both_settings(Fault::Kill);
    assert!(
        passive.failures() < active.failures(),
        "passive health failed {} connections, active checks alone {}",
        passive.failures(),
        active.failures()
    );
    assert!(
        log.contains("backend suspect") && log.contains("connection refused"),
        "the mark and its reason are logged:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("state=Down")
            && l.contains("(confirming passive: ")
            && l.contains("refused in")),
        "the confirming check took it Down, saying why:\n{log}"
    );
}

/// (b) A host that drops the clients' SYNs while xlb's checks pass: with active checks alone
/// the backend stays Up and every connection sent to it fails; with passive health, each
/// SYN the client retransmits goes to another backend and the connection completes.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn passive_health_re_places_the_handshakes_a_silent_backend_ignores() {
    let (_, passive, log) = both_settings(Fault::Silence);
    assert_eq!(
        passive.failures(),
        0,
        "every SYN the silent backend ignored was re-placed: {passive:?}\n{log}"
    );
    assert!(
        passive.slow > 0,
        "those connections paid one retransmission"
    );
}

/// A SYN flood from one /16 under an admission limit of 200 new flows per second per /16:
/// nearly all of it is dropped before it takes a flow entry; the other client's idle
/// connection, download and new connections are unaffected.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_admission_limit_holds_a_flooding_prefix_to_its_rate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    lab.balancer
        .ip("route add 198.19.0.0/16 via 198.18.0.2")
        .unwrap();
    let keys = "admission = { rate = 200, burst = 400, ipv4_prefix = 16 }";
    let config = format!(
        "flow_table_size = 65536\n{}",
        balancer_config_with(&lab, "auto", keys, "")
    );
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    let outcome =
        legitimate_traffic_under_flood(&lab, 4_000_000, 2_000_000, Duration::from_secs(3)).unwrap();
    let stats = stats(&xlb);
    let service = &stats.services[0].counters;
    eprintln!(
        "flood: {} SYNs in {:?} ({:.0}/s); new flows {}, dropped by admission {}; {} \
         connections during it, {:?}",
        outcome.flood.sent,
        outcome.flood.elapsed,
        outcome.flood.rate(),
        service.new_flows,
        service.admission_dropped,
        outcome.connects.len(),
        outcome.connects
    );
    assert!(
        outcome.flood.sent >= 20_000,
        "too small a flood: {}",
        outcome.flood.sent
    );
    let allowed = 400 + 200 * (outcome.flood.elapsed.as_secs() + 1);
    assert!(
        service.new_flows <= allowed + 100,
        "the flooding prefix got {} new flows, its limit allows about {allowed}",
        service.new_flows
    );
    assert!(service.admission_dropped + service.new_flows >= outcome.flood.sent / 2);
    assert_eq!(
        event(&stats, "syn_hashed"),
        0,
        "the half-open table never filled"
    );
    // The other prefix's client did not notice.
    outcome.assert_unaffected(4_000_000);
}

/// A backend that stops taking new connections while it serves long-lived ones (its host
/// drops every SYN to the service port, xlb's checks' too, as a full accept queue would):
/// with new connections arriving at 100/s it leaves the table, and every exchange on the
/// connections it carries goes on being served by it (`on_down = "keep"`, the default).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_backend_that_takes_no_new_connection_leaves_the_table_and_keeps_its_connections() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    lab.client.sysctl("net.ipv4.tcp_tw_reuse", "1").unwrap();
    let xlb = start_xlb(
        &lab.balancer,
        &balancer_config_with(&lab, "auto", HEALTH, ""),
    )
    .unwrap();
    let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
    let b1 = &lab.backends[0];
    let load = Load {
        rate: 100,
        duration: Duration::from_secs(3),
        fault_at: Duration::ZERO,
        timeout: Duration::from_millis(2_500),
    };
    let (on_b1, exchanges, failed, new) = lab
        .client
        .block_on(async move {
            // 150 connections: about 50 on each backend.
            let mut sessions = Vec::new();
            for i in 0..150 {
                let mut session = Session::open(vip).await?;
                let backend = session.echo(payload(i, 100)).await?;
                sessions.push((session, backend));
            }
            let on_b1 = sessions.iter().filter(|(_, b)| b == "b1").count();
            // From now on b1 takes no new connection; new ones arrive meanwhile, and every
            // connection exchanges a request every 200 ms for 4 s.
            let talk = async {
                let (mut exchanges, mut failed) = (0, Vec::new());
                for round in 0..20u64 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    for (i, (session, backend)) in sessions.iter_mut().enumerate() {
                        exchanges += 1;
                        match session.echo(payload(round * 1000 + i as u64, 100)).await {
                            Ok(answered) if answered == *backend => {}
                            other => failed.push(format!("{backend}, round {round}: {other:?}")),
                        }
                    }
                }
                anyhow::Ok((exchanges, failed))
            };
            let (talked, new) = tokio::join!(
                talk,
                paced_connections(vip, load, || silence(b1, "0.0.0.0/0", HTTP_PORT))
            );
            let (exchanges, failed) = talked?;
            anyhow::Ok((on_b1, exchanges, failed, new?))
        })
        .unwrap()
        .unwrap();
    let (code, stdout, stderr) = xlb.cli(&["--json", "status"]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let Response::Status(status) = serde_json::from_str(&stdout).unwrap() else {
        panic!("status answered {stdout}")
    };
    let b1_state = &status.services[0].backends[0];
    eprintln!(
        "{on_b1} connections on b1, {exchanges} exchanges, {} failed; new connections: \
         {new:?}; b1: {} ({})",
        failed.len(),
        b1_state.state,
        b1_state.reason
    );
    assert!(
        on_b1 >= 30,
        "too few connections on b1 to show anything: {on_b1}"
    );
    assert_eq!(
        b1_state.state, "Down",
        "b1 takes no new connection: {b1_state:?}"
    );
    assert!(
        failed.is_empty(),
        "the connections b1 carried were cut:\n{}\n{}",
        failed.join("\n"),
        xlb.output()
    );
}

/// A backend whose host goes away (its switch port goes down, as a host powered off): its
/// checks time out, which alone cannot tell a gone host from a busy one; a connection attempt
/// beside them learns from the kernel that the host does not answer its neighbour's probes,
/// and the connections it carried are purged. Each then fails at once (the client's next
/// segment is reset by a live backend) instead of hanging until the client's TCP gives up.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_connections_of_a_backend_whose_host_is_gone_fail_at_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let mut xlb = start_xlb(
        &lab.balancer,
        &balancer_config_with(&lab, "auto", HEALTH, ""),
    )
    .unwrap();
    let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
    // The client holds its connections in one runtime: told how many are on b1, then told
    // when their flows are purged, it sends a request on each.
    let (on_b1_tx, on_b1) = std::sync::mpsc::channel();
    let (purged, purged_rx) = tokio::sync::oneshot::channel::<()>();
    let client = async move {
        let mut sessions = Vec::new();
        for i in 0..30 {
            let mut session = Session::open(vip).await?;
            if session.echo(payload(i, 100)).await? == "b1" {
                sessions.push(session);
            }
        }
        on_b1_tx.send(sessions.len())?;
        purged_rx.await?;
        let mut results = Vec::new();
        for (i, session) in sessions.iter_mut().enumerate() {
            let started = std::time::Instant::now();
            let result = session.echo(payload(100 + i as u64, 100)).await;
            results.push((result.map_err(|e| format!("{e:#}")), started.elapsed()));
        }
        anyhow::Ok(results)
    };
    let (results, proven) = std::thread::scope(|scope| {
        let client = scope.spawn(|| lab.client.block_on(client));
        let count = on_b1.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(count >= 5, "{count} connections on b1");
        lab.switch.ip("link set dev b1 down").unwrap();
        let gone_at = std::time::Instant::now();
        // The balancer's neighbour entry for b1 stays reachable for up to 45 s, then is
        // probed for 8 s (the kernel's defaults); the next attempt learns it is gone 3 s on.
        xlb.wait_for_output(
            "every flow of a Down backend purged",
            Duration::from_secs(90),
        )
        .unwrap();
        let proven = gone_at.elapsed();
        purged.send(()).unwrap();
        (client.join().unwrap().unwrap().unwrap(), proven)
    });
    assert!(
        xlb.output().contains("backend host gone"),
        "{}",
        xlb.output()
    );
    eprintln!("b1's host proven gone {proven:?} after its port went down; then: {results:?}");
    for (result, took) in &results {
        assert!(result.is_err(), "a connection on b1 answered: {result:?}");
        assert!(
            *took < Duration::from_secs(5),
            "a connection on b1 took {took:?} to fail ({result:?})"
        );
    }
}
