//! The monitor with fake maps and a paused clock: what reaches the tables, and in what order.

use std::time::Duration;

use super::{checkers::Event, core::BackendRef, *};
use crate::{
    control::fake::FakeMaps,
    health::checks::Failure,
    health::{
        agent::{AgentAdmin, AgentReport},
        state::State,
    },
};

pub(super) const CONFIG: &str = r#"
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
pub(super) const B2: BackendRef = BackendRef {
    service: 0,
    backend: 1,
    generation: 0,
};

/// A monitor whose backends all passed their first check, applied to fake maps.
pub(super) fn started() -> (Monitor, FakeMaps) {
    started_with(Config::parse(CONFIG).unwrap())
}

/// [`started`] with another config.
pub(super) fn started_with(config: Config) -> (Monitor, FakeMaps) {
    let mut monitor = Monitor::new(config, None, None, false).unwrap();
    for status in &mut monitor.core.statuses_mut().1[0] {
        status.health.observe(Ok(()), 2, 3);
    }
    let mut maps = FakeMaps::default();
    monitor.evaluate(&mut maps).unwrap();
    (monitor, maps)
}

pub(super) fn table(maps: &FakeMaps) -> Vec<u32> {
    maps.tables[&0].clone()
}

pub(super) fn fail() -> Event {
    Event::Health(B2, Err("connection refused".into()), Duration::ZERO)
}

pub(super) fn state_of(monitor: &Monitor, at: BackendRef) -> State {
    monitor.core.statuses()[at.service][at.backend]
        .reported
        .as_ref()
        .unwrap()
        .state
}

