//! `drain_timeout`: how long a backend removed from the config keeps its connections.

use std::time::Duration;

use super::{errors_of, with_service_keys};
use crate::config::Config;

#[test]
fn a_removed_backend_drains_for_five_minutes_unless_told_otherwise() {
    let default = Config::parse(&with_service_keys("")).unwrap();
    assert_eq!(default.services[0].drain_timeout, Duration::from_secs(300));
    let set = Config::parse(&with_service_keys("drain_timeout = \"90s\"")).unwrap();
    assert_eq!(set.services[0].drain_timeout, Duration::from_secs(90));
    let at_once = Config::parse(&with_service_keys("drain_timeout = \"0s\"")).unwrap();
    assert_eq!(at_once.services[0].drain_timeout, Duration::ZERO);
}

#[test]
fn a_bad_drain_timeout_is_located_and_named() {
    for (value, problem) in [
        (
            "\"soon\"",
            "service \"web\": drain_timeout: \"soon\" is not a duration",
        ),
        (
            "\"8days\"",
            "service \"web\": drain_timeout: \"8days\" is out of range 0s..=7days",
        ),
    ] {
        let errors = errors_of(&with_service_keys(&format!("drain_timeout = {value}")));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("7:") && e.contains(problem)),
            "{value}: expected {problem:?} at line 7 in {errors:#?}"
        );
    }
}
