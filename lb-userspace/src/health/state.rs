//! What the daemon knows about each backend, and what follows from it: the state operators see
//! (Up, Overloaded, Draining, Down, with a reason and since when) and the weight the backend
//! gets in its service's table.
//!
//! Health and load are separate. Health (rise/fall over consecutive checks) says whether a
//! backend can serve at all: a Down backend leaves the table, and its flows that are not
//! established connections (UDP flows, handshakes) are purged so that they are placed again;
//! its established connections stay unless its host is gone or the service says
//! `on_down = "reset"` ([`BackendStatus::purge_wanted`]). Load
//! (the agent's report and the active-flow count) says how much new work it should get: it
//! scales the weight, drains, or marks the backend Overloaded, and existing flows stay.
//!
//! Everything here is pure: time is passed in, so the state machines are tested directly.

use std::{fmt, time::Duration};

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    agent::{AgentAdmin, AgentReport},
    checks::{CheckResult, Failure},
};
use crate::config::{LoadConfig, OnDown};

/// How far above `overload_below` (in percentage points) an agent's weight must climb before an
/// Overloaded backend counts as having room again.
pub(crate) const OVERLOAD_RECOVERY_POINTS: u32 = 10;
/// Fraction (in percent) of `max_flows` the active flows must fall to before an Overloaded
/// backend counts as having room again.
pub(crate) const OVERLOAD_RECOVERY_FLOWS_PERCENT: u64 = 90;

/// The state of a backend, as shown to operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Serving, and takes new flows.
    Up,
    /// Serving but busy: no new flows while another backend of the service has room.
    Overloaded,
    /// Serving its established flows, taking no new ones.
    Draining,
    /// Cannot serve: out of the table; its flows purged as [`Purge`] says.
    Down,
}

/// Which flows of a Down backend are deleted from the flow tables (their next packet is
/// placed again, on a backend that can take it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Purge {
    /// Flows that are not established connections: UDP flows and TCP handshakes. Established
    /// TCP connections stay on the backend.
    Unestablished,
    /// Every flow, established connections included.
    All,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "Up",
            Self::Overloaded => "Overloaded",
            Self::Draining => "Draining",
            Self::Down => "Down",
        })
    }
}

/// Health-check hysteresis with HAProxy's rise and fall: `fall` consecutive failures take an
/// Up backend Down, `rise` consecutive passes bring a Down one Up, and a result of the other
/// kind resets the count. Before its first check a backend's health is unknown; the first
/// result decides it directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    up: Option<bool>,
    streak: u32,
    last_failure: Option<String>,
    /// The last failure proved the host gone (see [`Failure::host_gone`]).
    gone: bool,
}

impl Health {
    /// Health before any check.
    pub fn unknown() -> Self {
        Self {
            up: None,
            streak: 0,
            last_failure: None,
            gone: false,
        }
    }

    /// Health of a backend that is not checked: always Up.
    pub fn unchecked() -> Self {
        Self {
            up: Some(true),
            streak: 0,
            last_failure: None,
            gone: false,
        }
    }

    /// Whether the backend is healthy (unknown counts as not yet).
    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }

    /// The checks' verdict in a word: "up", "down", or "unknown" before the first.
    pub fn verdict(&self) -> &'static str {
        match self.up {
            Some(true) => "up",
            Some(false) => "down",
            None => "unknown",
        }
    }

    /// Whether any check has decided the health yet.
    pub fn is_known(&self) -> bool {
        self.up.is_some()
    }

    /// The last failure's message, while the backend is Down.
    pub fn failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Whether the last failure proved the backend's host gone.
    pub fn host_gone(&self) -> bool {
        self.gone
    }

    /// Holds the verdict the operator paused the checks at (after a restart, when no check
    /// has run yet); a verdict already held stays as it is, with its failure.
    pub fn hold(&mut self, paused: Paused) {
        let up = paused == Paused::Up;
        if self.up != Some(up) {
            *self = Self {
                up: Some(up),
                streak: 0,
                last_failure: None,
                gone: false,
            };
        }
        self.streak = 0;
    }

    /// Takes the backend Down at once, whatever the streak: a check confirmed what the data
    /// plane saw (passive health). Returns whether the health changed.
    pub fn fail_now(&mut self, failure: Failure) -> bool {
        self.gone = failure.host_gone;
        self.last_failure = Some(failure.message);
        self.streak = 0;
        let changed = self.up != Some(false);
        self.up = Some(false);
        changed
    }

    /// The host was proven gone (see [`crate::health::checks::gone`]): Down at once, and its
    /// connections cannot be served either. Returns whether anything changed.
    pub fn prove_gone(&mut self, failure: Failure) -> bool {
        let was_gone = self.gone;
        let changed = self.fail_now(failure);
        changed || !was_gone
    }

    /// Records one check result. Returns the new health if it changed.
    pub fn observe(&mut self, result: CheckResult, rise: u32, fall: u32) -> Option<bool> {
        let passed = result.is_ok();
        match result {
            Err(failure) => {
                // A timeout does not disprove a host proven gone; an answer does.
                self.gone = failure.host_gone || (failure.timed_out && self.gone);
                self.last_failure = Some(failure.message);
            }
            Ok(()) => self.gone = false,
        }
        let Some(up) = self.up else {
            self.up = Some(passed);
            self.streak = 0;
            return Some(passed);
        };
        if passed == up {
            // Agrees with the current state: any streak towards the other state is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if up { fall } else { rise };
        if self.streak < needed {
            return None;
        }
        self.up = Some(passed);
        self.streak = 0;
        if passed {
            self.last_failure = None;
        }
        Some(passed)
    }
}

