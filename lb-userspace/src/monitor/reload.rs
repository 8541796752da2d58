//! Reloading the configuration file (`xlb reload`, SIGHUP): the new file is validated whole,
//! and what cannot change while xlb runs is refused, before anything is applied.

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{info, warn};

use super::{Monitor, checkers::Event, fresh_statuses};
use crate::{
    config::Config,
    dataplane::{Dataplane, Hook, preflight},
    metrics, service_manager,
};

impl Monitor {
    /// [`Self::reload`], counted for the metrics and announced to systemd (reloading, then
    /// ready again whether it succeeded or not: a failed reload changed nothing).
    pub(super) fn reload_counted(
        &mut self,
        dataplane: &mut Dataplane,
        events: &mpsc::Sender<Event>,
    ) -> Result<String> {
        service_manager::reloading();
        let result = self.reload(dataplane, events);
        match &result {
            Ok(_) => {
                self.reloads.succeeded += 1;
                self.reloads.last_succeeded = true;
                self.reloads.last_success_unix = super::operator::unix_seconds() as f64;
            }
            Err(error) => {
                self.reloads.failed += 1;
                self.reloads.last_succeeded = false;
                warn!("reload refused: {error:#}");
            }
        }
        self.sample(&dataplane.maps);
        service_manager::ready(&self.summary());
        result
    }

    /// Re-reads the config file and applies the difference. The new file is validated whole
    /// first; if it is invalid, or asks for what cannot change while xlb runs, nothing changes.
    /// Backends that stay keep their state and flows, and operators' settings stay.
    pub(super) fn reload(
        &mut self,
        dataplane: &mut Dataplane,
        events: &mpsc::Sender<Event>,
    ) -> Result<String> {
        let path = self
            .config_path
            .clone()
            .context("this daemon has no config file to reload")?;
        let new = Config::load(&path).map_err(|errors| anyhow!("{errors}\nnothing was changed"))?;
        if new.flow_table_size != self.config.flow_table_size
            || new.flow_table_size_ipv6 != self.config.flow_table_size_ipv6
        {
            bail!(
                "flow_table_size and flow_table_size_ipv6 cannot change while xlb runs (they \
                 size the pinned flow tables); nothing was changed"
            );
        }
        if new.pin_path != self.config.pin_path {
            bail!("pin_path cannot change while xlb runs; nothing was changed");
        }
        if let Some(announce) = &new.announce {
            match &self.announcer {
                None => bail!(
                    "announcing VIPs needs a restart (xlb creates its announcement device at \
                     start); nothing was changed"
                ),
                Some(announcer) if announcer.config() != announce => bail!(
                    "the [announce] settings (device, bird_socket, drain) change only at a \
                     restart; nothing was changed"
                ),
                Some(_) => {}
            }
        }
        let plan = preflight(&new).context("nothing was changed")?;
        if let Some(running) = dataplane.hook() {
            let fits = plan.hook == running || (plan.fall_back_to_tc && running == Hook::Tc);
            if !fits {
                bail!(
                    "xlb runs at the {running} hook, and the new configuration needs {}: the hook \
                     changes only at a restart (which keeps every flow); nothing was changed",
                    plan.hook
                );
            }
        }
        let hook = dataplane.hook().unwrap_or(plan.hook);
        let metrics_changed = new.metrics != self.config.metrics;
        let metrics_listener = if metrics_changed {
            new.metrics
                .map(metrics::bind)
                .transpose()
                .context("nothing was changed")?
        } else {
            None
        };

        let added: Vec<String> = new
            .interfaces
            .iter()
            .filter(|i| !self.config.interfaces.contains(i))
            .cloned()
            .collect();
        for (n, interface) in added.iter().enumerate() {
            if let Err(error) = dataplane.attach(interface, hook) {
                for done in &added[..n] {
                    dataplane.detach(done);
                }
                return Err(error.context("nothing was changed"));
            }
        }
        let removed: Vec<String> = self
            .config
            .interfaces
            .iter()
            .filter(|i| !new.interfaces.contains(i))
            .cloned()
            .collect();
        for interface in &removed {
            dataplane.detach(interface);
        }
        // Flows take a change up when their next hop is next resolved (within about a second).
        if let Err(error) = dataplane.set_peer_handoff(&plan.peer_handoff) {
            warn!("{error:#}: the veth peer handoff is as it was on some interfaces");
        }

        // Backends that stay keep what the monitor knows of them.
        let mut statuses = Vec::with_capacity(new.services.len());
        for service in &new.services {
            let mut fresh = fresh_statuses(service);
            let old = self
                .config
                .services
                .iter()
                .position(|s| s.listen == service.listen && s.protocol == service.protocol);
            if let Some(old) = old {
                for (backend, status) in service.backends.iter().zip(fresh.iter_mut()) {
                    let before = self.config.services[old]
                        .backends
                        .iter()
                        .position(|b| b.address == backend.address);
                    if let Some(before) = before {
                        let mut kept = self.statuses[old][before].clone();
                        kept.configured_weight = backend.weight;
                        // A confirming check in flight is stopped with the other tasks
                        // below: the data plane's mark ends after its hold.
                        kept.suspect = None;
                        *status = kept;
                    }
                }
            }
            statuses.push(fresh);
        }
        self.config = new;
        self.statuses = statuses;
        self.restore_operators();
        self.agent_errors.clear();
        self.generation += 1;
        self.tasks.abort_all();
        self.tasks = JoinSet::new();
        self.spawn_checkers(events);
        if metrics_changed {
            self.serve_metrics(metrics_listener);
        }
        dataplane
            .maps
            .set_flow_timeouts(&self.config.flow_timeouts)?;
        let summary = self.evaluate(&mut dataplane.maps)?;
        self.sample(&dataplane.maps);
        let message = format!(
            "reloaded {}: {} services ({} added, {} removed), {} backends added, {} removed, \
             {} tables published, {} flows purged, interfaces +{} -{}",
            path.display(),
            self.config.services.len(),
            summary.services_added,
            summary.services_removed,
            summary.backends_added,
            summary.backends_removed,
            summary.tables_published,
            summary.flows_purged,
            added.len(),
            removed.len(),
        );
        info!("{message}");
        if !removed.is_empty() {
            warn!(interfaces = ?removed, "detached from interfaces no longer in the config");
        }
        Ok(message)
    }
}
