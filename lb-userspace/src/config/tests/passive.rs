//! Passive health and admission settings: defaults, the documented forms, and errors.

use std::time::Duration;

use super::{errors_of, with_service_keys};
use crate::config::{AdmissionConfig, Config, PassiveConfig};

#[test]
fn passive_health_is_on_for_tcp_and_absent_for_udp() {
    let config = Config::parse(super::VALID).unwrap();
    let web = &config.services[0];
    assert_eq!(
        web.passive,
        Some(PassiveConfig {
            refused: 1,
            unanswered: 2,
            window: Duration::from_secs(1),
            hold: Duration::from_secs(2),
            max_share: 50,
        })
    );
    assert!(web.passive.as_ref().unwrap().enabled());
    assert_eq!(config.services[1].passive, None, "UDP has no handshake");
    assert_eq!(web.admission, None, "no limit unless configured");
}

#[test]
fn passive_and_admission_as_in_the_documentation() {
    let text = with_service_keys(
        r#"passive = { refused = 3, unanswered = 0, window = "500ms", hold = "5s", max_share = "25%" }
admission = { rate = 200, burst = 400, ipv4_prefix = 28, ipv6_prefix = 56 }"#,
    );
    let service = &Config::parse(&text).unwrap().services[0];
    assert_eq!(
        service.passive,
        Some(PassiveConfig {
            refused: 3,
            unanswered: 0,
            window: Duration::from_millis(500),
            hold: Duration::from_secs(5),
            max_share: 25,
        })
    );
    assert_eq!(
        service.admission,
        Some(AdmissionConfig {
            rate: 200,
            burst: 400,
            ipv4_prefix: 28,
            ipv6_prefix: 56,
        })
    );
    let off = with_service_keys("passive = { refused = 0, unanswered = 0 }");
    let off = Config::parse(&off).unwrap();
    assert!(!off.services[0].passive.as_ref().unwrap().enabled());
    let burst_defaults_to_rate = with_service_keys("admission = { rate = 50 }");
    let admission = Config::parse(&burst_defaults_to_rate).unwrap().services[0]
        .admission
        .clone()
        .unwrap();
    assert_eq!(
        (
            admission.burst,
            admission.ipv4_prefix,
            admission.ipv6_prefix
        ),
        (50, 24, 64)
    );
}

#[test]
fn bad_passive_and_admission_settings_are_reported() {
    for (keys, problem) in [
        (
            "passive = { refused = 101 }",
            "passive: refused 101 is out of range 0..=100",
        ),
        ("passive = { unanswered = -1 }", "out of range 0..=100"),
        (
            r#"passive = { window = "1ms" }"#,
            "window: \"1ms\" is out of range 10ms..=10m",
        ),
        (
            r#"passive = { hold = "later" }"#,
            "\"later\" is not a duration",
        ),
        (r#"passive = { max_share = "150%" }"#, "is not a percentage"),
        ("passive = { observe = 1 }", "unknown key `observe`"),
        (
            "admission = { burst = 10 }",
            "admission: missing key `rate`",
        ),
        (
            "admission = { rate = 0 }",
            "rate 0 is out of range 1..=10000000",
        ),
        (
            "admission = { rate = 10, ipv4_prefix = 33 }",
            "ipv4_prefix 33 is out of range 1..=32",
        ),
        (
            "admission = { rate = 10, ipv6_prefix = 0 }",
            "ipv6_prefix 0 is out of range 1..=128",
        ),
    ] {
        let errors = errors_of(&with_service_keys(keys));
        assert!(
            errors.iter().any(|e| e.contains(problem)),
            "{keys}: expected {problem:?} in {errors:?}"
        );
    }
    let udp = super::VALID.replace(
        "backends = [ { address = \"198.18.1.11:5353\", weight = 0 }, { address = \"198.18.1.13:5353\" } ]",
        "backends = [ { address = \"198.18.1.11:5353\", weight = 0 }, { address = \"198.18.1.13:5353\" } ]\npassive = { refused = 1 }",
    );
    assert!(errors_of(&udp)[0].contains("a UDP service has none"));
}
