//! A backend removed from the config drains: its connections (TCP and UDP) go on, it takes no
//! new flow, and it is released when they end or when the service's `drain_timeout` passes.

use tokio::net::UdpSocket;
use xlb::report::{LeavingBackendReport, StatusReport};
use xlb_tests::{
    client::{Session, udp_echo, udp_socket},
    scenario::{HTTP_PORT, UDP_PORT},
};

use super::*;

fn status(xlb: &Xlb) -> StatusReport {
    let response: Response = serde_json::from_str(&ok(xlb, &["--json", "status"])).unwrap();
    let Response::Status(report) = response else {
        panic!("status answered {response:?}");
    };
    report
}

/// The leaving backends of service `name`.
fn leaving(xlb: &Xlb, name: &str) -> Vec<LeavingBackendReport> {
    let report = status(xlb);
    let service = report.services.iter().find(|s| s.name == name).unwrap();
    service.leaving.clone()
}

/// Waits until `done` holds, at most `limit`; returns how long it took.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// TCP connections, each with the backend it was placed on.
type Sessions = Vec<(Session, String)>;

/// Echoes once on every session: each must still reach its backend, every byte intact.
async fn still_on_their_backends(sessions: &mut Sessions, round: u64) {
    for (i, (session, backend)) in sessions.iter_mut().enumerate() {
        let body = payload(round * 100 + i as u64, 2_000);
        let name = session.echo(body).await.unwrap();
        assert_eq!(&name, backend, "connection {i} in round {round}");
    }
}

/// The backend of each UDP flow (three datagrams each, every reply checked).
async fn udp_backends(sockets: &[UdpSocket], round: u64) -> Vec<String> {
    let mut names = Vec::new();
    for (i, socket) in sockets.iter().enumerate() {
        let body = payload(round * 100 + i as u64, 200);
        names.push(udp_echo(socket, &body, 3).await.unwrap());
    }
    names
}

/// `text` without backend `i` of the service on `port`.
fn without(text: &str, i: usize, port: u16) -> String {
    let backend = format!(", {{ address = \"{}:{port}\" }}", backend_addr(i));
    assert!(text.contains(&backend), "{backend} in {text}");
    text.replacen(&backend, "", 1)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_removed_backend_keeps_its_connections_until_they_end_or_its_time_is_up() {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, Offloads::Default).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let drain = "drain_timeout = \"6s\"";
    let config = format!(
        "tcp_closing_timeout = \"2s\"\n{}",
        balancer_config_with(&lab, "auto", drain, drain)
    );
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    let original = std::fs::read_to_string(&xlb.config_path).unwrap();
    let without_b3 = without(&without(&original, 2, HTTP_PORT), 2, UDP_PORT);
    let udp_vip = SocketAddr::from((VIP, UDP_SERVICE_PORT));
    lab.client
        .block_on(async {
            // Six TCP connections and three UDP flows, spread over b1, b2 and b3.
            let mut sessions: Sessions = Vec::new();
            for i in 0..6 {
                let mut session = Session::open(http_vip()).await.unwrap();
                let backend = session.echo(payload(i, 100)).await.unwrap();
                sessions.push((session, backend));
            }
            let placed: Vec<String> = sessions.iter().map(|s| s.1.clone()).collect();
            assert_eq!(tally(&placed).get("b3"), Some(&2), "{placed:?}");
            let mut sockets = Vec::new();
            for _ in 0..3 {
                sockets.push(udp_socket(udp_vip).await.unwrap());
            }
            let udp_placed = udp_backends(&sockets, 0).await;
            assert_eq!(tally(&udp_placed).get("b3"), Some(&1), "{udp_placed:?}");

            // b3 leaves both services: nothing is purged, every connection goes on where it
            // was, and status says b3 drains, with its connections.
            std::fs::write(&xlb.config_path, &without_b3).unwrap();
            let done = ok(&xlb, &["reload"]);
            let removed_at = Instant::now();
            assert!(done.contains("2 removed (2 draining)"), "{done}");
            assert!(done.contains(" 0 flows purged"), "{done}");
            still_on_their_backends(&mut sessions, 1).await;
            assert_eq!(udp_backends(&sockets, 1).await, udp_placed);
            let web = leaving(&xlb, "web");
            assert_eq!(web.len(), 1, "{web:?}");
            assert_eq!(web[0].address.to_string(), web_backend(2));
            assert_eq!(web[0].connections.established, 2, "{web:?}");
            assert_eq!(leaving(&xlb, "dns")[0].connections.udp, 1);
            let text = ok(&xlb, &["status", "web"]);
            assert!(text.contains("draining, 2 connections; cut in"), "{text}");
            // No new flow reaches it.
            let mut fresh = Vec::new();
            for i in 0..6 {
                fresh.push(http_echo(http_vip(), payload(50 + i, 500)).await.unwrap());
            }
            assert_eq!(tally(&fresh).get("b3"), None, "{fresh:?}");

            // One of b3's connections ends; the other is still open when the 6 s are up: it
            // is cut, and the UDP flow too (its next datagram starts a new flow elsewhere).
            let b3 = sessions.iter().position(|s| s.1 == "b3").unwrap();
            drop(sessions.remove(b3));
            until(Duration::from_secs(12), "b3 released from web", || {
                leaving(&xlb, "web").is_empty()
            })
            .await;
            let took = removed_at.elapsed();
            assert!(took >= Duration::from_secs(6), "released after {took:?}");
            let output = xlb.output();
            assert!(
                output.contains("drain_timeout of a backend removed from the config passed")
                    && output.contains("connections=1"),
                "{output}"
            );
            let (mut cut, _) = sessions.remove(sessions.iter().position(|s| s.1 == "b3").unwrap());
            assert!(
                cut.echo(payload(999, 100)).await.is_err(),
                "b3's connection is cut"
            );
            still_on_their_backends(&mut sessions, 2).await;
            until(Duration::from_secs(8), "b3 released from dns", || {
                leaving(&xlb, "dns").is_empty()
            })
            .await;
            let b3_flow = udp_placed.iter().position(|b| b == "b3").unwrap();
            let now = udp_echo(&sockets[b3_flow], &payload(7, 200), 3)
                .await
                .unwrap();
            assert_ne!(now, "b3", "the UDP flow was purged with b3");

            // b2 leaves too, with a long drain: released as soon as its connections end.
            let long =
                without(&without_b3, 1, HTTP_PORT).replacen(drain, "drain_timeout = \"60s\"", 1);
            std::fs::write(&xlb.config_path, &long).unwrap();
            assert!(ok(&xlb, &["reload"]).contains("1 removed (1 draining)"));
            assert_eq!(leaving(&xlb, "web")[0].connections.established, 2);
            assert_eq!(close_those_on(&mut sessions, "b2"), 2);
            let took = until(
                Duration::from_secs(20),
                "b2 released once its connections ended",
                || leaving(&xlb, "web").is_empty(),
            )
            .await;
            let output = xlb.output();
            assert!(
                output.contains("backend removed from the config has no connection left: released"),
                "{output}"
            );
            still_on_their_backends(&mut sessions, 3).await;
            assert_eq!(sessions.len(), 2, "b1's two");
            println!("b2 released {took:?} after its connections closed (drain_timeout 60s)");
        })
        .unwrap();
}

/// Closes the sessions on `backend`; returns how many.
fn close_those_on(sessions: &mut Sessions, backend: &str) -> usize {
    let before = sessions.len();
    sessions.retain(|(_, on)| on != backend);
    before - sessions.len()
}
