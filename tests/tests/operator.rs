//! Tier 3: what an operator does to a running xlb, through the CLI and its control API, with
//! real servers in network namespaces: status, stats, top, backend drain/disable/enable,
//! reload (and SIGHUP), simulate, the metrics endpoint, bad input, and a restart that keeps
//! every flow. Needs root: run with `cargo xtask test`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use xlb::api::Response;
use xlb_tests::{
    client::{http_echo, http_get_body, payload, start_download},
    process::binary,
    scenario::{
        Backend, TCP_SERVICE_PORT, UDP_SERVICE_PORT, Xlb, balancer_config, balancer_config_with,
        start_backends, start_xlb, tally,
    },
    topology::{Lab, Offloads, VIP, Wiring, backend_addr},
};

fn http_vip() -> SocketAddr {
    SocketAddr::from((VIP, TCP_SERVICE_PORT))
}

fn web_backend(i: usize) -> String {
    format!("{}:8080", backend_addr(i))
}

/// `n` HTTP connections one after the other from the client host; the backend of each.
fn connections(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    let names = lab
        .client
        .block_on(async {
            let mut names = Vec::new();
            for i in 0..n {
                names.push(
                    http_echo(http_vip(), payload(i as u64, 1_000))
                        .await
                        .unwrap(),
                );
            }
            names
        })
        .unwrap();
    tally(&names)
}

fn ok(xlb: &Xlb, args: &[&str]) -> String {
    let (code, stdout, stderr) = xlb.cli(args).unwrap();
    assert_eq!(code, 0, "xlb {args:?} failed: {stderr}\n{stdout}");
    stdout
}

fn fails(xlb: &Xlb, args: &[&str]) -> String {
    let (code, stdout, stderr) = xlb.cli(args).unwrap();
    assert_eq!(code, 1, "xlb {args:?} should fail:\n{stdout}");
    stderr
}

struct Setup {
    lab: Lab,
    _backends: Vec<Backend>,
    xlb: Xlb,
}

fn setup(extra_tcp_keys: &str) -> Setup {
    setup_with(Offloads::Default, "auto", extra_tcp_keys)
}

