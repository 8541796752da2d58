//! Which VIPs should be announced, decided from the config and the tables the monitor is
//! about to publish: a pure function, tested without a kernel.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{config::Config, control::ServiceSpec};

/// Whether one VIP should be announced, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The virtual IP.
    pub vip: IpAddr,
    /// Announce it (else withdraw it).
    pub announce: bool,
    /// Why, for `xlb status` and the log.
    pub reason: String,
}

/// The announcements of the VIPs of services with `announce`, in address order: a VIP is
/// announced while at least one of its announcing services has a backend that takes new
/// flows (a weight above zero in `specs`: Up, or Overloaded with nowhere else to go), and
/// withdrawn when none has (every backend Down, drained or disabled), since this instance
/// would then drop the new flows that routers send it.
pub(crate) fn announcements(config: &Config, specs: &[ServiceSpec]) -> Vec<Announcement> {
    let mut vips: BTreeMap<IpAddr, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for service in config.services.iter().filter(|s| s.announce) {
        let serving = specs
            .iter()
            .find(|spec| spec.name == service.name)
            .is_some_and(|spec| spec.backends.iter().any(|b| b.weight > 0));
        let (can, cannot) = vips.entry(service.listen.ip()).or_default();
        if serving {
            can.push(&service.name);
        } else {
            cannot.push(&service.name);
        }
    }
    vips.into_iter()
        .map(|(vip, (can, cannot))| Announcement {
            vip,
            announce: !can.is_empty(),
            reason: if can.is_empty() {
                format!("no backend of {} takes new flows", cannot.join(", "))
            } else {
                format!("{} takes new flows", can.join(", "))
            },
        })
        .collect()
}

/// Every VIP of `announcements` withdrawn, for `reason`.
pub(crate) fn withdrawn(announcements: &[Announcement], reason: &str) -> Vec<Announcement> {
    announcements
        .iter()
        .map(|a| Announcement {
            vip: a.vip,
            announce: false,
            reason: reason.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
interfaces = ["eth0"]

[[service]]
name = "web"
listen = "198.18.100.5:80"
protocol = "tcp"
announce = true
backends = [ { address = "198.18.1.11:80" }, { address = "198.18.1.12:80" } ]

[[service]]
name = "dns"
listen = "198.18.100.5:53"
protocol = "udp"
announce = true
backends = [ { address = "198.18.1.11:53" } ]

[[service]]
name = "quiet"
listen = "198.18.100.6:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:80" } ]
"#;

    #[test]
    fn a_vip_is_announced_while_one_of_its_services_takes_new_flows() {
        let config = Config::parse(CONFIG).unwrap();
        let mut specs = ServiceSpec::all_up(&config);
        let vip: IpAddr = "198.18.100.5".parse().unwrap();
        assert_eq!(
            announcements(&config, &specs),
            [Announcement {
                vip,
                announce: true,
                reason: "web, dns takes new flows".into()
            }],
            "one announcement per VIP; services without `announce` are not announced"
        );
        // Every web backend Down: dns still serves the VIP.
        for backend in &mut specs[0].backends {
            backend.weight = 0;
        }
        let now = announcements(&config, &specs);
        assert!(now[0].announce);
        assert_eq!(now[0].reason, "dns takes new flows");
        // And dns's too: withdrawn.
        specs[1].backends[0].weight = 0;
        assert_eq!(
            announcements(&config, &specs),
            [Announcement {
                vip,
                announce: false,
                reason: "no backend of web, dns takes new flows".into()
            }]
        );
        assert_eq!(
            withdrawn(&announcements(&config, &specs), "xlb is stopping")[0].reason,
            "xlb is stopping"
        );
    }
}
