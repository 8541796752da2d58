//! An operator pauses a backend's checks: it holds their last verdict, its results and
//! passive marks stop deciding, a restart keeps the pause, and resuming hands back to them.

use std::time::Duration;

use super::{
    checkers::Event,
    tests::{B2, CONFIG, fail, marked_b2, started, state_of, table},
    *,
};
use crate::{
    control::fake::FakeMaps,
    health::state::{Paused, State},
};

const ADDRESS: &str = "198.18.1.12:8080";

/// Makes `change` to B2, as root.
fn change(monitor: &mut Monitor, maps: &mut FakeMaps, change: Change) -> Result<String> {
    let backend = targets::BackendAddress::One(ADDRESS.parse().unwrap());
    monitor.change_backend(maps, "web", backend, change, "root (uid 0)")
}

#[tokio::test(start_paused = true)]
async fn paused_checks_hold_the_verdict_until_resumed() {
    let (mut monitor, mut maps) = started();
    let mut received = monitor.events.take().unwrap();
    let said = change(&mut monitor, &mut maps, Change::PauseChecks).unwrap();
    assert!(said.contains("checks paused: it stays up"), "{said}");
    assert!(monitor.checkers.is_paused_now(0, 1));
    assert!(!monitor.checkers.is_paused_now(0, 0));

    // Failed checks (one under way when paused) decide nothing.
    for _ in 0..5 {
        assert!(!monitor.handle(fail()));
    }
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B2), State::Up);
    assert_eq!(table(&maps), [0, 1, 2]);
    let reason = &monitor.core.statuses()[0][1]
        .reported
        .as_ref()
        .unwrap()
        .reason;
    assert!(
        reason.ends_with("; checks paused by the operator"),
        "{reason}"
    );

    // A passive mark is not confirmed by a check: it lasts its hold, then clears.
    assert!(monitor.handle(Event::Passive(marked_b2())));
    let confirm = received.recv().await.unwrap();
    assert!(
        matches!(confirm, Event::Confirm(at, Ok(()), _) if at == B2),
        "the hold's end, not a check"
    );
    assert!(monitor.handle(confirm));
    assert_eq!(monitor.core.statuses()[0][1].suspect, None);

    // Resumed: the checks decide again, and the setting is gone.
    let said = change(&mut monitor, &mut maps, Change::ResumeChecks).unwrap();
    assert!(said.contains("checks resumed"), "{said}");
    assert!(monitor.operators.is_empty());
    assert!(!monitor.checkers.is_paused_now(0, 1));
    for _ in 0..3 {
        monitor.handle(fail());
    }
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B2), State::Down);
}

#[tokio::test(start_paused = true)]
async fn a_pause_needs_checks_that_decided_and_is_kept_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("xlb-paused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = || Config::parse(CONFIG).unwrap();
    let mut monitor = Monitor::new(config(), None, Some(&dir), false).unwrap();
    let mut maps = FakeMaps::default();
    let error = change(&mut monitor, &mut maps, Change::PauseChecks).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no check has decided its health yet"),
        "{error:#}"
    );
    for _ in 0..3 {
        monitor.handle(fail());
    }
    change(&mut monitor, &mut maps, Change::PauseChecks).unwrap();
    // Paused again: the first verdict stays.
    monitor.handle(Event::Health(B2, Ok(()), Duration::ZERO));
    change(&mut monitor, &mut maps, Change::PauseChecks).unwrap();

    let restarted = Monitor::new(config(), None, Some(&dir), false).unwrap();
    let status = &restarted.core.statuses()[0][1];
    assert_eq!(status.checks_paused(), Some(Paused::Down));
    assert!(status.health.is_known() && !status.health.is_up());
    assert!(!restarted.core.statuses()[0][0].health.is_known());

    let unchecked = CONFIG.replace(
        r#"health = { check = "tcp","#,
        r#"health = { check = "none","#,
    );
    let mut monitor = Monitor::new(Config::parse(&unchecked).unwrap(), None, None, false).unwrap();
    let error = change(&mut monitor, &mut maps, Change::PauseChecks).unwrap_err();
    assert!(
        error.to_string().contains("has no health checks to pause"),
        "{error:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
