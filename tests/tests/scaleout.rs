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
//! it by its own hash over its own table. Then the announcement itself: withdrawn when no
//! backend can take new flows and back when one can, withdrawn at once on SIGTERM while xlb
//! drains, and a warning (but service) when no BGP daemon answers.

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use xlb_tests::{
    client::http_echo,
    cluster::Cluster,
    scaleout::{LOAD, MAGLEV, ROUND_ROBIN, Report, run},
    scenario::{TCP_SERVICE_PORT, balancer_config_with, start_backends, start_xlb},
    topology::{Lab, VIP, Wiring},
};

/// The tests of this file share two CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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

/// Polls `check` every 50 ms until it holds, for at most `limit`; how long it took.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn bfd_takes_a_balancer_that_lost_its_link_out_of_the_route_within_a_second() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(3, 2, MAGLEV).unwrap();
    // The contrib configs' BFD: a session per balancer, Up, 100 ms x 3.
    let up = within(Duration::from_secs(10), || {
        cluster.router_bird.bfd_sessions().matches(" Up ").count() == 3
    });
    let sessions = cluster.router_bird.bfd_sessions();
    assert!(up.is_some(), "{sessions}");
    assert!(
        sessions.contains("0.100") && sessions.contains("0.300"),
        "{sessions}"
    );
    // Balancer 2's link goes (its host hangs): no withdrawal, only silence.
    cluster.cut_link(1).unwrap();
    let gone = cluster
        .wait_for_next_hops(2, Duration::from_secs(5))
        .unwrap();
    eprintln!("BFD: the balancer that lost its link left the route after {gone:?}");
    assert!(
        gone < Duration::from_secs(1),
        "BGP's hold time (3 s) took it out, not BFD: {gone:?}\n{}",
        cluster.router_bird.bfd_sessions()
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_route_follows_the_backends_and_the_daemon() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start_with(1, 2, MAGLEV, "1s", true).unwrap();
    let vip = |status: &serde_json::Value| status["status"]["announce"]["vips"][0].clone();
    // The daemon probes BIRD as it starts: its first answer may come after the first status.
    let start = Instant::now();
    let mut status = cluster.status(0).unwrap();
    while status["status"]["announce"]["bird_reachable"] != true
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
        status = cluster.status(0).unwrap();
    }
    assert_eq!(
        status["status"]["announce"]["bird_reachable"], true,
        "{status}"
    );
    assert_eq!(vip(&status)["announced"], true, "{status}");

    // `xlb simulate` on a DSR service names the backend (the packet keeps the VIP), and
    // leaves no flow behind.
    {
        let xlb = cluster.xlbs[0].lock().unwrap();
        let (code, simulated, stderr) = xlb.cli(&["simulate", "web", "198.18.0.2:45000"]).unwrap();
        assert_eq!(code, 0, "{stderr}");
        assert!(
            simulated.contains("198.18.1.") && !simulated.contains("no backend"),
            "{simulated}"
        );
        let (_, flows, _) = xlb.cli(&["--json", "flows", "web"]).unwrap();
        assert!(flows.contains("\"matched\": 0"), "{flows}");
    }

    // No backend can take new flows: withdrawn, with the reason; back when one can.
    cluster.stop_server(0).unwrap();
    cluster.stop_server(1).unwrap();
    cluster
        .wait_for_next_hops(0, Duration::from_secs(5))
        .unwrap();
    let status = cluster.status(0).unwrap();
    assert_eq!(vip(&status)["announced"], false);
    assert_eq!(vip(&status)["reason"], "no backend of web takes new flows");
    cluster.start_server(1).unwrap();
    cluster
        .wait_for_next_hops(1, Duration::from_secs(5))
        .unwrap();
    let status = cluster.status(0).unwrap();
    assert_eq!(
        (
            vip(&status)["announcements"].as_u64(),
            vip(&status)["withdrawals"].as_u64()
        ),
        (Some(2), Some(1)),
        "{status}"
    );

    // SIGTERM: withdrawn at once, balancing on for the drain time (1 s), then gone.
    let mut xlb = cluster.xlbs[0].lock().unwrap();
    xlb.signal(libc::SIGTERM).unwrap();
    let withdrawn = within(Duration::from_secs(1), || {
        cluster.next_hops().is_ok_and(|hops| hops.is_empty())
    })
    .expect("the route is withdrawn within the drain time");
    std::thread::sleep(Duration::from_millis(400).saturating_sub(withdrawn));
    assert!(!xlb.exited().unwrap(), "xlb balances on while it drains");
    let gone = within(Duration::from_secs(5), || xlb.exited().unwrap_or(true))
        .expect("xlb stops after draining");
    eprintln!("SIGTERM: route withdrawn after {withdrawn:?}, xlb gone {gone:?} later");
    assert!(xlb.output().contains("VIPs withdrawn: balancing on"));
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_a_bgp_daemon_xlb_warns_and_serves() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 1).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let config = balancer_config_with(&lab, "auto", "announce = true", "").replacen(
        "[[service]]",
        "[announce]\nbird_socket = \"/nonexistent/bird.ctl\"\n\n[[service]]",
        1,
    );
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    let (code, stdout, _) = xlb.cli(&["status"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        stdout.contains("announce: device xlb-vip, no BIRD at /nonexistent/bird.ctl"),
        "{stdout}"
    );
    assert!(
        xlb.output().contains("no BGP daemon answers"),
        "{}",
        xlb.output()
    );
    // The VIP is on the device all the same (a BIRD started later exports it), and served.
    let addresses = lab.balancer.ip("-4 addr show dev xlb-vip").unwrap();
    assert!(addresses.contains(&format!("{VIP}/32")), "{addresses}");
    let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
    let backend = lab
        .client
        .block_on(http_echo(vip, b"still serving".to_vec()))
        .unwrap()
        .unwrap();
    assert_eq!(backend, "b1");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn dsr_backends_must_be_on_an_attached_network() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The balancer reaches 198.18.2.0/24 through the router 198.18.0.2.
    let lab = Lab::new(Wiring::BehindRouter, 1).unwrap();
    let config = |backend: &str| {
        format!(
            "interfaces = [\"eth0\", \"eth1\"]\n[[service]]\nname = \"edge\"\nlisten = \
             \"{VIP}:80\"\nprotocol = \"tcp\"\nforwarding = \"dsr\"\nbackends = [ {{ address \
             = \"{backend}\" }} ]\n"
        )
    };
    let check = |config: &str| {
        let (code, _, stderr) = xlb_tests::daemon::check(&lab.balancer, config).unwrap();
        (Some(code), stderr)
    };
    let (code, stderr) = check(&config("198.18.2.9:80"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "service \"edge\": backend 198.18.2.9 is reached through the gateway 198.18.0.2; \
             forwarding = \"dsr\" only changes the MAC address"
        ),
        "{stderr}"
    );
    // No route at all: the error names the service and the backend.
    let (code, stderr) = check(&config("198.19.255.9:80"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("service \"edge\": no route to backend 198.19.255.9"),
        "{stderr}"
    );
    let (code, stderr) = check(&config("198.18.1.11:80"));
    assert_eq!(code, Some(0), "{stderr}");
}

/// A NAT backend may be behind a gateway, but its route must leave by an interface xlb is
/// attached to, where its replies come back to be translated; `xlb check` names the service,
/// the backend and the interface otherwise, and a backend with no route at all.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn nat_backends_must_be_routed_through_an_attached_interface() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The balancer reaches 198.18.2.0/24 through the router 198.18.0.2 (on eth0), and its
    // backends 198.18.1.0/24 on eth1.
    let lab = Lab::new(Wiring::BehindRouter, 1).unwrap();
    let config = |interfaces: &str, backend: &str| {
        format!(
            "interfaces = [{interfaces}]\n[[service]]\nname = \"web\"\nlisten = \
             \"{VIP}:80\"\nprotocol = \"tcp\"\nbackends = [ {{ address = \"{backend}\" }} ]\n"
        )
    };
    let check = |config: &str| {
        let (code, _, stderr) = xlb_tests::daemon::check(&lab.balancer, config).unwrap();
        (code, stderr)
    };
    let (code, stderr) = check(&config("\"eth0\", \"eth1\"", "198.18.2.9:80"));
    assert_eq!(
        code, 0,
        "through a gateway on an attached interface: {stderr}"
    );
    let (code, stderr) = check(&config("\"eth0\"", "198.18.1.11:80"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "service \"web\": backend 198.18.1.11 is reached through an interface xlb is not \
             attached to (eth1); with NAT its replies come back that way"
        ),
        "{stderr}"
    );
    let (code, stderr) = check(&config("\"eth0\", \"eth1\"", "198.19.255.9:80"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("service \"web\": no route to backend 198.19.255.9"),
        "{stderr}"
    );
    // Every problem the host has, in one run, each at the place the file writes it: an
    // interface that does not exist, a backend through an interface not attached, a backend
    // with no route.
    let backends = "198.18.1.11:80\" }, { address = \"198.19.255.9:80";
    let (code, stderr) = check(&config("\"eth0\", \"eth9\"", backends));
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        ":1:23: interface eth9 does not exist",
        ":6:26: service \"web\": backend 198.18.1.11 is reached through an interface xlb is not attached to (eth1)",
        ":6:58: service \"web\": no route to backend 198.19.255.9",
        ": 3 errors",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
}
