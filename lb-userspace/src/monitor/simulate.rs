//! `xlb simulate`: the service's new flow from a client, run through the loaded program, and
//! the pools it concerns.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};

use super::core::Core;
use crate::{
    control::locality::home_pool,
    dataplane::{Dataplane, simulate::simulate as run_through},
    report::SimulationReport,
};

/// Which backend a new flow from `client` to `service` gets now (its turn of the round robin
/// given back, and no flow left behind).
pub(super) fn simulate(
    core: &Core,
    dataplane: &mut Dataplane,
    service: &str,
    client: SocketAddr,
) -> Result<SimulationReport> {
    let index = core.service_index(service)?;
    let config = &core.config().services[index];
    // The round-robin tables of its pools, whose turn the simulation gives back.
    let tables: Vec<u32> = core.applied(index).map_or_else(Vec::new, |applied| {
        (0..applied.tables.len() as u32)
            .map(|pool| lb_common::tables::table_index(applied.id, pool))
            .collect()
    });
    let ifindex = dataplane
        .attachments()
        .first()
        .map(|a| a.ifindex)
        .context("xlb is attached to no interface")?;
    let simulation = run_through(
        dataplane,
        config.listen,
        config.protocol,
        client,
        ifindex,
        &tables,
    )?;
    let mut report = SimulationReport {
        service: config.name.clone(),
        client,
        verdict: simulation.verdict,
        backend: simulation.backend,
        existing_flow: simulation.existing_flow,
        home_pool: None,
        backend_pool: None,
    };
    if config.pools.len() > 1 {
        let home = home_pool(&config.client_prefixes, config.default_pool, client.ip());
        report.home_pool = Some(config.pools[home].name.clone());
        report.backend_pool = report.backend.and_then(|address| {
            let backend = config.backends.iter().find(|b| b.address == address)?;
            Some(config.pools[backend.pool].name.clone())
        });
    }
    Ok(report)
}