/// What the backend's agent last said (HAProxy agent-check semantics: a percentage stays until
/// the next one; drain, maint and down stay until up or ready).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// Percentage of the configured weight (100 until the agent says otherwise).
    pub weight_percent: Option<u32>,
    /// An administrative word in force: drain, maint or down/fail/stopped.
    pub admin: Option<AgentAdmin>,
}

/// An operator's administrative state for a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admin {
    /// No new flows; established flows continue.
    Drain,
    /// Administratively Down: out of the table, flows purged.
    Disable,
}

/// The checks' verdict a backend keeps while an operator has paused its checks (`xlb backend
/// pause-checks`): the one they gave when paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Paused {
    /// Paused while the checks passed: the backend stays healthy.
    Up,
    /// Paused while they failed: it stays Down.
    Down,
}

/// What an operator set on a backend (`xlb backend drain|disable|weight|pause-checks`): kept
/// across reloads and restarts (in the daemon's state file) until `xlb backend enable`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// Drained or disabled, if either.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// A weight that replaces the configured one (0..=256).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Its health checks are paused, holding this verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_paused: Option<Paused>,
    /// Who set it last: the user's name and uid, or the signal.
    pub by: String,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

impl AgentState {
    /// Applies a report.
    pub fn apply(&mut self, report: &AgentReport) {
        if let Some(percent) = report.weight_percent {
            self.weight_percent = Some(percent);
        }
        if report.ready {
            self.admin = None;
        }
        if let Some(admin) = &report.admin {
            self.admin = Some(admin.clone());
        }
    }

    /// The weight percentage in force.
    pub fn percent(&self) -> u32 {
        self.weight_percent.unwrap_or(100)
    }
}

/// Everything the daemon knows about one backend.
#[derive(Clone, Debug)]
pub struct BackendStatus {
    /// Weight from the config.
    pub configured_weight: u32,
    /// Health-check state.
    pub health: Health,
    /// The agent's last word.
    pub agent: AgentState,
    /// Active flows, when counted.
    pub active_flows: Option<u64>,
    /// Open connections and handshakes, when counted (least-connections services).
    pub open_connections: Option<u64>,
    /// Whether the backend is Overloaded (with hysteresis; see [`Self::update_overload`]).
    pub overloaded: bool,
    /// When the backend last came Up after being Down (slow start runs from here).
    pub came_up_at: Option<Instant>,
    /// The state last reported to operators; `None` before the first report.
    pub reported: Option<Reported>,
    /// What an operator set on it, if anything.
    pub operator: Option<Operator>,
    /// How long the last health check took.
    pub check_latency: Option<Duration>,
    /// The data plane marked the backend suspect (passive health) and a check has not
    /// decided yet: why.
    pub suspect: Option<String>,
    /// Times the data plane marked the backend suspect.
    pub passive_marks: u64,
    /// Whether it may have flows: it was in a table (or was adopted from an earlier daemon's
    /// maps), so a Down state has flows to purge.
    pub may_have_flows: bool,
    /// The flows purged since it went Down, if any.
    pub purged: Option<Purge>,
}

