//! `BACKEND_PORTS`: the ports backends listen on, as a bitmap the program tests before it
//! looks a packet up as a backend's (`BACKEND_VIPS4`/`6`). Kept here, beside `BACKENDS`, so
//! that a backend's port is marked before any table names the backend and unmarked only once
//! its id is released (after its flows were purged). `SERVICE_PORTS`, the services' ports,
//! has the same form ([`write`]).

use std::collections::HashMap;

use anyhow::Result;
use aya::maps::{Array, MapData};
use lb_common::{BackendEntry, backend_port_bit};

/// The bitmap, and who uses its ports.
pub(super) struct BackendPorts {
    map: Array<MapData, u64>,
    users: PortUsers,
}

/// Per port, how many backend ids listen on it: which bits to set or clear when a backend id
/// changes. Pure, so that it is tested without a kernel.
#[derive(Default)]
struct PortUsers {
    /// The port of each backend id in use.
    ports: HashMap<u32, u16>,
    /// How many of those ids use each port.
    count: HashMap<u16, u32>,
}

impl PortUsers {
    /// Backend `id` now listens on `port` (none: released). Returns the ports to mark (true)
    /// or unmark (false), in that order: marking first, so a port in use is never unmarked.
    fn change(&mut self, id: u32, port: Option<u16>) -> Vec<(u16, bool)> {
        let old = self.ports.get(&id).copied();
        let mut flips = Vec::new();
        if old == port {
            return flips;
        }
        if let Some(port) = port {
            let users = self.count.entry(port).or_default();
            *users += 1;
            if *users == 1 {
                flips.push((port, true));
            }
            self.ports.insert(id, port);
        } else {
            self.ports.remove(&id);
        }
        if let Some(port) = old
            && let Some(users) = self.count.get_mut(&port)
        {
            *users -= 1;
            if *users == 0 {
                self.count.remove(&port);
                flips.push((port, false));
            }
        }
        flips
    }
}

impl BackendPorts {
    /// Wraps the map, counting the ports of the backends `BACKENDS` already holds (pinned maps
    /// a previous daemon filled; the bitmap, pinned too, already has their bits).
    pub(super) fn new(map: Array<MapData, u64>, in_use: &[(u32, BackendEntry)]) -> Self {
        let mut users = PortUsers::default();
        for (id, entry) in in_use {
            users.change(*id, Some(entry.port));
        }
        Self { map, users }
    }

    /// Records that backend `id` is `entry` (released if not in use), marking or unmarking
    /// ports as their first user comes or their last one goes.
    pub(super) fn set(&mut self, id: u32, entry: &BackendEntry) -> Result<()> {
        let port = (entry.in_use == 1).then_some(entry.port);
        for (port, on) in self.users.change(id, port) {
            write(&mut self.map, port, on)?;
        }
        Ok(())
    }
}

/// Sets or clears port `port`'s bit (network order) in a bitmap of ports (`BACKEND_PORTS`,
/// `SERVICE_PORTS`).
pub(super) fn write(map: &mut Array<MapData, u64>, port: u16, on: bool) -> Result<()> {
    let (word, bit) = backend_port_bit(port);
    let mut value = map.get(&word, 0)?;
    if on {
        value |= bit;
    } else {
        value &= !bit;
    }
    Ok(map.set(word, value, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_marked_by_its_first_backend_and_unmarked_after_its_last() {
        let mut users = PortUsers::default();
        assert_eq!(users.change(1, Some(80)), [(80, true)]);
        assert_eq!(users.change(2, Some(80)), []);
        assert_eq!(
            users.change(1, Some(80)),
            [],
            "the same port again changes nothing"
        );
        // A backend id moving to another port marks the new one before it unmarks the old
        // one (here still used by id 2, so it stays).
        assert_eq!(users.change(1, Some(443)), [(443, true)]);
        assert_eq!(users.change(2, None), [(80, false)]);
        assert_eq!(users.change(1, None), [(443, false)]);
        assert_eq!(
            users.change(3, None),
            [],
            "releasing an unknown id changes nothing"
        );
    }
}
