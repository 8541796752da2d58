//! Operators' settings on backends: drain, disable, weight, enable; kept across reloads and
//! restarts.

use super::*;

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn an_operator_drains_disables_and_enables_backends() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    let b1 = web_backend(0);
    let done = ok(&xlb, &["backend", "drain", "web", &b1]);
    assert!(done.contains("drained"), "{done}");
    let status = ok(&xlb, &["status"]);
    assert!(status.contains("Draining"), "{status}");
    assert!(status.contains("    drained by the operator\n"), "{status}");
    assert!(
        status.contains("    operator: drained by root (uid 0) at "),
        "{status}"
    );
    assert_eq!(connections(&lab, 6).get("b1"), None);

    ok(&xlb, &["backend", "enable", "web", &b1]);
    assert_eq!(connections(&lab, 6).get("b1"), Some(&2));
    // Its activity is counted (the daemon reads the data plane's counts every second).
    let active = |xlb: &Xlb| {
        let status = ok(xlb, &["--json", "status", "web"]);
        let Ok(Response::Status(report)) = serde_json::from_str(&status) else {
            panic!("{status}")
        };
        let b = report.services[0]
            .backends
            .iter()
            .find(|b| b.address.to_string() == b1);
        b.unwrap().active_flows
    };
    let start = Instant::now();
    while active(&xlb) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b1's flows never counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    ok(&xlb, &["backend", "disable", "web", &b1]);
    let status = ok(&xlb, &["--json", "status"]);
    assert!(status.contains("\"state\": \"Down\""), "{status}");
    assert!(status.contains("disabled by the operator"), "{status}");
    // The operator's state apart from the checks', which still pass (as HAProxy's MAINT).
    assert!(status.contains("\"health\": \"up\""), "{status}");
    // Its flows purged, it shows no activity (not the epoch's count of flows now gone).
    assert_eq!(active(&xlb), 0, "{status}");
    assert_eq!(connections(&lab, 6).get("b1"), None);
    ok(&xlb, &["backend", "enable", "web", &b1]);

    // Unknown names and addresses are clear errors; the daemon is unharmed.
    let error = fails(&xlb, &["backend", "drain", "nope", &b1]);
    assert!(
        error.contains("no service named \"nope\" (services: web, dns)"),
        "{error}"
    );
    let error = fails(&xlb, &["backend", "drain", "web", "198.18.1.99:8080"]);
    assert!(
        error.contains("service \"web\" has no backend 198.18.1.99:8080"),
        "{error}"
    );
    assert_eq!(connections(&lab, 3).len(), 3);

    // A host taken out of every service at once: its address alone, `*` for the services.
    let host = backend_addr(0).to_string();
    let done = ok(&xlb, &["backend", "drain", "*", &host]);
    assert!(
        done.contains(&format!("web {host}:8080 drained"))
            && done.contains(&format!("dns {host}:5353 drained")),
        "{done}"
    );
    assert_eq!(connections(&lab, 6).get("b1"), None);
    ok(&xlb, &["backend", "enable", "*", &host]);
    assert_eq!(connections(&lab, 6).get("b1"), Some(&2));
    let error = fails(&xlb, &["backend", "drain", "*", "198.18.1.99"]);
    assert!(
        error.contains("no service has a backend 198.18.1.99"),
        "{error}"
    );
}