/// A state as reported to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// The state.
    pub state: State,
    /// Why.
    pub reason: String,
    /// Since when the backend is in this state.
    pub since: Instant,
}

impl BackendStatus {
    /// A backend just configured.
    pub fn new(configured_weight: u32, health: Health) -> Self {
        Self {
            configured_weight,
            health,
            agent: AgentState::default(),
            active_flows: None,
            open_connections: None,
            overloaded: false,
            came_up_at: None,
            reported: None,
            operator: None,
            check_latency: None,
            suspect: None,
            passive_marks: 0,
            may_have_flows: false,
            purged: None,
        }
    }

    /// Which of a Down backend's flows go: all of them when an operator disabled it, when
    /// its host is gone (it cannot serve its connections either) or when the service says
    /// `on_down = "reset"`; else only those that are not established connections, which the
    /// backend may still be serving (a full accept queue, a host that stopped taking new
    /// connections but finishes its own).
    pub fn purge_wanted(&self, on_down: OnDown) -> Purge {
        let disabled = self.operator.as_ref().and_then(|o| o.admin) == Some(Admin::Disable);
        if disabled || self.health.host_gone() || on_down == OnDown::Reset {
            Purge::All
        } else {
            Purge::Unestablished
        }
    }

    /// Re-evaluates overload from the latest agent weight and flow count, with hysteresis: a
    /// backend becomes Overloaded when the agent's weight is below `overload_below` or its
    /// active flows exceed `max_flows`, and recovers only when the weight is at least
    /// `overload_below` + [`OVERLOAD_RECOVERY_POINTS`] and the flows are at most
    /// [`OVERLOAD_RECOVERY_FLOWS_PERCENT`] % of `max_flows`.
    pub fn update_overload(&mut self, load: &LoadConfig) {
        let percent = self.agent.weight_percent;
        let flows = self.active_flows;
        if self.overloaded {
            let agent_ok = match (load.overload_below, percent) {
                (Some(below), Some(p)) => p >= (below + OVERLOAD_RECOVERY_POINTS).min(100),
                _ => true,
            };
            let flows_ok = match (load.max_flows, flows) {
                (Some(max), Some(n)) => n * 100 <= max * OVERLOAD_RECOVERY_FLOWS_PERCENT,
                _ => true,
            };
            self.overloaded = !(agent_ok && flows_ok);
        } else {
            let agent_busy =
                matches!((load.overload_below, percent), (Some(below), Some(p)) if p < below);
            let flows_busy = matches!((load.max_flows, flows), (Some(max), Some(n)) if n > max);
            self.overloaded = agent_busy || flows_busy;
        }
    }

    /// The state and its reason, given the load config (for the overload reason); the reason
    /// says when the checks are paused.
    pub fn state(
        &self,
        load: Option<&LoadConfig>,
        slowstart: Option<Duration>,
        now: Instant,
    ) -> (State, String) {
        let (state, mut reason) = self.state_of_checks(load, slowstart, now);
        if self.checks_paused().is_some() {
            reason.push_str("; checks paused by the operator");
        }
        (state, reason)
    }

    /// [`Self::state`], but for the paused checks.
    fn state_of_checks(
        &self,
        load: Option<&LoadConfig>,
        slowstart: Option<Duration>,
        now: Instant,
    ) -> (State, String) {
        let admin = self.operator.as_ref().and_then(|o| o.admin);
        if admin == Some(Admin::Disable) {
            return (State::Down, "disabled by the operator".into());
        }
        if !self.health.is_known() {
            return (State::Down, "not checked yet".into());
        }
        if !self.health.is_up() {
            let why = self.health.failure().unwrap_or("failing checks");
            return (State::Down, format!("health check: {why}"));
        }
        if admin == Some(Admin::Drain) {
            return (State::Draining, "drained by the operator".into());
        }
        match &self.agent.admin {
            Some(AgentAdmin::Down(word)) => return (State::Down, format!("agent says {word}")),
            Some(AgentAdmin::Drain) => return (State::Draining, "agent says drain".into()),
            Some(AgentAdmin::Maint) => return (State::Draining, "agent says maint".into()),
            None => {}
        }
        if self.weight() == 0 {
            let whose = if self.operator_weight().is_some() {
                "set by the operator"
            } else {
                "in the config"
            };
            return (State::Draining, format!("weight 0 {whose}"));
        }
        if self.agent.percent() == 0 {
            return (State::Draining, "agent weight 0%".into());
        }
        if self.overloaded {
            let mut reasons = Vec::new();
            if let (Some(below), Some(p)) = (
                load.and_then(|l| l.overload_below),
                self.agent.weight_percent,
            ) && p < below + OVERLOAD_RECOVERY_POINTS
            {
                reasons.push(format!("agent weight {p}% (overloaded below {below}%)"));
            }
            if let (Some(max), Some(n)) = (load.and_then(|l| l.max_flows), self.active_flows)
                && n * 100 > max * OVERLOAD_RECOVERY_FLOWS_PERCENT
            {
                reasons.push(format!("{n} active flows (max {max})"));
            }
            return (State::Overloaded, reasons.join(", "));
        }
        let ramp = slowstart_fraction(self.came_up_at, slowstart, now);
        if let Some(why) = &self.suspect {
            return (State::Up, format!("suspect, new flows skip it: {why}"));
        }
        let mut reason = format!("checks pass, weight {}%", self.agent.percent());
        if ramp < 1.0 {
            reason.push_str(&format!(", slow start {:.0}%", ramp * 100.0));
        }
        (State::Up, reason)
    }

