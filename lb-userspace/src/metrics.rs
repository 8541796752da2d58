//! The Prometheus endpoint (`metrics = "127.0.0.1:9100"` in the config): per-service and
//! per-backend traffic, flows, states, weights and health-check latency, and the data plane's
//! events. The monitor refreshes a [`Snapshot`] once a second; a scrape encodes the latest one.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{api::Counters, health::state::State};

/// What the metrics expose, as of the monitor's last refresh.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Services in config order.
    pub services: Vec<ServiceMetrics>,
    /// Data-plane events: name and count.
    pub events: Vec<(&'static str, u64)>,
    /// New flows placed outside their home pool: (service, from pool, to pool) and count.
    pub spills: Vec<((String, String, String), u64)>,
    /// Flows in the flow tables: established, half-open.
    pub flows: (u64, u64),
}

/// One service.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// Name.
    pub name: String,
    /// Counters.
    pub counters: Counters,
    /// Backends.
    pub backends: Vec<BackendMetrics>,
}

/// One backend.
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    /// Address and port.
    pub address: String,
    /// Counters.
    pub counters: Counters,
    /// State.
    pub state: State,
    /// Weight in the published table.
    pub weight: u32,
    /// Duration of the last health check, in seconds.
    pub check_seconds: Option<f64>,
}

/// The snapshot shared between the monitor and the endpoint.
pub type Shared = Arc<Mutex<Snapshot>>;

#[derive(Debug)]
struct XlbCollector(Shared);

const STATES: [(State, &str); 4] = [
    (State::Up, "up"),
    (State::Overloaded, "overloaded"),
    (State::Draining, "draining"),
    (State::Down, "down"),
];

