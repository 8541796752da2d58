//! What another instance's flows become here: each record names its service by VIP, port and
//! protocol and its backend by address and port, which this instance maps to its own ids (a
//! backend that left this config but still drains counts); the entry is the one
//! `lb_common::share::shared_entry` builds.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::{
    FlowEntry, FlowKey,
    consts::flow_flags,
    share::{FlowEvent, flow_event, shared_entry},
};

use crate::{config::Protocol, control::ServiceState, wire::ip_from_field};

/// Records resolved against this instance's services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Entries to install: key, entry (closing ones flagged so).
    pub entries: Vec<(FlowKey, FlowEntry)>,
    /// Records whose VIP, port and protocol no service here has.
    pub no_service: usize,
    /// Records whose backend the service does not have here.
    pub no_backend: usize,
}

/// The address and port a record's key's destination (the VIP) or its backend stands for.
fn endpoint(addr: &lb_common::Addr, port: u16, family: u8) -> SocketAddr {
    SocketAddr::new(ip_from_field(addr, family), u16::from_be(port))
}

/// The entries `records` make here at `now_ns`, given the services as applied.
pub fn resolve(records: &[FlowEvent], services: &[ServiceState], now_ns: u64) -> Resolved {
    let by_vip: HashMap<(SocketAddr, u8), &ServiceState> = services
        .iter()
        .map(|s| ((s.listen, protocol_number(s.protocol)), s))
        .collect();
    let mut resolved = Resolved::default();
    for record in records {
        let key = &record.key;
        let vip = endpoint(&key.dst_addr, key.dst_port, key.family);
        let Some(service) = by_vip.get(&(vip, key.proto)) else {
            resolved.no_service += 1;
            continue;
        };
        let backend = endpoint(&record.backend, record.backend_port, key.family);
        let Some(id) = service
            .backends
            .iter()
            .chain(&service.leaving)
            .find(|b| b.address == backend)
            .map(|b| b.id)
        else {
            resolved.no_backend += 1;
            continue;
        };
        let mut flags = service.forwarding.flow_flags();
        if record.kind == flow_event::CLOSING {
            flags |= flow_flags::CLOSING;
        }
        let entry = shared_entry(
            key,
            &record.backend,
            record.backend_port,
            (id, service.id),
            flags,
            now_ns,
        );
        resolved.entries.push((*key, entry));
    }
    resolved
}

fn protocol_number(protocol: Protocol) -> u8 {
    protocol.number()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lb_common::consts::{family, proto};

    use super::*;
    use crate::{
        config::Forwarding,
        control::{BackendState, Known, Locality},
    };

    fn record(vip: &str, backend: &str, kind: u8) -> FlowEvent {
        let vip: SocketAddr = vip.parse().unwrap();
        let backend: SocketAddr = backend.parse().unwrap();
        let field = |a: SocketAddr| crate::wire::addr_field(a.ip());
        FlowEvent {
            key: FlowKey {
                src_addr: field("198.18.2.2:1".parse().unwrap()),
                dst_addr: field(vip),
                src_port: 40_000u16.to_be(),
                dst_port: vip.port().to_be(),
                proto: proto::TCP,
                family: family::IPV4,
                _pad: [0; 2],
            },
            backend: field(backend),
            backend_port: backend.port().to_be(),
            kind,
            _pad: [0; 5],
        }
    }

    fn service(id: u32, forwarding: Forwarding) -> ServiceState {
        let backend = |id: u32, address: &str| BackendState {
            id,
            address: address.parse().unwrap(),
            weight: 1,
            pool: 0,
            maglev_weight: 1,
        };
        ServiceState {
            id,
            name: "web".into(),
            listen: "198.18.100.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            backends: vec![backend(4, "198.18.1.11:8080")],
            leaving: vec![backend(9, "198.18.1.13:8080")],
            tables: Vec::new(),
            generation: 0,
            locality: Locality {
                prefixes: Arc::new(Vec::new()),
                ..Locality::single()
            },
            policy: None,
            maglev: None,
            maglev_inputs: Vec::new(),
            forwarding,
            known: Known::All,
        }
    }

    #[test]
    fn records_take_this_instances_ids_or_are_counted_out() {
        let services = [service(2, Forwarding::Dsr)];
        let records = [
            record("198.18.100.1:80", "198.18.1.11:8080", flow_event::OPENED),
            // A backend that left this config but drains here.
            record("198.18.100.1:80", "198.18.1.13:8080", flow_event::CLOSING),
            record("198.18.100.1:80", "198.18.1.99:8080", flow_event::OPENED),
            record("198.18.100.9:80", "198.18.1.11:8080", flow_event::OPENED),
        ];
        let resolved = resolve(&records, &services, 7_000_000_000);
        assert_eq!((resolved.no_backend, resolved.no_service), (1, 1));
        let ids: Vec<(u32, u32, u8)> = resolved
            .entries
            .iter()
            .map(|(_, e)| (e.backend_id, e.service_id, e.flags))
            .collect();
        assert_eq!(
            ids,
            [
                (4, 2, flow_flags::DSR),
                (9, 2, flow_flags::DSR | flow_flags::CLOSING)
            ]
        );
        assert_eq!(resolved.entries[0].0, records[0].key);
        assert_eq!(resolved.entries[0].1.last_seen_ns, 7_000_000_000);
    }
}
