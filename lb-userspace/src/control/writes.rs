//! The writer of an apply: makes the writes `diff` planned, in an order that keeps every
//! intermediate state valid for a packet that arrives between two of them (see the module
//! documentation of `control`): what a service needs (its settings, its backends' entries)
//! before any table names it, tables before the services that use them, services (and pools)
//! removed before their tables are emptied, and flows purged only once no table names their
//! backend.

use anyhow::{Context as _, Result};
use lb_common::BackendTable;

use super::{
    diff::{Removal, Setup, Writes},
    ports::{Counted, DataplaneMaps, Purge},
};

/// Makes `writes`; returns how many flows were purged. Stops at the first failure.
pub(super) fn write(writes: &Writes, maps: &mut impl DataplaneMaps) -> Result<usize> {
    for setup in &writes.setup {
        set_up(setup, maps)?;
    }
    publish(writes, maps)?;
    remove_services(&writes.removed, maps)?;
    let purged = retire(&writes.retired, maps)?;
    for vip in &writes.vips_removed {
        maps.remove_vip(vip).context("removing a VIP")?;
    }
    Ok(purged)
}

/// What one service needs before any table names it: its policy, fresh counters for a new id
/// and new pools, its backends' entries.
fn set_up(setup: &Setup, maps: &mut impl DataplaneMaps) -> Result<()> {
    if let Some(policy) = &setup.policy {
        maps.set_policy(setup.id, policy)
            .with_context(|| format!("setting the policies of service {}", setup.name))?;
    }
    if setup.new_id {
        maps.zero_counters(Counted::Service(setup.id))?;
    }
    for &index in &setup.new_tables {
        maps.reset_cursor(index)?;
        maps.zero_counters(Counted::Spills(index))?;
    }
    for (id, entry, address, new) in &setup.backends {
        // A new id's passive marks and counters are the previous owner's: cleared first.
        let cleared = if *new {
            maps.clear_mark(*id)
                .and_then(|()| maps.zero_counters(Counted::Backend(*id)))
        } else {
            Ok(())
        };
        cleared
            .and_then(|()| maps.set_backend(*id, entry))
            .with_context(|| format!("adding backend {address} of service {}", setup.name))?;
    }
    Ok(())
}

/// The tables, then the services that need them (prefixes, entries, VIPs); last, the tables of
/// pools that no service entry or prefix names any more, emptied.
fn publish(writes: &Writes, maps: &mut impl DataplaneMaps) -> Result<()> {
    // Every changed table in one batch, then the services that need them.
    maps.publish_tables(&writes.tables)
        .context("publishing tables")?;
    for (index, table) in &writes.maglev_tables {
        maps.publish_maglev(*index, Some(table))
            .context("publishing a Maglev table")?;
    }
    for (service_id, prefixes) in &writes.prefixes {
        maps.publish_prefixes(*service_id, prefixes)
            .context("publishing client prefixes")?;
    }
    for (key, entry, name) in &writes.entries {
        maps.set_service(key, entry)
            .with_context(|| format!("adding service {name}"))?;
    }
    for index in &writes.maglev_removed {
        maps.publish_maglev(*index, None)
            .context("removing a Maglev table")?;
    }
    for vip in &writes.vips_added {
        maps.add_vip(vip).context("adding a VIP")?;
    }
    // Once no service entry or prefix sends a client to a pool its service no longer has.
    maps.publish_tables(&writes.pools_emptied)
        .context("emptying the tables of removed pools")
}

/// Services that leave: their entries, Maglev tables and prefixes removed, then their tables
/// emptied in one batch.
fn remove_services(removed: &[Removal], maps: &mut impl DataplaneMaps) -> Result<()> {
    let mut emptied = Vec::new();
    for removed in removed {
        maps.remove_service(&removed.key)
            .with_context(|| format!("removing service {}", removed.name))?;
        for &index in &removed.tables {
            emptied.push((index, BackendTable::EMPTY));
            if removed.maglev {
                maps.publish_maglev(index, None)
                    .with_context(|| format!("removing the Maglev tables of {}", removed.name))?;
            }
        }
        if removed.prefixes {
            maps.publish_prefixes(removed.id, &[])
                .with_context(|| format!("clearing the prefixes of {}", removed.name))?;
        }
    }
    maps.publish_tables(&emptied)
        .context("emptying the tables of removed services")
}

/// The flows of backends no table names any more, purged; then their ids released. Returns
/// how many flows were purged.
fn retire(retired: &[u32], maps: &mut impl DataplaneMaps) -> Result<usize> {
    let mut purged = 0;
    if !retired.is_empty() {
        purged = maps.purge_flows(retired, Purge::All)?;
        for &id in retired {
            maps.release_backend(id)?;
        }
    }
    Ok(purged)
}
