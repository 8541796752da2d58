//! `xlb run`: load, attach, fill the maps, serve until told to stop, detach.

use std::{future::Future, path::Path};

use anyhow::{Context as _, Result, bail};
use tracing::info;

use crate::{config::Config, control::Balancer, dataplane::Dataplane, monitor::Monitor, netif};

/// Runs the balancer for the configuration at `config_path` until `shutdown` completes.
pub async fn run(config_path: &Path, shutdown: impl Future<Output = ()>) -> Result<()> {
    let config = Config::load(config_path)?;
    preflight(&config)?;

    let mut dataplane = Dataplane::load(config.flow_table_size)?;
    let interfaces = config.interfaces.clone();
    let mode = config.xdp_mode;
    let service_count = config.services.len();
    let mut monitor = Monitor::new(config);
    // The first health checks decide each backend's initial state, so that no flow goes to a
    // backend that is down when xlb starts.
    monitor
        .start(&mut dataplane.maps)
        .await
        .context("filling the maps")?;
    // Attach only once the maps are complete, so the first packet already finds its service.
    dataplane.attach_all(&interfaces, mode)?;
    info!(
        services = service_count,
        interfaces = interfaces.len(),
        "ready: xlb is balancing"
    );

    monitor.run(&mut dataplane.maps, shutdown).await?;
    info!("shutting down");
    log_counters(&dataplane, monitor.balancer());
    dataplane.detach_all();
    Ok(())
}

/// Checks what the data plane needs from the host, with errors that say how to fix it.
pub fn preflight(config: &Config) -> Result<()> {
    for interface in &config.interfaces {
        netif::index(interface)?;
        if !netif::ipv4_forwarding(interface)? {
            bail!(
                "IPv4 forwarding is off on {interface}: xlb forwards packets as a router does. \
                 Enable it with `sysctl -w net.ipv4.conf.all.forwarding=1` \
                 (or net.ipv4.conf.{interface}.forwarding=1)"
            );
        }
    }
    Ok(())
}

fn log_counters(dataplane: &Dataplane, balancer: &Balancer) {
    for service in balancer.services() {
        if let Ok(counters) = dataplane.maps.service_counters(service.id) {
            info!(
                service = service.name,
                new_flows = counters.new_flows,
                packets = counters.fwd_packets + counters.rev_packets,
                no_backend = counters.no_backend,
                "service counters"
            );
        }
        for backend in &service.backends {
            if let Ok(counters) = dataplane.maps.backend_counters(backend.id) {
                info!(
                    service = service.name,
                    backend = %backend.address,
                    new_flows = counters.new_flows,
                    packets = counters.fwd_packets + counters.rev_packets,
                    "backend counters"
                );
            }
        }
    }
    if let Ok(events) = dataplane.maps.events() {
        for (name, count) in lb_common::consts::events::NAMES.iter().zip(events) {
            if count > 0 {
                info!(event = name, count, "data-plane events");
            }
        }
    }
}