fn setup_with(offloads: Offloads, mode: &str, extra_tcp_keys: &str) -> Setup {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, offloads).unwrap();
    let backends = start_backends(&lab).unwrap();
    let config = balancer_config_with(&lab, mode, extra_tcp_keys, "");
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    Setup {
        lab,
        _backends: backends,
        xlb,
    }
}

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
    // Active flows are counted by the flow sweep, every few seconds.
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
            .all(|(_, c)| c.new_flows == 2 && c.packets_to_client > 0)
    );
    assert!(ok(&xlb, &["stats"]).contains("PKTS IN"));

    let top = ok(&xlb, &["top", "--iterations", "2", "--interval", "0.2"]);
    assert_eq!(top.matches("xlb top").count(), 2, "{top}");
}

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
    assert!(
        status.contains("[operator: drain] drained by the operator"),
        "{status}"
    );
    assert_eq!(connections(&lab, 6).get("b1"), None);

    ok(&xlb, &["backend", "enable", "web", &b1]);
    assert_eq!(connections(&lab, 6).get("b1"), Some(&2));

    ok(&xlb, &["backend", "disable", "web", &b1]);
    let status = ok(&xlb, &["--json", "status"]);
    assert!(status.contains("\"state\": \"Down\""), "{status}");
    assert!(status.contains("disabled by the operator"), "{status}");
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
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn reload_applies_the_difference_and_an_invalid_file_changes_nothing() {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup("");
    let original = std::fs::read_to_string(&xlb.config_path).unwrap();
    let client = &lab.client;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (backend, bytes) = std::thread::scope(|scope| {
        // An established download (1 MB over 1.5 s) must survive both reloads. It lives on
        // its own thread: its connection belongs to that thread's runtime.
        let download = scope.spawn(move || {
            client
                .block_on(async move {
                    let download = start_download(http_vip(), 1_000_000, 1_500).await?;
                    started_tx.send(download.backend.clone()).unwrap();
                    let backend = download.backend.clone();
                    download.finish().await.map(|bytes| (backend, bytes))
                })
                .unwrap()
        });
        let first = started_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the download started");
        assert_eq!(first, "b1");

        // Remove b3 from the web service.
        let b3 = format!("{{ address = \"{}\" }}", web_backend(2));
        let without_b3 = original.replacen(&format!(", {b3}"), "", 1);
        assert_ne!(without_b3, original);
        std::fs::write(&xlb.config_path, &without_b3).unwrap();
        let done = ok(&xlb, &["reload"]);
        assert!(done.contains("1 removed"), "{done}");
        let status = ok(&xlb, &["status"]);
        assert!(!status.contains(&web_backend(2)), "{status}");
        assert_eq!(connections(&lab, 4).get("b3"), None);

        // An invalid file: the error says where, nothing changes.
        let before = backends_of(&xlb);
        std::fs::write(
            &xlb.config_path,
            without_b3.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
        )
        .unwrap();
        let error = fails(&xlb, &["reload"]);
        assert!(
            error.contains(&format!("{}:", xlb.config_path.display())),
            "{error}"
        );
        assert!(error.contains("unknown protocol \"sctp\""), "{error}");
        assert!(error.contains("nothing was changed"), "{error}");
        assert_eq!(backends_of(&xlb), before);

        // A valid file that needs another hook (native XDP, which would corrupt packets on
        // these links anyway): refused, nothing changes.
        std::fs::write(
            &xlb.config_path,
            without_b3.replace("xdp_mode = \"auto\"", "xdp_mode = \"native\""),
        )
        .unwrap();
        let error = fails(&xlb, &["reload"]);
        assert!(error.contains("would corrupt packets"), "{error}");
        assert!(error.contains("nothing was changed"), "{error}");
        std::fs::write(
            &xlb.config_path,
            without_b3.replace("xdp_mode = \"auto\"", "xdp_mode = \"tc\""),
        )
        .unwrap();
        ok(&xlb, &["reload"]);
        assert_eq!(
            backends_of(&xlb),
            before,
            "xdp_mode tc = what auto chose: no change"
        );

        // SIGHUP reloads too: b3 comes back.
        std::fs::write(&xlb.config_path, &original).unwrap();
        xlb.signal(libc::SIGHUP).unwrap();
        xlb.wait_for_output("reloaded", Duration::from_secs(5))
            .unwrap();
        let start = Instant::now();
        while !ok(&xlb, &["status"]).contains(&web_backend(2)) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "b3 did not come back"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        download.join().unwrap().unwrap()
    });
    assert_eq!(backend, "b1");
    assert_eq!(
        bytes, 1_000_000,
        "the download across two reloads completed byte-exact"
    );
}

/// Every service's backends with their address, state and weight, from `status --json`
/// (rates and counters, which move every second, left out).
fn backends_of(xlb: &Xlb) -> Vec<(SocketAddr, String, u32, u32)> {
    let response: Response = serde_json::from_str(&ok(xlb, &["--json", "status"])).unwrap();
    let Response::Status(report) = response else {
        panic!("status answered {response:?}");
    };
    report
        .services
        .iter()
        .flat_map(|service| &service.backends)
        .map(|b| (b.address, b.state.clone(), b.weight, b.effective_weight))
        .collect()
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
        first.contains("a new flow would go to 198.18.1.1"),
        "{first}"
    );
    assert!(
        second.contains("a new flow would go to 198.18.1.1"),
        "{second}"
    );
    assert_ne!(
        first, second,
        "each simulated flow takes a turn of the round robin"
    );
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
fn the_metrics_endpoint_exports_counters_and_states() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let config = format!(
        "metrics = \"127.0.0.1:9100\"\n{}",
        balancer_config(&lab, "auto")
    );
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    connections(&lab, 3);
    std::thread::sleep(Duration::from_millis(1_200)); // one refresh of the snapshot
    let text = lab
        .balancer
        .block_on(http_get_body("127.0.0.1:9100".parse().unwrap(), "/metrics"))
        .unwrap()
        .unwrap();
    for expected in [
        "xlb_service_flows_total{service=\"web\"} 3".to_owned(),
        format!(
            "xlb_backend_flows_total{{service=\"web\",backend=\"{}\"}} 1",
            web_backend(0)
        ),
        format!(
            "xlb_backend_state{{service=\"web\",backend=\"{}\",state=\"up\"}} 1",
            web_backend(1)
        ),
        format!(
            "xlb_backend_weight{{service=\"web\",backend=\"{}\"}} 100",
            web_backend(2)
        ),
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "missing {expected:?} in\n{text}"
        );
    }
    assert!(
        text.contains("xlb_backend_health_check_duration_seconds{service=\"web\""),
        "{text}"
    );
    assert!(
        text.contains("xlb_service_packets_total{service=\"web\",direction=\"to_client\"}"),
        "{text}"
    );
    drop(xlb);
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
fn a_restart_keeps_every_flow() {
    restart_keeps_every_flow(Offloads::Default, "auto", None);
}

