//! The monitor's decision, as a pure function of what it knows: from the config, the
//! backends' statuses and the time, the state of every backend (and which changed), the table
//! weights of every pool, which pool serves each home pool's new flows, and so the services
//! as the data plane should have them. No maps, no clock, no logging: the monitor does those
//! with what [`plan`] returns, and tests drive [`plan`] directly.

use tokio::time::Instant;

use crate::{
    config::{Config, OnDown, Scheduler, ServiceConfig},
    control::{ServiceSpec, least_connections, serving_pools},
    health::state::{BackendStatus, Purge, Reported, State, has_room, table_weights},
};

/// A backend whose reported state changed (or was reported for the first time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// Index of the service in the config.
    pub service: usize,
    /// Index of the backend in the service.
    pub backend: usize,
    /// The state reported before, if any.
    pub from: Option<State>,
    /// The state now.
    pub to: State,
    /// Why.
    pub reason: String,
}

/// A home pool whose new flows now go to another pool (or home again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spill {
    /// Index of the service in the config.
    pub service: usize,
    /// The home pool.
    pub home: usize,
    /// The pool that serves it now.
    pub serving: usize,
}

/// What the monitor does next.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// The backends' statuses after this decision (reported states and reasons, the time a
    /// backend came back up).
    pub statuses: Vec<Vec<BackendStatus>>,
    /// State changes, in config order.
    pub transitions: Vec<Transition>,
    /// Backends whose reason changed without their state (a load or ramp update).
    pub reasons: Vec<(usize, usize, String)>,
    /// Home pools whose serving pool changed.
    pub spills: Vec<Spill>,
    /// The services as the data plane should have them, in config order.
    pub specs: Vec<ServiceSpec>,
    /// Down backends whose flows are purged once the tables no longer name them: (service,
    /// backend, which flows).
    pub purges: Vec<(usize, usize, Purge)>,
    /// Per service, how many of its backends can take new flows (a weight in its tables);
    /// `None` while one of them has not been checked yet.
    pub available: Vec<Option<usize>>,
}

impl Plan {
    /// Backends that went Down in this decision.
    pub(crate) fn newly_down(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.transitions
            .iter()
            .filter(|t| t.to == State::Down && t.from.is_some())
            .map(|t| (t.service, t.backend))
    }
}

/// Decides, at `now`, for `config` and the backends' `statuses` (one list per service, in
/// config order); `serving_before` is each service's serving pools as last published (empty
/// for a service not published yet).
pub(crate) fn plan(
    config: &Config,
    statuses: &[Vec<BackendStatus>],
    serving_before: &[Vec<u32>],
    now: Instant,
) -> Plan {
    let mut next = statuses.to_vec();
    let mut transitions = Vec::new();
    let mut reasons = Vec::new();
    let mut spills = Vec::new();
    let mut specs = Vec::with_capacity(config.services.len());
    let mut purges = Vec::new();
    let mut available = Vec::with_capacity(config.services.len());
    for (service_index, service) in config.services.iter().enumerate() {
        let statuses = &mut next[service_index];
        report_states(
            service_index,
            service,
            statuses,
            now,
            &mut transitions,
            &mut reasons,
        );
        let (mut weights, room) = weights_and_room(service, statuses, now);
        if service.scheduler == Scheduler::LeastConnections {
            let connections: Vec<Option<u64>> =
                statuses.iter().map(|s| s.open_connections).collect();
            weights = least_connections::weights(&weights, &connections);
        }
        let checked = statuses.iter().all(|status| status.health.is_known());
        available.push(checked.then(|| weights.iter().filter(|&&w| w > 0).count()));
        let fallback: Vec<Vec<usize>> = service.pools.iter().map(|p| p.fallback.clone()).collect();
        let serving: Vec<u32> = serving_pools(&room, &fallback)
            .into_iter()
            .map(|pool| pool as u32)
            .collect();
        let before = serving_before.get(service_index).filter(|b| !b.is_empty());
        spills.extend(changed_serving(service_index, service, before, &serving));
        // The weights Maglev tables are built from, in the table weights' unit (hundredths).
        let base: Vec<u32> = statuses.iter().map(|s| s.weight() * 100).collect();
        specs.push(ServiceSpec::of(service, &weights, &base, serving));
        purges.extend(
            flows_to_purge(statuses, service.on_down)
                .into_iter()
                .map(|(backend, purge)| (service_index, backend, purge)),
        );
    }
    Plan {
        statuses: next,
        transitions,
        reasons,
        spills,
        specs,
        purges,
        available,
    }
}

