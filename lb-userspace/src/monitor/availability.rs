//! Whether each service can take new flows: the outage an operator must hear of (every
//! backend Down, drained or at weight 0), logged at ERROR when it starts and at WARN when it
//! ends, whatever the backends' own lines say.

use std::collections::HashMap;

use tracing::{error, warn};

use crate::config::Config;

/// A service's change of availability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// No backend of the service can take new flows any more.
    Lost {
        /// The service.
        service: String,
        /// Its backends (none of them can).
        backends: usize,
    },
    /// Some can again.
    Recovered {
        /// The service.
        service: String,
        /// How many can.
        available: usize,
        /// Its backends.
        backends: usize,
    },
}

/// The last known availability of each service, by name (so that a reload that reorders or
/// adds services keeps it).
#[derive(Default)]
pub(crate) struct Availability {
    last: HashMap<String, usize>,
}

impl Availability {
    /// Records `available` (per service of `config`, in config order; `None` while a service's
    /// backends are not all checked yet) and returns what changed: a service that has no
    /// backend for new flows and had some, or was not known before; one that has some again.
    pub(crate) fn update(&mut self, config: &Config, available: &[Option<usize>]) -> Vec<Change> {
        let mut changes = Vec::new();
        // Rebuilt from the config's services, so a service that left is forgotten.
        let mut last = HashMap::with_capacity(config.services.len());
        for (service, &available) in config.services.iter().zip(available) {
            let before = self.last.remove(&service.name);
            // Not all checked yet: keep what was known.
            let Some(now) = available.or(before) else {
                continue;
            };
            last.insert(service.name.clone(), now);
            if available.is_none() {
                continue;
            }
            let (name, backends) = (service.name.clone(), service.backends.len());
            match (before, now) {
                (Some(0), 0) => {}
                (_, 0) => changes.push(Change::Lost {
                    service: name,
                    backends,
                }),
                (Some(0), available) => changes.push(Change::Recovered {
                    service: name,
                    available,
                    backends,
                }),
                _ => {}
            }
        }
        self.last = last;
        changes
    }
}

/// Logs `changes`: an outage at ERROR, its end at WARN (so that `journalctl -p warning` shows
/// both).
pub(crate) fn log(changes: &[Change]) {
    for change in changes {
        match change {
            Change::Lost { service, backends } => error!(
                service,
                backends,
                "service has no backend that can take new flows: its new flows are dropped"
            ),
            Change::Recovered {
                service,
                available,
                backends,
            } => warn!(
                service,
                available, backends, "service can take new flows again"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353" } ]
"#;

    fn lost(service: &str, backends: usize) -> Change {
        Change::Lost {
            service: service.into(),
            backends,
        }
    }

    #[test]
    fn an_outage_is_reported_when_it_starts_and_when_it_ends() {
        let config = Config::parse(CONFIG).unwrap();
        let mut availability = Availability::default();
        // Not all checked yet: nothing to say.
        assert!(availability.update(&config, &[None, None]).is_empty());
        // The first decision: dns has nothing from the start, web is fine.
        assert_eq!(
            availability.update(&config, &[Some(2), Some(0)]),
            [lost("dns", 1)]
        );
        assert_eq!(availability.last["dns"], 0);
        // Still out, one backend less for web: nothing new.
        assert!(availability.update(&config, &[Some(1), Some(0)]).is_empty());
        assert_eq!(
            availability.update(&config, &[Some(0), Some(1)]),
            [
                lost("web", 2),
                Change::Recovered {
                    service: "dns".into(),
                    available: 1,
                    backends: 1
                }
            ]
        );
        // A service that leaves the config is forgotten.
        let web_only =
            Config::parse(&CONFIG[..CONFIG.find("[[service]]\nname = \"dns\"").unwrap()]).unwrap();
        assert!(availability.update(&web_only, &[Some(0)]).is_empty());
        assert!(!availability.last.contains_key("dns"));
    }
}
