//! Parsing and validation, with the positions and words of every error.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::consts::limits;

use super::*;

mod corpus;
mod drain;
mod example;
mod fleet;
mod passive;
mod pools;
mod scaleout;

const VALID: &str = r#"
interfaces = ["eth0"]
xdp_mode = "native"

[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
scheduler = "round-robin"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080", weight = 2 } ]

[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353", weight = 0 }, { address = "198.18.1.13:5353" } ]
"#;

fn errors_of(text: &str) -> Vec<String> {
    Config::parse(text)
        .expect_err("the config should be rejected")
        .into_iter()
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
        .collect()
}

#[test]
fn parses_a_valid_config() {
    let config = Config::parse(VALID).unwrap();
    assert_eq!(config.interfaces, ["eth0"]);
    assert_eq!(config.xdp_mode, XdpMode::Native);
    assert_eq!(config.flow_table_size, limits::DEFAULT_FLOW_TABLE_SIZE);
    assert_eq!(config.flow_table_size_ipv6, config.flow_table_size);
    assert_eq!(config.pin_path, PathBuf::from("/sys/fs/bpf/xlb"));
    assert_eq!(config.metrics, None);
    assert_eq!(config.services.len(), 2);
    let web = &config.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.listen, "198.18.100.1:80".parse().unwrap());
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.scheduler, Scheduler::RoundRobin);
    assert_eq!(
        web.backends,
        [
            BackendConfig {
                address: "198.18.1.11:8080".parse().unwrap(),
                weight: 1,
                check_port: None,
                agent_port: None,
                pool: 0,
            },
            BackendConfig {
                address: "198.18.1.12:8080".parse().unwrap(),
                weight: 2,
                check_port: None,
                agent_port: None,
                pool: 0,
            },
        ]
    );
    let dns = &config.services[1];
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.backends[0].weight, 0);
    assert_eq!(config.backend_count(), 4);
}

#[test]
fn unknown_keys_are_errors_with_their_position() {
    let text = "interfaces = [\"eth0\"]\nbogus = 1\n";
    let errors = errors_of(text);
    // And the file's other problem, which the unknown key no longer hides.
    assert_eq!(
        errors,
        [
            "0:0: no [[service]] defined: xlb would balance nothing",
            "2:1: unknown key `bogus`, expected one of `interfaces`, `xdp_mode`, `assume_complete_checksums`, `veth_peer_redirect`, `flow_table_size`, `flow_table_size_ipv6`, `pin_path`, `metrics`, `host_ports`, `tcp_idle_timeout`, `tcp_closing_timeout`, `udp_idle_timeout`, `announce`, `fleet`, `tunnel`, `service`"
        ]
    );

    let text = VALID.replace("scheduler = \"round-robin\"", "schedular = \"round-robin\"");
    let errors = errors_of(&text);
    assert!(errors[0].contains("unknown key `schedular`"), "{errors:?}");
    assert!(errors[0].starts_with("9:"), "{errors:?}");
}

#[test]
fn syntax_errors_are_located() {
    let errors = errors_of("interfaces = [\"eth0\"\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("1:") || errors[0].starts_with("2:"),
        "{errors:?}"
    );
}

