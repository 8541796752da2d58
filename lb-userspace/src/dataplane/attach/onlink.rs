//! Direct server return only changes the MAC address: a DSR service's backends must be
//! reachable without a gateway, through one of the interfaces xlb is attached to. The kernel's
//! routing table says (`ip route get`), before anything is loaded.

use std::net::IpAddr;

use anyhow::{Result, bail};
use futures_util::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::RouteMessageBuilder;

use super::links::in_namespace;
use crate::config::{Config, Forwarding};
use crate::sys::netif;

/// Fails, naming the service and the backend, if a DSR backend is behind a gateway or out of
/// an interface xlb is not attached to.
pub(crate) fn check_dsr_backends(config: &Config) -> Result<()> {
    let backends: Vec<(String, IpAddr)> = config
        .services
        .iter()
        .filter(|s| s.forwarding == Forwarding::Dsr)
        .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.address.ip())))
        .collect();
    if backends.is_empty() {
        return Ok(());
    }
    let interfaces: Vec<(String, u32)> = config
        .interfaces
        .iter()
        .map(|name| Ok((name.clone(), netif::index(name)?)))
        .collect::<Result<_>>()?;
    in_namespace(None, move || async move {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        for (service, address) in backends {
            let request = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(address, if address.is_ipv4() { 32 } else { 128 })?
                .build();
            // The kernel answers a lookup it cannot route with an error (ENETUNREACH), not
            // with no route.
            let route = match handle.route().get(request).execute().try_next().await {
                Ok(Some(route)) => route,
                Ok(None) => bail!("service {service:?}: no route to backend {address}"),
                Err(error) => bail!("service {service:?}: no route to backend {address} ({error})"),
            };
            let gateway = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::from(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::from(*g)),
                _ => None,
            });
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            let attached = interfaces.iter().find(|(_, index)| Some(*index) == oif);
            match (gateway, attached) {
                (None, Some(_)) => {}
                (Some(gateway), _) => bail!(
                    "service {service:?}: backend {address} is reached through the gateway \
                     {gateway}; forwarding = \"dsr\" only changes the MAC address, so the \
                     backend must be on a network xlb's interfaces are attached to"
                ),
                (None, None) => bail!(
                    "service {service:?}: backend {address} is reached through an interface \
                     xlb is not attached to; with forwarding = \"dsr\" it must be on the \
                     network of one of {:?}",
                    interfaces.iter().map(|(n, _)| n).collect::<Vec<_>>()
                ),
            }
        }
        Ok(())
    })
}
