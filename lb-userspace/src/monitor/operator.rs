//! What operators set on backends (drain, disable, weight, paused checks), who set it and when:
//! kept in the state file (`persist`) so that reloads and restarts keep it, and mirrored into the
//! statuses of the backends the config has.

use std::{net::SocketAddr, path::Path, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use lb_common::consts::limits::MAX_WEIGHT;
use tracing::{info, warn};

use super::{Monitor, core::Core, persist, targets};
use crate::control::{DataplaneMaps, DataplaneReads};
use crate::{
    config::HealthCheck,
    health::state::{Admin, Paused},
    sys::time::unix_seconds,
};

/// An operator's change to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// No new flows; established flows continue.
    Drain,
    /// Administratively Down: out of the table, flows purged.
    Disable,
    /// Clear what an operator set (drain, disable, weight, paused checks).
    Enable,
    /// Replace the configured weight (0..=MAX_WEIGHT).
    Weight(u32),
    /// Stop the health checks; the backend keeps the checks' last verdict.
    PauseChecks,
    /// Run the health checks again.
    ResumeChecks,
}

/// Operators' settings, and the file they are kept in.
pub(super) struct OperatorSettings {
    /// Where they are kept (none: they last as long as the daemon).
    state_file: Option<PathBuf>,
    /// By service name and backend address.
    settings: persist::Operators,
}

impl OperatorSettings {
    /// The settings kept in `state_dir` (read now unless `reset`, which forgets them); none
    /// without a directory.
    pub(super) fn load(state_dir: Option<&Path>, reset: bool) -> Result<Self> {
        let state_file = state_dir.map(persist::path);
        let settings = match &state_file {
            Some(file) if reset => {
                let settings = persist::Operators::new();
                persist::save(file, &settings)?;
                info!(file = %file.display(), "operator state reset");
                settings
            }
            Some(file) => persist::load(file)?,
            None => persist::Operators::new(),
        };
        Ok(Self {
            state_file,
            settings,
        })
    }

    /// Whether no setting is kept.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }

    /// Applies an operator's change to one backend, records `by` whom it was made, and keeps
    /// it in the state file, then in the statuses of `core`; if the file cannot be written,
    /// nothing changes. Returns what was done, in words.
    pub(super) fn change(
        &mut self,
        core: &mut Core,
        service: &str,
        backend: SocketAddr,
        change: Change,
        by: &str,
    ) -> Result<String> {
        let key = (service.to_owned(), backend);
        let known = core.service_index(service).is_ok_and(|s| {
            core.config().services[s]
                .backends
                .iter()
                .any(|b| b.address == backend)
        });
        // A setting on a backend that left the config can still be cleared.
        let forgotten = change == Change::Enable && self.settings.contains_key(&key);
        if !known && !forgotten {
            let s = core.service_index(service)?;
            let addresses: Vec<String> = core.config().services[s]
                .backends
                .iter()
                .map(|b| b.address.to_string())
                .collect();
            bail!(
                "service {service:?} has no backend {backend} (backends: {})",
                addresses.join(", ")
            );
        }
        let mut settings = self.settings.clone();
        let mut setting = settings.get(&key).cloned().unwrap_or_default();
        let verb = match change {
            Change::Drain => {
                setting.admin = Some(Admin::Drain);
                "drained: no new flows, established flows continue".to_owned()
            }
            Change::Disable => {
                setting.admin = Some(Admin::Disable);
                "disabled: out of the table, its flows purged".to_owned()
            }
            Change::Weight(weight) => {
                if weight > MAX_WEIGHT {
                    bail!(
                        "weight {weight} is out of range: 0 to {MAX_WEIGHT}; nothing was changed"
                    );
                }
                setting.weight = Some(weight);
                format!("weight set to {weight} (until `xlb backend enable`)")
            }
            Change::Enable => "enabled: what the operator set is cleared; back to the config \
                               and the checks"
                .to_owned(),
            Change::PauseChecks => {
                let paused = Self::verdict_to_hold(core, service, backend)?;
                let verdict = match paused {
                    Paused::Up => "up",
                    Paused::Down => "down",
                };
                setting.checks_paused.get_or_insert(paused);
                format!(
                    "checks paused: it stays {verdict} until `xlb backend resume-checks` (passive \
                     marks last their hold)"
                )
            }
            Change::ResumeChecks => {
                setting.checks_paused = None;
                "checks resumed: their results decide its health again".to_owned()
            }
        };
        let cleared =
            setting.admin.is_none() && setting.weight.is_none() && setting.checks_paused.is_none();
        if change == Change::Enable || cleared {
            settings.remove(&key);
        } else {
            setting.by = by.to_owned();
            setting.at = unix_seconds();
            settings.insert(key, setting);
        }
        if let Some(file) = &self.state_file {
            persist::save(file, &settings).context("nothing was changed")?;
        }
        self.settings = settings;
        let _orphans = self.apply(core);
        info!(service, %backend, ?change, by, "operator changed a backend");
        Ok(format!("{service} {backend} {verb}"))
    }

