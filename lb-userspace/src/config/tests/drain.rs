//! `drain_timeout`: how long a backend removed from the config keeps its connections; and
//! `persistence`: how long a client's new flows follow its last one.

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

#[test]
fn persistence_is_off_unless_set_and_bounded_by_what_the_data_plane_keeps() {
    let off = Config::parse(&with_service_keys("")).unwrap();
    assert_eq!(off.services[0].persistence, None);
    let set = Config::parse(&with_service_keys("persistence = \"10m\"")).unwrap();
    assert_eq!(set.services[0].persistence, Some(Duration::from_secs(600)));
    // Whole seconds.
    let part = Config::parse(&with_service_keys("persistence = \"2500ms\"")).unwrap();
    assert_eq!(part.services[0].persistence, Some(Duration::from_secs(2)));
    for (value, problem) in [
        (
            "\"500ms\"",
            "persistence: \"500ms\" is out of range 1s..=18h 12m 15s",
        ),
        (
            "\"1day\"",
            "persistence: \"1day\" is out of range 1s..=18h 12m 15s",
        ),
        (
            "600",
            "persistence: invalid type: integer `600`, expected a string",
        ),
    ] {
        let errors = errors_of(&with_service_keys(&format!("persistence = {value}")));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("7:") && e.contains(problem)),
            "{value}: expected {problem:?} at line 7 in {errors:#?}"
        );
    }
}