impl Collector for XlbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.lock().expect("the snapshot lock").clone();
        let services = &snapshot.services;

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
            let name = format!("xlb_service_{what}");
            let mut metric = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for service in services {
                for (direction, value) in get(&service.counters) {
                    let labels = [
                        ("service", service.name.clone()),
                        ("direction", direction.to_owned()),
                    ];
                    ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
                }
            }
            let name = format!("xlb_backend_{what}");
            let mut metric = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for service in services {
                for backend in &service.backends {
                    for (direction, value) in get(&backend.counters) {
                        let labels = [
                            ("service", service.name.clone()),
                            ("backend", backend.address.clone()),
                            ("direction", direction.to_owned()),
                        ];
                        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
                    }
                }
            }
        }

        let mut metric = encoder.encode_descriptor(
            "xlb_service_flows",
            "Flows created",
            None,
            MetricType::Counter,
        )?;
        for service in services {
            let labels = [("service", service.name.clone())];
            ConstCounter::new(service.counters.new_flows).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_service_no_backend_drops",
            "New flows dropped because no backend could take them",
            None,
            MetricType::Counter,
        )?;
        for service in services {
            let labels = [("service", service.name.clone())];
            ConstCounter::new(service.counters.no_backend)
                .encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_backend_flows",
            "Flows created",
            None,
            MetricType::Counter,
        )?;
        for service in services {
            for backend in &service.backends {
                let labels = [
                    ("service", service.name.clone()),
                    ("backend", backend.address.clone()),
                ];
                ConstCounter::new(backend.counters.new_flows)
                    .encode(metric.encode_family(&labels)?)?;
            }
        }

        let mut metric = encoder.encode_descriptor(
            "xlb_backend_state",
            "1 for the backend's current state (up, overloaded, draining, down), 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for service in services {
            for backend in &service.backends {
                for (state, name) in STATES {
                    let labels = [
                        ("service", service.name.clone()),
                        ("backend", backend.address.clone()),
                        ("state", name.to_owned()),
                    ];
                    let value = i64::from(backend.state == state);
                    ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_backend_weight",
            "Weight in the published table (100 = configured weight 1 at full load)",
            None,
            MetricType::Gauge,
        )?;
        for service in services {
            for backend in &service.backends {
                let labels = [
                    ("service", service.name.clone()),
                    ("backend", backend.address.clone()),
                ];
                ConstGauge::new(i64::from(backend.weight))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_backend_health_check_duration_seconds",
            "Duration of the last health check",
            None,
            MetricType::Gauge,
        )?;
        for service in services {
            for backend in &service.backends {
                if let Some(seconds) = backend.check_seconds {
                    let labels = [
                        ("service", service.name.clone()),
                        ("backend", backend.address.clone()),
                    ];
                    ConstGauge::new(seconds).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_dataplane_events",
            "Data-plane events (see the README)",
            None,
            MetricType::Counter,
        )?;
        for (event, count) in &snapshot.events {
            let labels = [("event", (*event).to_owned())];
            ConstCounter::new(*count).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_pool_spilled_flows",
            "New flows of a pool's clients placed in another pool (the home pool had no room)",
            None,
            MetricType::Counter,
        )?;
        for ((service, from, to), count) in &snapshot.spills {
            let labels = [
                ("service", service.clone()),
                ("from", from.clone()),
                ("to", to.clone()),
            ];
            ConstCounter::new(*count).encode(metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_flows",
            "Flows in the flow tables, as of the last sweep",
            None,
            MetricType::Gauge,
        )?;
        for (table, count) in [
            ("established", snapshot.flows.0),
            ("half_open", snapshot.flows.1),
        ] {
            let labels = [("table", table.to_owned())];
            ConstGauge::new(count as i64).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The registry with xlb's collector.
pub fn registry(shared: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(XlbCollector(shared)));
    registry
}

/// Encodes the metrics in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    Ok(text)
}

/// Serves `GET /metrics` on `address` until the task is dropped.
pub async fn serve(address: SocketAddr, shared: Shared) -> Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics endpoint {address}"))?;
    info!(%address, "metrics endpoint listening");
    let registry = Arc::new(registry(shared));
    loop {
        let (stream, _) = listener.accept().await?;
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                async move {
                    let response = if request.uri().path() != "/metrics" {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from("try /metrics\n")))
                    } else {
                        match render(&registry) {
                            Ok(text) => Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(text))),
                            Err(error) => {
                                warn!("encoding metrics: {error:#}");
                                Response::builder()
                                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                                    .body(Full::new(Bytes::new()))
                            }
                        }
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("a valid response"))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_prometheus_naming() {
        let counters = Counters {
            packets_to_backend: 10,
            bytes_to_backend: 1000,
            new_flows: 3,
            ..Counters::default()
        };
        let shared = Arc::new(Mutex::new(Snapshot {
            services: vec![ServiceMetrics {
                name: "web".into(),
                counters,
                backends: vec![BackendMetrics {
                    address: "198.18.1.11:8080".into(),
                    counters,
                    state: State::Draining,
                    weight: 100,
                    check_seconds: Some(0.002),
                }],
            }],
            events: vec![("no_backend", 4)],
            spills: vec![(("video".into(), "kr".into(), "jp".into()), 12)],
            flows: (7, 2),
        }));
        let text = render(&registry(shared)).unwrap();
        for line in [
            "# TYPE xlb_service_packets counter",
            r#"xlb_service_packets_total{service="web",direction="to_backend"} 10"#,
            r#"xlb_backend_bytes_total{service="web",backend="198.18.1.11:8080",direction="to_backend"} 1000"#,
            r#"xlb_backend_flows_total{service="web",backend="198.18.1.11:8080"} 3"#,
            r#"xlb_backend_state{service="web",backend="198.18.1.11:8080",state="draining"} 1"#,
            r#"xlb_backend_state{service="web",backend="198.18.1.11:8080",state="up"} 0"#,
            r#"xlb_backend_weight{service="web",backend="198.18.1.11:8080"} 100"#,
            r#"xlb_backend_health_check_duration_seconds{service="web",backend="198.18.1.11:8080"} 0.002"#,
            r#"xlb_dataplane_events_total{event="no_backend"} 4"#,
            r#"xlb_pool_spilled_flows_total{service="video",from="kr",to="jp"} 12"#,
            r#"xlb_flows{table="established"} 7"#,
            r#"xlb_flows{table="half_open"} 2"#,
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
