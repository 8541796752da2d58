//! Reloading the configuration file (`xlb reload`, SIGHUP), decided by [`plan`], a pure
//! function: the new file (validated whole before) against the config in force, what cannot
//! change while xlb runs refused, the statuses of the backends that stay carried over, the
//! interfaces to attach and detach. The monitor then applies the plan; a refusal changes
//! nothing.

use std::fmt;

use crate::{
    config::{AnnounceConfig, Config},
    dataplane::{Hook, Plan as HostPlan},
    health::state::BackendStatus,
};

use super::core::fresh_statuses;

/// What the reload does.
#[derive(Clone, Debug)]
pub(crate) struct ReloadPlan {
    /// The new config.
    pub config: Config,
    /// Every backend's status under the new config: kept for backends that stay (same
    /// service listen address and protocol, same backend address), fresh for the others.
    pub statuses: Vec<Vec<BackendStatus>>,
    /// Interfaces to attach, in config order.
    pub attach: Vec<String>,
    /// Interfaces to detach.
    pub detach: Vec<String>,
    /// The hook the program runs at (new interfaces get it).
    pub hook: Hook,
    /// The interfaces whose packets are handed to their veth peer.
    pub peer_handoff: Vec<String>,
    /// Whether the metrics endpoint moves (or appears, or goes).
    pub metrics_changed: bool,
}

/// Why a reload was refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; nothing was changed", self.0)
    }
}

impl std::error::Error for Refusal {}

/// What runs now, which a reload cannot change.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Running<'a> {
    /// The config in force.
    pub config: &'a Config,
    /// Its backends' statuses.
    pub statuses: &'a [Vec<BackendStatus>],
    /// The hook the program runs at, if it is attached and the hook is known.
    pub hook: Option<Hook>,
    /// The announcer's settings, if xlb announces VIPs.
    pub announce: Option<&'a AnnounceConfig>,
}

/// Plans the reload of `running` to `new`; `host` checks the host for a config and says
/// where the program would run (the preflight), after the refusals that need no host.
pub(crate) fn plan(
    running: Running<'_>,
    new: Config,
    host: impl FnOnce(&Config) -> anyhow::Result<HostPlan>,
) -> Result<ReloadPlan, Refusal> {
    let old = running.config;
    if new.flow_table_size != old.flow_table_size
        || new.flow_table_size_ipv6 != old.flow_table_size_ipv6
    {
        return Err(Refusal(
            "flow_table_size and flow_table_size_ipv6 cannot change while xlb runs (they size \
             the pinned flow tables)"
                .into(),
        ));
    }
    if new.fleet != old.fleet {
        return Err(Refusal(
            "[fleet] cannot change while xlb runs (its socket and key are set at start): restart \
             this instance"
                .into(),
        ));
    }
    if new.pin_path != old.pin_path {
        return Err(Refusal("pin_path cannot change while xlb runs".into()));
    }
    if let Some(announce) = &new.announce {
        match running.announce {
            None => {
                return Err(Refusal(
                    "announcing VIPs needs a restart (xlb creates its announcement device at \
                     start)"
                        .into(),
                ));
            }
            Some(running) if running != announce => {
                return Err(Refusal(
                    "the [announce] settings (device, bird_socket, drain) change only at a \
                     restart"
                        .into(),
                ));
            }
            Some(_) => {}
        }
    }
    let host = host(&new).map_err(|error| Refusal(format!("{error:#}")))?;
    if let Some(hook) = running.hook {
        let fits = host.hook == hook || (host.fall_back_to_tc && hook == Hook::Tc);
        if !fits {
            return Err(Refusal(format!(
                "xlb runs at the {hook} hook, and the new configuration needs {}: the hook \
                 changes only at a restart (which keeps every flow)",
                host.hook
            )));
        }
    }
    let attach = new
        .interfaces
        .iter()
        .filter(|i| !old.interfaces.contains(i))
        .cloned()
        .collect();
    let detach = old
        .interfaces
        .iter()
        .filter(|i| !new.interfaces.contains(i))
        .cloned()
        .collect();
    Ok(ReloadPlan {
        statuses: carried_statuses(old, running.statuses, &new),
        attach,
        detach,
        hook: running.hook.unwrap_or(host.hook),
        peer_handoff: host.peer_handoff,
        metrics_changed: new.metrics != old.metrics,
        config: new,
    })
}

