//! The health, agent, overload and slow-start state machines.

use super::*;

fn pass() -> CheckResult {
    Ok(())
}
fn fail() -> CheckResult {
    Err("connection refused".into())
}

#[test]
fn the_first_check_decides_then_rise_and_fall_need_consecutive_results() {
    let mut health = Health::unknown();
    assert!(!health.is_known());
    assert_eq!(health.observe(pass(), 2, 3), Some(true));

    // fall = 3: two failures, a pass (which resets the count), then three failures.
    assert_eq!(health.observe(fail(), 2, 3), None);
    assert_eq!(health.observe(fail(), 2, 3), None);
    assert_eq!(health.observe(pass(), 2, 3), None);
    assert_eq!(health.observe(fail(), 2, 3), None);
    assert_eq!(health.observe(fail(), 2, 3), None);
    assert!(health.is_up());
    assert_eq!(health.observe(fail(), 2, 3), Some(false));
    assert_eq!(health.failure(), Some("connection refused"));

    // rise = 2: a pass, a failure (reset), then two passes.
    assert_eq!(health.observe(pass(), 2, 3), None);
    assert_eq!(health.observe(fail(), 2, 3), None);
    assert_eq!(health.observe(pass(), 2, 3), None);
    assert_eq!(health.observe(pass(), 2, 3), Some(true));
    assert_eq!(health.failure(), None);
}

#[test]
fn a_failing_first_check_starts_down() {
    let mut health = Health::unknown();
    assert_eq!(health.observe(fail(), 2, 3), Some(false));
    assert!(!health.is_up());
}

#[test]
fn rise_and_fall_of_one_flip_at_once() {
    let mut health = Health::unchecked();
    assert_eq!(health.observe(fail(), 1, 1), Some(false));
    assert_eq!(health.observe(pass(), 1, 1), Some(true));
}

#[test]
fn a_host_proven_gone_is_down_at_once_and_stays_gone_until_it_answers() {
    let timed_out = || {
        Err(Failure {
            message: "no answer within 100ms".into(),
            host_gone: false,
            timed_out: true,
        })
    };
    let gone = || Failure {
        message: "connect: No route to host".into(),
        host_gone: true,
        timed_out: false,
    };
    let mut health = Health::unchecked();
    assert_eq!(
        health.observe(timed_out(), 2, 3),
        None,
        "one timeout of three"
    );
    assert!(health.prove_gone(gone()));
    assert!(!health.is_up() && health.host_gone());
    assert!(!health.prove_gone(gone()), "proven once");
    // Later timeouts do not disprove it; an answer does, even a refusal.
    assert_eq!(health.observe(timed_out(), 2, 3), None);
    assert!(health.host_gone());
    assert_eq!(health.observe(fail(), 2, 3), None);
    assert!(!health.host_gone());
    // A Down backend proven gone later: a change (its connections go too).
    assert!(health.prove_gone(gone()));
}

fn report(percent: Option<u32>, ready: bool, admin: Option<AgentAdmin>) -> AgentReport {
    AgentReport {
        weight_percent: percent,
        ready,
        admin,
    }
}

#[test]
fn agent_words_persist_until_cleared() {
    let mut agent = AgentState::default();
    assert_eq!(agent.percent(), 100);
    agent.apply(&report(Some(75), false, None));
    assert_eq!(agent.percent(), 75);
    agent.apply(&report(None, false, Some(AgentAdmin::Drain)));
    agent.apply(&report(None, false, None));
    assert_eq!(
        agent.admin,
        Some(AgentAdmin::Drain),
        "drain stays until ready"
    );
    assert_eq!(
        agent.percent(),
        75,
        "the percentage stays until the next one"
    );
    agent.apply(&report(Some(100), true, None));
    assert_eq!(
        agent,
        AgentState {
            weight_percent: Some(100),
            admin: None
        }
    );
}

fn up_backend() -> BackendStatus {
    let mut status = BackendStatus::new(2, Health::unknown());
    status.health.observe(Ok(()), 2, 3);
    status
}

fn load(overload_below: Option<u32>, max_flows: Option<u64>) -> LoadConfig {
    LoadConfig {
        agent_port: Some(9777),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        overload_below,
        max_flows,
    }
}

#[test]
fn states_and_reasons() {
    let now = Instant::now();
    let mut backend = BackendStatus::new(1, Health::unknown());
    assert_eq!(backend.state(None, None, now).0, State::Down);
    backend.health.observe(Ok(()), 2, 3);
    assert_eq!(
        backend.state(None, None, now),
        (State::Up, "checks pass, weight 100%".into())
    );
    backend
        .agent
        .apply(&report(None, false, Some(AgentAdmin::Maint)));
    assert_eq!(
        backend.state(None, None, now),
        (State::Draining, "agent says maint".into())
    );
    backend.agent.apply(&report(
        None,
        false,
        Some(AgentAdmin::Down("stopped".into())),
    ));
    assert_eq!(
        backend.state(None, None, now),
        (State::Down, "agent says stopped".into())
    );
    backend.agent.apply(&report(None, true, None));
    backend
        .health
        .observe(Err("timed out after 300ms".into()), 2, 1);
    assert_eq!(
        backend.state(None, None, now),
        (State::Down, "health check: timed out after 300ms".into())
    );
}

