//! The metric families, encoded from a [`Snapshot`] at each scrape. Every family has help
//! text; names follow Prometheus conventions (counters end in `_total` in their samples,
//! units in the name).

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    BackendMetrics, FleetMetrics, GuardMetrics, ReloadMetrics, ServiceMetrics, Shared, Snapshot,
};
use crate::{
    health::state::State,
    report::{AnnounceReport, Counters, VipReport},
};

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// Encodes the snapshot shared with the monitor.
#[derive(Debug)]
pub(super) struct XlbCollector(pub(super) Shared);

const STATES: [(State, &str); 4] = [
    (State::Up, "up"),
    (State::Overloaded, "overloaded"),
    (State::Draining, "draining"),
    (State::Down, "down"),
];

/// A counter family. A sample without labels is the family's only one.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            // Written `name_total 5`, not `name_total{} 5`.
            return ConstCounter::new(value).encode(metric);
        }
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family. A sample without labels is the family's only one.
fn gauges<N: EncodeGaugeValue + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, N)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            return ConstGauge::new(value).encode(metric);
        }
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Every backend with the labels that name it.
fn backends(services: &[ServiceMetrics]) -> impl Iterator<Item = (Labels, &BackendMetrics)> {
    services.iter().flat_map(|service| {
        service.backends.iter().map(|backend| {
            (
                vec![
                    ("service", service.name.clone()),
                    ("backend", backend.address.clone()),
                ],
                backend,
            )
        })
    })
}

fn service_labels(service: &ServiceMetrics) -> Labels {
    vec![("service", service.name.clone())]
}

/// `labels` with one more.
fn with(mut labels: Labels, key: &'static str, value: &str) -> Labels {
    labels.push((key, value.to_owned()));
    labels
}

/// A family of one sample per item: its name, its help, and an item's value.
type Family<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// The per-service counter families.
const SERVICE_COUNTERS: [Family<ServiceMetrics, u64>; 3] = [
    ("xlb_service_flows", "Flows created", |s| {
        s.counters.new_flows
    }),
    (
        "xlb_service_no_backend_drops",
        "New flows dropped because no backend could take them",
        |s| s.counters.no_backend,
    ),
    (
        "xlb_service_admission_drops",
        "New flows dropped by the per-prefix admission limit",
        |s| s.counters.admission_dropped,
    ),
];

/// The per-backend counter families.
const BACKEND_COUNTERS: [Family<BackendMetrics, u64>; 4] = [
    ("xlb_backend_flows", "Flows created", |b| {
        b.counters.new_flows
    }),
    (
        "xlb_backend_refused_handshakes",
        "Handshakes the backend refused (a RST answering the client's SYN)",
        |b| b.counters.refused,
    ),
    (
        "xlb_backend_unanswered_handshakes",
        "Handshakes the backend left unanswered until the client retransmitted the SYN, which \
         went to another backend",
        |b| b.counters.unanswered,
    ),
    (
        "xlb_backend_passive_marks",
        "Times the data plane marked the backend suspect (passive health)",
        |b| b.passive_marks,
    ),
];

/// The per-backend gauge families.
const BACKEND_GAUGES: [Family<BackendMetrics, i64>; 2] = [
    (
        "xlb_backend_active_flows",
        "Flows whose client sent a packet in the last activity epoch (about 8.6 s)",
        |b| b.active_flows as i64,
    ),
    (
        "xlb_backend_weight",
        "Weight in the published table (100 = configured weight 1 at full load)",
        |b| i64::from(b.weight),
    ),
];