/// A restart that moves the data plane from native XDP to tc (the operator changed
/// `xdp_mode`): the new daemon attaches at tc, then removes the XDP links, and no flow notices.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_restart_that_changes_the_hook_keeps_every_flow() {
    restart_keeps_every_flow(Offloads::Prepared, "native", Some("tc"));
}

fn restart_keeps_every_flow(offloads: Offloads, mode: &str, new_mode: Option<&str>) {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup_with(offloads, mode, "");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (download, udp) = std::thread::scope(|scope| {
        // A 3 MB download spread over 3 s, and a UDP flow of a datagram every 20 ms.
        let client = &lab.client;
        let download = scope.spawn(|| {
            client
                .block_on(async {
                    let download = start_download(http_vip(), 3_000_000, 3_000).await?;
                    let backend = download.backend.clone();
                    download.finish().await.map(|bytes| (backend, bytes))
                })
                .unwrap()
        });
        let stop = &stop;
        let udp = scope.spawn(move || {
            client
                .block_on(async move {
                    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
                    socket
                        .connect(SocketAddr::from((VIP, UDP_SERVICE_PORT)))
                        .await
                        .unwrap();
                    let (mut sent, mut answers) = (0usize, Vec::new());
                    let mut buffer = [0u8; 256];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        socket.send(b"still there?").await.unwrap();
                        sent += 1;
                        let answer = tokio::time::timeout(
                            Duration::from_millis(200),
                            socket.recv(&mut buffer),
                        )
                        .await;
                        if let Ok(Ok(len)) = answer {
                            answers.push(
                                String::from_utf8_lossy(&buffer[..len])
                                    .lines()
                                    .next()
                                    .unwrap()
                                    .to_owned(),
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (sent, answers)
                })
                .unwrap()
        });
        // Restart the daemon in the middle of both.
        std::thread::sleep(Duration::from_millis(700));
        let status = xlb.stop(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{}", xlb.output());
        assert!(
            xlb.output().contains("the data plane keeps forwarding"),
            "{}",
            xlb.output()
        );
        std::thread::sleep(Duration::from_millis(500));
        if let Some(new_mode) = new_mode {
            let config = std::fs::read_to_string(&xlb.config_path).unwrap();
            let config = config.replace(
                &format!("xdp_mode = \"{mode}\""),
                &format!("xdp_mode = \"{new_mode}\""),
            );
            std::fs::write(&xlb.config_path, config).unwrap();
        }
        xlb.restart(&lab.balancer, &[]).unwrap();
        assert!(
            xlb.output().contains("took over the pinned maps"),
            "{}",
            xlb.output()
        );
        if new_mode.is_some() {
            assert!(
                xlb.output()
                    .contains("removed the link of the previous hook"),
                "{}",
                xlb.output()
            );
        } else {
            assert!(
                xlb.output().contains("took over the pinned link"),
                "{}",
                xlb.output()
            );
        }
        std::thread::sleep(Duration::from_millis(2_500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (download.join().unwrap(), udp.join().unwrap())
    });
    let (backend, bytes) = download.unwrap();
    assert_eq!(
        bytes, 3_000_000,
        "the download across the restart completed byte-exact"
    );
    assert_eq!(backend, "b1");
    let (sent, answers) = udp;
    let backends = tally(&answers);
    assert_eq!(
        backends.len(),
        1,
        "every datagram of the UDP flow went to one backend: {backends:?}"
    );
    assert_eq!(
        answers.len(),
        sent,
        "no datagram was lost across the restart ({} of {sent})",
        answers.len()
    );
    // New flows after the restart are balanced as before.
    assert_eq!(connections(&lab, 3).len(), 3);
}