#[test]
fn overload_has_hysteresis() {
    let now = Instant::now();
    let config = load(Some(20), Some(1_000));
    let mut backend = up_backend();

    backend.agent.apply(&report(Some(25), false, None));
    backend.update_overload(&config);
    assert!(!backend.overloaded);
    backend.agent.apply(&report(Some(19), false, None));
    backend.update_overload(&config);
    assert!(backend.overloaded);
    assert_eq!(
        backend.state(Some(&config), None, now),
        (
            State::Overloaded,
            "agent weight 19% (overloaded below 20%)".into()
        )
    );
    // 25% is above the threshold but not above it plus the recovery margin.
    backend.agent.apply(&report(Some(25), false, None));
    backend.update_overload(&config);
    assert!(backend.overloaded, "no flapping just above the threshold");
    backend.agent.apply(&report(Some(30), false, None));
    backend.update_overload(&config);
    assert!(!backend.overloaded);

    backend.active_flows = Some(1_001);
    backend.update_overload(&config);
    assert!(backend.overloaded);
    backend.active_flows = Some(950);
    backend.update_overload(&config);
    assert!(backend.overloaded, "950 > 90% of 1000");
    backend.active_flows = Some(900);
    backend.update_overload(&config);
    assert!(!backend.overloaded);
}

#[test]
fn overloaded_backends_get_no_new_flows_while_another_has_room() {
    let now = Instant::now();
    let config = load(Some(20), None);
    let mut busy = up_backend();
    busy.agent.apply(&report(Some(10), false, None));
    busy.update_overload(&config);
    let free = up_backend();
    let mut down = BackendStatus::new(1, Health::unknown());
    down.health.observe(Err("refused".into()), 2, 3);

    assert_eq!(
        table_weights(&[&busy, &free, &down], Some(&config), None, now),
        [0, 200, 0]
    );
    // With nobody else to take them, the overloaded backend serves new flows (scaled).
    assert_eq!(
        table_weights(&[&busy, &down], Some(&config), None, now),
        [20, 0]
    );
}

#[test]
fn weights_scale_with_the_agent_and_slow_start() {
    let start = Instant::now();
    let mut backend = up_backend();
    assert_eq!(backend.serving_weight(None, start), 200);
    backend.agent.apply(&report(Some(50), false, None));
    assert_eq!(backend.serving_weight(None, start), 100);

    let slowstart = Some(Duration::from_secs(10));
    backend.came_up_at = Some(start);
    assert_eq!(
        backend.serving_weight(slowstart, start),
        1,
        "just up: the smallest weight"
    );
    assert_eq!(
        backend.serving_weight(slowstart, start + Duration::from_secs(5)),
        50
    );
    assert!(backend.ramping(slowstart, start + Duration::from_secs(5)));
    assert_eq!(
        backend.serving_weight(slowstart, start + Duration::from_secs(20)),
        100
    );
    assert!(!backend.ramping(slowstart, start + Duration::from_secs(20)));
    assert_eq!(
        backend.state(None, slowstart, start + Duration::from_secs(5)),
        (State::Up, "checks pass, weight 50%, slow start 50%".into())
    );

    backend.agent.apply(&report(Some(0), false, None));
    assert_eq!(backend.serving_weight(None, start), 0);
    assert_eq!(backend.state(None, None, start).0, State::Draining);
}

#[test]
fn an_operator_can_drain_or_disable_a_healthy_backend() {
    let now = Instant::now();
    let mut backend = up_backend();
    backend.operator = Some(operator(Some(Admin::Drain), None));
    assert_eq!(
        backend.state(None, None, now),
        (State::Draining, "drained by the operator".into())
    );
    assert_eq!(table_weights(&[&backend], None, None, now), [0]);
    backend.operator = Some(operator(Some(Admin::Disable), None));
    assert_eq!(
        backend.state(None, None, now),
        (State::Down, "disabled by the operator".into())
    );
    backend.operator = None;
    assert_eq!(backend.state(None, None, now).0, State::Up);
}

fn operator(admin: Option<Admin>, weight: Option<u32>) -> Operator {
    Operator {
        admin,
        weight,
        checks_paused: None,
        by: "root (uid 0)".into(),
        at: 1_700_000_000,
    }
}

#[test]
fn an_operator_weight_replaces_the_configured_one_until_cleared() {
    let now = Instant::now();
    let mut backend = up_backend();
    let configured = backend.serving_weight(None, now);
    backend.operator = Some(operator(None, Some(5)));
    assert_eq!(backend.weight(), 5);
    assert_eq!(backend.serving_weight(None, now), 500);
    assert_eq!(backend.state(None, None, now).0, State::Up);
    backend.operator = Some(operator(None, Some(0)));
    assert_eq!(
        backend.state(None, None, now),
        (State::Draining, "weight 0 set by the operator".into())
    );
    backend.operator = None;
    assert_eq!(backend.serving_weight(None, now), configured);
}