/// Each backend's state at `now`, recorded in its status: a changed (or first) state is a
/// transition (and a backend back from Down records when it came up); a changed reason alone
/// goes to `reasons`.
fn report_states(
    service_index: usize,
    service: &ServiceConfig,
    statuses: &mut [BackendStatus],
    now: Instant,
    transitions: &mut Vec<Transition>,
    reasons: &mut Vec<(usize, usize, String)>,
) {
    let (load, slowstart) = (service.load.as_ref(), service.health.slowstart);
    for (backend_index, status) in statuses.iter_mut().enumerate() {
        let (state, reason) = status.state(load, slowstart, now);
        let from = status.reported.as_ref().map(|r| r.state);
        match &mut status.reported {
            Some(previous) if previous.state == state => {
                if previous.reason != reason {
                    previous.reason = reason.clone();
                    reasons.push((service_index, backend_index, reason));
                }
                continue;
            }
            _ => {}
        }
        if from == Some(State::Down) {
            status.came_up_at = Some(now);
        }
        status.reported = Some(Reported {
            state,
            reason: reason.clone(),
            since: now,
        });
        transitions.push(Transition {
            service: service_index,
            backend: backend_index,
            from,
            to: state,
            reason,
        });
    }
}

/// Each backend's table weight and each pool's room. Weights and room are judged within each
/// pool; a pool without room spills.
fn weights_and_room(
    service: &ServiceConfig,
    statuses: &[BackendStatus],
    now: Instant,
) -> (Vec<u32>, Vec<bool>) {
    let (load, slowstart) = (service.load.as_ref(), service.health.slowstart);
    let mut weights = vec![0; statuses.len()];
    let mut room = vec![false; service.pools.len()];
    for (pool, room) in room.iter_mut().enumerate() {
        let members: Vec<usize> = (0..statuses.len())
            .filter(|&i| service.backends[i].pool == pool)
            .collect();
        let refs: Vec<&BackendStatus> = members.iter().map(|&i| &statuses[i]).collect();
        for (&i, weight) in members
            .iter()
            .zip(table_weights(&refs, load, slowstart, now))
        {
            weights[i] = weight;
        }
        *room = has_room(&refs, load, slowstart, now);
    }
    (weights, room)
}

/// The home pools whose serving pool differs from `before` (as last published; `None` for a
/// service not published yet). A service of one pool has nothing to spill.
fn changed_serving(
    service_index: usize,
    service: &ServiceConfig,
    before: Option<&Vec<u32>>,
    serving: &[u32],
) -> Vec<Spill> {
    let mut spills = Vec::new();
    if let Some(before) = before
        && service.pools.len() > 1
    {
        for (home, &now_serving) in serving.iter().enumerate() {
            if before.get(home) != Some(&now_serving) {
                spills.push(Spill {
                    service: service_index,
                    home,
                    serving: now_serving as usize,
                });
            }
        }
    }
    spills
}

