//! Keeps the data plane's tables true to what the backends can do.
//!
//! The [`Monitor`] is the one owner of the daemon's state. It composes owners, each in its
//! own module with private fields, around a small core ([`Core`]: the config, every backend's
//! status, the balancer):
//!
//! - `checkers`: one task per backend health check and one per agent, reporting here;
//! - `passive`: the data plane's suspect marks, confirmed by a check;
//! - `reports`: rates, active flows, spills and reloads, behind `xlb status`, `xlb stats` and
//!   the metrics endpoint (which it serves);
//! - `operator`: what operators set on backends, kept in the state file (`persist`);
//! - `announcing`: route health injection; `trace`: the data plane's trace maps;
//! - `departures`: backends removed from the config, released once their connections end;
//! - `fleet`: the flows peers share with this instance, and the snapshots they ask for.
//!
//! This module keeps the select loop and [`Monitor::evaluate`]: when anything that decides
//! the tables changed, [`plan::plan`] (a pure function of config, statuses and time) decides
//! again, and the monitor logs the changes, applies the tables through the balancer (which
//! publishes only what changed, atomically) and purges the flows of backends that went Down.
//! Reloads are planned by [`reload::plan`], also pure, and applied here. Operators' commands
//! reach the monitor as [`Job`]s, run between events.

mod announcing;
mod availability;
mod changes;
mod checkers;
mod client_persistence;
mod connection_counts;
pub(crate) mod connections;
mod core;
mod departures;
mod edit;
mod fleet;
pub(crate) mod flow_list;
mod operator;
mod passive;
mod persist;
pub(crate) mod plan;
mod purges;
pub(crate) mod reload;
mod reports;
mod resets;
mod simulate;
pub(crate) mod targets;
pub(crate) mod trace;
mod zeroed;

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    net::TcpListener,
    sync::mpsc,
    time::{Instant, MissedTickBehavior, interval},
};
use tracing::{debug, error, info, warn};

use self::{
    announcing::Announcing,
    checkers::{Checkers, Event},
    operator::OperatorSettings,
    passive::Passive,
    reload::Running,
    reports::Reports,
    trace::Tracing,
};
pub(crate) use self::{core::Core, flow_list::FlowQuery, operator::Change, trace::TraceRequest};
use crate::{
    announce::Announcer,
    config::Config,
    control::{ApplySummary, DataplaneMaps, DataplaneReads},
    dataplane::{Dataplane, Maps, preflight},
    metrics,
    report::{FlowsReport, SimulationReport, StatsReport, StatusReport, TraceUpdate},
    service_manager,
};

/// How often slow start re-weights a ramping backend.
const RAMP_STEP: Duration = Duration::from_millis(200);
/// How often counters are sampled for rates and metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the active-flow counts are read.
const COUNT_FLOWS_EVERY: Duration = Duration::from_secs(1);
/// How often a failed apply is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often backends removed from the config are looked at (released when done).
const DEPARTURES_EVERY: Duration = Duration::from_secs(1);

/// Work an edge asks of the monitor (an operator's command, a SIGHUP's reload), run on the
/// monitor's task between events, with the data plane.
pub(crate) type Job = Box<dyn FnOnce(&mut Monitor, &mut Dataplane) + Send>;

/// The monitor: the core state and the owners around it.
pub struct Monitor {
    core: Core,
    checkers: Checkers,
    /// The checkers' reports, until [`Self::run`] takes them.
    events: Option<mpsc::Receiver<Event>>,
    passive: Passive,
    reports: Reports,
    operators: OperatorSettings,
    announcing: Announcing,
    tracing: Tracing,
    /// The last apply failed: it is tried again every [`RETRY_EVERY`] until it succeeds.
    apply_failed: bool,
    /// Whether each service can take new flows, as last decided.
    availability: availability::Availability,
    departures: departures::Departures,
    /// Source persistence: clients of backends that stop taking new flows are forgotten.
    client_persistence: client_persistence::ClientPersistence,
    /// When the connections of least-connections services are counted next.
    connection_counts: connection_counts::ConnectionCounts,
    /// The counters when an operator last zeroed them, if ever.
    zeroed: zeroed::Zeroing,
    /// The fleet this instance shares its flows with, once joined.
    fleet: Option<fleet::FleetLink>,
    /// Its accepted messages, until [`Self::run`] takes them.
    fleet_inbox: Option<mpsc::Receiver<crate::fleet::Incoming>>,
}