    /// The weight in the table when the backend may take new flows: the configured weight
    /// times the agent's percentage times the slow-start ramp, in hundredths (so weight 1 at
    /// 100% is 100); at least 1 while any of it remains.
    pub fn serving_weight(&self, slowstart: Option<Duration>, now: Instant) -> u32 {
        let ramp = slowstart_fraction(self.came_up_at, slowstart, now);
        let weight = f64::from(self.weight()) * f64::from(self.agent.percent()) * ramp;
        if self.weight() == 0 || self.agent.percent() == 0 {
            0
        } else {
            (weight.round() as u32).max(1)
        }
    }

    /// The verdict the operator paused the checks at, if they are paused.
    pub fn checks_paused(&self) -> Option<Paused> {
        self.operator.as_ref().and_then(|o| o.checks_paused)
    }

    /// The operator's weight, if one is set.
    pub fn operator_weight(&self) -> Option<u32> {
        self.operator.as_ref().and_then(|o| o.weight)
    }

    /// The backend's weight: the operator's, or else the configured one.
    pub fn weight(&self) -> u32 {
        self.operator_weight().unwrap_or(self.configured_weight)
    }

    /// Whether slow start is still ramping (the table needs re-publishing as time passes).
    pub fn ramping(&self, slowstart: Option<Duration>, now: Instant) -> bool {
        slowstart_fraction(self.came_up_at, slowstart, now) < 1.0
    }
}

/// How far slow start has ramped: 0.0 just after coming up, 1.0 after `slowstart`.
fn slowstart_fraction(
    came_up_at: Option<Instant>,
    slowstart: Option<Duration>,
    now: Instant,
) -> f64 {
    match (came_up_at, slowstart) {
        (Some(at), Some(ramp)) if !ramp.is_zero() => {
            (now.saturating_duration_since(at).as_secs_f64() / ramp.as_secs_f64()).min(1.0)
        }
        _ => 1.0,
    }
}

/// Whether any of `backends` has room for new flows: Up (not Overloaded, Draining or Down)
/// with a weight above zero.
pub(crate) fn has_room(
    backends: &[&BackendStatus],
    load: Option<&LoadConfig>,
    slowstart: Option<Duration>,
    now: Instant,
) -> bool {
    backends.iter().any(|b| {
        b.state(load, slowstart, now).0 == State::Up && b.serving_weight(slowstart, now) > 0
    })
}

/// The table weights of a service's backends, in order. Down and Draining backends get 0. An
/// Overloaded backend gets 0 while another backend of the service has room (is Up); when none
/// has, the Overloaded ones share the new flows by their weights, since they are still serving.
pub(crate) fn table_weights(
    backends: &[&BackendStatus],
    load: Option<&LoadConfig>,
    slowstart: Option<Duration>,
    now: Instant,
) -> Vec<u32> {
    let states: Vec<State> = backends
        .iter()
        .map(|b| b.state(load, slowstart, now).0)
        .collect();
    let someone_has_room = has_room(backends, load, slowstart, now);
    backends
        .iter()
        .zip(&states)
        .map(|(backend, state)| match state {
            State::Up => backend.serving_weight(slowstart, now),
            State::Overloaded if !someone_has_room => backend.serving_weight(slowstart, now),
            State::Overloaded | State::Draining | State::Down => 0,
        })
        .collect()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
