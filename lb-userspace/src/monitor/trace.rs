//! `xlb trace`: checks the request, starts a trace in the data plane, and streams what it
//! records until the time is up or the operator leaves; then ends it and says how it went.
//! One trace at a time. [`filter`] (the request against the config) and [`describe`] (an
//! event, named) are pure.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::IpNet;
use lb_common::{
    consts::{proto, tcp_flags},
    direction,
    trace::{NO_BACKEND_ID, TraceConfig, TraceEvent, decision, max_prefix_len},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
    time::Instant,
};
use tracing::{info, warn};

use super::core::Core;
use crate::{
    config::parse_prefix,
    dataplane::{maps::trace::Tracer, monotonic_ns},
    report::{TraceEventReport, TraceSummary, TraceUpdate},
    wire,
};

/// The tracer, shared by the monitor and the trace running (which holds it while it runs).
type SharedTracer = Arc<Mutex<Option<Tracer>>>;

/// What to trace: a service's packets, for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    /// The service's name.
    pub service: String,
    /// Only packets of flows whose client is in this prefix (an address is a host prefix).
    pub client: Option<String>,
    /// For how long.
    pub seconds: u64,
    /// Record one matching packet in this many.
    pub sample: u32,
}

/// What names the ids in a trace's events, as of its start.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    /// Service id -> name.
    pub services: HashMap<u32, String>,
    /// Backend id -> address.
    pub backends: HashMap<u32, SocketAddr>,
    /// Service id -> its pools' names (services with more than one pool).
    pub pools: HashMap<u32, Vec<String>>,
}

/// The TCP flags of a packet, as `tcpdump` names them.
fn tcp_flags(flags: u8) -> String {
    let set: Vec<&str> = tcp_flags::NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    set.join("|")
}

/// An event as `xlb trace` shows it; `start_ns` is when the trace began.
pub(crate) fn describe(event: &TraceEvent, names: &Names, start_ns: u64) -> TraceEventReport {
    let pool = |index: u8| {
        names
            .pools
            .get(&event.service_id)
            .and_then(|pools| pools.get(usize::from(index)).cloned())
    };
    let new = matches!(
        event.decision,
        decision::NEW_ROUND_ROBIN
            | decision::NEW_HASHED
            | decision::NEW_MAGLEV
            | decision::REPLACED
    );
    TraceEventReport {
        seconds: event.time_ns.saturating_sub(start_ns) as f64 / 1e9,
        service: names
            .services
            .get(&event.service_id)
            .cloned()
            .unwrap_or_else(|| format!("#{}", event.service_id)),
        protocol: if event.proto == proto::UDP {
            "udp"
        } else {
            "tcp"
        }
        .to_owned(),
        client: SocketAddr::new(
            wire::ip_from_field(&event.client, event.family),
            u16::from_be(event.client_port),
        ),
        decision: match event.decision {
            decision::NEW_ROUND_ROBIN => "new_round_robin",
            decision::NEW_HASHED => "new_hashed",
            decision::NEW_MAGLEV => "new_maglev",
            decision::PERSISTED => "persisted",
            decision::NO_BACKEND => "no_backend",
            decision::ESTABLISHED => "established",
            decision::ICMP_TRANSLATED => "icmp_translated",
            decision::REPLACED => "replaced",
            decision::ADMISSION_DROPPED => "admission_dropped",
            _ => "unknown",
        }
        .to_owned(),
        direction: if event.direction == direction::TO_CLIENT {
            "to_client"
        } else {
            "to_backend"
        }
        .to_owned(),
        backend: (event.backend_id != NO_BACKEND_ID)
            .then(|| names.backends.get(&event.backend_id).copied())
            .flatten(),
        slot: new.then_some(event.slot),
        home_pool: (new || event.decision == decision::NO_BACKEND)
            .then(|| pool(event.home_pool))
            .flatten(),
        backend_pool: new.then(|| pool(event.backend_pool)).flatten(),
        tcp_flags: if event.proto == proto::TCP {
            tcp_flags(event.tcp_flags)
        } else {
            String::new()
        },
        half_open: event.half_open != 0,
        skipped_suspects: event.skipped,
    }
}

