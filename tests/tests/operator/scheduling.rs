//! The schedulers beside round robin, with real servers: least connections (idle connections
//! held on one backend steer new ones to the others), source hashing (every connection of a
//! client to one backend) and source persistence (with a reset, also at native XDP).

use std::net::IpAddr;

use xlb_tests::client::http_echo_from;

use super::*;

/// The effective weight (hundredths) `status --json` gives each web backend.
fn effective_weights(xlb: &Xlb) -> Vec<u32> {
    backends_of(xlb)
        .into_iter()
        .filter(|(address, ..)| address.port() == 8080)
        .map(|(.., effective)| effective)
        .collect()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn least_connections_steers_new_connections_away_from_a_backend_holding_many() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup(r#"scheduler = "least-connections""#);
    // Six connections held open, idle, on b1 alone (b2 and b3 drained while they open).
    let (b2, b3) = (web_backend(1), web_backend(2));
    ok(&xlb, &["backend", "drain", "web", &b2]);
    ok(&xlb, &["backend", "drain", "web", &b3]);
    // One runtime throughout: the sessions' connections live as long as it does.
    let spread = lab
        .client
        .block_on(async {
            let mut sessions = Vec::new();
            for i in 0..6 {
                let mut session = Session::open(http_vip()).await?;
                assert_eq!(session.echo(payload(i, 200)).await?, "b1");
                sessions.push(session);
            }
            ok(&xlb, &["backend", "enable", "web", &b2]);
            ok(&xlb, &["backend", "enable", "web", &b3]);
            // Counted within a second: b1's share is 1 / (1 + 6) of the others'.
            let start = Instant::now();
            while effective_weights(&xlb) != [20, 140, 140] {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "{:?}\n{}",
                    effective_weights(&xlb),
                    ok(&xlb, &["status", "web"]),
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // A table of 1, 7 and 7 slots: of 12 new connections b1 takes at most one (round
            // robin: four).
            let mut names = Vec::new();
            for i in 0..12 {
                names.push(http_echo(http_vip(), payload(i, 300)).await?);
            }
            drop(sessions);
            anyhow::Ok(tally(&names))
        })
        .unwrap()
        .unwrap();
    assert!(spread.get("b1").copied().unwrap_or(0) <= 1, "{spread:?}");
    assert_eq!(spread.values().sum::<usize>(), 12, "{spread:?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn source_hashing_sends_every_connection_of_a_client_to_one_backend() {
    let Setup {
        lab,
        xlb: _xlb,
        _backends,
    } = setup(r#"scheduler = "source-hash""#);
    let clients: Vec<IpAddr> = (10..18)
        .map(|i| format!("198.18.0.{i}").parse().unwrap())
        .collect();
    for client in &clients {
        lab.client
            .ip(&format!("addr add {client}/24 dev eth0"))
            .unwrap();
    }
    let reached = lab
        .client
        .block_on(async {
            let mut reached = Vec::new();
            for (c, &client) in clients.iter().enumerate() {
                let mut names = Vec::new();
                for i in 0..4 {
                    let body = payload((c * 4 + i) as u64, 300);
                    names.push(http_echo_from(Some(client), http_vip(), body).await?);
                }
                reached.push(tally(&names));
            }
            anyhow::Ok(reached)
        })
        .unwrap()
        .unwrap();
    // Each client's four connections (four source ports) on one backend; the clients spread.
    assert!(reached.iter().all(|r| r.len() == 1), "{reached:?}");
    let backends: std::collections::BTreeSet<&String> =
        reached.iter().flat_map(|r| r.keys()).collect();
    assert!(backends.len() >= 2, "{reached:?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn persistence_keeps_a_clients_connections_on_one_backend_until_it_stops_taking_new_ones() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup(r#"persistence = "30s""#);
    let client: IpAddr = "198.18.0.2".parse().unwrap();
    let from_client = |n: u64| {
        lab.client
            .block_on(async move {
                let mut names = Vec::new();
                for i in 0..n {
                    names.push(http_echo_from(Some(client), http_vip(), payload(i, 300)).await?);
                }
                anyhow::Ok(tally(&names))
            })
            .unwrap()
            .unwrap()
    };
    // Six connections, one after another (round robin alone: two on each backend).
    let first = from_client(6);
    assert_eq!(first.len(), 1, "{first:?}");
    let (name, _) = first.into_iter().next().unwrap();
    let index = name[1..].parse::<usize>().unwrap() - 1;
    // `simulate` sees the persistence (and leaves it, and the round robin, as they were).
    for _ in 0..2 {
        let json = ok(&xlb, &["--json", "simulate", "web", "198.18.0.2:50000"]);
        let Response::Simulation(simulated) = serde_json::from_str(&json).unwrap() else {
            panic!("{json}")
        };
        assert_eq!(
            simulated.backend.map(|b| b.to_string()),
            Some(web_backend(index))
        );
    }
    // A simulation leaves no persistence to a client without one: simulated, 198.18.0.99
    // would get round robin's next backend; a real client takes that turn, and .99's real
    // connection then gets the turn after (with persistence left behind, the same backend).
    for other in ["198.18.0.98", "198.18.0.99"] {
        lab.client
            .ip(&format!("addr add {other}/24 dev eth0"))
            .unwrap();
    }
    let json = ok(&xlb, &["--json", "simulate", "web", "198.18.0.99:50000"]);
    let Response::Simulation(simulated) = serde_json::from_str(&json).unwrap() else {
        panic!("{json}")
    };
    let next = |client: &str| {
        let client: IpAddr = client.parse().unwrap();
        lab.client
            .block_on(http_echo_from(Some(client), http_vip(), payload(1, 300)))
            .unwrap()
            .unwrap()
    };
    let taken = next("198.18.0.98");
    assert_eq!(
        Some(format!(
            "{}:8080",
            backend_addr(taken[1..].parse::<usize>().unwrap() - 1)
        )),
        simulated.backend.map(|b| b.to_string())
    );
    assert_ne!(next("198.18.0.99"), taken);
    // Its backend drained: the client's persistence is forgotten, and it persists elsewhere.
    ok(&xlb, &["backend", "drain", "web", &web_backend(index)]);
    let after = from_client(6);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after.contains_key(&name), "{after:?}");
}

/// Source persistence and a reset, at native XDP on links prepared for it (the tests above run
/// at tc on links at their defaults): three connections of one client on one backend; reset,
/// each fails at its next request; the client's next connection reaches that backend again.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn persistence_and_reset_at_native_xdp() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup_with(Offloads::Prepared, "native", r#"persistence = "30s""#);
    assert!(xlb.output().contains("hook=native"), "{}", xlb.output());
    let (backends, failed, again) = lab
        .client
        .block_on(async {
            let mut sessions = Vec::new();
            for i in 0..3 {
                let mut session = Session::open(http_vip()).await?;
                let backend = session.echo(payload(i, 200)).await?;
                sessions.push((session, backend));
            }
            let backends: std::collections::BTreeSet<String> =
                sessions.iter().map(|(_, b)| b.clone()).collect();
            let name = backends.iter().next().unwrap().clone();
            let index = name[1..].parse::<usize>().unwrap() - 1;
            ok(&xlb, &["backend", "reset", "web", &web_backend(index)]);
            let mut failed = 0;
            for (mut session, _) in sessions {
                failed += usize::from(session.echo(payload(9, 200)).await.is_err());
            }
            let again = http_echo(http_vip(), payload(7, 100)).await?;
            anyhow::Ok((backends, failed, again == name))
        })
        .unwrap()
        .unwrap();
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(failed, 3);
    assert!(again, "the client still persists on its backend");
}
