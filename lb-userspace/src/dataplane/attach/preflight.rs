//! What the data plane needs from the host, checked before anything is loaded, with errors
//! that say how to fix it and what in the config each is about; and where the program will
//! run on the configured interfaces.

use std::fmt;

use super::{
    hooks::{self, Assessment, Plan},
    links, onlink,
};
use crate::{
    config::{Config, Subject},
    sys::netif,
};

/// A problem the host has with the config: what it is about (so that `xlb check` can point at
/// it in the file) and what is wrong, with how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProblem {
    /// What in the config it is about.
    pub subject: Subject,
    /// What is wrong.
    pub message: String,
}

/// Every problem the host has with a config, in the config's order.
#[derive(Debug, thiserror::Error)]
pub struct HostProblems(pub Vec<HostProblem>);

impl fmt::Display for HostProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: Vec<&str> = self.0.iter().map(|p| p.message.as_str()).collect();
        f.write_str(&messages.join("\n"))
    }
}

/// Checks what the data plane needs from the host, every interface and backend, with errors
/// that say how to fix it, and decides where the program runs on the configured interfaces
/// (see `hooks`).
pub fn preflight(config: &Config) -> Result<Plan, HostProblems> {
    let mut problems = Vec::new();
    let ipv6_services = config.services.iter().any(|s| s.listen.is_ipv6());
    for interface in &config.interfaces {
        let problem = |message: String| HostProblem {
            subject: Subject::Interface(interface.clone()),
            message,
        };
        if let Err(error) = netif::index(interface) {
            problems.push(problem(format!("{error:#}")));
            continue;
        }
        match netif::ipv4_forwarding(interface) {
            Ok(true) => {}
            Ok(false) => problems.push(problem(format!(
                "IPv4 forwarding is off on {interface}: xlb forwards packets as a router does. \
                 Enable it with `sysctl -w net.ipv4.conf.all.forwarding=1` \
                 (or net.ipv4.conf.{interface}.forwarding=1)"
            ))),
            Err(error) => problems.push(problem(format!("{error:#}"))),
        }
        if ipv6_services {
            match netif::ipv6_forwarding(interface) {
                Ok(true) => {}
                Ok(false) => problems.push(problem(format!(
                    "IPv6 forwarding is off on {interface}, and the config has IPv6 services. \
                     Enable it with `sysctl -w net.ipv6.conf.all.forwarding=1` \
                     (or net.ipv6.conf.{interface}.forwarding=1)"
                ))),
                Err(error) => problems.push(problem(format!("{error:#}"))),
            }
        }
    }
    match onlink::backend_route_problems(config) {
        Ok(routes) => {
            problems.extend(
                routes
                    .into_iter()
                    .map(|(service, address, message)| HostProblem {
                        subject: Subject::Backend { service, address },
                        message,
                    }),
            )
        }
        Err(error) => problems.push(HostProblem {
            subject: Subject::Host,
            message: format!("the routes to the backends could not be read: {error:#}"),
        }),
    }
    if !problems.is_empty() {
        return Err(HostProblems(problems));
    }
    let facts = links::inspect(&config.interfaces).map_err(|error| {
        HostProblems(vec![HostProblem {
            subject: Subject::Host,
            message: format!("{error:#}"),
        }])
    })?;
    let assessments: Vec<Assessment> = facts.iter().map(Assessment::of).collect();
    hooks::plan(
        config.xdp_mode,
        &assessments,
        config.assume_complete_checksums,
        config.veth_peer_redirect,
    )
    .map_err(|errors| {
        HostProblems(
            errors
                .into_iter()
                .map(|message| HostProblem {
                    subject: Subject::Key("xdp_mode"),
                    message,
                })
                .collect(),
        )
    })
}
