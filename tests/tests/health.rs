//! Tier 3: health and load checks against real servers in network namespaces. Backends are
//! checked every 200 ms (rise 2, fall 2) and asked for their load every 200 ms. Needs root:
//! run with `cargo xtask test`.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use xlb_tests::{
    client::{Connect, http_echo, payload, start_download, try_connect},
    netns::Netns,
    process::Process,
    scenario::{
        AGENT_PORT, Backend, TCP_SERVICE_PORT, UDP_SERVICE_PORT, Xlb, balancer_config_with,
        start_backends, start_xlb, tally,
    },
    topology::{Lab, VIP, Wiring},
};

const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;

fn tcp_keys() -> String {
    format!(
        r#"health = {{ check = "http", path = "/", interval = "200ms", timeout = "100ms", rise = {RISE}, fall = {FALL} }}
load = {{ agent_port = {AGENT_PORT}, interval = "200ms", timeout = "100ms", overload_below = "20%" }}"#
    )
}

fn udp_keys() -> String {
    format!(
        r#"health = {{ check = "udp", send = "ping", interval = "200ms", timeout = "100ms", rise = {RISE}, fall = {FALL} }}"#
    )
}

struct Setup {
    lab: Lab,
    backends: Vec<Backend>,
    xlb: Xlb,
}

fn setup() -> Setup {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let backends = start_backends(&lab).unwrap();
    let config = balancer_config_with(&lab, "auto", &tcp_keys(), &udp_keys());
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    Setup { lab, backends, xlb }
}

/// Runs `future` in namespace `ns` (so its sockets live there).
fn block_on_in<F>(ns: &Netns, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    ns.block_on(future).unwrap()
}

fn http_vip() -> SocketAddr {
    SocketAddr::from((VIP, TCP_SERVICE_PORT))
}

/// `n` HTTP connections one after the other; the backend of each.
async fn connections(n: usize) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        names.push(http_echo(http_vip(), payload(i as u64, 2_000)).await?);
    }
    Ok(names)
}

/// Whether xlb has logged that `backend` changed to `state`.
fn changed_to(xlb: &Process, backend: &str, state: &str) -> bool {
    let needle = format!("state={state}");
    xlb.output()
        .lines()
        .any(|l| l.contains("backend state changed") && l.contains(backend) && l.contains(&needle))
}

