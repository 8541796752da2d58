//! `xlb flows`: the flows in the flow tables, filtered and described for operators (like
//! `ipvsadm -Lnc`). [`list`] is pure: the entries, the services as applied and the time in,
//! the report out.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::IpNet;
use lb_common::{FlowEntry, FlowKey};

use super::{connections::FlowState, core::Core};
use crate::{
    config::parse_prefix,
    control::{DataplaneReads, ServiceState},
    report::{FlowReport, FlowsReport},
    wire,
};

/// Which flows to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// Only this service's (its id).
    pub service: Option<u32>,
    /// Only those served by this backend.
    pub backend: Option<SocketAddr>,
    /// Only those of clients in this prefix.
    pub client: Option<IpNet>,
}

/// The flows among `entries` (client-to-backend entries, and whether half-open) that pass
/// `filter`, oldest first, at most `limit`; `now_ns` is the coarse monotonic clock.
pub(crate) fn list(
    services: &[ServiceState],
    entries: &[(FlowKey, FlowEntry, bool)],
    filter: &Filter,
    limit: usize,
    now_ns: u64,
) -> FlowsReport {
    let mut flows: Vec<(u32, FlowReport)> = entries
        .iter()
        .filter_map(|(key, entry, half_open)| {
            let service = services.iter().find(|s| s.id == entry.service_id)?;
            let backend = service.backends.iter().find(|b| b.id == entry.backend_id)?;
            let client = SocketAddr::new(
                wire::ip_from_field(&key.src_addr, key.family),
                u16::from_be(key.src_port),
            );
            let keep = filter.service.is_none_or(|id| id == service.id)
                && filter.backend.is_none_or(|b| b == backend.address)
                && filter.client.is_none_or(|net| net.contains(&client.ip()));
            if !keep {
                return None;
            }
            let state = FlowState::of(key, entry, *half_open).name();
            let now_s = now_ns / 1_000_000_000;
            let age = (entry.created_s != 0)
                .then(|| now_s.saturating_sub(u64::from(entry.created_s)) as f64);
            Some((
                entry.created_s,
                FlowReport {
                    service: service.name.clone(),
                    protocol: service.protocol.to_string(),
                    client,
                    vip: service.listen,
                    backend: backend.address,
                    state: state.to_owned(),
                    age_seconds: age,
                    idle_seconds: now_ns.saturating_sub(entry.last_seen_ns) as f64 / 1e9,
                },
            ))
        })
        .collect();
    let matched = flows.len();
    flows.sort_by(|a, b| {
        (a.0, a.1.client, a.1.service.as_str()).cmp(&(b.0, b.1.client, b.1.service.as_str()))
    });
    flows.truncate(limit);
    FlowsReport {
        flows: flows.into_iter().map(|(_, flow)| flow).collect(),
        matched,
    }
}

/// What `xlb flows` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    /// Only this service's flows (its name).
    pub service: Option<String>,
    /// Only those served by this backend.
    pub backend: Option<SocketAddr>,
    /// Only those of clients in this prefix (an address is a host prefix).
    pub client: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// `xlb flows`: checks `query` against the config of `core`, then lists the flows of `maps`
/// that are not over.
pub(crate) fn report(
    core: &Core,
    maps: &impl DataplaneReads,
    query: &FlowQuery,
) -> Result<FlowsReport> {
    let services = core.balancer().services();
    let service = query
        .service
        .as_deref()
        .map(|name| {
            let index = core.service_index(name)?;
            let applied = core.applied(index).with_context(|| {
                format!("service {name:?} is not in the data plane (its last apply failed)")
            })?;
            anyhow::Ok(applied.id)
        })
        .transpose()?;
    if let Some(address) = query.backend {
        let known = services
            .iter()
            .filter(|s| service.is_none_or(|id| id == s.id))
            .any(|s| s.backends.iter().any(|b| b.address == address));
        if !known {
            bail!("no backend {address} in the services asked for");
        }
    }
    let client = query
        .client
        .as_deref()
        .map(|text| parse_prefix(text).map_err(|e| anyhow!("client prefix: {e}")))
        .transpose()?;
    if let (Some(net), Some(name)) = (&client, &query.service) {
        let listen = core.config().services[core.service_index(name)?].listen;
        super::trace::of_the_family(net, name, listen)?;
    }
    let filter = Filter {
        service,
        backend: query.backend,
        client,
    };
    let now = maps.now_ns()?;
    // The tables may still hold flows that are over (until a packet finds them so, or the
    // LRU needs their room): those are not listed.
    let mut entries = maps.flows()?;
    let timeouts = &core.config().flow_timeouts;
    entries.retain(|(key, entry, half_open)| !timeouts.is_over(key, entry, *half_open, now));
    Ok(list(services, &entries, &filter, query.limit, now))
}

#[cfg(test)]
mod tests {
    use lb_common::consts::{flow_flags, proto};

    use super::*;
    use crate::{
        config::{Forwarding, Protocol},
        control::{BackendState, Known, Locality},
    };

    const SECOND: u64 = 1_000_000_000;

