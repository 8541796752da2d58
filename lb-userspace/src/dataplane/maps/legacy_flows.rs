//! Flow tables pinned by xlb 6261ef3 and earlier, which kept two entries per flow (one per
//! direction, 56 bytes for IPv4 and 72 for IPv6), taken over on a restart: before the program
//! is loaded their pins are moved aside (pinned as `NAME_TWO_ENTRIES`, bpffs names have no dot, and unpinned under their
//! name, so the new tables are created in their place) and their flows read and turned into this version's entries, which are written
//! into the new tables once they exist, and written again, for the flows the old program made
//! meanwhile, just before the new program replaces it. Then the old tables' pins are removed.
//! A restart that fails before that moves the pins back.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{MapData, MapInfo},
};
use lb_common::{
    Addr, FlowEntry, FlowKey, FlowKey4, Hop,
    consts::{flow_flags, map_names},
    direction,
};

use super::batch;

/// An entry of the earlier IPv4 flow tables (`FLOWS4`, `HALF_OPEN4`): 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Entry4 {
    last_seen_ns: u64,
    addr: u32,
    port: u16,
    direction: u8,
    flags: u8,
    backend_id: u32,
    service_id: u32,
    csum_addr: u16,
    csum_port: u16,
    hop_ifindex: u32,
    hop_dst_mac: [u8; 6],
    hop_src_mac: [u8; 6],
    epoch: u16,
    hop_peer: u8,
    _pad: u8,
    created_s: u32,
    handshake_ack: u32,
}

/// An entry of the earlier IPv6 flow tables (`FLOWS6`, `HALF_OPEN6`): 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Entry6 {
    last_seen_ns: u64,
    addr: Addr,
    port: u16,
    direction: u8,
    flags: u8,
    backend_id: u32,
    service_id: u32,
    csum_addr: u16,
    csum_port: u16,
    hop_ifindex: u32,
    hop_dst_mac: [u8; 6],
    hop_src_mac: [u8; 6],
    epoch: u16,
    hop_peer: u8,
    _pad: u8,
    created_s: u32,
    handshake_ack: u32,
    _tail: [u8; 4],
}

const _: () = assert!(size_of::<Entry4>() == 56);
const _: () = assert!(size_of::<Entry6>() == 72);

// SAFETY: `#[repr(C)]`, integers and integer arrays only, no implicit padding (the size asserts
// above), so every bit pattern is a valid value.
unsafe impl Pod for Entry4 {}
// SAFETY: as for `Entry4`.
unsafe impl Pod for Entry6 {}

/// One entry of an earlier table, family-neutral: its key, its direction and this version's
/// entry made of it (its next hop toward the client still to be found).
#[derive(Clone, Copy, Debug)]
struct Old {
    key: FlowKey,
    direction: u8,
    entry: FlowEntry,
}

impl From<(FlowKey4, Entry4)> for Old {
    fn from((key, old): (FlowKey4, Entry4)) -> Self {
        let wide = Entry6 {
            last_seen_ns: old.last_seen_ns,
            addr: [old.addr, 0, 0, 0],
            port: old.port,
            direction: old.direction,
            flags: old.flags,
            backend_id: old.backend_id,
            service_id: old.service_id,
            csum_addr: old.csum_addr,
            csum_port: old.csum_port,
            hop_ifindex: old.hop_ifindex,
            hop_dst_mac: old.hop_dst_mac,
            hop_src_mac: old.hop_src_mac,
            epoch: old.epoch,
            hop_peer: old.hop_peer,
            _pad: 0,
            created_s: old.created_s,
            handshake_ack: old.handshake_ack,
            _tail: [0; 4],
        };
        Self::from((key.widen(), wide))
    }
}

impl From<(FlowKey, Entry6)> for Old {
    fn from((key, old): (FlowKey, Entry6)) -> Self {
        Self {
            key,
            direction: old.direction,
            entry: FlowEntry {
                last_seen_ns: old.last_seen_ns,
                addr: old.addr,
                port: old.port,
                flags: old.flags,
                backend_id: old.backend_id,
                service_id: old.service_id,
                csum_addr: old.csum_addr,
                csum_port: old.csum_port,
                to_backend: Hop {
                    ifindex: old.hop_ifindex,
                    dst_mac: old.hop_dst_mac,
                    src_mac: old.hop_src_mac,
                    peer: old.hop_peer,
                    _pad: 0,
                    _tail: 0,
                },
                epoch: old.epoch,
                created_s: old.created_s,
                handshake_ack: old.handshake_ack,
                ..FlowEntry::default()
            },
        }
    }
}