impl Monitor {
    /// A monitor for `config` (read from `config_path`, which reloads read again), with the
    /// operators' settings kept in `state_dir` (read now unless `reset`, which forgets them);
    /// nothing is checked or applied yet.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        state_dir: Option<&std::path::Path>,
        reset: bool,
    ) -> Result<Self> {
        let mut core = Core::new(config, config_path);
        let operators = OperatorSettings::load(state_dir, reset)?;
        operators.restore(&mut core);
        let (checkers, events) = Checkers::new();
        Ok(Self {
            core,
            checkers,
            events: Some(events),
            passive: Passive::default(),
            reports: Reports::default(),
            operators,
            announcing: Announcing::default(),
            tracing: Tracing::default(),
            apply_failed: false,
            availability: availability::Availability::default(),
            departures: departures::Departures::default(),
            zeroed: zeroed::Zeroing::default(),
            connection_counts: connection_counts::ConnectionCounts::default(),
            client_persistence: client_persistence::ClientPersistence::default(),
            fleet: None,
            fleet_inbox: None,
        })
    }

    /// Takes over the services and backends a previous daemon left in pinned maps, so their
    /// ids (and flows) survive the restart.
    pub fn adopt(&mut self, maps: &mut impl DataplaneMaps) -> Result<(usize, usize)> {
        let adopted = self.core.balancer_mut().adopt(maps)?;
        self.core.mark_adopted();
        Ok(adopted)
    }

    /// Announces the VIPs through `announcer` from the next evaluation on.
    pub fn set_announcer(&mut self, announcer: Announcer) {
        self.announcing.start(announcer);
    }

    /// The core state: config, statuses, the balancer (ids of services and backends as
    /// applied).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Runs every backend's first health check at once (they decide its initial health) and
    /// fills the maps accordingly. Takes at most the longest check timeout.
    pub async fn start(&mut self, maps: &mut Maps) -> Result<()> {
        maps.set_flow_timeouts(&self.core.config().flow_timeouts)?;
        maps.set_host_ports(&self.core.config().host_ports)?;
        maps.tunnel.set(&self.core.config().tunnel)?;
        for event in self.checkers.first_checks(&self.core).await? {
            self.handle(event);
        }
        self.evaluate(maps)?;
        Ok(())
    }

    /// Runs the checkers, reacts to them and runs the edges' `jobs` until `shutdown`
    /// completes.
    pub async fn run(
        &mut self,
        dataplane: &mut Dataplane,
        mut jobs: mpsc::Receiver<Job>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let mut received = self
            .events
            .take()
            .ok_or_else(|| anyhow!("the monitor runs once"))?;
        self.tracing.set(dataplane.tracer.take());
        if let Some(reports) = dataplane.passive_events.take() {
            self.passive.start(reports, self.checkers.events().clone());
        }
        self.checkers.spawn(&self.core);
        let ticks = |every| {
            let mut ticks = interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        };
        let (mut ramp, mut sample) = (ticks(RAMP_STEP), ticks(SAMPLE_EVERY));
        let (mut count_flows, mut retry) = (ticks(COUNT_FLOWS_EVERY), ticks(RETRY_EVERY));
        let mut departures = ticks(DEPARTURES_EVERY);
        let mut refresh_fleet = ticks(self.core.config().fleet_refresh());
        let mut fleet_inbox = self.fleet_inbox.take();
        tokio::pin!(shutdown);
        // Once told to stop: the VIPs are withdrawn, and xlb keeps balancing until then.
        let mut drained_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = &mut shutdown, if drained_at.is_none() => {
                    match self.announcing.withdraw_for_shutdown().await {
                        Some(until) => drained_at = Some(until),
                        None => break,
                    }
                }
                () = tokio::time::sleep_until(drained_at.unwrap_or_else(Instant::now)), if drained_at.is_some() => {
                    info!("drained: stopping");
                    break;
                }
                Some(event) = received.recv() => {
                    if self.handle(event) {
                        let _ = self.apply(&mut dataplane.maps);
                    }
                }
                Some(job) = jobs.recv() => job(self, dataplane),
                Some(message) = fleet::next(&mut fleet_inbox) => self.fleet_message(message, &mut dataplane.maps),
                _ = ramp.tick() => {
                    if self.core.any_ramping(Instant::now()) {
                        let _ = self.apply(&mut dataplane.maps);
                    }
                }
                _ = sample.tick() => {
                    self.sample(&dataplane.maps);
                    dataplane.refresh_interface_macs();
                }
                _ = count_flows.tick() => {
                    let overload = self.reports.count_active_flows(&mut self.core, &dataplane.maps);
                    let least = self.connection_counts.count(&mut self.core, &dataplane.maps, Instant::now());
                    if overload || least {
                        let _ = self.apply(&mut dataplane.maps);
                    }
                }
                _ = departures.tick() => {
                    if let Err(error) = self.departures.review(&mut self.core, &mut dataplane.maps) {
                        warn!("releasing backends removed from the config failed, trying again: {error:#}");
                    }
                }
                _ = refresh_fleet.tick(), if self.fleet.is_some() => self.refresh_fleet(&dataplane.maps),
                _ = retry.tick(), if self.apply_failed => {
                    let _ = self.apply(&mut dataplane.maps);
                }
            }
        }
        self.checkers.close().await;
        self.passive.stop();
        self.reports.serve_metrics(None);
        Ok(())
    }

    /// Records an event with its owner; returns whether anything that decides the tables (or
    /// the states shown) changed.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Passive(report) => self.passive.report(
                &mut self.core,
                self.checkers.generation(),
                &report,
                self.checkers.events(),
            ),
            Event::Confirm(at, result, latency) if self.checkers.is_current(at) => {
                self.passive.confirmed(&mut self.core, at, result, latency)
            }
            Event::Confirm(..) => false,
            event => self.checkers.record(&mut self.core, event),
        }
    }

    /// One line on what the daemon balances, for `systemctl status`.
    pub fn summary(&self) -> String {
        self.core.summary()
    }

    /// Serves the metrics on `listener` (bound to the config's `metrics` address) from now
    /// on; none: stops serving them.
    pub fn serve_metrics(&mut self, listener: Option<TcpListener>) {
        self.reports.serve_metrics(listener);
    }

    /// Samples the counters for the rates and the metrics.
    fn sample(&mut self, maps: &impl DataplaneReads) {
        self.reports
            .sample(&self.core, maps, self.announcing.report());
        if let Some(fleet) = &self.fleet {
            self.reports.set_fleet(fleet.metrics());
        }
    }

    /// [`Self::evaluate`], and if it fails, says so once and has it tried again every
    /// [`RETRY_EVERY`] until it succeeds (the balancer keeps a record from which the next
    /// apply writes whatever the failed one may have left half-written): a failed apply (a
    /// full file table, a map the kernel refused) is never the daemon's end.
    fn apply(&mut self, maps: &mut (impl DataplaneMaps + DataplaneReads)) -> Result<ApplySummary> {
        let result = self.evaluate(maps);
        match &result {
            Err(error) if !self.apply_failed => {
                error!(
                    "applying the decision to the data plane failed, trying again every second: {error:#}"
                );
            }
            Ok(_) if self.apply_failed => info!("applied: the data plane is as decided again"),
            _ => {}
        }
        self.apply_failed = result.is_err();
        result
    }

    /// Decides again (see [`plan::plan`]), logs what changed, applies the tables and purges the
    /// flows of backends that just went Down.
    pub fn evaluate(
        &mut self,
        maps: &mut (impl DataplaneMaps + DataplaneReads),
    ) -> Result<ApplySummary> {
        let plan = plan::plan(
            self.core.config(),
            self.core.statuses(),
            &self.core.serving_before(),
            Instant::now(),
        );
        // Spills so far count toward the pools that were serving until now.
        self.reports.account_spills(&self.core, maps);
        let summary = self.core.balancer_mut().apply(&plan.specs, maps)?;
        self.departures.note(&self.core, Instant::now());
        // Only once applied: after a failed apply the next evaluation decides the same changes
        // again (transitions, purges, marks to clear) rather than finding them done.
        self.core.set_statuses(plan.statuses.clone());
        self.announcing.decided(self.core.config(), &plan.specs);
        // Logged once in effect: whoever reads "state changed" finds the tables published.
        changes::log_plan(self.core.config(), &plan);
        availability::log(
            &self
                .availability
                .update(self.core.config(), &plan.available),
        );
        if summary.tables_published > 0 {
            debug!(tables = summary.tables_published, "tables published");
        }
        // A Down backend's mark would hold a place in its service's share of suspects.
        let down_ids = plan
            .newly_down()
            .filter_map(|(service, backend)| self.core.backend_id(service, backend));
        self.passive.clear_marks(down_ids);
        self.purge_down(&plan, maps)?;
        self.client_persistence.forget(&self.core, maps)?;
        // After the purges: a mark not cleared is kept for the next evaluation.
        let marks = self.passive.take_marks_to_clear();
        for (done, &id) in marks.iter().enumerate() {
            if let Err(error) = maps.clear_mark(id) {
                self.passive.clear_marks(marks[done..].iter().copied());
                return Err(error);
            }
        }
        Ok(summary)
    }

    /// `xlb status`: every service, or the one named; `interfaces` are the attached
    /// interfaces with their hooks.
    pub fn status(
        &self,
        only: Option<&str>,
        interfaces: Vec<crate::report::InterfaceHook>,
        maps: &impl DataplaneReads,
    ) -> Result<StatusReport> {
        let connections = connections::read(maps, &self.core.config().flow_timeouts);
        let mut report = self.reports.status(
            &self.core,
            only,
            interfaces,
            self.announcing.report(),
            &connections,
        )?;
        self.departures
            .report(&self.core, &mut report, &connections);
        Ok(report)
    }

    /// `xlb stats`: counters, events, the flow tables.
    pub fn stats(&self, service: Option<&str>, maps: &impl DataplaneReads) -> Result<StatsReport> {
        let mut report = self.reports.stats(&self.core, maps)?;
        self.zeroed.count_since(&self.core, &mut report);
        if let Some(name) = service {
            self.core.service_index(name)?;
            report.services.retain(|s| s.name == name);
        }
        Ok(report)
    }

    /// `xlb stats --zero`: every counter as `stats` shows it, then zeroed `by` someone (in
    /// what `stats` shows; the data plane and the metrics keep counting).
    pub fn zero_counters(&mut self, maps: &impl DataplaneReads, by: &str) -> Result<StatsReport> {
        let raw = self.reports.stats(&self.core, maps)?;
        let report = self.zeroed.zero(&self.core, raw, by);
        info!(
            by,
            "counters zeroed (in `xlb stats`; the metrics keep counting)"
        );
        Ok(report)
    }

    /// `xlb flows`: the flows `query` asks for.
    pub fn flows(&self, maps: &impl DataplaneReads, query: &FlowQuery) -> Result<FlowsReport> {
        flow_list::report(&self.core, maps, query)
    }

    /// `xlb simulate`: which backend a new flow from `client` to `service` gets now.
    pub fn simulate(
        &self,
        dataplane: &mut Dataplane,
        service: &str,
        client: SocketAddr,
    ) -> Result<SimulationReport> {
        simulate::simulate(&self.core, dataplane, service, client)
    }

    /// `xlb trace`: starts tracing and returns the stream of its events.
    pub fn trace(&mut self, request: &TraceRequest) -> Result<mpsc::Receiver<TraceUpdate>> {
        self.tracing.start(&self.core, request)
    }

    /// `xlb reload` (and SIGHUP): [`Self::reload_config`], counted for the metrics and
    /// announced to systemd (reloading, then ready again whether it succeeded or not: a
    /// failed reload changed nothing).
    pub fn reload(&mut self, dataplane: &mut Dataplane) -> Result<String> {
        service_manager::reloading();
        let result = self.reload_config(dataplane);
        self.reports.count_reload(result.is_ok());
        if let Err(error) = &result {
            let error = crate::logging::one_line(&format!("{error:#}"));
            warn!("reload refused: {error}");
        }
        self.sample(&dataplane.maps);
        service_manager::ready(&self.summary());
        result
    }

    /// Re-reads the config file and applies the difference as [`reload::plan`] plans it: if
    /// the new file is invalid, or asks for what cannot change while xlb runs, nothing
    /// changes. Backends that stay keep their state and flows, and operators' settings stay.
    fn reload_config(&mut self, dataplane: &mut Dataplane) -> Result<String> {
        let path = self
            .core
            .config_path()
            .context("this daemon has no config file to reload")?
            .to_owned();
        let new = Config::load(&path)
            .map_err(|errors| anyhow::Error::new(errors).context("nothing was changed"))?;
        let running = Running {
            config: self.core.config(),
            statuses: self.core.statuses(),
            hook: dataplane.hook(),
            announce: self.announcing.config(),
        };
        let plan = reload::plan(running, new, |config| Ok(preflight(config)?))?;
        let metrics_listener = match (&plan.metrics_changed, plan.config.metrics) {
            (true, Some(address)) => Some(metrics::bind(address).context("nothing was changed")?),
            _ => None,
        };
        // The settings the program reads itself, before anything else: if one cannot be
        // written, those written are put back and nothing changes.
        let old = self.core.config();
        write_program_settings(&mut dataplane.maps, &plan.config)
            .inspect_err(|_| {
                let _ = write_program_settings(&mut dataplane.maps, old);
            })
            .context("nothing was changed")?;
        for (n, interface) in plan.attach.iter().enumerate() {
            if let Err(error) = dataplane.attach(interface, plan.hook) {
                for done in &plan.attach[..n] {
                    dataplane.detach(done);
                }
                let _ = write_program_settings(&mut dataplane.maps, self.core.config());
                return Err(error.context("nothing was changed"));
            }
        }
        for interface in &plan.detach {
            dataplane.detach(interface);
        }
        // Flows take a change up when their next hop is next resolved (within about a second).
        if let Err(error) = dataplane.set_peer_handoff(&plan.peer_handoff) {
            warn!("{error:#}: the veth peer handoff is as it was on some interfaces");
        }
        let (attached, detached) = (plan.attach.len(), plan.detach);
        self.core.replace(plan.config, plan.statuses);
        self.operators.restore(&mut self.core);
        self.checkers.restart(&self.core);
        if plan.metrics_changed {
            self.reports.serve_metrics(metrics_listener);
        }
        let summary = self.apply(&mut dataplane.maps).context(
            "the new configuration is in force, but applying it to the data plane failed; xlb \
             tries again every second",
        )?;
        // A backend added starts unchecked: its tables change when its first check passes.
        let joining = if summary.backends_added > 0 {
            " (added backends join them once a check passes)"
        } else {
            ""
        };
        let message = format!(
            "reloaded {}: {} services ({} added, {} removed), {} backends added, {} removed \
             ({} draining), {} tables published{joining}, {} flows purged, interfaces +{} -{}",
            path.display(),
            self.core.config().services.len(),
            summary.services_added,
            summary.services_removed,
            summary.backends_added,
            summary.backends_removed,
            summary.backends_draining,
            summary.tables_published,
            summary.flows_purged,
            attached,
            detached.len(),
        );
        info!("{message}");
        if !detached.is_empty() {
            warn!(interfaces = ?detached, "detached from interfaces no longer in the config");
        }
        Ok(message)
    }
}

/// Writes the settings the data plane reads for every packet: flow timeouts, host ports and
/// the tunnels' outer headers.
fn write_program_settings(maps: &mut Maps, config: &Config) -> Result<()> {
    maps.set_flow_timeouts(&config.flow_timeouts)?;
    maps.set_host_ports(&config.host_ports)?;
    maps.tunnel.set(&config.tunnel)
}

#[cfg(test)]
mod paused_tests;
#[cfg(test)]
mod tests;
