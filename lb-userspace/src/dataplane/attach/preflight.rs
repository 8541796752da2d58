//! What the data plane needs from the host, checked before anything is loaded, with errors
//! that say how to fix it; and where the program will run on the configured interfaces.

use anyhow::{Result, anyhow, bail};

use super::{
    hooks::{self, Assessment, Plan},
    links, onlink,
};
use crate::{config::Config, sys::netif};

/// Checks what the data plane needs from the host, with errors that say how to fix it, and
/// decides where the program runs on the configured interfaces (see `hooks`).
pub fn preflight(config: &Config) -> Result<Plan> {
    for interface in &config.interfaces {
        netif::index(interface)?;
        if !netif::ipv4_forwarding(interface)? {
            bail!(
                "IPv4 forwarding is off on {interface}: xlb forwards packets as a router does. \
                 Enable it with `sysctl -w net.ipv4.conf.all.forwarding=1` \
                 (or net.ipv4.conf.{interface}.forwarding=1)"
            );
        }
        let ipv6_services = config.services.iter().any(|s| s.listen.is_ipv6());
        if ipv6_services && !netif::ipv6_forwarding(interface)? {
            bail!(
                "IPv6 forwarding is off on {interface}, and the config has IPv6 services. \
                 Enable it with `sysctl -w net.ipv6.conf.all.forwarding=1` \
                 (or net.ipv6.conf.{interface}.forwarding=1)"
            );
        }
    }
    onlink::check_backend_routes(config)?;
    let facts = links::inspect(&config.interfaces)?;
    let assessments: Vec<Assessment> = facts.iter().map(Assessment::of).collect();
    hooks::plan(
        config.xdp_mode,
        &assessments,
        config.assume_complete_checksums,
        config.veth_peer_redirect,
    )
    .map_err(|errors| anyhow!(errors.join("\n")))
}