/// Packets and bytes, by direction, of every service and backend.
fn traffic(e: &mut DescriptorEncoder, services: &[ServiceMetrics]) -> Result<(), std::fmt::Error> {
    type Get = fn(&Counters) -> [(&'static str, u64); 2];
    let traffic: [(&str, &str, Get); 2] = [
        ("packets", "Packets through xlb", |c| {
            [
                ("to_backend", c.packets_to_backend),
                ("to_client", c.packets_to_client),
            ]
        }),
        ("bytes", "Bytes (IP and up) through xlb", |c| {
            [
                ("to_backend", c.bytes_to_backend),
                ("to_client", c.bytes_to_client),
            ]
        }),
    ];
    for (what, help, get) in traffic {
        let of_services = services.iter().flat_map(|s| {
            get(&s.counters)
                .map(|(direction, value)| (with(service_labels(s), "direction", direction), value))
        });
        counters(e, &format!("xlb_service_{what}"), help, of_services)?;
        let of_backends = backends(services).flat_map(|(labels, b)| {
            get(&b.counters)
                .map(|(direction, value)| (with(labels.clone(), "direction", direction), value))
        });
        counters(e, &format!("xlb_backend_{what}"), help, of_backends)?;
    }
    Ok(())
}

/// The families of services and backends: the tables above, states and check durations.
fn services_and_backends(
    e: &mut DescriptorEncoder,
    services: &[ServiceMetrics],
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in SERVICE_COUNTERS {
        counters(
            e,
            name,
            help,
            services.iter().map(|s| (service_labels(s), value(s))),
        )?;
    }
    gauges(
        e,
        "xlb_service_backends_available",
        "Backends that can take new flows (a weight in the service's tables); 0 is an outage",
        services.iter().map(|s| {
            let available = s.backends.iter().filter(|b| b.weight > 0).count();
            (service_labels(s), available as i64)
        }),
    )?;
    for (name, help, value) in BACKEND_COUNTERS {
        counters(
            e,
            name,
            help,
            backends(services).map(|(labels, b)| (labels, value(b))),
        )?;
    }
    for (name, help, value) in BACKEND_GAUGES {
        gauges(
            e,
            name,
            help,
            backends(services).map(|(labels, b)| (labels, value(b))),
        )?;
    }
    gauges(
        e,
        "xlb_backend_state",
        "1 for the backend's current state (up, overloaded, draining, down), 0 for the others",
        backends(services).flat_map(|(labels, b)| {
            STATES.map(|(state, name)| {
                (
                    with(labels.clone(), "state", name),
                    i64::from(b.state == state),
                )
            })
        }),
    )?;
    gauges(
        e,
        "xlb_backend_connections",
        "Connections in the flow tables, idle ones included: established, half_open, closing \
         (TCP) and udp (flows)",
        backends(services).flat_map(|(labels, b)| {
            let c = b.connections;
            [
                ("established", c.established),
                ("half_open", c.half_open),
                ("closing", c.closing),
                ("udp", c.udp),
            ]
            .map(|(state, count)| (with(labels.clone(), "state", state), count as i64))
        }),
    )?;
    gauges(
        e,
        "xlb_backend_health_check_duration_seconds",
        "Duration of the last health check",
        backends(services)
            .filter_map(|(labels, b)| b.check_seconds.map(|seconds| (labels, seconds))),
    )
}

/// The data plane's events, spills between pools, the flow tables and the handshake guard.
fn data_plane(e: &mut DescriptorEncoder, snapshot: &Snapshot) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "xlb_dataplane_events",
        "Data-plane events (see the README)",
        snapshot
            .events
            .iter()
            .map(|(event, count)| (vec![("event", (*event).to_owned())], *count)),
    )?;
    counters(
        e,
        "xlb_pool_spilled_flows",
        "New flows of a pool's clients placed in another pool (the home pool had no room)",
        snapshot.spills.iter().map(|((service, from, to), count)| {
            let labels = vec![
                ("service", service.clone()),
                ("from", from.clone()),
                ("to", to.clone()),
            ];
            (labels, *count)
        }),
    )?;
    let (ipv4, ipv6) = snapshot.flows;
    gauges(
        e,
        "xlb_flows",
        "Established flows whose client sent a packet in the last activity epoch (about 8.6 s)",
        [("ipv4", ipv4), ("ipv6", ipv6)].map(|(family, n)| {
            let labels = vec![
                ("family", family.to_owned()),
                ("table", "established".to_owned()),
            ];
            (labels, n as i64)
        }),
    )?;
    let capacity = ["ipv4", "ipv6"]
        .into_iter()
        .zip(snapshot.flow_capacity)
        .flat_map(|(family, (established, half_open))| {
            [("established", established), ("half_open", half_open)].map(|(table, n)| {
                let labels = vec![("family", family.to_owned()), ("table", table.to_owned())];
                (labels, n as i64)
            })
        });
    gauges(
        e,
        "xlb_flow_table_capacity",
        "Flows each flow table holds at most (fuller tables evict their least recently used)",
        capacity,
    )?;
    counters(
        e,
        "xlb_vip_unserved_packets",
        "TCP and UDP packets to the VIP that no flow or service took: dropped (but for host_ports)",
        snapshot
            .unserved
            .iter()
            .map(|(vip, count)| (vec![("vip", vip.to_string())], *count)),
    )?;
    counters(
        e,
        "xlb_flows_expired",
        "Flows a packet found silent past their timeout (deleted, the packet handled as new)",
        [(Labels::new(), snapshot.flows_expired)],
    )?;
    match snapshot.guard {
        Some(guard) => handshake_guard(e, guard),
        None => Ok(()),
    }
}

