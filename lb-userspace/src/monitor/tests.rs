//! The monitor with fake maps and a paused clock: what reaches the tables, and in what order.

use std::time::Duration;

use super::{
    checkers::{BackendRef, Event},
    *,
};
use crate::{
    control::fake::FakeMaps,
    health::{
        agent::{AgentAdmin, AgentReport},
        state::State,
    },
};

const CONFIG: &str = r#"
interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
health = { check = "tcp", interval = "100ms", timeout = "50ms", rise = 2, fall = 3, slowstart = "10s" }
load = { agent_port = 9777, interval = "100ms", overload_below = "20%" }
"#;

const B1: BackendRef = BackendRef {
    service: 0,
    backend: 0,
    generation: 0,
};
const B2: BackendRef = BackendRef {
    service: 0,
    backend: 1,
    generation: 0,
};

/// A monitor whose backends all passed their first check, applied to fake maps.
fn started() -> (Monitor, FakeMaps) {
    let mut monitor = Monitor::new(Config::parse(CONFIG).unwrap(), None, None, false).unwrap();
    for status in &mut monitor.statuses[0] {
        status.health.observe(Ok(()), 2, 3);
    }
    let mut maps = FakeMaps::default();
    monitor.evaluate(&mut maps).unwrap();
    (monitor, maps)
}

fn table(maps: &FakeMaps) -> Vec<u32> {
    maps.tables[&0].clone()
}

fn fail() -> Event {
    Event::Health(B2, Err("connection refused".into()), Duration::ZERO)
}

fn state_of(monitor: &Monitor, at: BackendRef) -> State {
    monitor.statuses[at.service][at.backend]
        .reported
        .as_ref()
        .unwrap()
        .state
}

#[tokio::test(start_paused = true)]
async fn a_backend_failing_fall_checks_leaves_at_once_and_its_flows_are_purged() {
    let (mut monitor, mut maps) = started();
    assert_eq!(table(&maps), [0, 1, 2]);
    maps.flows_by_backend.insert(1, 7);

    for n in 1..=2 {
        assert!(!monitor.handle(fail()), "failure {n} of 3 changes nothing");
    }
    assert!(monitor.handle(fail()));
    maps.log.clear();
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(
        maps.log,
        ["table 0 [0, 2]", "purge [1]"],
        "the table first, then the purge"
    );
    assert_eq!(state_of(&monitor, B2), State::Down);
}

#[tokio::test(start_paused = true)]
async fn a_recovered_backend_rises_then_ramps_up_slowly() {
    let (mut monitor, mut maps) = started();
    for _ in 0..3 {
        monitor.handle(fail());
    }
    monitor.evaluate(&mut maps).unwrap();
    assert!(
        !monitor.handle(Event::Health(B2, Ok(()), Duration::ZERO)),
        "rise is 2"
    );
    assert!(monitor.handle(Event::Health(B2, Ok(()), Duration::ZERO)));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B2), State::Up);
    // Slow start: weight 1 against 100 at first, then growing.
    let weights = |monitor: &Monitor| {
        monitor.balancer().services()[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>()
    };
    assert_eq!(weights(&monitor), [100, 1, 100]);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(monitor.any_ramping());
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(weights(&monitor), [100, 50, 100]);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(!monitor.any_ramping());
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(weights(&monitor), [100, 100, 100]);
    assert_eq!(table(&maps), [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn drain_and_overload_stop_new_flows_without_purging() {
    let (mut monitor, mut maps) = started();
    maps.flows_by_backend.insert(0, 3);
    let drain = AgentReport {
        admin: Some(AgentAdmin::Drain),
        ..Default::default()
    };
    assert!(monitor.handle(Event::Agent(B1, Ok(drain))));
    maps.log.clear();
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(maps.log, ["table 0 [1, 2]"], "no purge for a drain");
    assert_eq!(state_of(&monitor, B1), State::Draining);

    let busy = AgentReport {
        weight_percent: Some(10),
        ..Default::default()
    };
    assert!(monitor.handle(Event::Agent(B2, Ok(busy))));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B2), State::Overloaded);
    assert_eq!(
        table(&maps),
        [2],
        "only the backend with room takes new flows"
    );

    let ready = AgentReport {
        weight_percent: Some(100),
        ready: true,
        ..Default::default()
    };
    monitor.handle(Event::Agent(B1, Ok(ready.clone())));
    monitor.handle(Event::Agent(B2, Ok(ready)));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(table(&maps), [0, 1, 2]);
    assert!(!maps.log.iter().any(|line| line.starts_with("purge")));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_agent_changes_nothing() {
    let (mut monitor, mut maps) = started();
    assert!(!monitor.handle(Event::Agent(B1, Err("refused".into()))));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B1), State::Up);
    assert_eq!(table(&maps), [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn all_backends_down_leaves_an_empty_table() {
    let (mut monitor, mut maps) = started();
    for backend in 0..3 {
        for _ in 0..3 {
            monitor.handle(Event::Health(
                BackendRef {
                    service: 0,
                    backend,
                    generation: 0,
                },
                Err("timed out".into()),
                Duration::ZERO,
            ));
        }
    }
    monitor.evaluate(&mut maps).unwrap();
    assert!(table(&maps).is_empty());
}