/// The flows of one earlier table's entries, in this version's form: each client-to-backend
/// entry becomes the flow's entry, with the next hop and the `ANSWERED` and `CLOSING` flags of
/// its reply entry (its other direction) if that is there.
fn flows_of(entries: &[Old]) -> Vec<(FlowKey, FlowEntry)> {
    let replies: HashMap<FlowKey, &Old> = entries
        .iter()
        .filter(|old| old.direction == direction::TO_CLIENT)
        .map(|old| (old.key, old))
        .collect();
    entries
        .iter()
        .filter(|old| old.direction == direction::TO_BACKEND)
        .map(|old| {
            let mut entry = old.entry;
            let reply_key = FlowKey {
                src_addr: entry.addr,
                dst_addr: old.key.src_addr,
                src_port: entry.port,
                dst_port: old.key.src_port,
                ..old.key
            };
            if let Some(reply) = replies.get(&reply_key) {
                entry.to_client = reply.entry.to_backend;
                entry.flags |= reply.entry.flags & (flow_flags::ANSWERED | flow_flags::CLOSING);
            }
            (old.key, entry)
        })
        .collect()
}

/// Where an earlier table's pin is moved while the new one takes its name.
fn aside(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}_TWO_ENTRIES"))
}

/// The earlier flow tables taken over, and their flows in this version's form.
pub(crate) struct LegacyFlows {
    dir: PathBuf,
    /// The earlier tables (open, whatever happens to their pins): name, half-open.
    tables: Vec<(&'static str, bool, MapData)>,
}

impl LegacyFlows {
    /// If the flow tables pinned in `dir` are the earlier ones (two entries per flow), moves
    /// their pins aside and holds them; `None` if they are not.
    pub(crate) fn take_pinned(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(map_names::FLOWS4);
        if !path.exists() {
            return Ok(None);
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        if (info.key_size(), info.value_size()) != (16, size_of::<Entry4>() as u32) {
            return Ok(None);
        }
        let mut legacy = Self {
            dir: dir.to_owned(),
            tables: Vec::new(),
        };
        for (name, half_open, _) in map_names::FLOW_TABLES {
            let pin = dir.join(name);
            if !pin.exists() {
                continue;
            }
            let map = MapData::from_pin(&pin)
                .with_context(|| format!("opening the pinned map {}", pin.display()))?;
            // (bpffs has no rename: pinned again, then unpinned.)
            map.pin(aside(dir, name))
                .with_context(|| format!("moving {} aside", pin.display()))?;
            std::fs::remove_file(&pin)
                .with_context(|| format!("moving {} aside", pin.display()))?;
            legacy.tables.push((name, half_open, map));
        }
        Ok(Some(legacy))
    }

    /// The flows the earlier tables hold now, in this version's form, and whether each is
    /// half-open.
    pub(crate) fn flows(&self) -> Result<Vec<(FlowKey, FlowEntry, bool)>> {
        let mut flows = Vec::new();
        for (name, half_open, map) in &self.tables {
            let entries: Vec<Old> = if name.ends_with('4') {
                batch::lookup_all::<FlowKey4, Entry4>(map)?
                    .into_iter()
                    .map(Old::from)
                    .collect()
            } else {
                batch::lookup_all::<FlowKey, Entry6>(map)?
                    .into_iter()
                    .map(Old::from)
                    .collect()
            };
            flows.extend(
                flows_of(&entries)
                    .into_iter()
                    .map(|(key, entry)| (key, entry, *half_open)),
            );
        }
        Ok(flows)
    }

    /// The new tables have taken over: removes the earlier tables' pins.
    pub(crate) fn finish(self) {
        for (name, _, _) in &self.tables {
            let _ = std::fs::remove_file(aside(&self.dir, name));
        }
    }

    /// The new tables could not take over: moves the earlier tables' pins back.
    pub(crate) fn restore(self) {
        for (name, _, map) in &self.tables {
            let _ = std::fs::remove_file(self.dir.join(name));
            if map.pin(self.dir.join(name)).is_ok() {
                let _ = std::fs::remove_file(aside(&self.dir, name));
            }
        }
    }
}

/// The entries the earlier version kept for the flow of `entry` under `key`: the flow's own,
/// and for NAT its reply entry (the backend's 5-tuple; the VIP written back, the opposite
/// checksum changes, the next hop toward the client).
fn earlier_entries(key: &FlowKey, entry: &FlowEntry) -> Vec<(FlowKey, Entry6)> {
    let forward = Entry6 {
        last_seen_ns: entry.last_seen_ns,
        addr: entry.addr,
        port: entry.port,
        direction: direction::TO_BACKEND,
        flags: entry.flags & !flow_flags::LOCATED,
        backend_id: entry.backend_id,
        service_id: entry.service_id,
        csum_addr: entry.csum_addr,
        csum_port: entry.csum_port,
        hop_ifindex: entry.to_backend.ifindex,
        hop_dst_mac: entry.to_backend.dst_mac,
        hop_src_mac: entry.to_backend.src_mac,
        epoch: entry.epoch,
        hop_peer: entry.to_backend.peer,
        _pad: 0,
        created_s: entry.created_s,
        handshake_ack: entry.handshake_ack,
        _tail: [0; 4],
    };
    let mut entries = vec![(*key, forward)];
    if entry.flags & flow_flags::DSR == 0 {
        let reply_key = FlowKey {
            src_addr: entry.addr,
            dst_addr: key.src_addr,
            src_port: entry.port,
            dst_port: key.src_port,
            ..*key
        };
        let reply = Entry6 {
            addr: key.dst_addr,
            port: key.dst_port,
            direction: direction::TO_CLIENT,
            csum_addr: lb_common::csum::negate(entry.csum_addr),
            csum_port: lb_common::csum::negate(entry.csum_port),
            hop_ifindex: entry.to_client.ifindex,
            hop_dst_mac: entry.to_client.dst_mac,
            hop_src_mac: entry.to_client.src_mac,
            hop_peer: entry.to_client.peer,
            ..forward
        };
        entries.push((reply_key, reply));
    }
    entries
}

/// Pins in `dir` what xlb 6261ef3 would have pinned for the flows this version's pinned tables
/// hold: the flow tables in the earlier layout (two entries per flow), in place of this
/// version's, and none of the maps that version did not have. For tests of the upgrade: the
/// data plane that runs keeps its own tables. Returns how many flows were written.
pub fn pin_as_earlier_version(dir: &Path) -> Result<usize> {
    let mut flows = 0;
    for (name, _, ipv6) in map_names::FLOW_TABLES {
        let pin = dir.join(name);
        let current = MapData::from_pin(&pin)
            .with_context(|| format!("opening the pinned map {}", pin.display()))?;
        let earlier: Vec<(FlowKey, Entry6)> = if ipv6 {
            batch::lookup_all::<FlowKey, FlowEntry>(&current)?
                .iter()
                .flat_map(|(key, entry)| earlier_entries(key, entry))
                .collect()
        } else {
            batch::lookup_all::<FlowKey4, FlowEntry<u32>>(&current)?
                .iter()
                .flat_map(|(key, entry)| earlier_entries(&key.widen(), &entry.widen()))
                .collect()
        };
        flows += earlier
            .iter()
            .filter(|(_, entry)| entry.direction == direction::TO_BACKEND)
            .count();
        let capacity = (earlier.len() as u32 * 2).max(64);
        std::fs::remove_file(&pin)?;
        if ipv6 {
            let map = aya::maps::HashMap::<MapData, FlowKey, Entry6>::create(capacity, 0)?;
            let (keys, values): (Vec<_>, Vec<_>) = earlier.into_iter().unzip();
            batch::update(aya::maps::IterableMap::map(&map), &keys, &values)?;
            map.pin(&pin)?;
        } else {
            let map = aya::maps::HashMap::<MapData, FlowKey4, Entry4>::create(capacity, 0)?;
            let (keys, values): (Vec<FlowKey4>, Vec<Entry4>) = earlier
                .into_iter()
                .filter_map(|(key, entry)| Some((FlowKey4::narrow(&key)?, narrow(&entry))))
                .unzip();
            batch::update(aya::maps::IterableMap::map(&map), &keys, &values)?;
            map.pin(&pin)?;
        }
    }
    for name in [
        map_names::SERVICE_PORTS,
        map_names::BACKEND_VIPS4,
        map_names::BACKEND_VIPS6,
        map_names::REPLY_VIPS4,
        map_names::REPLY_VIPS6,
    ] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(flows)
}

/// The IPv4 form of an earlier entry.
fn narrow(entry: &Entry6) -> Entry4 {
    Entry4 {
        last_seen_ns: entry.last_seen_ns,
        addr: entry.addr[0],
        port: entry.port,
        direction: entry.direction,
        flags: entry.flags,
        backend_id: entry.backend_id,
        service_id: entry.service_id,
        csum_addr: entry.csum_addr,
        csum_port: entry.csum_port,
        hop_ifindex: entry.hop_ifindex,
        hop_dst_mac: entry.hop_dst_mac,
        hop_src_mac: entry.hop_src_mac,
        epoch: entry.epoch,
        hop_peer: entry.hop_peer,
        _pad: 0,
        created_s: entry.created_s,
        handshake_ack: entry.handshake_ack,
    }
}

#[cfg(test)]
mod tests {
    use lb_common::consts::{family, proto};