/// The handshake guard's state.
fn handshake_guard(e: &mut DescriptorEncoder, guard: GuardMetrics) -> Result<(), std::fmt::Error> {
    let guard_gauges: [(&str, &str, i64); 3] = [
        (
            "xlb_handshake_guard_hashing",
            "1 while the handshake guard places new SYNs by hash (a SYN flood), else 0",
            i64::from(guard.hashing),
        ),
        (
            "xlb_handshake_guard_window_flows",
            "New TCP flows in the handshake guard's current window",
            guard.window_flows as i64,
        ),
        (
            "xlb_handshake_guard_budget",
            "New TCP flows per window before the handshake guard hashes (0: never)",
            guard.budget as i64,
        ),
    ];
    for (name, help, value) in guard_gauges {
        gauges(e, name, help, [(Labels::new(), value)])?;
    }
    Ok(())
}

/// Reloads of the configuration.
fn reloads(e: &mut DescriptorEncoder, reloads: ReloadMetrics) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "xlb_config_reloads",
        "Reloads of the configuration, by result (a failed one changed nothing)",
        [("success", reloads.succeeded), ("failure", reloads.failed)]
            .map(|(result, n)| (vec![("result", result.to_owned())], n)),
    )?;
    gauges(
        e,
        "xlb_config_last_reload_successful",
        "1 if the last reload succeeded (or none was tried), else 0",
        [(Labels::new(), i64::from(reloads.last_succeeded))],
    )?;
    gauges(
        e,
        "xlb_config_last_reload_success_timestamp_seconds",
        "When the configuration in force was loaded",
        [(Labels::new(), reloads.last_success_unix)],
    )
}

/// Route health injection: each VIP's announcement and the BGP daemon.
fn announcements(
    e: &mut DescriptorEncoder,
    announce: &AnnounceReport,
) -> Result<(), std::fmt::Error> {
    let vip = |v: &VipReport| vec![("vip", v.vip.to_string())];
    gauges(
        e,
        "xlb_vip_announced",
        "1 while the VIP is on the announcement device (BIRD exports it), else 0",
        announce
            .vips
            .iter()
            .map(|v| (vip(v), i64::from(v.announced))),
    )?;
    counters(
        e,
        "xlb_vip_announcements",
        "Times the VIP was announced since xlb started",
        announce.vips.iter().map(|v| (vip(v), v.announcements)),
    )?;
    counters(
        e,
        "xlb_vip_withdrawals",
        "Times the VIP was withdrawn since xlb started",
        announce.vips.iter().map(|v| (vip(v), v.withdrawals)),
    )?;
    gauges(
        e,
        "xlb_bgp_daemon_reachable",
        "1 if a BIRD answered on its control socket at the last probe, else 0",
        [(Labels::new(), i64::from(announce.bird_reachable))],
    )
}

/// The flows shared with the fleet, and the datagrams that carry them.
fn fleet_families(e: &mut DescriptorEncoder, fleet: &FleetMetrics) -> Result<(), std::fmt::Error> {
    let labelled = |samples: &[(&'static str, u64)]| -> Vec<(Labels, u64)> {
        samples
            .iter()
            .map(|(result, n)| (vec![("result", (*result).to_owned())], *n))
            .collect()
    };
    counters(
        e,
        "xlb_fleet_flows",
        "Flows shared with the fleet: sent to peers (once per peer), received, installed, \
         already present here, of a service or backend not here, lost (ring or queue full)",
        labelled(&fleet.flows),
    )?;
    counters(
        e,
        "xlb_fleet_messages",
        "The fleet's datagrams: sent, failed to send, and received ones refused (not from a \
         peer, malformed, a wrong tag, replayed or stale) or dropped (the monitor was behind)",
        labelled(&fleet.messages),
    )
}

impl Collector for XlbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot: Snapshot = self.0.lock().expect("the snapshot lock").clone();
        let e = &mut encoder;
        traffic(e, &snapshot.services)?;
        services_and_backends(e, &snapshot.services)?;
        data_plane(e, &snapshot)?;
        reloads(e, snapshot.reloads)?;
        if let Some(announce) = &snapshot.announce {
            announcements(e, announce)?;
        }
        if let Some(fleet) = &snapshot.fleet {
            fleet_families(e, fleet)?;
        }
        gauges(
            e,
            "xlb_build_info",
            "The running xlb's version and commit (always 1)",
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("commit", env!("XLB_COMMIT").to_owned()),
                ],
                1i64,
            )],
        )
    }
}
