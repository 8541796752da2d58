//! Tier 3: locality pools with real hosts. Clients in 198.18.0.0/25 ("kr") have the kr pool
//! (b1, b2) as home, clients in 198.18.0.128/25 ("jp") the jp pool (b3, b4); each falls back
//! to the other. The client host has one address in each prefix. Needs root: run with
//! `cargo xtask test`.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xlb::{cmd::Response, report::PoolStatus};
use xlb_tests::{
    client::{http_echo_from, payload, start_download_from},
    scenario::{Backend, TCP_SERVICE_PORT, Xlb, start_backends, start_xlb, tally},
    topology::{Lab, VIP, Wiring},
};

const KR_CLIENT: &str = "198.18.0.2";
const JP_CLIENT: &str = "198.18.0.130";

fn vip() -> SocketAddr {
    SocketAddr::from((VIP, TCP_SERVICE_PORT))
}

fn config(lab: &Lab) -> String {
    let interfaces: Vec<String> = lab
        .balancer_interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect();
    let backend = |i: usize| format!("{{ address = \"{}\" }}", lab.backend_endpoint(i, 8080));
    format!(
        r#"interfaces = [{}]
xdp_mode = "auto"

[[service]]
name = "video"
listen = "{VIP}:{TCP_SERVICE_PORT}"
protocol = "tcp"
client_prefixes = {{ "198.18.0.0/25" = "kr", "198.18.0.128/25" = "jp" }}
health = {{ check = "tcp", interval = "100ms", timeout = "50ms", rise = 2, fall = 2 }}
load = {{ agent_port = 9777, interval = "100ms", overload_below = "20%" }}

[[service.pool]]
name = "kr"
backends = [ {}, {} ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ {}, {} ]
fallback = ["kr"]
"#,
        interfaces.join(", "),
        backend(0),
        backend(1),
        backend(2),
        backend(3),
    )
}

/// `n` connections one after another from `client`; the backends they reached.
fn connections(lab: &Lab, client: &str, n: usize) -> BTreeMap<String, usize> {
    let source: IpAddr = client.parse().unwrap();
    let names = lab
        .client
        .block_on(async move {
            let mut names = Vec::new();
            for i in 0..n {
                names.push(http_echo_from(Some(source), vip(), payload(i as u64, 500)).await?);
            }
            anyhow::Ok(names)
        })
        .unwrap()
        .unwrap();
    tally(&names)
}

fn pools(xlb: &Xlb) -> Vec<PoolStatus> {
    let (code, stdout, stderr) = xlb.cli(&["--json", "status"]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let Response::Status(report) = serde_json::from_str(&stdout).unwrap() else {
        panic!("{stdout}")
    };
    report.services[0].pools.clone()
}

/// Waits until the kr pool's new flows go to `serving`.
fn wait_for_kr_serving(xlb: &Xlb, serving: &str) {
    let start = Instant::now();
    while pools(xlb)[0].serving != serving {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "kr never came to be served by {serving}: {:?}\n{}",
            pools(xlb),
            xlb.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn only(names: &[&str], counts: &BTreeMap<String, usize>) -> bool {
    counts.keys().all(|k| names.contains(&k.as_str()))
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_stay_home_spill_over_when_home_is_down_or_busy_and_return() {
    let lab = Lab::new(Wiring::TwoInterfaces, 4).unwrap();
    lab.client
        .ip(&format!("addr add {JP_CLIENT}/24 dev eth0"))
        .unwrap();
    let mut backends: Vec<Backend> = start_backends(&lab).unwrap();
    let xlb = start_xlb(&lab.balancer, &config(&lab)).unwrap();

    // Normal traffic stays home, round robin within the pool.
    let kr = connections(&lab, KR_CLIENT, 6);
    assert_eq!(
        kr,
        BTreeMap::from([("b1".into(), 3), ("b2".into(), 3)]),
        "kr clients"
    );
    let jp = connections(&lab, JP_CLIENT, 6);
    assert_eq!(
        jp,
        BTreeMap::from([("b3".into(), 3), ("b4".into(), 3)]),
        "jp clients"
    );
    let (code, simulated, _) = xlb.cli(&["simulate", "video", "198.18.0.2:45000"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        simulated.contains("home pool kr, served at home"),
        "{simulated}"
    );

    // The kr pool is overloaded (its agents report 10%): new kr flows spill to jp while an
    // established kr download continues.
    let source: IpAddr = KR_CLIENT.parse().unwrap();
    let client = &lab.client;
    let (download_backend, downloaded, spilled) = std::thread::scope(|scope| {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let download = scope.spawn(move || {
            client
                .block_on(async move {
                    let download =
                        start_download_from(Some(source), vip(), 2_000_000, 2_500).await?;
                    started_tx.send(download.backend.clone()).unwrap();
                    let backend = download.backend.clone();
                    download.finish().await.map(|bytes| (backend, bytes))
                })
                .unwrap()
        });
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        for backend in &backends[..2] {
            backend.set_agent_reply("10%").unwrap();
        }
        wait_for_kr_serving(&xlb, "jp");
        let spilled = connections(&lab, KR_CLIENT, 6);
        let (backend, bytes) = download.join().unwrap().unwrap();
        (backend, bytes, spilled)
    });
    assert!(["b1", "b2"].contains(&download_backend.as_str()));
    assert_eq!(
        downloaded, 2_000_000,
        "the established kr download completed byte-exact"
    );
    assert!(
        only(&["b3", "b4"], &spilled),
        "new kr flows spilled to jp: {spilled:?}"
    );
    let kr_pool = &pools(&xlb)[0];
    assert_eq!(kr_pool.spilled, [("jp".to_owned(), 6)], "{kr_pool:?}");
    let (_, simulated, _) = xlb.cli(&["simulate", "video", "198.18.0.2:45001"]).unwrap();
    assert!(
        simulated.contains("home pool kr, which has no room: spills to pool jp"),
        "{simulated}"
    );

    // Recovery brings them home.
    for backend in &backends[..2] {
        backend.set_agent_reply("up 100%").unwrap();
    }
    wait_for_kr_serving(&xlb, "kr");
    assert!(only(&["b1", "b2"], &connections(&lab, KR_CLIENT, 4)));

    // The kr backends stop: kr clients land on jp; they come back when the servers do.
    for backend in &mut backends[..2] {
        backend.stop().unwrap();
    }
    wait_for_kr_serving(&xlb, "jp");
    assert!(only(&["b3", "b4"], &connections(&lab, KR_CLIENT, 4)));
    assert!(
        only(&["b3", "b4"], &connections(&lab, JP_CLIENT, 4)),
        "jp clients stay home"
    );
    for backend in &mut backends[..2] {
        backend.start(&lab).unwrap();
    }
    wait_for_kr_serving(&xlb, "kr");
    assert!(only(&["b1", "b2"], &connections(&lab, KR_CLIENT, 4)));
    let status = xlb.cli(&["status"]).unwrap().1;
    assert!(status.contains("NEW FLOWS GO TO"), "{status}");
}
