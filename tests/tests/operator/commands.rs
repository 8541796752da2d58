//! Reading a running xlb: status, stats, top, flows, simulate; and bad input.

use super::*;

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn status_stats_and_top_show_the_services() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    assert_eq!(connections(&lab, 6).len(), 3);

    let status = ok(&xlb, &["status"]);
    assert!(status.contains("web tcp 198.18.100.1:80"), "{status}");
    assert!(status.contains("dns udp 198.18.100.1:53"), "{status}");
    for i in 0..3 {
        let line = status
            .lines()
            .find(|l| l.contains(&web_backend(i)))
            .unwrap();
        assert!(line.contains(" Up "), "{line}");
    }
    for line in status.lines() {
        assert!(line.chars().count() <= 80, "wider than 80 columns: {line}");
    }

    let json = ok(&xlb, &["--json", "status"]);
    let Response::Status(report) = serde_json::from_str(&json).unwrap() else {
        panic!("{json}")
    };
    let web = &report.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.backends.len(), 3);
    assert!(
        web.backends
            .iter()
            .all(|b| b.state == "Up" && b.weight == 1 && b.effective_weight == 100)
    );
    // Active flows are counted by the data plane, read by the daemon every second.
    let start = Instant::now();
    loop {
        let Response::Status(report) =
            serde_json::from_str(&ok(&xlb, &["--json", "status"])).unwrap()
        else {
            panic!("not a status")
        };
        let active: u64 = report.services[0]
            .backends
            .iter()
            .map(|b| b.active_flows)
            .sum();
        if active == 6 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{active} active flows, not 6"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let stats = ok(&xlb, &["--json", "stats"]);
    let Response::Stats(stats) = serde_json::from_str(&stats).unwrap() else {
        panic!("{stats}")
    };
    assert_eq!(stats.services[0].counters.new_flows, 6);
    assert!(
        stats.services[0]
            .backends
            .iter()
            .all(|b| b.counters.new_flows == 2 && b.counters.packets_to_client > 0)
    );
    assert!(ok(&xlb, &["stats"]).contains("PKTS IN"));
    // One service, as `status`, `flows` and `trace` take it.
    let web = ok(&xlb, &["stats", "web"]);
    assert!(
        web.starts_with("web\n") && !web.contains("\ndns\n"),
        "{web}"
    );
    let error = fails(&xlb, &["stats", "nope"]);
    assert!(error.contains("no service named \"nope\""), "{error}");

    // Zeroed: the answer has the counters up to now, and stats count from then on.
    let stats_json = |args: &[&str]| {
        let json = ok(&xlb, args);
        let Response::Stats(stats) = serde_json::from_str(&json).unwrap() else {
            panic!("{json}")
        };
        stats
    };
    let zeroed = stats_json(&["--json", "stats", "--zero"]);
    assert!(zeroed.zeroed_now && zeroed.since.is_none());
    assert_eq!(zeroed.services[0].counters.new_flows, 6);
    assert_eq!(
        stats_json(&["--json", "stats"]).services[0]
            .counters
            .new_flows,
        0
    );
    assert_eq!(connections(&lab, 3).len(), 3);
    let since = stats_json(&["--json", "stats", "web"]);
    assert_eq!(since.services[0].counters.new_flows, 3);
    assert_eq!(since.since.unwrap().by, "root (uid 0)");
    let text = ok(&xlb, &["stats"]);
    assert!(
        text.starts_with("counters since zeroed by root (uid 0) at 20"),
        "{text}"
    );
    let (code, _, stderr) = xlb.cli(&["stats", "web", "--zero"]).unwrap();
    assert_eq!(code, 2, "{stderr}");

    let top = ok(&xlb, &["top", "--iterations", "2", "--interval", "0.2"]);
    assert_eq!(top.matches("xlb top").count(), 2, "{top}");
    let top = ok(&xlb, &["top", "dns", "--iterations", "1"]);
    assert!(
        top.contains("\ndns udp ") && !top.contains("\nweb tcp "),
        "{top}"
    );
    // Each backend's state, and apart from it what its checks say.
    assert!(top.contains("BACKEND") && top.contains(" CHK "), "{top}");
    // A client prefix of the other family matches nothing: an error, as in `trace`.
    let error = fails(&xlb, &["flows", "web", "--client", "fd00::/64"]);
    assert!(
        error.contains("client prefix fd00::/64 is IPv6 and service \"web\" is IPv4"),
        "{error}"
    );
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn simulate_tells_which_backend_a_new_flow_would_get() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    let first = ok(&xlb, &["simulate", "web", "198.18.0.2:40000"]);
    let second = ok(&xlb, &["simulate", "web", "198.18.0.2:40000"]);
    assert!(
        first.contains("a new flow would go to 198.18.1.1") && !first.contains("redirect"),
        "{first}"
    );
    // A simulation gives back the turn of the round robin it took: it changes nothing it
    // observes, and the next real new flow goes where it said.
    assert_eq!(first, second);
    let simulated = first.trim_end().rsplit('.').next().unwrap();
    let backend = format!(
        "b{}",
        simulated.split(':').next().unwrap().parse::<u32>().unwrap() - 10
    );
    assert_eq!(connections(&lab, 1).get(&backend), Some(&1), "{first}");
    // A bare address is simulated from port 32768.
    let bare = ok(&xlb, &["simulate", "web", "198.18.0.2"]);
    assert!(bare.starts_with("web from 198.18.0.2:32768: "), "{bare}");
    let json = ok(&xlb, &["--json", "simulate", "dns", "198.18.0.2:5000"]);
    let Response::Simulation(report) = serde_json::from_str(&json).unwrap() else {
        panic!("{json}")
    };
    assert_eq!(report.verdict, "redirect");
    assert!(!report.existing_flow);
    assert_eq!(report.backend.unwrap().port(), 5353);
    // No flow is left behind.
    let json = ok(&xlb, &["--json", "status"]);
    let Response::Status(status) = serde_json::from_str(&json).unwrap() else {
        panic!()
    };
    assert_eq!(
        status.services[0]
            .backends
            .iter()
            .map(|b| b.active_flows)
            .sum::<u64>(),
        0
    );
    let error = fails(&xlb, &["simulate", "nope", "198.18.0.2:1"]);
    assert!(error.contains("no service named \"nope\""), "{error}");
    drop(lab);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn bad_input_gets_clear_errors_and_the_daemon_is_unharmed() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    // Malformed requests on the socket.
    for garbage in [
        "hello\n",
        "{\"command\":\"status\",\"x\":1}\n",
        "{\"command\":\"backend\"}\n",
        "\n",
    ] {
        let mut stream = UnixStream::connect(&xlb.socket).unwrap();
        stream.write_all(garbage.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        assert!(
            answer.contains("malformed request"),
            "{garbage:?} -> {answer}"
        );
    }
    // Another user is refused (the socket is root's, mode 0600).
    let other = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary("xlb").unwrap())
        .arg("--socket")
        .arg(&xlb.socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{other:?}"
    );

    // A second daemon on the same socket, and one on the same interfaces.
    let config = std::fs::read_to_string(&xlb.config_path).unwrap();
    let mut same_socket = lab.balancer.command_network_only(binary("xlb").unwrap());
    same_socket
        .arg("--socket")
        .arg(&xlb.socket)
        .arg("run")
        .arg("--config")
        .arg(&xlb.config_path);
    let output = same_socket.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another xlb is running: it answers on"),
        "{stderr}"
    );

    // The same pins from a socket in another directory (and another state directory):
    // refused too.
    let other_dir = std::env::temp_dir().join(format!("xlb-other-{}", std::process::id()));
    let other_socket = other_dir.join("xlb.sock");
    let mut same_pins = lab.balancer.command_network_only(binary("xlb").unwrap());
    same_pins
        .arg("--socket")
        .arg(&other_socket)
        .arg("run")
        .arg("--config")
        .arg(&xlb.config_path)
        .arg("--state-dir")
        .arg(xlb.state_dir.with_extension("other"));
    let mut second = xlb_tests::process::Process::spawn("xlb", same_pins).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.exited().unwrap() {
        if Instant::now() > deadline {
            let _ = second.signal(libc::SIGKILL);
            panic!(
                "a second daemon runs on the same pins:\n{}",
                second.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        second.output().contains(&format!(
            "another xlb is using the pins in {}",
            xlb.pin_dir.display()
        )),
        "{}",
        second.output()
    );
    let _ = std::fs::remove_dir_all(&other_dir);

    let other_pins = config.replace(&format!("pin_path = \"{}\"", xlb.pin_dir.display()), "");
    let mut second = match start_xlb(&lab.balancer, &other_pins) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a second daemon attached to the same interfaces"),
    };
    second.truncate(4_000);
    assert!(second.contains("attaching to interface eth0"), "{second}");
    assert!(
        second.contains("another xlb is attached to eth0 (tc program"),
        "{second}"
    );

    assert_eq!(
        connections(&lab, 3).len(),
        3,
        "the first daemon still balances"
    );
    assert!(ok(&xlb, &["status"]).contains("web tcp"));
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn flows_lists_what_the_flow_tables_hold() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    connections(&lab, 3);
    let listed = std::thread::scope(|scope| {
        // A download of 1 MB over 2 s, listed while it runs.
        let client = &lab.client;
        let download = scope.spawn(|| {
            client
                .block_on(async {
                    let download = start_download(http_vip(), 1_000_000, 2_000).await?;
                    let backend = download.backend.clone();
                    download.finish().await.map(|_| backend)
                })
                .unwrap()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(700));
        let json = ok(&xlb, &["--json", "flows", "web"]);
        let text = ok(&xlb, &["flows"]);
        let filtered = ok(
            &xlb,
            &[
                "--json",
                "flows",
                "--client",
                "198.18.0.0/24",
                "--limit",
                "1",
            ],
        );
        let elsewhere = ok(&xlb, &["--json", "flows", "--client", "198.18.99.0/24"]);
        (download.join().unwrap(), json, text, filtered, elsewhere)
    });
    let (backend, json, text, filtered, elsewhere) = listed;
    let report = |json: &str| match serde_json::from_str::<Response>(json).unwrap() {
        Response::Flows(report) => report,
        other => panic!("flows answered {other:?}"),
    };
    let all = report(&json);
    assert_eq!(all.matched, 4, "{json}");
    let states: Vec<&str> = all.flows.iter().map(|f| f.state.as_str()).collect();
    assert_eq!(
        states.iter().filter(|s| **s == "closing").count(),
        3,
        "{json}"
    );
    let running = all.flows.iter().find(|f| f.state == "established").unwrap();
    assert_eq!(running.client.ip(), CLIENT);
    assert_eq!(running.vip, http_vip());
    let b = backend.trim_start_matches('b').parse::<usize>().unwrap() - 1;
    assert_eq!(running.backend.to_string(), web_backend(b));
    assert!(running.age_seconds.unwrap() < 5.0, "{json}");
    assert!(running.idle_seconds <= 1.5, "{json}");
    assert!(text.starts_with("SERVICE PROTO CLIENT"), "{text}");
    assert!(text.contains("4 of 4 matching flows shown"), "{text}");
    let filtered = report(&filtered);
    assert_eq!((filtered.flows.len(), filtered.matched), (1, 4));
    assert_eq!(report(&elsewhere).matched, 0);

    // Bad filters are errors that name what is wrong.
    let error = fails(&xlb, &["flows", "nope"]);
    assert!(error.contains("no service named \"nope\""), "{error}");
    let error = fails(&xlb, &["flows", "--backend", "198.18.1.99:8080"]);
    assert!(error.contains("no backend 198.18.1.99:8080"), "{error}");
    let (code, _, error) = xlb.cli(&["flows", "--client", "198.18.0.0/33"]).unwrap();
    assert_eq!(code, 2);
    assert!(error.contains("198.18.0.0/33"), "{error}");
}

/// `status` counts the connections in the flow tables per backend: idle ones count as open as
/// long as they stand, and once closed they count apart (closing), not as open.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn status_counts_open_connections_idle_ones_included() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("");
    let connections = |xlb: &Xlb| -> (u64, u64) {
        let response: Response =
            serde_json::from_str(&ok(xlb, &["--json", "status", "web"])).unwrap();
        let Response::Status(report) = response else {
            panic!("status answered {response:?}");
        };
        let backends = &report.services[0].backends;
        (
            backends.iter().map(|b| b.connections.open()).sum(),
            backends.iter().map(|b| b.connections.closing).sum(),
        )
    };
    let idle = lab
        .client
        .block_on(async {
            let mut sessions = Vec::new();
            for i in 0..6 {
                let mut session = Session::open(http_vip()).await.unwrap();
                session.echo(payload(i, 100)).await.unwrap();
                sessions.push(session);
            }
            // Idle for longer than the data plane's one-second refresh: still open.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let idle = connections(&xlb);
            drop(sessions);
            idle
        })
        .unwrap();
    assert_eq!(idle, (6, 0), "six idle connections");
    let start = Instant::now();
    while connections(&xlb) != (0, 6) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "after the close: {:?}",
            connections(&xlb)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, status, _) = xlb.cli(&["status", "web"]).unwrap();
    assert!(status.contains(" CONN "), "{status}");
    // Round robin gave each of the three backends two of them.
    assert_eq!(
        status.matches("also 0 half-open, 2 closing").count(),
        3,
        "{status}"
    );
}
