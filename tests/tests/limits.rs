//! Tier 3: the daemon under the file limit its systemd unit would have without
//! `LimitNOFILE` (`prlimit --nofile=1024:1024`, so it cannot raise it): large configs start,
//! a thousand checked backends stay Up, and idle connections to the metrics endpoint starve
//! nothing. Needs root: run with `cargo xtask test`.

use std::{
    net::{SocketAddr, TcpStream},
    sync::Mutex,
    time::{Duration, Instant},
};

use xlb::cmd::Response;
use xlb_tests::{
    client::{http_echo, http_get_body, payload},
    daemon::{Launch, start_xlb_launched},
    scenario::{HTTP_PORT, TCP_SERVICE_PORT, Xlb, start_backends},
    topology::{Lab, VIP, Wiring},
};

/// The tests of this file share two CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where the metrics endpoint listens, in the balancer's namespace.
const METRICS: &str = "127.0.0.1:9814";

/// `xlb run` under a file limit of 1,024 that it cannot raise.
fn limited() -> Launch {
    Launch {
        wrapper: vec!["prlimit".into(), "--nofile=1024:1024".into(), "--".into()],
        ..Launch::default()
    }
}

/// The interfaces line of a config for `lab`.
fn interfaces(lab: &Lab) -> String {
    let names: Vec<String> = lab
        .balancer_interfaces
        .iter()
        .map(|name| format!("\"{name}\""))
        .collect();
    format!("interfaces = [{}]\n", names.join(", "))
}

/// The states of every backend of every service, as `xlb status` shows them.
fn states(xlb: &Xlb) -> Vec<String> {
    let (code, stdout, stderr) = xlb.cli(&["--json", "status"]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let Response::Status(status) = serde_json::from_str(&stdout).unwrap() else {
        panic!("status answered {stdout}")
    };
    status
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .map(|b| format!("{} {}", b.state, b.reason))
        })
        .collect()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn twelve_hundred_services_start_under_the_file_limit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 1).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let backend = lab.backend_endpoint(0, HTTP_PORT);
    let mut config = interfaces(&lab);
    for i in 0..1_200u16 {
        config.push_str(&format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"{VIP}:{}\"\nprotocol = \"tcp\"\n\
             backends = [ {{ address = \"{backend}\" }} ]\n",
            10_000 + i
        ));
    }
    let xlb = start_xlb_launched(&lab.balancer, &config, limited()).unwrap();
    assert_eq!(states(&xlb).len(), 1_200);
    let last = SocketAddr::from((VIP, 10_000 + 1_199));
    let served = lab
        .client
        .block_on(http_echo(last, payload(1, 100)))
        .unwrap()
        .unwrap();
    assert_eq!(served, "b1");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_thousand_checked_backends_are_all_up_under_the_file_limit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    // 1,000 backends: the three hosts on 1,000 ports, each checked on the port its server
    // listens on.
    let backends: Vec<String> = (0..1_000)
        .map(|i| {
            let address = lab.backend_endpoint(i % 3, 20_000 + i as u16);
            format!("{{ address = \"{address}\", check_port = {HTTP_PORT} }}")
        })
        .collect();
    let config = format!(
        "{}[[service]]\nname = \"web\"\nlisten = \"{VIP}:{TCP_SERVICE_PORT}\"\n\
         protocol = \"tcp\"\nbackends = [ {} ]\n\
         health = {{ check = \"tcp\", interval = \"1s\", timeout = \"500ms\", fall = 2 }}\n",
        interfaces(&lab),
        backends.join(", ")
    );
    let xlb = start_xlb_launched(&lab.balancer, &config, limited()).unwrap();
    // At start, then after three rounds of checks.
    for round in 0..2 {
        let states = states(&xlb);
        let down: Vec<&String> = states.iter().filter(|s| !s.starts_with("Up")).collect();
        assert!(
            down.is_empty(),
            "round {round}: {} of 1,000 not Up, e.g. {:?}\n{}",
            down.len(),
            down.first(),
            xlb.output()
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn idle_metrics_connections_starve_neither_the_checks_nor_the_scrapes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let backends: Vec<String> = (0..3)
        .map(|i| format!("{{ address = \"{}\" }}", lab.backend_endpoint(i, HTTP_PORT)))
        .collect();
    let config = format!(
        "{}metrics = \"{METRICS}\"\n[[service]]\nname = \"web\"\n\
         listen = \"{VIP}:{TCP_SERVICE_PORT}\"\nprotocol = \"tcp\"\nbackends = [ {} ]\n\
         health = {{ check = \"tcp\", interval = \"200ms\", timeout = \"100ms\", fall = 2 }}\n",
        interfaces(&lab),
        backends.join(", ")
    );
    let mut xlb = start_xlb_launched(&lab.balancer, &config, limited()).unwrap();
    raise_own_file_limit();
    // 2,000 connections that never send a request, held for the rest of the test.
    let endpoint: SocketAddr = METRICS.parse().unwrap();
    let idle: Vec<TcpStream> = lab
        .balancer
        .enter(|| {
            (0..2_000)
                .filter_map(|_| TcpStream::connect_timeout(&endpoint, Duration::from_secs(1)).ok())
                .collect()
        })
        .unwrap();
    eprintln!("{} idle connections to the metrics endpoint", idle.len());
    std::thread::sleep(Duration::from_secs(2));
    // The checks pass, a scrape is answered, traffic flows, the daemon lives.
    let states = states(&xlb);
    assert!(
        states.iter().all(|s| s.starts_with("Up")),
        "{states:?}\n{}",
        xlb.output()
    );
    let started = Instant::now();
    let scrape = lab
        .balancer
        .block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), http_get_body(endpoint, "/metrics")).await
        })
        .unwrap();
    let body = scrape
        .unwrap_or_else(|_| panic!("no scrape answered within 5 s\n{}", xlb.output()))
        .unwrap();
    assert!(body.contains("xlb_backend_state"), "{body}");
    eprintln!("scrape answered in {:?}", started.elapsed());
    let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
    assert!(
        lab.client
            .block_on(http_echo(vip, payload(2, 100)))
            .unwrap()
            .is_ok()
    );
    assert!(
        !xlb.exited().unwrap(),
        "the daemon exited\n{}",
        xlb.output()
    );
    assert!(
        !xlb.output().contains("Too many open files"),
        "{}",
        xlb.output()
    );
    drop(idle);
}

/// Raises this process's soft limit on open files to the hard one (it holds the idle
/// connections).
fn raise_own_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit that lives across the calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 4_096,
        "this test needs 4,096 open files: {limit:?}"
    );
}
