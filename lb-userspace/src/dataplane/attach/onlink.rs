//! Where the kernel's routing table (`ip route get`) sends each backend, checked before
//! anything is loaded. Every backend needs a route. A NAT backend's route must leave by an
//! interface xlb is attached to: its replies come back that way, and only there does the
//! program translate them (through a gateway is fine). A DSR backend must also be reached
//! without a gateway: direct server return only changes the MAC address.

use std::net::IpAddr;

use anyhow::Result;
use futures_util::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::RouteMessageBuilder;

use super::links::in_namespace;
use crate::config::{Config, Forwarding};
use crate::sys::netif;

/// A problem of a backend's route: its service, its address, what is wrong.
pub(crate) type RouteProblem = (String, IpAddr, String);

/// The problems of the backends' routes, each naming its service and backend: a backend
/// without a route, a NAT backend reached through an interface xlb is not attached to, a DSR
/// backend through a gateway or such an interface. A backend on this host (a local route) is
/// left alone; interfaces that do not exist are the caller's to report. Fails only if the
/// routing table cannot be asked.
pub(crate) fn backend_route_problems(config: &Config) -> Result<Vec<RouteProblem>> {
    let backends: Vec<(String, IpAddr, bool)> = config
        .services
        .iter()
        .flat_map(|s| {
            let dsr = s.forwarding == Forwarding::Dsr;
            s.backends
                .iter()
                .map(move |b| (s.name.clone(), b.address.ip(), dsr))
        })
        .collect();
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    let interfaces: Vec<(String, u32)> = config
        .interfaces
        .iter()
        .filter_map(|name| Some((name.clone(), netif::index(name).ok()?)))
        .collect();
    in_namespace(None, move || async move {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let mut problems = Vec::new();
        for (service, address, dsr) in backends {
            let request = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(address, if address.is_ipv4() { 32 } else { 128 })?
                .build();
            let problem = |message: String| (service.clone(), address, message);
            // The kernel answers a lookup it cannot route with an error (ENETUNREACH), not
            // with no route.
            let route = match handle.route().get(request).execute().try_next().await {
                Ok(Some(route)) => route,
                Ok(None) => {
                    problems.push(problem(format!(
                        "service {service:?}: no route to backend {address}"
                    )));
                    continue;
                }
                Err(error) => {
                    problems.push(problem(format!(
                        "service {service:?}: no route to backend {address} ({error})"
                    )));
                    continue;
                }
            };
            if route.header.kind == RouteType::Local {
                continue;
            }
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
            let names = || interfaces.iter().map(|(n, _)| n).collect::<Vec<_>>();
            let message = match (gateway, attached) {
                (None, Some(_)) => continue,
                (Some(_), Some(_)) if !dsr => continue,
                (_, None) if !dsr => format!(
                    "service {service:?}: backend {address} is reached through an interface \
                     xlb is not attached to ({}); with NAT its replies come back that way, \
                     where the program cannot translate them, so every connection would hang: \
                     attach xlb there too, or route the backend through one of {:?}",
                    oif.and_then(netif::name_of)
                        .unwrap_or_else(|| "no interface".into()),
                    names()
                ),
                (Some(gateway), _) => format!(
                    "service {service:?}: backend {address} is reached through the gateway \
                     {gateway}; forwarding = \"dsr\" only changes the MAC address, so the \
                     backend must be on a network xlb's interfaces are attached to"
                ),
                (None, None) => format!(
                    "service {service:?}: backend {address} is reached through an interface \
                     xlb is not attached to; with forwarding = \"dsr\" it must be on the \
                     network of one of {:?}",
                    names()
                ),
            };
            problems.push(problem(message));
        }
        Ok(problems)
    })
}