/// That client prefix `net` is of the family of service `service`, which listens on
/// `listen`: else nothing of it could match.
pub(crate) fn of_the_family(net: &IpNet, service: &str, listen: SocketAddr) -> Result<()> {
    if net.addr().is_ipv4() == listen.is_ipv4() {
        return Ok(());
    }
    let (this, that) = if net.addr().is_ipv4() {
        ("IPv4", "IPv6")
    } else {
        ("IPv6", "IPv4")
    };
    bail!("client prefix {net} is {this} and service {service:?} is {that}: nothing could match")
}

/// The data plane's filter for `request` (a trace that begins at `start_ns`), and the names of
/// every service, backend and pool as applied in `core`; an unknown service, a malformed
/// prefix or one of the other family is an error.
pub(crate) fn filter(
    core: &Core,
    request: &TraceRequest,
    start_ns: u64,
) -> Result<(TraceConfig, Names)> {
    let index = core.service_index(&request.service)?;
    let listen = core.config().services[index].listen;
    let family = wire::family_of(listen.ip());
    let (client, prefix_len, client_family) = match &request.client {
        None => (lb_common::Addr::default(), 0, 0),
        Some(text) => {
            let net = parse_prefix(text).map_err(|e| anyhow!("client prefix: {e}"))?;
            of_the_family(&net, &request.service, listen)?;
            (wire::addr_field(net.addr()), net.prefix_len(), family)
        }
    };
    debug_assert!(prefix_len <= max_prefix_len(family));
    let config = TraceConfig {
        until_ns: start_ns + request.seconds * 1_000_000_000,
        client,
        service_id: core
            .applied(index)
            .context("the service is not in the data plane (its last apply failed)")?
            .id,
        sample_every: request.sample,
        family: client_family,
        prefix_len,
        ..TraceConfig::default()
    };
    Ok((config, names(core)))
}

/// The names of every service, backend and pool, as applied in `core`.
fn names(core: &Core) -> Names {
    let mut names = Names::default();
    for (s, config) in core.config().services.iter().enumerate() {
        let Some(applied) = core.applied(s) else {
            continue;
        };
        names.services.insert(applied.id, config.name.clone());
        for backend in &applied.backends {
            names.backends.insert(backend.id, backend.address);
        }
        if config.pools.len() > 1 {
            let pools = config.pools.iter().map(|p| p.name.clone()).collect();
            names.pools.insert(applied.id, pools);
        }
    }
    names
}

/// The data plane's trace maps, lent to the trace that runs (one at a time).
#[derive(Default)]
pub(crate) struct Tracing {
    tracer: SharedTracer,
}

impl Tracing {
    /// Traces with `tracer` (the data plane's trace maps) from now on.
    pub(crate) fn set(&mut self, tracer: Option<Tracer>) {
        *self.tracer.lock().expect("the tracer lock") = tracer;
    }

    /// Starts `request` in the data plane and returns the stream of its events, which ends
    /// with how it went.
    pub(crate) fn start(
        &mut self,
        core: &Core,
        request: &TraceRequest,
    ) -> Result<mpsc::Receiver<TraceUpdate>> {
        let start_ns = monotonic_ns()?;
        let (config, names) = filter(core, request, start_ns)?;
        let Some(mut tracer) = self.tracer.lock().expect("the tracer lock").take() else {
            bail!("another trace is running (one at a time); try again when it ends");
        };
        if let Err(error) = tracer.begin(config) {
            *self.tracer.lock().expect("the tracer lock") = Some(tracer);
            return Err(error);
        }
        let (service, seconds, sample) = (&request.service, request.seconds, request.sample);
        info!(service, seconds, sample, "trace started");
        let (events, stream) = mpsc::channel(1024);
        let slot = Arc::clone(&self.tracer);
        tokio::spawn(async move {
            let summary = run(tracer, &slot, &names, start_ns, seconds, &events).await;
            let update = match summary {
                Ok(summary) => {
                    info!(
                        matched = summary.matched,
                        lost = summary.lost,
                        "trace ended"
                    );
                    TraceUpdate::End(summary)
                }
                Err(error) => {
                    warn!("trace: {error:#}");
                    TraceUpdate::Failed(format!("trace: {error:#}"))
                }
            };
            let _ = events.send(update).await;
        });
        Ok(stream)
    }
}