    fn services() -> Vec<ServiceState> {
        let backend = |id, address: &str| BackendState {
            id,
            address: address.parse().unwrap(),
            weight: 1,
            pool: 0,
            maglev_weight: 1,
        };
        vec![
            ServiceState {
                id: 0,
                name: "web".into(),
                listen: "198.18.0.10:80".parse().unwrap(),
                protocol: Protocol::Tcp,
                backends: vec![
                    backend(0, "198.18.1.11:8080"),
                    backend(1, "198.18.1.12:8080"),
                ],
                leaving: Vec::new(),
                tables: Vec::new(),
                generation: 0,
                locality: Locality::single(),
                policy: None,
                maglev: None,
                maglev_inputs: Vec::new(),
                forwarding: Forwarding::Nat,
                known: Known::All,
            },
            ServiceState {
                id: 1,
                name: "dns".into(),
                listen: "[fd00::10]:53".parse().unwrap(),
                protocol: Protocol::Udp,
                backends: vec![backend(2, "[fd00:1::11]:53")],
                leaving: Vec::new(),
                tables: Vec::new(),
                generation: 0,
                locality: Locality::single(),
                policy: None,
                maglev: None,
                maglev_inputs: Vec::new(),
                forwarding: Forwarding::Nat,
                known: Known::All,
            },
        ]
    }

    fn flow(client: &str, service: u32, backend: u32, created_s: u32) -> (FlowKey, FlowEntry) {
        let client: SocketAddr = client.parse().unwrap();
        let protocol = if service == 1 { proto::UDP } else { proto::TCP };
        (
            FlowKey {
                src_addr: wire::addr_field(client.ip()),
                src_port: wire::port_field(client.port()),
                proto: protocol,
                family: wire::family_of(client.ip()),
                ..FlowKey::default()
            },
            FlowEntry {
                service_id: service,
                backend_id: backend,
                created_s,
                last_seen_ns: 95 * SECOND,
                ..FlowEntry::default()
            },
        )
    }

    fn entries() -> Vec<(FlowKey, FlowEntry, bool)> {
        let (k1, e1) = flow("198.18.2.1:40000", 0, 0, 90);
        let (k2, mut e2) = flow("198.18.3.1:40001", 0, 1, 50);
        e2.flags = flow_flags::CLOSING;
        let (k3, e3) = flow("198.18.2.7:40002", 0, 1, 0);
        let (k4, e4) = flow("[fd00:2::1]:5353", 1, 2, 70);
        vec![
            (k1, e1, false),
            (k2, e2, false),
            (k3, e3, true),
            (k4, e4, false),
        ]
    }

    fn clients(report: &FlowsReport) -> Vec<String> {
        report.flows.iter().map(|f| f.client.to_string()).collect()
    }

    #[test]
    fn flows_are_described_oldest_first_with_state_age_and_idle_time() {
        let report = list(
            &services(),
            &entries(),
            &Filter::default(),
            100,
            100 * SECOND,
        );
        assert_eq!(report.matched, 4);
        assert_eq!(
            clients(&report),
            [
                "198.18.2.7:40002",
                "198.18.3.1:40001",
                "[fd00:2::1]:5353",
                "198.18.2.1:40000"
            ]
        );
        let states: Vec<&str> = report.flows.iter().map(|f| f.state.as_str()).collect();
        assert_eq!(states, ["half-open", "closing", "active", "established"]);
        let ages: Vec<Option<f64>> = report.flows.iter().map(|f| f.age_seconds).collect();
        assert_eq!(ages, [None, Some(50.0), Some(30.0), Some(10.0)]);
        assert!(report.flows.iter().all(|f| f.idle_seconds == 5.0));
        let udp = &report.flows[2];
        assert_eq!(
            (
                udp.service.as_str(),
                udp.protocol.as_str(),
                udp.backend.to_string(),
                udp.vip.to_string()
            ),
            (
                "dns",
                "udp",
                "[fd00:1::11]:53".to_owned(),
                "[fd00::10]:53".to_owned()
            )
        );
    }

    #[test]
    fn filters_combine_and_the_limit_keeps_the_count_of_all_matches() {
        let by =
            |filter: Filter, limit| list(&services(), &entries(), &filter, limit, 100 * SECOND);
        let web = by(
            Filter {
                service: Some(0),
                ..Filter::default()
            },
            100,
        );
        assert_eq!(web.matched, 3);
        let backend = by(
            Filter {
                backend: Some("198.18.1.12:8080".parse().unwrap()),
                ..Filter::default()
            },
            100,
        );
        assert_eq!(clients(&backend), ["198.18.2.7:40002", "198.18.3.1:40001"]);
        let prefix = by(
            Filter {
                client: Some("198.18.2.0/24".parse().unwrap()),
                backend: Some("198.18.1.11:8080".parse().unwrap()),
                ..Filter::default()
            },
            100,
        );
        assert_eq!(clients(&prefix), ["198.18.2.1:40000"]);
        let limited = by(Filter::default(), 1);
        assert_eq!((limited.flows.len(), limited.matched), (1, 4));
    }
}