#[test]
fn the_ipv6_flow_table_has_its_own_size_if_set() {
    let text = VALID.replace(
        "xdp_mode",
        "flow_table_size = 4096\nflow_table_size_ipv6 = 1024\nxdp_mode",
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(
        (config.flow_table_size, config.flow_table_size_ipv6),
        (4096, 1024)
    );
    let errors = errors_of(&VALID.replace("xdp_mode", "flow_table_size_ipv6 = 10\nxdp_mode"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("flow_table_size_ipv6: 10 is out of range")),
        "{errors:?}"
    );
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let text = r#"
interfaces = ["eth0", "eth0", "a/b"]
xdp_mode = "turbo"
flow_table_size = 12

[[service]]
name = "web"
listen = "198.18.100.300:80"
protocol = "sctp"
scheduler = "least-conn"
backends = [ { address = "198.18.1.11" }, { address = "198.18.1.12:8080", weight = 999 }, { address = "198.18.1.12:8080" } ]
"#;
    let errors = errors_of(text);
    let expected = [
        "2:23: interfaces: \"eth0\" is listed twice",
        "2:31: interfaces: \"a/b\" is not a valid interface name",
        "3:12: xdp_mode: unknown mode \"turbo\"",
        "4:19: flow_table_size: 12 is out of range",
        "8:10: service \"web\": listen: \"198.18.100.300:80\" is not an address with a port",
        "9:12: service \"web\": unknown protocol \"sctp\"",
        "10:13: service \"web\": unknown scheduler \"least-conn\"",
        "11:26: service \"web\": backend: \"198.18.1.11\" has no port",
        "11:84: service \"web\": weight 999 is out of range 0..=256",
        "11:103: service \"web\": backend 198.18.1.12:8080 is listed twice (first at line 11)",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(expected) {
        assert!(
            error.starts_with(expected),
            "got {error:?}, expected it to start with {expected:?}"
        );
    }
}

#[test]
fn duplicate_services_are_rejected() {
    let text = format!(
        "{VALID}\n[[service]]\nname = \"web\"\nlisten = \"198.18.100.1:80\"\nprotocol = \"tcp\"\nbackends = [ {{ address = \"198.18.1.11:80\" }} ]\n"
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains("the name is already used by the service at line 5"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("tcp 198.18.100.1:80 is already the service at line 5"),
        "{errors:?}"
    );
}

#[test]
fn a_backend_on_a_vip_is_rejected() {
    let text = format!(
        "{VALID}\n[[service]]\nname = \"loop\"\nlisten = \"198.18.100.7:80\"\nprotocol = \"tcp\"\nbackends = [ {{ address = \"198.18.100.1:8080\" }} ]\n"
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(
            "service \"loop\": backend 198.18.100.1:8080 is on 198.18.100.1, a VIP of this \
             config (service \"web\" listens there)"
        ),
        "{errors:?}"
    );
}

#[test]
fn the_same_vip_and_port_may_serve_tcp_and_udp() {
    let text = VALID.replace("198.18.100.1:53", "198.18.100.1:80");
    assert!(Config::parse(&text).is_ok());
}

#[test]
fn services_need_usable_backends() {
    let no_backends = VALID.replace(
        "backends = [ { address = \"198.18.1.11:8080\" }, { address = \"198.18.1.12:8080\", weight = 2 } ]",
        "backends = []",
    );
    assert!(errors_of(&no_backends)[0].contains("no backends; a service needs at least one"));

    let all_zero = VALID.replace(
        "{ address = \"198.18.1.13:5353\" }",
        "{ address = \"198.18.1.13:5353\", weight = 0 }",
    );
    assert!(errors_of(&all_zero)[0].contains("every backend has weight 0"));

    let missing = "interfaces = [\"eth0\"]\n[[service]]\nname = \"x\"\n";
    let errors = errors_of(missing);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("missing key `protocol`")));
    assert!(errors.iter().any(|e| e.contains("missing key `listen`")));
    assert!(errors.iter().any(|e| e.contains("missing key `backends`")));
}

#[test]
fn unusable_addresses_are_rejected() {
    for (listen, problem) in [
        ("0.0.0.0:80", "unspecified"),
        ("198.18.100.1:0", "port 0"),
        ("224.0.0.1:80", "multicast"),
        ("255.255.255.255:80", "broadcast"),
        ("[::ffff:198.18.0.1]:80", "IPv4-mapped"),
        ("[fe80::1]:80", "link-local addresses are not supported"),
    ] {
        let text = VALID.replace("198.18.100.1:80", listen);
        let errors = errors_of(&text);
        assert!(
            errors.iter().any(|e| e.contains(problem)),
            "{listen}: {errors:?}"
        );
    }
}

#[test]
fn missing_interfaces_and_services_are_reported() {
    let errors = errors_of("xdp_mode = \"auto\"\n");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("missing key `interfaces`"));
    assert!(errors[1].contains("no [[service]] defined"));
}

#[test]
fn errors_display_with_the_file_name() {
    let errors = ConfigErrors {
        path: "/etc/xlb.toml".into(),
        errors: vec![
            ConfigError {
                line: 3,
                column: 7,
                message: "bad".into(),
            },
            ConfigError {
                line: 0,
                column: 0,
                message: "worse".into(),
            },
        ],
    };
    assert_eq!(
        errors.to_string(),
        "/etc/xlb.toml:3:7: bad\n/etc/xlb.toml: worse"
    );
}

fn with_service_keys(keys: &str) -> String {
    format!(
        "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nlisten = \"198.18.100.1:80\"\nprotocol = \"tcp\"\nbackends = [ {{ address = \"198.18.1.11:8080\" }} ]\n{keys}\n"
    )
}