    use super::*;

    #[test]
    fn a_flows_two_entries_become_one_with_both_next_hops() {
        let key = FlowKey4 {
            src_addr: 0x0200_12c6,
            dst_addr: 0x0164_12c6,
            src_port: 40_000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let forward = Entry4 {
            last_seen_ns: 7,
            addr: 0x0b01_12c6,
            port: 8080u16.to_be(),
            direction: direction::TO_BACKEND,
            backend_id: 3,
            service_id: 2,
            csum_addr: 0x1234,
            csum_port: 0x5678,
            hop_ifindex: 5,
            hop_dst_mac: [2, 0, 0, 0, 1, 0x11],
            epoch: 9,
            created_s: 11,
            handshake_ack: 13,
            ..Entry4::default()
        };
        let reply_key = FlowKey4 {
            src_addr: forward.addr,
            dst_addr: key.src_addr,
            src_port: forward.port,
            dst_port: key.src_port,
            ..key
        };
        let reply = Entry4 {
            addr: key.dst_addr,
            port: key.dst_port,
            direction: direction::TO_CLIENT,
            flags: flow_flags::ANSWERED,
            hop_ifindex: 4,
            hop_dst_mac: [2, 0, 0, 0, 0, 2],
            hop_peer: 1,
            ..forward
        };
        let flows = flows_of(&[Old::from((key, forward)), Old::from((reply_key, reply))]);
        assert_eq!(flows.len(), 1, "one flow");
        let (flow_key, entry) = flows[0];
        assert_eq!(flow_key, key.widen());
        assert_eq!(flow_key.family, family::IPV4);
        assert_eq!((entry.addr[0], entry.port), (forward.addr, forward.port));
        assert_eq!((entry.csum_addr, entry.csum_port), (0x1234, 0x5678));
        assert_eq!((entry.backend_id, entry.service_id, entry.epoch), (3, 2, 9));
        assert_eq!((entry.created_s, entry.handshake_ack), (11, 13));
        assert_eq!(
            (entry.to_backend.ifindex, entry.to_backend.dst_mac),
            (5, [2, 0, 0, 0, 1, 0x11])
        );
        assert_eq!(
            (entry.to_client.ifindex, entry.to_client.peer),
            (4, 1),
            "the reply entry's next hop"
        );
        assert_eq!(entry.flags, flow_flags::ANSWERED);
        // Without its reply entry (evicted), the flow keeps its entry; its next hop toward
        // the client is found on its first reply.
        let alone = flows_of(&[Old::from((key, forward))]);
        assert_eq!(alone[0].1.to_client, Hop::default());
        // And back: the earlier entries of this flow give the same flow again.
        let earlier: Vec<Old> = earlier_entries(&flow_key, &entry)
            .into_iter()
            .map(|(key, old)| Old::from((FlowKey4::narrow(&key).unwrap(), narrow(&old))))
            .collect();
        assert_eq!(earlier.len(), 2);
        assert_eq!(flows_of(&earlier), [(flow_key, entry)]);
    }
}