/// The statuses of `new`'s backends: what the monitor knows of the backends that stay (their
/// configured weight updated), fresh for the others.
fn carried_statuses(
    old: &Config,
    statuses: &[Vec<BackendStatus>],
    new: &Config,
) -> Vec<Vec<BackendStatus>> {
    new.services
        .iter()
        .map(|service| {
            let mut fresh = fresh_statuses(service);
            let before = old
                .services
                .iter()
                .position(|s| s.listen == service.listen && s.protocol == service.protocol);
            if let Some(before) = before {
                for (backend, status) in service.backends.iter().zip(fresh.iter_mut()) {
                    let kept = old.services[before]
                        .backends
                        .iter()
                        .position(|b| b.address == backend.address);
                    if let Some(kept) = kept {
                        let mut kept = statuses[before][kept].clone();
                        kept.configured_weight = backend.weight;
                        // A confirming check in flight is stopped with the checkers: the data
                        // plane's mark ends after its hold.
                        kept.suspect = None;
                        *status = kept;
                    }
                }
            }
            fresh
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dataplane::Plan as HostPlan, health::state::Health};

    const OLD: &str = r#"
interfaces = ["eth0", "eth1"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
"#;

    fn host(hook: Hook) -> impl FnOnce(&Config) -> anyhow::Result<HostPlan> {
        move |_| {
            Ok(HostPlan {
                hook,
                fall_back_to_tc: false,
                reasons: Vec::new(),
                peer_handoff: vec!["eth2".into()],
            })
        }
    }

    fn running<'a>(config: &'a Config, statuses: &'a [Vec<BackendStatus>]) -> Running<'a> {
        Running {
            config,
            statuses,
            hook: Some(Hook::Tc),
            announce: None,
        }
    }

    #[test]
    fn backends_that_stay_keep_their_status_and_interfaces_are_diffed() {
        let old = Config::parse(OLD).unwrap();
        let mut statuses: Vec<Vec<BackendStatus>> =
            old.services.iter().map(fresh_statuses).collect();
        statuses[0][1].health.observe(Ok(()), 1, 1);
        statuses[0][1].suspect = Some("passive: 3 connections refused".into());
        let new = Config::parse(
            &OLD.replace(r#"["eth0", "eth1"]"#, r#"["eth1", "eth2"]"#)
                .replace(
                    r#"{ address = "198.18.1.11:8080" }"#,
                    r#"{ address = "198.18.1.13:8080" }"#,
                )
                .replace(
                    r#"{ address = "198.18.1.12:8080" }"#,
                    r#"{ address = "198.18.1.12:8080", weight = 7 }"#,
                ),
        )
        .unwrap();
        let plan = plan(running(&old, &statuses), new, host(Hook::Tc)).unwrap();
        assert_eq!(
            (plan.attach, plan.detach),
            (vec!["eth2".into()], vec!["eth0".into()])
        );
        assert_eq!(plan.hook, Hook::Tc);
        assert_eq!(plan.peer_handoff, ["eth2"]);
        assert!(!plan.metrics_changed);
        let web = &plan.statuses[0];
        assert!(!web[0].health.is_known(), "a new backend starts unchecked");
        assert!(
            web[1].health.is_up(),
            "a backend that stays keeps its health"
        );
        assert_eq!(web[1].configured_weight, 7);
        assert_eq!(
            web[1].suspect, None,
            "its confirming check stopped with the checkers"
        );
    }

    #[test]
    fn what_cannot_change_while_xlb_runs_is_refused_with_why() {
        let old = Config::parse(OLD).unwrap();
        let statuses = vec![vec![BackendStatus::new(100, Health::unknown()); 2]];
        let refusal = |text: &str, hook: Hook| {
            let new = Config::parse(text).unwrap();
            plan(running(&old, &statuses), new, host(hook))
                .unwrap_err()
                .to_string()
        };
        let size = refusal(&format!("flow_table_size = 4096\n{OLD}"), Hook::Tc);
        assert!(size.starts_with("flow_table_size and flow_table_size_ipv6 cannot change"));
        assert!(size.ends_with("; nothing was changed"), "{size}");
        let pins = refusal(
            &format!("pin_path = \"/sys/fs/bpf/other\"\n{OLD}"),
            Hook::Tc,
        );
        assert!(pins.starts_with("pin_path cannot change"), "{pins}");
        let announcing = OLD.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nannounce = true");
        let announce = refusal(&format!("{announcing}\n[announce]\n"), Hook::Tc);
        assert!(
            announce.starts_with("announcing VIPs needs a restart"),
            "{announce}"
        );
        let hook = refusal(OLD, Hook::Native);
        assert!(
            hook.contains("the hook changes only at a restart"),
            "{hook}"
        );
        let host_error = plan(
            running(&old, &statuses),
            Config::parse(OLD).unwrap(),
            |_| anyhow::bail!("interface eth9 does not exist"),
        )
        .unwrap_err();
        assert_eq!(
            host_error.to_string(),
            "interface eth9 does not exist; nothing was changed"
        );
    }
}