#[test]
fn health_and_load_as_in_the_documentation() {
    let text = r#"
interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080", check_port = 8081, agent_port = 9778 }, { address = "198.18.1.12:8080" } ]
health = { check = "http", path = "/", expect = "200-399", interval = "500ms", timeout = "300ms", rise = 2, fall = 3, slowstart = "5s" }
load = { agent_port = 9777, interval = "1s", overload_below = "20%", max_flows = 10000 }
"#;
    let service = &Config::parse(text).unwrap().services[0];
    assert_eq!(
        service.health,
        HealthConfig {
            check: HealthCheck::Http {
                path: "/".into(),
                expect: vec![(200, 399)],
                host: None
            },
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 3,
            slowstart: Some(Duration::from_secs(5)),
            via: CheckVia::Direct,
        }
    );
    let load = service.load.as_ref().unwrap();
    assert_eq!(load.agent_port, Some(9777));
    assert_eq!(load.interval, Duration::from_secs(1));
    assert_eq!(load.overload_below, Some(20));
    assert_eq!(load.max_flows, Some(10_000));
    let (first, second) = (&service.backends[0], &service.backends[1]);
    assert_eq!(first.check_address(), "198.18.1.11:8081".parse().unwrap());
    assert_eq!(second.check_address(), "198.18.1.12:8080".parse().unwrap());
    assert_eq!(
        load.agent_address(first),
        Some("198.18.1.11:9778".parse().unwrap())
    );
    assert_eq!(
        load.agent_address(second),
        Some("198.18.1.12:9777".parse().unwrap())
    );
}

#[test]
fn health_defaults_depend_on_the_protocol() {
    let config = Config::parse(VALID).unwrap();
    assert_eq!(config.services[0].health.check, HealthCheck::Tcp);
    assert_eq!(config.services[0].health.interval, Duration::from_secs(2));
    assert_eq!(
        (
            config.services[0].health.rise,
            config.services[0].health.fall
        ),
        (2, 3)
    );
    assert_eq!(
        config.services[1].health.check,
        HealthCheck::None,
        "UDP has no default check"
    );
    assert_eq!(config.services[0].load, None);
}

#[test]
fn udp_and_http_checks() {
    let udp = Config::parse(&with_service_keys(
        r#"health = { check = "udp", send = "ping", expect = "pong", interval = "1s", timeout = "1s" }"#,
    ))
    .unwrap();
    assert_eq!(
        udp.services[0].health.check,
        HealthCheck::Udp {
            send: b"ping".to_vec(),
            expect: Some(b"pong".to_vec())
        }
    );
    let http = Config::parse(&with_service_keys(
        r#"health = { check = "http", path = "/healthz", expect = "200,204,301-302", host = "app.example" }"#,
    ))
    .unwrap();
    assert_eq!(
        http.services[0].health.check,
        HealthCheck::Http {
            path: "/healthz".into(),
            expect: vec![(200, 200), (204, 204), (301, 302)],
            host: Some("app.example".into()),
        }
    );
}