#[tokio::test(start_paused = true)]
async fn a_backend_failing_fall_checks_leaves_at_once_and_keeps_its_connections() {
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
        ["table 0 [0, 2]", "purge unestablished [1]", "mark- 1"],
        "the table first, then the purge of its UDP flows and handshakes (then the Down \
         backend's passive mark is cleared); its established connections stay"
    );
    assert_eq!(state_of(&monitor, B2), State::Down);
    maps.log.clear();
    monitor.evaluate(&mut maps).unwrap();
    assert!(maps.log.is_empty(), "purged once: {:?}", maps.log);

    // Then its host is proven gone: its connections cannot be served, and go too.
    let gone = Failure {
        message: "connect 198.18.1.12:8080: No route to host (os error 113)".into(),
        host_gone: true,
        timed_out: false,
    };
    monitor.handle(Event::Health(B2, Err(gone), Duration::ZERO));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(maps.log, ["purge [1]"]);

    // Up again, then Down again: purged again.
    for _ in 0..2 {
        monitor.handle(Event::Health(B2, Ok(()), Duration::ZERO));
    }
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B2), State::Up);
    maps.log.clear();
    for _ in 0..3 {
        monitor.handle(fail());
    }
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(
        maps.log,
        ["table 0 [0, 2]", "purge unestablished [1]", "mark- 1"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_loses_none_of_a_down_backends_writes() {
    // Whichever write fails (the table, the mark's clearing, the purge), the next evaluation
    // makes every write still missing: nothing was recorded as done before it was.
    for failing in 0..3 {
        let (mut monitor, mut maps) = started();
        for _ in 0..3 {
            monitor.handle(fail());
        }
        maps.log.clear();
        maps.fail_in = Some(failing);
        assert!(
            monitor.evaluate(&mut maps).is_err(),
            "write {failing} fails"
        );
        monitor.evaluate(&mut maps).unwrap();
        let written: Vec<&str> = maps
            .log
            .iter()
            .map(String::as_str)
            .filter(|w| *w != "failed")
            .collect();
        for write in ["table 0 [0, 2]", "purge unestablished [1]", "mark- 1"] {
            assert!(
                written.contains(&write),
                "write {failing} failed, then {write:?} is missing: {written:?}"
            );
        }
        assert_eq!(state_of(&monitor, B2), State::Down);
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_whose_host_is_proven_gone_leaves_with_its_connections() {
    let (mut monitor, mut maps) = started();
    let gone = Failure {
        message: "connect 198.18.1.12:8080: No route to host (os error 113)".into(),
        host_gone: true,
        timed_out: false,
    };
    assert!(
        monitor.handle(Event::Gone(B2, gone)),
        "one proof, not fall checks"
    );
    maps.log.clear();
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(maps.log, ["table 0 [0, 2]", "purge [1]", "mark- 1"]);
    assert_eq!(state_of(&monitor, B2), State::Down);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_the_flows_of_a_backend_down_at_its_first_check_are_purged() {
    let (_, mut maps) = started();
    maps.flows_by_backend.insert(1, 5);
    // The next daemon takes the maps over; b2 is Down at its first check.
    let mut restarted = Monitor::new(Config::parse(CONFIG).unwrap(), None, None, false).unwrap();
    restarted.adopt(&mut maps).unwrap();
    for (backend, status) in restarted.core.statuses_mut().1[0].iter_mut().enumerate() {
        let result = match backend {
            1 => Err("connection refused".into()),
            _ => Ok(()),
        };
        status.health.observe(result, 2, 3);
    }
    maps.log.clear();
    restarted.evaluate(&mut maps).unwrap();
    assert!(
        maps.log.contains(&"purge unestablished [1]".to_owned()),
        "{:?}",
        maps.log
    );
    assert_eq!(table(&maps), [0, 2], "the earlier daemon's table named it");
}

#[tokio::test(start_paused = true)]
async fn with_on_down_reset_a_down_backend_loses_its_connections_too() {
    let config = Config::parse(&CONFIG.replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\non_down = \"reset\"",
    ))
    .unwrap();
    let (mut monitor, mut maps) = started_with(config);
    for _ in 0..3 {
        monitor.handle(fail());
    }
    maps.log.clear();
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(maps.log, ["table 0 [0, 2]", "purge [1]", "mark- 1"]);
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
        monitor.core.balancer().services()[0]
            .backends
            .iter()
            .map(|b| b.weight)
            .collect::<Vec<_>>()
    };
    assert_eq!(weights(&monitor), [100, 1, 100]);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(monitor.core.any_ramping(Instant::now()));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(weights(&monitor), [100, 50, 100]);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(!monitor.core.any_ramping(Instant::now()));
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

/// The data plane's report of a refused handshake on B2.
pub(super) fn marked_b2() -> lb_common::passive::PassiveEvent {
    lb_common::passive::PassiveEvent {
        time_ns: 5_040_000_000,
        window_start_ns: 5_000_000_000,
        until_ns: 7_000_000_000,
        backend_id: 1,
        service_id: 0,
        refused: 3,
        unanswered: 0,
        kind: lb_common::passive::passive_event::MARKED,
        _pad: [0; 7],
    }
}

#[tokio::test(start_paused = true)]
async fn a_passive_mark_is_shown_checked_at_once_and_a_failed_check_takes_the_backend_down() {
    let (mut monitor, mut maps) = started();
    maps.flows_by_backend.insert(1, 4);
    let mut received = monitor.events.take().unwrap();
    assert!(monitor.handle(Event::Passive(marked_b2())));
    monitor.evaluate(&mut maps).unwrap();
    let status = &monitor.core.statuses()[0][1];
    assert_eq!(
        status.suspect.as_deref(),
        Some("passive: 3 connections refused in 40ms")
    );
    assert_eq!(state_of(&monitor, B2), State::Up, "suspect is not Down");
    assert!(
        status.reported.as_ref().unwrap().reason.contains("suspect"),
        "{:?}",
        status.reported
    );
    assert_eq!(
        table(&maps),
        [0, 1, 2],
        "the data plane skips it; the table stays"
    );

    // The confirming check runs at once; say it was refused.
    let confirm = received.recv().await.unwrap();
    assert!(matches!(confirm, Event::Confirm(at, _, _) if at == B2));
    maps.log.clear();
    let refused = Err("connect 198.18.1.12:8080: Connection refused (os error 111)".into());
    assert!(monitor.handle(Event::Confirm(B2, refused, Duration::ZERO)));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(
        state_of(&monitor, B2),
        State::Down,
        "confirmed: Down at once"
    );
    assert!(
        monitor.core.statuses()[0][1]
            .reported
            .as_ref()
            .unwrap()
            .reason
            .contains("confirming passive: 3 connections refused"),
        "{:?}",
        monitor.core.statuses()[0][1].reported
    );
    assert_eq!(
        maps.log,
        ["table 0 [0, 2]", "purge unestablished [1]", "mark- 1"]
    );
    assert_eq!(monitor.core.statuses()[0][1].passive_marks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_confirming_check_that_times_out_counts_as_one_failed_check() {
    let (mut monitor, mut maps) = started();
    let _received = monitor.events.take().unwrap();
    let timed_out = || Failure {
        message: "no answer within 50ms".into(),
        host_gone: false,
        timed_out: true,
    };
    assert!(monitor.handle(Event::Passive(marked_b2())));
    monitor.handle(Event::Confirm(B2, Err(timed_out()), Duration::ZERO));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(
        state_of(&monitor, B2),
        State::Up,
        "one failure of fall = 3: a backend too busy to accept in time is not Down"
    );
    // Two more failed checks (of any kind) make three.
    monitor.handle(Event::Health(B2, Err(timed_out()), Duration::ZERO));
    monitor.handle(fail());
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(state_of(&monitor, B2), State::Down);
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_clears_a_passive_mark() {
    let (mut monitor, mut maps) = started();
    let _received = monitor.events.take().unwrap();
    assert!(monitor.handle(Event::Passive(marked_b2())));
    maps.log.clear();
    assert!(monitor.handle(Event::Confirm(B2, Ok(()), Duration::ZERO)));
    monitor.evaluate(&mut maps).unwrap();
    assert_eq!(
        maps.log,
        ["mark- 1"],
        "the mark is cleared, nothing else changes"
    );
    assert_eq!(monitor.core.statuses()[0][1].suspect, None);
    assert_eq!(state_of(&monitor, B2), State::Up);
    // A report for an id no backend has, or the cap's report, changes nothing.
    let stranger = lb_common::passive::PassiveEvent {
        backend_id: 99,
        ..marked_b2()
    };
    assert!(!monitor.handle(Event::Passive(stranger)));
    let capped = lb_common::passive::PassiveEvent {
        kind: lb_common::passive::passive_event::CAPPED,
        ..marked_b2()
    };
    assert!(!monitor.handle(Event::Passive(capped)));
    assert_eq!(monitor.core.statuses()[0][1].suspect, None);
}

#[test]
fn passive_reports_read_as_operators_expect() {
    let both = lb_common::passive::PassiveEvent {
        refused: 1,
        unanswered: 2,
        time_ns: 6_200_000_000,
        ..marked_b2()
    };
    assert_eq!(
        passive::describe(&both),
        "passive: 1 connection refused, 2 handshakes unanswered in 1s 200ms"
    );
}

/// The reports (`xlb status`, `xlb stats`, `xlb flows`) and the trace's filter, against the
/// fake maps: no kernel needed.
#[tokio::test(start_paused = true)]
async fn status_stats_flows_and_trace_read_the_data_plane_through_its_read_port() {
    let (mut monitor, mut maps) = started();
    maps.service_counters.insert(
        0,
        lb_common::TrafficCounters {
            fwd_packets: 30,
            new_flows: 3,
            ..Default::default()
        },
    );
    maps.backend_counters.insert(
        1,
        lb_common::TrafficCounters {
            new_flows: 2,
            ..Default::default()
        },
    );
    maps.active.insert(1, 4);
    assert!(
        !monitor.reports.count_active_flows(&mut monitor.core, &maps),
        "no service has max_flows"
    );
    // Two connections on backend 1, one of them closing: the open one counts, the closing one
    // apart.
    let flow = |port: u16, flags: u8| {
        let key = lb_common::FlowKey {
            src_port: port.to_be(),
            proto: lb_common::consts::proto::TCP,
            ..Default::default()
        };
        let entry = lb_common::FlowEntry {
            backend_id: 1,
            flags,
            ..Default::default()
        };
        (key, entry, false)
    };
    maps.flow_entries = vec![
        flow(40_000, 0),
        flow(40_001, lb_common::consts::flow_flags::CLOSING),
    ];
    let interfaces = vec![crate::report::InterfaceHook {
        name: "eth0".to_owned(),
        hook: "tc".to_owned(),
    }];
    let status = monitor.status(None, interfaces.clone(), &maps).unwrap();
    assert_eq!(status.interfaces, interfaces);
    let web = &status.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.backends[1].active_flows, 4);
    assert_eq!(web.backends[1].state, "Up");
    let connections = web.backends[1].connections;
    assert_eq!((connections.open(), connections.closing), (1, 1));
    assert_eq!(web.backends[0].connections.open(), 0);
    assert!(monitor.status(Some("nope"), Vec::new(), &maps).is_err());
    maps.flow_entries.clear();

    let stats = monitor.stats(None, &maps).unwrap();
    assert_eq!(stats.services[0].counters.new_flows, 3);
    assert_eq!(stats.services[0].backends[1].counters.new_flows, 2);
    assert_eq!(stats.flow_table.active_ipv4, 4);
    let names = |service| -> Vec<String> {
        let stats = monitor.stats(Some(service), &maps).unwrap();
        stats.services.into_iter().map(|s| s.name).collect()
    };
    assert_eq!(names("web"), ["web"]);
    assert!(monitor.stats(Some("nope"), &maps).is_err());

    // One established flow from 198.18.0.2:40000 on b2, seen 2 s ago.
    maps.now_ns = 100_000_000_000;
    let key = lb_common::FlowKey {
        src_addr: crate::wire::addr_field("198.18.0.2".parse().unwrap()),
        dst_addr: crate::wire::addr_field("198.18.100.1".parse().unwrap()),
        src_port: crate::wire::port_field(40000),
        dst_port: crate::wire::port_field(80),
        proto: 6,
        family: 4,
        _pad: [0; 2],
    };
    let entry = lb_common::FlowEntry {
        service_id: 0,
        backend_id: 1,
        last_seen_ns: 98_000_000_000,
        created_s: 90,
        ..Default::default()
    };
    maps.flow_entries.push((key, entry, false));
    let query = FlowQuery {
        service: Some("web".into()),
        limit: 10,
        ..FlowQuery::default()
    };
    let flows = monitor.flows(&maps, &query).unwrap();
    assert_eq!(flows.matched, 1);
    assert_eq!(flows.flows[0].backend.to_string(), "198.18.1.12:8080");
    assert_eq!(flows.flows[0].idle_seconds, 2.0);
    let elsewhere = FlowQuery {
        backend: Some("198.18.1.13:8080".parse().unwrap()),
        ..query
    };
    assert_eq!(monitor.flows(&maps, &elsewhere).unwrap().matched, 0);

    // The trace's filter: the service's id and the client prefix, checked.
    let request = TraceRequest {
        service: "web".into(),
        client: Some("198.18.0.0/24".into()),
        seconds: 10,
        sample: 1,
    };
    let (filter, names) = trace::filter(&monitor.core, &request, 5).unwrap();
    assert_eq!((filter.service_id, filter.prefix_len), (0, 24));
    assert_eq!(filter.until_ns, 5 + 10_000_000_000);
    assert_eq!(names.services[&0], "web");
    let other_family = TraceRequest {
        client: Some("fd00::/64".into()),
        ..request
    };
    let error = trace::filter(&monitor.core, &other_family, 5).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is IPv6 and service \"web\" is IPv4"),
        "{error}"
    );
}

#[test]
fn counts_in_logs_agree_with_their_number() {
    use super::core::count;
    assert_eq!(count(1, "backend"), "1 backend");
    assert_eq!(count(0, "service"), "0 services");
    assert_eq!(count(6, "backend"), "6 backends");
}