/// The operator setting of `backend` in `status --json`, as (admin, weight, by).
fn setting_of(xlb: &Xlb, backend: &str) -> Option<(Option<String>, Option<u32>, String)> {
    let response: Response = serde_json::from_str(&ok(xlb, &["--json", "status", "web"])).unwrap();
    let Response::Status(report) = response else {
        panic!("status answered {response:?}");
    };
    assert_eq!(report.services.len(), 1, "status web shows one service");
    let b = report.services[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == backend)
        .unwrap();
    b.operator.as_ref().map(|o| {
        let admin = o.admin.map(|a| format!("{a:?}").to_lowercase());
        (admin, o.weight, o.by.clone())
    })
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn operator_settings_survive_reloads_and_restarts_until_enable() {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup("");
    let (b1, b2) = (web_backend(0), web_backend(1));
    ok(&xlb, &["backend", "drain", "web", &b1]);
    let done = ok(&xlb, &["backend", "weight", "web", &b2, "3"]);
    assert!(done.contains("weight set to 3"), "{done}");
    let root = Some("root (uid 0)".to_owned());
    assert_eq!(
        setting_of(&xlb, &b1).map(|s| (s.0, s.2)),
        Some((Some("drain".into()), root.clone().unwrap()))
    );
    assert_eq!(setting_of(&xlb, &b2).map(|s| s.1), Some(Some(3)));
    let status = ok(&xlb, &["status", "web"]);
    assert!(
        !status.contains("dns udp"),
        "only the service asked for:\n{status}"
    );
    assert!(
        status.contains("operator: drained by root (uid 0) at 20"),
        "{status}"
    );
    assert!(
        status.contains("operator: weight 3 by root (uid 0)"),
        "{status}"
    );
    // b1 drained, b2 three times b3: a 4-slot table, walked twice.
    let expected = BTreeMap::from([("b2".to_owned(), 6), ("b3".to_owned(), 2)]);
    assert_eq!(connections(&lab, 8), expected);

    // Neither a reload (by the CLI or SIGHUP) nor a restart undoes them.
    ok(&xlb, &["reload"]);
    xlb.signal(libc::SIGHUP).unwrap();
    let start = Instant::now();
    while xlb.output().matches("reloaded /").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", xlb.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(connections(&lab, 8), expected, "after reloads");
    xlb.stop(Duration::from_secs(10)).unwrap();
    xlb.restart(&lab.balancer, &[]).unwrap();
    assert!(
        xlb.output().contains("operator setting kept"),
        "{}",
        xlb.output()
    );
    assert_eq!(connections(&lab, 8), expected, "after a restart");
    assert_eq!(setting_of(&xlb, &b2).map(|s| s.2), root);

    // Bad input changes nothing.
    let error = fails(&xlb, &["backend", "weight", "web", "198.18.1.99:8080", "2"]);
    assert!(
        error.contains("service \"web\" has no backend 198.18.1.99:8080 (backends: "),
        "{error}"
    );
    let mut stream = UnixStream::connect(&xlb.socket).unwrap();
    let request = format!(
        "{{\"command\":\"backend\",\"service\":\"web\",\"backend\":\"{b2}\",\"action\":{{\"weight\":300}}}}\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    assert!(
        answer.contains("weight 300 is out of range: 0 to 256"),
        "{answer}"
    );
    let (code, _, stderr) = xlb.cli(&["backend", "weight", "web", &b2, "-1"]).unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(setting_of(&xlb, &b2).map(|s| s.1), Some(Some(3)));

    // enable clears them, and the state file forgets them.
    ok(&xlb, &["backend", "enable", "web", &b1]);
    ok(&xlb, &["backend", "enable", "web", &b2]);
    assert_eq!(setting_of(&xlb, &b1), None);
    let balanced = BTreeMap::from([
        ("b1".to_owned(), 2),
        ("b2".to_owned(), 2),
        ("b3".to_owned(), 2),
    ]);
    assert_eq!(connections(&lab, 6), balanced);
    let file = std::fs::read_to_string(xlb.state_dir.join("operator.json")).unwrap();
    assert!(!file.contains("198.18"), "{file}");

    // A damaged state file stops a restart with what to do; --reset-operator-state starts
    // afresh.
    ok(&xlb, &["backend", "disable", "web", &b1]);
    xlb.stop(Duration::from_secs(10)).unwrap();
    std::fs::write(xlb.state_dir.join("operator.json"), "{ damaged").unwrap();
    let error = xlb.restart(&lab.balancer, &[]).unwrap_err().to_string();
    assert!(
        error.contains("is not an operator state file") && error.contains("--reset-operator-state"),
        "{error}"
    );
    xlb.restart(&lab.balancer, &["--reset-operator-state"])
        .unwrap();
    assert_eq!(setting_of(&xlb, &b1), None);
    assert_eq!(connections(&lab, 6), balanced);
}

/// The state and the health `status --json` gives `backend` of web, and whether its checks are
/// paused.
fn health_of(xlb: &Xlb, backend: &str) -> (String, String, bool) {
    let response: Response = serde_json::from_str(&ok(xlb, &["--json", "status", "web"])).unwrap();
    let Response::Status(report) = response else {
        panic!("status answered {response:?}");
    };
    let b = report.services[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == backend)
        .unwrap();
    let paused = b
        .operator
        .as_ref()
        .is_some_and(|o| o.checks_paused.is_some());
    (b.state.clone(), b.health.clone(), paused)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn paused_checks_keep_a_backend_as_it_was_until_resumed() {
    let Setup {
        lab: _lab,
        xlb,
        mut _backends,
    } = setup(
        r#"health = { check = "tcp", interval = "200ms", timeout = "100ms", rise = 2, fall = 2 }"#,
    );
    let b1 = web_backend(0);
    let done = ok(&xlb, &["backend", "pause-checks", "web", &b1]);
    assert!(done.contains("checks paused: it stays up"), "{done}");

    // Its server stops: no check runs to see it, so it stays Up (the operator's call).
    _backends[0].stop().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(health_of(&xlb, &b1), ("Up".into(), "up".into(), true));
    let status = ok(&xlb, &["status", "web"]);
    let line = status.lines().find(|l| l.contains(&b1)).unwrap();
    assert!(line.contains(" Up ") && line.contains(" off "), "{status}");
    assert!(status.contains("checks paused by the operator"), "{status}");
    assert!(
        status.contains("checks paused while up by root"),
        "{status}"
    );

    // Resumed, the checks see it gone within fall intervals.
    let done = ok(&xlb, &["backend", "resume-checks", "web", &b1]);
    assert!(done.contains("checks resumed"), "{done}");
    let start = Instant::now();
    while health_of(&xlb, &b1).0 != "Down" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            health_of(&xlb, &b1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health_of(&xlb, &b1), ("Down".into(), "down".into(), false));

    // A service without checks has none to pause; nothing changes. A host's backends in
    // every service: those with checks.
    let dns_b2 = format!("{}:{UDP_PORT}", backend_addr(1));
    let error = fails(&xlb, &["backend", "pause-checks", "dns", &dns_b2]);
    assert!(error.contains("has no health checks to pause"), "{error}");
    let host = backend_addr(1).to_string();
    let done = ok(&xlb, &["backend", "pause-checks", "*", &host]);
    assert_eq!(
        done.trim_end(),
        format!(
            "web {} checks paused: it stays up until `xlb backend resume-checks` (passive marks last their hold)",
            web_backend(1)
        )
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn reset_ends_a_backends_connections_and_it_keeps_serving() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    let outcome = lab
        .client
        .block_on(async {
            // Two idle connections on one backend, one on another.
            let mut sessions = Vec::new();
            for i in 0..3 {
                let mut session = Session::open(http_vip()).await?;
                let backend = session.echo(payload(i, 200)).await?;
                sessions.push((session, backend));
            }
            let b1 = web_backend(0);
            // One client's connection only: its address and port are those `flows` shows.
            let flows = ok(&xlb, &["--json", "flows", "web", "--backend", &b1]);
            let Response::Flows(flows) = serde_json::from_str(&flows).unwrap() else {
                panic!("{flows}")
            };
            let one = flows.flows[0].client.to_string();
            let said = ok(&xlb, &["backend", "reset", "web", &b1, "--client", &one]);
            assert!(
                said.contains(": 1 TCP connections end at their next packet"),
                "{said}"
            );
            let said = ok(&xlb, &["backend", "reset", "web", &b1]);
            assert!(
                said.contains("the backend keeps taking new flows"),
                "{said}"
            );
            // Each connection of b1 fails at its next request; b2's continues.
            let mut ended = Vec::new();
            for (mut session, backend) in sessions {
                let answer = session.echo(payload(9, 200)).await;
                ended.push((backend, answer.is_err()));
            }
            // b1 takes new connections.
            let again = http_echo(http_vip(), payload(7, 100)).await?;
            anyhow::Ok((ended, again))
        })
        .unwrap()
        .unwrap();
    let (ended, _) = outcome;
    assert!(
        ended
            .iter()
            .all(|(backend, failed)| *failed == (backend == "b1")),
        "{ended:?}"
    );
    assert!(
        ended.iter().any(|(backend, _)| backend == "b1"),
        "{ended:?}"
    );
    let error = fails(
        &xlb,
        &[
            "backend",
            "reset",
            "web",
            &web_backend(0),
            "--client",
            "198.18.0.99",
        ],
    );
    assert!(error.contains("no connection of that client"), "{error}");
    let status = ok(&xlb, &["status", "web"]);
    assert!(!status.contains("Down"), "{status}");
}
