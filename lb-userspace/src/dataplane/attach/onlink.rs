//! Where the kernel's routing table (`ip route get`) sends each backend, checked before
//! anything is loaded. Every backend needs a route. A NAT backend's route must leave by an
//! interface xlb is attached to: its replies come back that way, and only there does the
//! program translate them (through a gateway is fine). A DSR backend must also be reached
//! without a gateway: direct server return only changes the MAC address. A tunnel backend
//! (`ipip`, `gue`) may be behind any number of gateways, but its route must leave by an
//! interface xlb is attached to (the program sends the encapsulated packet there), whose MTU
//! leaves room for the outer header.

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
/// without a route, a NAT or tunnel backend reached through an interface xlb is not attached
/// to, a DSR backend through a gateway or such an interface, a tunnel backend through an
/// interface whose MTU leaves too little room. A backend on this host (a local route) is
/// left alone; interfaces that do not exist are the caller's to report. Fails only if the
/// routing table cannot be asked.
pub(crate) fn backend_route_problems(config: &Config) -> Result<Vec<RouteProblem>> {
    let backends: Vec<(String, IpAddr, Forwarding)> = config
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .map(move |b| (s.name.clone(), b.address.ip(), s.forwarding))
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
        for (service, address, forwarding) in backends {
            let dsr = forwarding == Forwarding::Dsr;
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
            if forwarding.tunnel() {
                if let Some(message) = tunnel_route_problem(
                    &service,
                    address,
                    forwarding,
                    oif,
                    attached.is_some(),
                    &names(),
                ) {
                    problems.push(problem(message));
                }
                continue;
            }
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

/// The smallest inner packet a tunnel must carry whole: IPv6's minimum MTU, and the size every
/// IPv4 host must accept (RFC 791).
fn min_inner_mtu(address: IpAddr) -> u32 {
    if address.is_ipv6() { 1280 } else { 576 }
}

/// The problem of a tunnel backend's route (leaving by interface `oif`, one xlb is attached
/// to if `attached`), if it has one: not through one of `names`, or an MTU that leaves less
/// than [`min_inner_mtu`] for the inner packet.
fn tunnel_route_problem(
    service: &str,
    address: IpAddr,
    forwarding: Forwarding,
    oif: Option<u32>,
    attached: bool,
    names: &[&String],
) -> Option<String> {
    let name = forwarding.name();
    let interface = || {
        oif.and_then(netif::name_of)
            .unwrap_or_else(|| "no interface".into())
    };
    if !attached {
        return Some(format!(
            "service {service:?}: backend {address} is reached through an interface xlb is not \
             attached to ({}); with forwarding = \"{name}\" the program sends the encapsulated \
             packets itself, so route the backend through one of {names:?}",
            interface()
        ));
    }
    let mtu = netif::mtu(oif?).ok()?;
    let overhead = u32::from(lb_common::tunnel::overhead(
        address.is_ipv6(),
        forwarding == Forwarding::Gue,
    ));
    let inner = mtu.saturating_sub(overhead);
    (inner < min_inner_mtu(address)).then(|| {
        format!(
            "service {service:?}: backend {address} is reached through {} whose MTU {mtu} \
             leaves {inner} bytes for a packet inside forwarding = \"{name}\" ({overhead} \
             bytes of outer headers); at least {} are needed: raise the MTU",
            interface(),
            min_inner_mtu(address)
        )
    })
}