#[test]
fn bad_health_and_load_settings_are_reported() {
    for (keys, problem) in [
        (r#"health = { check = "icmp" }"#, "unknown check \"icmp\""),
        (r#"health = { interval = "1s" }"#, "missing key `check`"),
        (
            r#"health = { check = "tcp", interval = "soon" }"#,
            "\"soon\" is not a duration",
        ),
        (
            r#"health = { check = "tcp", interval = "1ms" }"#,
            "is out of range 10ms..=1h",
        ),
        (
            r#"health = { check = "tcp", interval = "1s", timeout = "2s" }"#,
            "timeout 2s is longer than the interval 1s",
        ),
        (
            r#"health = { check = "tcp", rise = 0 }"#,
            "rise: 0 is out of range 1..=100",
        ),
        (
            r#"health = { check = "tcp", fall = 1000 }"#,
            "fall: 1000 is out of range",
        ),
        (
            r#"health = { check = "tcp", path = "/" }"#,
            "`path` does not apply to check = \"tcp\"",
        ),
        (
            r#"health = { check = "http", send = "x" }"#,
            "`send` does not apply",
        ),
        (
            r#"health = { check = "http", expect = "2xx" }"#,
            "\"2xx\" is not an HTTP status",
        ),
        (
            r#"health = { check = "http", expect = "399-200" }"#,
            "range 399-200 is empty",
        ),
        (
            r#"health = { check = "http", path = "health" }"#,
            "must start with '/'",
        ),
        (r#"health = { check = "udp" }"#, "a udp check needs `send`"),
        (
            r#"health = { check = "tcp", slowstart = "forever" }"#,
            "slowstart",
        ),
        (
            r#"health = { check = "tcp", retries = 3 }"#,
            "unknown key `retries`",
        ),
        (r#"load = { interval = "1s" }"#, "set `agent_port`"),
        (
            r#"load = { max_flows = 10, overload_below = "20%" }"#,
            "`overload_below` compares the agents' weights",
        ),
        (
            r#"load = { agent_port = 70000 }"#,
            "agent_port: 70000 is not a port",
        ),
        (
            r#"load = { agent_port = 9777, overload_below = "20" }"#,
            "is not a percentage",
        ),
        (
            r#"load = { agent_port = 9777, overload_below = "120%" }"#,
            "is not a percentage",
        ),
        (r#"load = { max_flows = 0 }"#, "max_flows 0 is out of range"),
    ] {
        let errors = errors_of(&with_service_keys(keys));
        assert!(
            errors.iter().any(|e| e.contains(problem)),
            "{keys}: expected {problem:?} in {errors:#?}"
        );
    }
    let agent_without_load = VALID.replace(
        "{ address = \"198.18.1.11:8080\" }",
        "{ address = \"198.18.1.11:8080\", agent_port = 9777 }",
    );
    assert!(errors_of(&agent_without_load)[0].contains("has no `load` checks"));
}

const POOLS: &str = r#"
interfaces = ["eth0"]

[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
default_pool = "jp"
client_prefixes = { "198.18.0.0/25" = "kr", "198.18.0.128/25" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.13:8080" } ]
fallback = ["kr"]
"#;

/// The documented limits are config errors, not surprises at run time.
#[test]
fn limits_are_enforced() {
    let service = |i: usize, backends: usize| {
        let list: Vec<String> = (0..backends)
            .map(|b| format!("{{ address = \"198.19.{}.{}:80\" }}", b / 250, 1 + b % 250))
            .collect();
        format!(
            "[[service]]\nname = \"s{i}\"\nlisten = \"198.18.{}.{}:{}\"\nprotocol = \"tcp\"\nbackends = [ {} ]\n",
            100 + i / 60_000,
            1 + (i / 250) % 250,
            1 + i % 250,
            list.join(", ")
        )
    };
    let config = |services: Vec<String>| format!("interfaces = [\"eth0\"]\n{}", services.concat());
    let errors = |text: String| -> String {
        Config::parse(&text)
            .unwrap_err()
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    };

    let too_many_backends = errors(config(vec![service(0, 1_025)]));
    assert!(
        too_many_backends.contains("1025 backends, at most 1024"),
        "{too_many_backends}"
    );
    assert!(Config::parse(&config(vec![service(0, 1_024)])).is_ok());

    let services = (0..limits::MAX_SERVICES as usize + 1)
        .map(|i| service(i, 1))
        .collect();
    let too_many_services = errors(config(services));
    assert!(
        too_many_services.contains("too many services: at most 16384"),
        "{too_many_services}"
    );

    let services = (0..65).map(|i| service(i, 1_024)).collect();
    let too_many_in_all = errors(config(services));
    assert!(
        too_many_in_all.contains("66560 backends in all: at most 65536"),
        "{too_many_in_all}"
    );
}

#[test]
fn pin_path_and_metrics() {
    let text = format!("pin_path = \"/sys/fs/bpf/lb1\"\nmetrics = \"127.0.0.1:9100\"\n{VALID}");
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.pin_path, PathBuf::from("/sys/fs/bpf/lb1"));
    assert_eq!(config.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    let bad = format!("pin_path = \"xlb\"\nmetrics = \"localhost\"\n{VALID}");
    let errors = errors_of(&bad);
    assert!(
        errors[0].contains("pin_path: \"xlb\" must be an absolute path"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("metrics: \"localhost\" is not an address"),
        "{errors:?}"
    );
}

#[test]
fn host_ports_are_a_protocol_and_a_port_each_once() {
    let config = Config::parse(&format!(
        "host_ports = [\"tcp/22\", \"tcp/179\", \"udp/53\"]\n{}",
        with_service_keys("")
    ))
    .unwrap();
    assert_eq!(
        config.host_ports,
        [
            (Protocol::Tcp, 22),
            (Protocol::Tcp, 179),
            (Protocol::Udp, 53)
        ]
    );
    let errors = errors_of(&format!(
        "host_ports = [\"tcp/22\", \"ssh\", \"sctp/9\", \"tcp/0\", \"tcp/22\"]\n{}",
        with_service_keys("")
    ));
    assert_eq!(
        errors,
        [
            "1:25: host_ports: \"ssh\" is not a protocol and a port, like \"tcp/22\"",
            "1:32: host_ports: \"sctp/9\" is not a protocol and a port, like \"tcp/22\"",
            "1:42: host_ports: \"tcp/0\" is not a protocol and a port, like \"tcp/22\"",
            "1:51: host_ports: \"tcp/22\" is listed twice",
        ]
    );
}