/// Waits until xlb logs that `backend` changed to `state`.
fn wait_for_state(xlb: &Process, backend: &str, state: &str, limit: Duration) {
    let start = Instant::now();
    while !changed_to(xlb, backend, state) {
        assert!(
            start.elapsed() < limit,
            "xlb did not report {backend} {state} within {limit:?}:\n{}",
            xlb.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn address_of(lab: &Lab, index: usize) -> String {
    lab.backend_endpoint(index, xlb_tests::scenario::HTTP_PORT)
        .to_string()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_stopped_backend_leaves_within_fall_checks_and_returns_after_rise() {
    let Setup {
        lab,
        mut backends,
        xlb,
    } = setup();
    let detection = INTERVAL * FALL + INTERVAL;
    let recovery = INTERVAL * RISE + INTERVAL;
    block_on_in(&lab.client, async {
        let warm_up = tally(&connections(6).await.unwrap());
        assert_eq!(
            warm_up,
            BTreeMap::from([("b1".into(), 2), ("b2".into(), 2), ("b3".into(), 2)])
        );

        backends[1].stop().unwrap();
        let stopped = Instant::now();
        let mut outcomes = Vec::new();
        while stopped.elapsed() < detection + Duration::from_secs(1) {
            let started = stopped.elapsed();
            outcomes.push((started, http_echo(http_vip(), payload(1, 2_000)).await));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (started, outcome) in &outcomes {
            match outcome {
                Ok(name) => assert_ne!(name, "b2", "b2 is stopped"),
                // Only connections that xlb sent to b2 before it noticed may fail.
                Err(error) => assert!(
                    *started < detection,
                    "a connection started {started:?} after b2 stopped failed (limit {detection:?}): {error:#}"
                ),
            }
        }
        let late = outcomes.iter().filter(|(s, _)| *s >= detection).count();
        assert!(late >= 10, "only {late} connections after detection");

        backends[1].start(&lab).unwrap();
        let restarted = Instant::now();
        loop {
            let name = http_echo(http_vip(), payload(2, 2_000)).await.unwrap();
            if name == "b2" {
                break;
            }
            assert!(
                restarted.elapsed() < recovery + INTERVAL,
                "b2 did not come back within {recovery:?} (+ one interval)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // The state is logged once the tables are published, so a connection can reach b2 an
    // instant before the line is read: wait for it a little.
    let b2 = address_of(&lab, 1);
    wait_for_state(&xlb, &b2, "Down", Duration::from_secs(1));
    wait_for_state(&xlb, &b2, "Up", Duration::from_secs(1));
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_draining_backend_finishes_its_transfer_and_gets_no_new_flows() {
    let Setup { lab, backends, xlb } = setup();
    block_on_in(&lab.client, async {
        // The first flow goes to b1: 1.5 MB spread over 1.5 s.
        let download = start_download(http_vip(), 1_500_000, 1_500).await.unwrap();
        assert_eq!(download.backend, "b1");
        backends[0].set_agent_reply("drain").unwrap();
        wait_for_state(
            &xlb,
            &address_of(&lab, 0),
            "Draining",
            Duration::from_secs(2),
        );

        let during = tally(&connections(12).await.unwrap());
        assert_eq!(
            during,
            BTreeMap::from([("b2".into(), 6), ("b3".into(), 6)]),
            "no new flow to b1"
        );
        assert_eq!(
            download.finish().await.unwrap(),
            1_500_000,
            "the established transfer completes"
        );

        backends[0].set_agent_reply("ready").unwrap();
        wait_for_state(&xlb, &address_of(&lab, 0), "Up", Duration::from_secs(2));
        let after = tally(&connections(6).await.unwrap());
        assert_eq!(
            after.get("b1"),
            Some(&2),
            "b1 takes new flows again: {after:?}"
        );
    });
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_overloaded_backend_gets_no_new_flows_while_others_have_room() {
    let Setup { lab, backends, xlb } = setup();
    block_on_in(&lab.client, async {
        let download = start_download(http_vip(), 1_000_000, 1_500).await.unwrap();
        assert_eq!(download.backend, "b1");
        backends[0].set_agent_reply("10%").unwrap();
        wait_for_state(
            &xlb,
            &address_of(&lab, 0),
            "Overloaded",
            Duration::from_secs(2),
        );

        let during = tally(&connections(12).await.unwrap());
        assert_eq!(
            during.get("b1"),
            None,
            "no new flow to the overloaded b1: {during:?}"
        );
        assert_eq!(download.finish().await.unwrap(), 1_000_000);

        // When every backend is overloaded, they all share the new flows again.
        for backend in &backends[1..] {
            backend.set_agent_reply("10%").unwrap();
        }
        for i in 1..3 {
            wait_for_state(
                &xlb,
                &address_of(&lab, i),
                "Overloaded",
                Duration::from_secs(2),
            );
        }
        let all_busy = tally(&connections(6).await.unwrap());
        assert_eq!(
            all_busy.len(),
            3,
            "all three take flows when none has room: {all_busy:?}"
        );

        // 25% is above the threshold but within the hysteresis margin: still Overloaded.
        backends[0].set_agent_reply("25%").unwrap();
        tokio::time::sleep(INTERVAL * 3).await;
        assert!(
            !changed_to(&xlb, &address_of(&lab, 0), "Up"),
            "no flapping within the margin"
        );
        backends[0].set_agent_reply("100%").unwrap();
        wait_for_state(&xlb, &address_of(&lab, 0), "Up", Duration::from_secs(2));
        let after = tally(&connections(6).await.unwrap());
        assert_eq!(after.get("b1"), Some(&6), "only b1 has room now: {after:?}");
    });
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn with_every_backend_down_new_connections_are_dropped_not_sent_to_a_dead_host() {
    let Setup {
        lab,
        mut backends,
        mut xlb,
    } = setup();
    for backend in &mut backends {
        backend.stop().unwrap();
    }
    for i in 0..3 {
        wait_for_state(&xlb, &address_of(&lab, i), "Down", Duration::from_secs(2));
    }
    let attempts = block_on_in(&lab.client, async {
        let mut attempts = Vec::new();
        for _ in 0..3 {
            attempts.push(
                try_connect(http_vip(), Duration::from_millis(500))
                    .await
                    .unwrap(),
            );
        }
        attempts
    });
    // A SYN sent to a backend host whose server is stopped would be answered with a reset
    // (Refused); xlb drops it instead, so the client times out.
    assert_eq!(attempts, [Connect::TimedOut; 3]);
    xlb.stop(Duration::from_secs(10)).unwrap();
    let log = xlb.output();
    let web = log
        .lines()
        .find(|l| l.contains("service counters") && l.contains("service=\"web\""))
        .unwrap();
    assert!(
        !web.contains("no_backend=0"),
        "dropped SYNs are counted: {web}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_udp_flow_moves_to_a_live_backend_when_its_backend_goes_down() {
    let Setup {
        lab,
        mut backends,
        xlb,
    } = setup();
    let detection = INTERVAL * FALL + INTERVAL;
    block_on_in(&lab.client, async {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
        socket
            .connect(SocketAddr::from((VIP, UDP_SERVICE_PORT)))
            .await
            .unwrap();
        let mut buffer = [0u8; 2048];
        socket.send(b"which backend?").await.unwrap();
        let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no UDP answer; xlb:\n{}", xlb.output()))
            .unwrap();
        let first = String::from_utf8_lossy(&buffer[..len])
            .lines()
            .next()
            .unwrap()
            .to_owned();
        let index = first[1..].parse::<usize>().unwrap() - 1;
        backends[index].stop().unwrap();
        let stopped = Instant::now();

        // The same socket, so the same 5-tuple: once the flow is purged it is placed again.
        let moved_to = loop {
            assert!(
                stopped.elapsed() < detection + Duration::from_secs(2),
                "the flow never moved"
            );
            // Sending may fail while ICMP errors from the stopped server arrive.
            let _ = socket.send(b"which backend?").await;
            // An error is ICMP port unreachable from the stopped server; a timeout, no answer yet.
            let answer = tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buffer));
            if let Ok(Ok(len)) = answer.await {
                let reply = String::from_utf8_lossy(&buffer[..len]);
                let name = reply.lines().next().unwrap().to_owned();
                if name != first {
                    break name;
                }
            }
        };
        assert_ne!(moved_to, first);
        assert!(
            stopped.elapsed() < detection + Duration::from_secs(1),
            "moved after {:?}",
            stopped.elapsed()
        );
    });
}

/// Runs `xlb status --check` against `xlb`: its exit code and line.
fn probe(xlb: &Xlb) -> (i32, String) {
    let (code, stdout, _) = xlb.cli(&["status", "--check"]).unwrap();
    (code, stdout.trim().to_owned())
}

/// A service whose every backend stops is an outage, and xlb says so where operators look: the
/// backends' Down lines at WARN, one ERROR line for the service, the service line of
/// `xlb status`, and `xlb status --check` (CRITICAL, exit 2; WARNING, exit 1, while some of its
/// backends are out); when a backend is back, a WARN line says the service takes new flows
/// again, and the probe is OK (exit 0).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_service_that_loses_every_backend_says_so_at_error_and_to_probes() {
    let Setup {
        lab,
        mut backends,
        xlb,
    } = setup();
    let (code, line) = probe(&xlb);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("XLB OK - 2 services, all 6 backends take new flows |"),
        "{line}"
    );

    backends[0].stop().unwrap();
    wait_for_state(&xlb, &address_of(&lab, 0), "Down", Duration::from_secs(3));
    // Its UDP service's check runs on its own schedule: both are out within a few seconds.
    let start = Instant::now();
    let (code, line) = loop {
        let (code, line) = probe(&xlb);
        if line.contains("dns 2 of 3") || start.elapsed() > Duration::from_secs(5) {
            break (code, line);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("web 2 of 3") && line.contains("dns 2 of 3"),
        "{line}"
    );

    for backend in &mut backends[1..] {
        backend.stop().unwrap();
    }
    let outage = "service has no backend that can take new flows";
    let start = Instant::now();
    while !xlb
        .output()
        .lines()
        .any(|l| l.contains(outage) && l.contains("service=\"web\""))
    {
        assert!(start.elapsed() < Duration::from_secs(3), "{}", xlb.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = xlb.output();
    let lines = |needle: &str| -> Vec<String> {
        output
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    };
    let outages = lines(outage);
    assert!(outages.iter().all(|l| l.contains("ERROR")), "{outages:?}");
    let downs = lines("backend state changed");
    assert!(
        downs
            .iter()
            .filter(|l| l.contains("state=Down"))
            .all(|l| l.contains("WARN")),
        "{downs:?}"
    );
    let (code, line) = probe(&xlb);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("XLB CRITICAL - no backend can take new flows: web"),
        "{line}"
    );
    let (_, status, _) = xlb.cli(&["status", "web"]).unwrap();
    assert!(
        status
            .lines()
            .find(|l| l.starts_with("web tcp"))
            .unwrap()
            .ends_with("NO BACKEND CAN TAKE NEW FLOWS"),
        "{status}"
    );

    backends[2].start(&lab).unwrap();
    let recovered = "service can take new flows again";
    let start = Instant::now();
    while !xlb
        .output()
        .lines()
        .any(|l| l.contains(recovered) && l.contains("service=\"web\""))
    {
        assert!(start.elapsed() < Duration::from_secs(3), "{}", xlb.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        xlb.output()
            .lines()
            .filter(|l| l.contains(recovered))
            .all(|l| l.contains("WARN")),
        "{}",
        xlb.output()
    );
    for backend in &mut backends[..2] {
        backend.start(&lab).unwrap();
    }
    let start = Instant::now();
    while probe(&xlb).0 != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            probe(&xlb)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(xlb);
    let (code, line) = probe_without_daemon();
    assert_eq!(
        (code, line.starts_with("XLB UNKNOWN - ")),
        (3, true),
        "{line}"
    );
}

/// `xlb status --check` with no daemon at its socket.
fn probe_without_daemon() -> (i32, String) {
    let output = std::process::Command::new(xlb_tests::process::binary("xlb").unwrap())
        .args(["--socket", "/nonexistent/xlb.sock", "status", "--check"])
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}