    /// The checks' verdict a pause of `backend` of `service` holds: refused when the service
    /// has no checks or none has decided yet.
    fn verdict_to_hold(core: &Core, service: &str, backend: SocketAddr) -> Result<Paused> {
        let s = core.service_index(service)?;
        let config = &core.config().services[s];
        if config.health.check == HealthCheck::None {
            bail!("service {service:?} has no health checks to pause; nothing was changed");
        }
        let Some(b) = config.backends.iter().position(|b| b.address == backend) else {
            bail!("service {service:?} has no backend {backend}");
        };
        let health = &core.statuses()[s][b].health;
        if !health.is_known() {
            bail!(
                "{service} {backend}: no check has decided its health yet, so there is no \
                 verdict to hold; nothing was changed"
            );
        }
        Ok(if health.is_up() {
            Paused::Up
        } else {
            Paused::Down
        })
    }

    /// Puts the settings into the statuses of the backends `core`'s config has; returns the
    /// settings on backends it does not have (kept until `enable`).
    fn apply(&self, core: &mut Core) -> Vec<String> {
        let mut orphans: Vec<String> = self
            .settings
            .keys()
            .map(|(service, backend)| format!("{service} {backend}"))
            .collect();
        let (config, statuses) = core.statuses_mut();
        for (service, statuses) in config.services.iter().zip(statuses.iter_mut()) {
            for (backend, status) in service.backends.iter().zip(statuses.iter_mut()) {
                let key = (service.name.clone(), backend.address);
                status.operator = self.settings.get(&key).cloned();
                if let Some(paused) = status.checks_paused() {
                    status.health.hold(paused);
                }
                orphans.retain(|o| *o != format!("{} {}", key.0, key.1));
            }
        }
        orphans
    }

    /// Applies the settings and logs them (at start and after a reload).
    pub(super) fn restore(&self, core: &mut Core) {
        for ((service, backend), setting) in &self.settings {
            let admin = match setting.admin {
                Some(Admin::Drain) => "drain",
                Some(Admin::Disable) => "disable",
                None => "none",
            };
            let weight = setting
                .weight
                .map_or("as configured".to_owned(), |w| w.to_string());
            let checks = if setting.checks_paused.is_some() {
                "paused"
            } else {
                "running"
            };
            info!(service, %backend, admin, %weight, checks, by = setting.by, "operator setting kept");
        }
        let orphans = self.apply(core);
        if !orphans.is_empty() {
            warn!(
                backends = ?orphans,
                "operator settings name backends not in the config; kept until `xlb backend enable`"
            );
        }
    }
}

impl Monitor {
    /// `xlb backend ...`: an operator's `change` to the backends `service` and `backend`
    /// name (one, a host's, or a host's in every service: `targets`), made `by` someone,
    /// kept across reloads and restarts, and applied at once.
    pub fn change_backend(
        &mut self,
        maps: &mut (impl DataplaneMaps + DataplaneReads),
        service: &str,
        backend: targets::BackendAddress,
        change: Change,
        by: &str,
    ) -> Result<String> {
        let mut targets = targets::targets(self.core.config(), service, backend)?;
        if matches!(change, Change::PauseChecks | Change::ResumeChecks) && targets.len() > 1 {
            // A host's backends across services: those of services without checks have none
            // to pause (named alone, they are refused).
            let config = self.core.config();
            targets.retain(|(name, _)| {
                config
                    .services
                    .iter()
                    .any(|s| s.name == *name && s.health.check != HealthCheck::None)
            });
            if targets.is_empty() {
                bail!("none of the services named has health checks to pause; nothing was changed");
            }
        }
        let mut done = Vec::new();
        let mut failed = None;
        for (service, address) in &targets {
            match self
                .operators
                .change(&mut self.core, service, *address, change, by)
            {
                Ok(said) => done.push(said),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failed {
            if done.is_empty() {
                return Err(error);
            }
            self.checkers.sync_paused(&self.core);
            let _ = self.apply(maps);
            return Err(error.context(format!(
                "{} of the {} backends named were changed: {}",
                done.len(),
                targets.len(),
                done.join("; ")
            )));
        }
        let done = done.join("\n");
        self.checkers.sync_paused(&self.core);
        self.apply(maps).context(
            "the setting is saved and in force, but applying it to the data plane failed; \
             xlb tries again every second",
        )?;
        Ok(done)
    }
}