/// Streams the trace's events until `seconds` pass or the operator leaves; ends the trace and
/// gives the tracer back to `slot`, also when something fails.
async fn run(
    mut tracer: Tracer,
    slot: &SharedTracer,
    names: &Names,
    start_ns: u64,
    seconds: u64,
    events: &mpsc::Sender<TraceUpdate>,
) -> Result<TraceSummary> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut recorded = 0u64;
    let mut left = false;
    // SAFETY: the tracer owns the ring buffer's descriptor, open until the tracer is dropped,
    // and always returns that one.
    let streamed = match unsafe { AsyncFd::register_with_interest(tracer, Interest::READABLE) } {
        Err(error) => {
            let (inner, cause) = error.into_parts();
            tracer = inner;
            Err(anyhow::Error::from(cause).context("waiting for the ring buffer"))
        }
        Ok(mut ring) => {
            let mut result = Ok(());
            while !left {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = events.closed() => left = true,
                    ready = ring.readable_mut() => {
                        let mut guard = match ready {
                            Ok(guard) => guard,
                            Err(error) => {
                                result = Err(error.into());
                                break;
                            }
                        };
                        while let Some(event) = guard.get_inner_mut().next_event() {
                            recorded += 1;
                            let report = describe(&event, names, start_ns);
                            if events.send(TraceUpdate::Event(report)).await.is_err() {
                                left = true;
                                break;
                            }
                        }
                        guard.clear_ready();
                    }
                }
            }
            tracer = ring.into_inner();
            result
        }
    };
    let ended = tracer.end();
    // What was written before the end.
    while let Some(event) = tracer.next_event() {
        recorded += 1;
        let report = describe(&event, names, start_ns);
        if !left && events.send(TraceUpdate::Event(report)).await.is_err() {
            left = true;
        }
    }
    *slot.lock().expect("the tracer lock") = Some(tracer);
    streamed?;
    let counters = ended?;
    Ok(TraceSummary {
        seconds: started.elapsed().as_secs_f64(),
        matched: counters.matched,
        recorded,
        lost: counters.lost,
        sample: counters.sample_every,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::consts::family;

    #[test]
    fn events_are_named_and_explained() {
        let names = Names {
            services: HashMap::from([(2, "video".to_owned())]),
            backends: HashMap::from([(7, "198.18.1.21:8080".parse().unwrap())]),
            pools: HashMap::from([(2, vec!["kr".to_owned(), "jp".to_owned()])]),
        };
        let spill = TraceEvent {
            time_ns: 1_500_000_000,
            client: wire::addr_field("198.18.0.2".parse().unwrap()),
            service_id: 2,
            backend_id: 7,
            client_port: 40000u16.to_be(),
            decision: decision::NEW_ROUND_ROBIN,
            direction: direction::TO_BACKEND,
            family: family::IPV4,
            proto: proto::TCP,
            tcp_flags: 0x02,
            half_open: 1,
            home_pool: 0,
            backend_pool: 1,
            slot: 3,
            skipped: 0,
            _pad: 0,
        };
        let report = describe(&spill, &names, 1_000_000_000);
        assert_eq!(report.seconds, 0.5);
        assert_eq!(report.service, "video");
        assert_eq!(report.client.to_string(), "198.18.0.2:40000");
        assert_eq!(report.decision, "new_round_robin");
        assert_eq!(report.backend, Some("198.18.1.21:8080".parse().unwrap()));
        assert_eq!(report.slot, Some(3));
        assert_eq!(
            (report.home_pool.as_deref(), report.backend_pool.as_deref()),
            (Some("kr"), Some("jp"))
        );
        assert_eq!(report.tcp_flags, "SYN");
        assert!(report.half_open);

        let reply = TraceEvent {
            decision: decision::ESTABLISHED,
            direction: direction::TO_CLIENT,
            tcp_flags: 0x11,
            half_open: 0,
            ..spill
        };
        let report = describe(&reply, &names, 1_000_000_000);
        assert_eq!(
            (report.decision.as_str(), report.direction.as_str()),
            ("established", "to_client")
        );
        assert_eq!((report.slot, report.home_pool), (None, None));
        assert_eq!(report.tcp_flags, "FIN|ACK");

        let dropped = TraceEvent {
            decision: decision::NO_BACKEND,
            backend_id: NO_BACKEND_ID,
            proto: proto::UDP,
            ..spill
        };
        let report = describe(&dropped, &names, 0);
        assert_eq!((report.backend, report.tcp_flags.as_str()), (None, ""));
        assert_eq!(report.home_pool.as_deref(), Some("kr"));
        assert_eq!(report.protocol, "udp");
    }
}