/// The Down backends of a service whose flows must be purged now, and which flows: those
/// [`BackendStatus::purge_wanted`] says, unless they are gone already. A backend that never
/// served (nor was adopted from an earlier daemon) has none. Records what is purged.
fn flows_to_purge(statuses: &mut [BackendStatus], on_down: OnDown) -> Vec<(usize, Purge)> {
    let mut purges = Vec::new();
    for (backend, status) in statuses.iter_mut().enumerate() {
        match status.reported.as_ref().map(|r| r.state) {
            Some(State::Down) if status.may_have_flows => {
                let wanted = status.purge_wanted(on_down);
                if status.purged.is_none_or(|done| done < wanted) {
                    purges.push((backend, wanted));
                    status.purged = Some(wanted);
                }
            }
            Some(State::Down) | None => {}
            Some(_) => {
                status.may_have_flows = true;
                status.purged = None;
            }
        }
    }
    purges
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{super::core::fresh_statuses, *};
    use crate::health::{
        agent::AgentReport,
        state::{Admin, Operator},
    };

    const CONFIG: &str = r#"
interfaces = ["eth0"]
[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
health = { check = "tcp", rise = 2, fall = 2, slowstart = "10s" }
load = { agent_port = 9777, overload_below = "20%" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:80" }, { address = "198.18.1.12:80", weight = 3 } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.13:80" } ]
"#;

    fn config() -> Config {
        Config::parse(CONFIG).unwrap()
    }

    /// Every backend of `config` after `passes` passing checks.
    fn checked(config: &Config, passes: usize) -> Vec<Vec<BackendStatus>> {
        let mut statuses: Vec<Vec<BackendStatus>> =
            config.services.iter().map(fresh_statuses).collect();
        for status in statuses.iter_mut().flatten() {
            for _ in 0..passes {
                status.health.observe(Ok(()), 2, 2);
            }
        }
        statuses
    }

    fn weights(plan: &Plan) -> Vec<u32> {
        plan.specs[0].backends.iter().map(|b| b.weight).collect()
    }

    #[test]
    fn the_first_decision_reports_every_backend_and_weights_them() {
        let config = config();
        let now = Instant::now();
        let first = plan(&config, &checked(&config, 2), &[], now);
        assert_eq!(first.transitions.len(), 3);
        assert!(
            first
                .transitions
                .iter()
                .all(|t| t.from.is_none() && t.to == State::Up)
        );
        assert_eq!(
            first.newly_down().count(),
            0,
            "a first report is not a change"
        );
        // Weight × agent % (100) and no ramp for a first Up.
        assert_eq!(weights(&first), [100, 300, 100]);
        assert_eq!(first.specs[0].locality.serving, [0, 1]);
        assert!(first.spills.is_empty());
        // The same facts a moment later: nothing changes.
        let again = plan(&config, &first.statuses, &[vec![0, 1]], now);
        assert!(again.transitions.is_empty() && again.reasons.is_empty());
    }

    #[test]
    fn a_backend_that_goes_down_leaves_the_table_and_comes_back_ramping() {
        let config = config();
        let start = Instant::now();
        let mut statuses = plan(&config, &checked(&config, 2), &[], start).statuses;
        for _ in 0..2 {
            statuses[0][1].health.observe(Err("refused".into()), 2, 2);
        }
        let down = plan(&config, &statuses, &[vec![0, 1]], start);
        assert_eq!(down.newly_down().collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(down.transitions[0].from, Some(State::Up));
        assert_eq!(weights(&down), [100, 0, 100]);

        let mut statuses = down.statuses;
        for _ in 0..2 {
            statuses[0][1].health.observe(Ok(()), 2, 2);
        }
        let up = plan(&config, &statuses, &[vec![0, 1]], start);
        assert_eq!(up.transitions[0].to, State::Up);
        assert_eq!(
            up.statuses[0][1].came_up_at,
            Some(start),
            "slow start begins"
        );
        assert_eq!(weights(&up)[1], 1, "almost nothing at first");
        let later = plan(
            &config,
            &up.statuses,
            &[vec![0, 1]],
            start + Duration::from_secs(5),
        );
        assert_eq!(weights(&later)[1], 150, "half way through the ramp");
        assert!(later.transitions.is_empty());
        assert_eq!(later.reasons.len(), 1, "the ramp shows in the reason");
    }

    #[test]
    fn a_pool_without_room_spills_to_its_fallback_and_returns() {
        let config = config();
        let now = Instant::now();
        let mut statuses = plan(&config, &checked(&config, 2), &[], now).statuses;
        for backend in [0, 1] {
            statuses[0][backend].operator = Some(Operator {
                admin: Some(Admin::Drain),
                ..Operator::default()
            });
        }
        let spilled = plan(&config, &statuses, &[vec![0, 1]], now);
        assert_eq!(spilled.specs[0].locality.serving, [1, 1]);
        assert_eq!(
            spilled.spills,
            [Spill {
                service: 0,
                home: 0,
                serving: 1
            }]
        );
        for backend in [0, 1] {
            statuses[0][backend].operator = None;
        }
        let home = plan(&config, &statuses, &[vec![1, 1]], now);
        assert_eq!(home.specs[0].locality.serving, [0, 1]);
        assert_eq!(home.spills[0].serving, 0);
    }

    #[test]
    fn an_overloaded_backend_keeps_its_flows_but_gets_no_new_ones_while_others_have_room() {
        let config = config();
        let now = Instant::now();
        let mut statuses = plan(&config, &checked(&config, 2), &[], now).statuses;
        statuses[0][0].agent.apply(&AgentReport {
            weight_percent: Some(10),
            ..AgentReport::default()
        });
        statuses[0][0].update_overload(config.services[0].load.as_ref().unwrap());
        let busy = plan(&config, &statuses, &[vec![0, 1]], now);
        assert_eq!(busy.transitions[0].to, State::Overloaded);
        assert_eq!(busy.newly_down().count(), 0, "overload purges nothing");
        assert_eq!(weights(&busy)[0], 0);
        assert_eq!(
            busy.specs[0].locality.serving,
            [0, 1],
            "the pool still has room"
        );
    }
}
