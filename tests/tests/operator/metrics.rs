//! The metrics endpoint, as Prometheus and promtool read it.

use super::*;
use xlb_tests::{
    client::http_get_accepting,
    process::{Process, temp_file},
};

/// Where the endpoint listens in these tests (the balancer's loopback, in its namespace).
const METRICS: &str = "127.0.0.1:9814";
/// Where the Prometheus server of the test answers.
const PROMETHEUS: &str = "127.0.0.1:9815";
/// The `Accept` header Prometheus 2 sends.
const OPENMETRICS_FIRST: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn scrape(lab: &Lab, accept: Option<&str>) -> (String, String) {
    lab.balancer
        .block_on(http_get_accepting(
            METRICS.parse().unwrap(),
            "/metrics",
            accept,
        ))
        .unwrap()
        .unwrap()
}

/// `promtool check metrics` on `text`: its exit code and what it reported.
fn promtool(text: &str) -> (i32, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), report)
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_metrics_endpoint_exports_counters_and_states() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let config = format!("metrics = \"{METRICS}\"\n{}", balancer_config(&lab, "auto"));
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    connections(&lab, 3);
    std::thread::sleep(Duration::from_millis(1_200)); // one refresh of the snapshot
    let (content_type, text) = scrape(&lab, None);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
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
        "xlb_flow_table_capacity{family=\"ipv4\",table=\"half_open\"} 65536".to_owned(),
        "xlb_handshake_guard_hashing 0".to_owned(),
        "xlb_config_last_reload_successful 1".to_owned(),
        "xlb_config_reloads_total{result=\"success\"} 0".to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "missing {expected:?} in\n{text}"
        );
    }
    for family in [
        "xlb_backend_health_check_duration_seconds{service=\"web\"",
        "xlb_backend_active_flows{service=\"web\"",
        "xlb_flows_expired_total ",
        "xlb_build_info{version=",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    assert_eq!(promtool(&text), (0, String::new()), "promtool on\n{text}");

    // OpenMetrics for a scraper that prefers it.
    let (content_type, open) = scrape(&lab, Some(OPENMETRICS_FIRST));
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE xlb_service_flows counter\n"),
        "{open}"
    );

    // A refused reload shows in the metrics.
    let good = std::fs::read_to_string(&xlb.config_path).unwrap();
    std::fs::write(&xlb.config_path, "interfaces = []\n").unwrap();
    fails(&xlb, &["reload"]);
    std::fs::write(&xlb.config_path, good).unwrap();
    std::thread::sleep(Duration::from_millis(1_200));
    let (_, text) = scrape(&lab, None);
    assert!(
        text.contains("xlb_config_reloads_total{result=\"failure\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("xlb_config_last_reload_successful 0\n"),
        "{text}"
    );
    drop(xlb);
}

/// A real Prometheus server scrapes xlb (it asks for OpenMetrics) and stores every family
/// with its metadata.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn prometheus_scrapes_openmetrics_from_xlb() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let config = format!("metrics = \"{METRICS}\"\n{}", balancer_config(&lab, "auto"));
    let _xlb = start_xlb(&lab.balancer, &config).unwrap();
    connections(&lab, 3);
    let scrape_config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: xlb\n    \
         static_configs:\n      - targets: [\"{METRICS}\"]\n"
    );
    let config_file = temp_file("prometheus.yml", &scrape_config).unwrap();
    let storage = config_file.with_extension("tsdb");
    let mut command = lab.balancer.command_network_only("prometheus");
    command
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    let mut prometheus = Process::spawn("prometheus", command).unwrap();
    prometheus
        .wait_for_output(
            "Server is ready to receive web requests",
            Duration::from_secs(30),
        )
        .unwrap();
    let api = |path: &str| -> serde_json::Value {
        let body = lab
            .balancer
            .block_on(http_get_body(PROMETHEUS.parse().unwrap(), path))
            .unwrap()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    };
    // Wait for a scrape of the snapshot that counts the three flows.
    let query = "/api/v1/query?query=xlb_service_flows_total%7Bservice%3D%22web%22%7D";
    let start = Instant::now();
    loop {
        let answer = api(query);
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned);
        if value.as_deref() == Some("3") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Prometheus has no flows: {answer}\n{}",
            prometheus.output()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let targets = api("/api/v1/targets");
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");
    // Metadata is kept under the family's OpenMetrics name (the classic format would give
    // `xlb_service_packets_total`): the scrape was OpenMetrics.
    let metadata = api("/api/v1/metadata?metric=xlb_service_packets");
    let packets = &metadata["data"]["xlb_service_packets"][0];
    assert_eq!(packets["type"], "counter", "{metadata}");
    assert!(
        packets["help"]
            .as_str()
            .unwrap()
            .starts_with("Packets through xlb"),
        "{metadata}"
    );
    drop(prometheus);
    let _ = std::fs::remove_dir_all(storage);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_metrics_address_in_use_stops_the_start_and_fails_a_reload() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let busy = "127.0.0.1:9816";
    // A socket keeps the namespace it was made in.
    let holder = lab
        .balancer
        .enter(|| std::net::TcpListener::bind(busy).unwrap())
        .unwrap();
    let config = format!("metrics = \"{busy}\"\n{}", balancer_config(&lab, "auto"));
    let error = match start_xlb(&lab.balancer, &config) {
        Err(error) => format!("{error:#}"),
        Ok(_) => panic!("xlb started without its metrics endpoint"),
    };
    assert!(
        error.contains(&format!("binding the metrics endpoint {busy}")),
        "{error}"
    );
    // Started without metrics, a reload to the busy address is refused whole.
    let xlb = start_xlb(&lab.balancer, &balancer_config(&lab, "auto")).unwrap();
    let good = std::fs::read_to_string(&xlb.config_path).unwrap();
    std::fs::write(&xlb.config_path, format!("metrics = \"{busy}\"\n{good}")).unwrap();
    let error = fails(&xlb, &["reload"]);
    assert!(error.contains("nothing was changed"), "{error}");
    assert!(
        error.contains(&format!("binding the metrics endpoint {busy}")),
        "{error}"
    );
    assert_eq!(connections(&lab, 3).len(), 3);
    drop(holder);
}
