//! `BACKEND_VIPS4`/`BACKEND_VIPS6`: for each NAT backend (address, port, protocol), the VIPs
//! and ports it serves, which is how the program finds the flow of a backend's packet (see
//! `lb_common::reply`). Kept beside `BACKENDS` and `SERVICES`, from what they are told: a
//! backend's services are in its element before any table names the backend, and a new
//! service's VIP before its entry is written; a VIP leaves a backend's element only when the
//! backend id is released (its flows were purged before), so flows never lose their replies.
//! A backend's VIPs keep the order they came in, so that the first
//! `MAX_VIPS_PER_BACKEND`, which the element lists, stay listed when more come; with more,
//! the element and the backend's `BACKENDS` entries are marked shared (`backend_flags`).

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{
    Addr, BackendEntry, BackendVipKey, BackendVips, FlowAddr, ServiceEntry, ServiceKey, VipPort,
    backend_flags,
    consts::{family, forwarding},
    reply::{MAX_VIPS_PER_BACKEND, hint_slot},
};

use super::{
    lone_vips::{Backend, Lone, LoneVipMaps, Vip, put},
    vip_hints::{Slot, VipHintMaps},
};

/// Which VIPs each NAT backend serves, from the services and backends the maps were told of.
/// Pure, so that it is tested without a kernel.
#[derive(Default)]
struct ReplyIndex {
    /// Every service written, by id, and whether it is NAT. Kept after the service is removed:
    /// its backends keep its VIP until they are released.
    services: HashMap<u32, (ServiceKey, bool)>,
    /// The backends in use, by id.
    backends: HashMap<u32, BackendEntry>,
    /// The ids in use of each backend address (address, port, family).
    by_address: HashMap<(Addr, u16, u8), BTreeSet<u32>>,
    /// The ids in use of each service's backends.
    by_service: HashMap<u32, BTreeSet<u32>>,
    /// The VIPs of each backend, in the order they came.
    order: HashMap<Backend, Vec<Vip>>,
}

impl ReplyIndex {
    /// The VIPs `backend` serves, in the order they came (those that came together, in
    /// address order).
    fn listed(&mut self, backend: &Backend) -> Vec<Vip> {
        let now = self.vips_of(backend);
        let order = self.order.entry(*backend).or_default();
        order.retain(|vip| now.contains(vip));
        for vip in now {
            if !order.contains(&vip) {
                order.push(vip);
            }
        }
        let listed = order.clone();
        if listed.is_empty() {
            self.order.remove(backend);
        }
        listed
    }

    /// Whether `backend` serves more NAT services than a `BACKEND_VIPS` element lists.
    fn shared(&self, backend: &Backend) -> bool {
        self.vips_of(backend).len() > MAX_VIPS_PER_BACKEND
    }

    /// The ids in use at `backend`'s address, and their entries.
    fn at_address(&self, backend: &Backend) -> impl Iterator<Item = (u32, &BackendEntry)> {
        self.by_address
            .get(&(backend.0, backend.1, backend.3))
            .into_iter()
            .flatten()
            .filter_map(|id| Some((*id, self.backends.get(id)?)))
    }

    /// The one VIP `backend` serves, with its backend id and service id there; none if it
    /// serves none or several (`LONE_VIPS4`/`6`).
    fn lone(&self, backend: &Backend) -> Option<Lone> {
        let vips = self.vips_of(backend);
        let [vip] = vips.as_slice() else {
            return None;
        };
        self.at_address(backend).find_map(|(id, entry)| {
            let (key, nat) = self.services.get(&entry.service_id)?;
            (*nat && key.proto == backend.2 && (key.addr, key.port) == *vip).then_some((
                *vip,
                id,
                entry.service_id,
            ))
        })
    }

    /// The ids in use of `backend`.
    fn ids_of(&self, backend: &Backend) -> Vec<u32> {
        self.at_address(backend)
            .filter(|(_, entry)| self.backend(entry).as_ref() == Some(backend))
            .map(|(id, _)| id)
            .collect()
    }

    /// The VIPs `backend` serves, in address order.
    fn vips_of(&self, backend: &Backend) -> Vec<Vip> {
        let mut vips = BTreeSet::new();
        for (_, entry) in self.at_address(backend) {
            if let Some((key, true)) = self.services.get(&entry.service_id)
                && key.proto == backend.2
            {
                vips.insert((key.addr, key.port));
            }
        }
        vips.into_iter().collect()
    }

    /// What backend `id` adds to its slot's hint (`vip_hints`): its slot and family, and its
    /// service's VIP; none if it is not in use or not a NAT backend.
    fn contribution(&self, id: u32) -> Option<(Slot, Vip)> {
        let entry = self.backends.get(&id)?;
        let (key, nat) = self.services.get(&entry.service_id)?;
        let slot = hint_slot(&entry.addr, entry.port);
        nat.then_some(((slot, entry.family), (key.addr, key.port)))
    }

    /// The backend of id `id` as its packets show it, if it is in use and its service known.
    fn backend(&self, entry: &BackendEntry) -> Option<Backend> {
        let (key, _) = self.services.get(&entry.service_id)?;
        Some((entry.addr, entry.port, key.proto, entry.family))
    }

    /// Records service `key` (`entry`); returns the backends whose VIPs may have changed.
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Vec<Backend> {
        let nat = entry.forwarding == forwarding::NAT;
        self.services.insert(entry.id, (*key, nat));
        self.by_service
            .get(&entry.id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.backends.get(id))
            .filter_map(|backend| self.backend(backend))
            .collect()
    }

    /// Records backend `id` as `entry` (released if not in use); returns the backends whose
    /// VIPs may have changed (the old one and the new one).
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Vec<Backend> {
        let old = self.backends.remove(&id);
        if let Some(old) = &old {
            let address = (old.addr, old.port, old.family);
            if let Some(ids) = self.by_address.get_mut(&address) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_address.remove(&address);
                }
            }
            if let Some(ids) = self.by_service.get_mut(&old.service_id) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_service.remove(&old.service_id);
                }
            }
        }
        if entry.in_use == 1 {
            self.backends.insert(id, *entry);
            let address = (entry.addr, entry.port, entry.family);
            self.by_address.entry(address).or_default().insert(id);
            self.by_service
                .entry(entry.service_id)
                .or_default()
                .insert(id);
        }
        [old.as_ref(), (entry.in_use == 1).then_some(entry)]
            .into_iter()
            .flatten()
            .filter_map(|backend| self.backend(backend))
            .collect()
    }

    /// Every backend with at least one VIP.
    fn all(&self) -> BTreeSet<Backend> {
        self.backends
            .values()
            .filter_map(|backend| self.backend(backend))
            .filter(|backend| !self.vips_of(backend).is_empty())
            .collect()
    }
}

/// The two maps, the ports' hints, the backends that serve one VIP, and the index they are
/// written from.
pub(super) struct BackendVipMaps {
    v4: BpfHashMap<MapData, BackendVipKey<u32>, BackendVips<u32>>,
    v6: BpfHashMap<MapData, BackendVipKey<Addr>, BackendVips<Addr>>,
    ports: VipHintMaps,
    lone: LoneVipMaps,
    index: ReplyIndex,
    /// The flags last given to each backend id's `BACKENDS` entry.
    flags: HashMap<u32, u32>,
}

impl BackendVipMaps {
    /// Wraps the maps and writes them whole from the services and backends in use that the
    /// maps already hold (pinned maps that a previous daemon filled, maybe with another
    /// version's content), removing any other element, and the ports' hints (`ports`, new
    /// arrays). Returns them with the backend ids whose `BACKENDS` flags are to change, and
    /// their flags.
    pub(super) fn new(
        v4: BpfHashMap<MapData, BackendVipKey<u32>, BackendVips<u32>>,
        v6: BpfHashMap<MapData, BackendVipKey<Addr>, BackendVips<Addr>>,
        ports: (Array<MapData, VipPort<u32>>, Array<MapData, VipPort<Addr>>),
        lone: LoneVipMaps,
        services: &[(ServiceKey, ServiceEntry)],
        backends: &[(u32, BackendEntry)],
    ) -> Result<(Self, Vec<(u32, u32)>)> {
        let mut index = ReplyIndex::default();
        for (key, entry) in services {
            index.set_service(key, entry);
        }
        for (id, entry) in backends {
            index.set_backend(*id, entry);
        }
        let contributions = backends
            .iter()
            .filter_map(|(id, _)| Some((*id, index.contribution(*id)?)));
        let ports = VipHintMaps::new(ports.0, ports.1, contributions)?;
        let mut maps = Self {
            v4,
            v6,
            ports,
            lone,
            index,
            flags: HashMap::new(),
        };
        let wanted = maps.index.all();
        for (id, entry) in backends {
            maps.flags.insert(*id, entry.flags);
        }
        let held4: Vec<_> = maps.v4.keys().collect::<Result<_, _>>()?;
        for key in held4 {
            if !wanted.contains(&(key.addr.to_addr(), key.port, key.proto, family::IPV4)) {
                let _ = maps.v4.remove(&key);
            }
        }
        let held6: Vec<_> = maps.v6.keys().collect::<Result<_, _>>()?;
        for key in held6 {
            if !wanted.contains(&(key.addr, key.port, key.proto, family::IPV6)) {
                let _ = maps.v6.remove(&key);
            }
        }
        // Every backend's VIPs, and the flags of its entries as the index says (pins of an
        // earlier version have none).
        let backends_now: Vec<Backend> = wanted.into_iter().collect();
        let fixes = maps.write_all(&backends_now)?;
        Ok((maps, fixes))
    }

    /// Records service `key` (`entry`), writing its backends' VIPs (call before the service's
    /// entry is written). Returns the backend ids whose `BACKENDS` flags change, with their
    /// new flags: write them before the service's entry too.
    pub(super) fn set_service(
        &mut self,
        key: &ServiceKey,
        entry: &ServiceEntry,
    ) -> Result<Vec<(u32, u32)>> {
        let changed = self.index.set_service(key, entry);
        let ids: Vec<u32> = self
            .index
            .by_service
            .get(&entry.id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for id in ids {
            self.ports.change(id, self.index.contribution(id))?;
        }
        self.write_all(&changed)
    }

    /// Records backend `id` as `entry`, writing the VIPs of its address (call before the
    /// backend's entry is written when it is taken, after when it is released). Returns the
    /// flags of its entry, and the other backend ids whose flags change, with theirs.
    pub(super) fn set_backend(
        &mut self,
        id: u32,
        entry: &BackendEntry,
    ) -> Result<(u32, Vec<(u32, u32)>)> {
        let changed = self.index.set_backend(id, entry);
        self.ports.change(id, self.index.contribution(id))?;
        let mut flags = self.write_all(&changed)?;
        let own = match flags.iter().position(|(other, _)| *other == id) {
            Some(at) => flags.remove(at).1,
            None => self.flags.get(&id).copied().unwrap_or(0),
        };
        if entry.in_use != 1 {
            self.flags.remove(&id);
        }
        Ok((own, flags))
    }

    /// Writes the VIPs of `backends`; returns the ids whose flags change, with their new
    /// flags (recorded as given).
    fn write_all(&mut self, backends: &[Backend]) -> Result<Vec<(u32, u32)>> {
        let mut changed = Vec::new();
        for backend in backends {
            self.write(backend)?;
            let flags = if self.index.shared(backend) {
                backend_flags::SHARED
            } else {
                0
            };
            for id in self.index.ids_of(backend) {
                if self.flags.insert(id, flags) != Some(flags) {
                    changed.push((id, flags));
                }
            }
        }
        Ok(changed)
    }

    /// The VIPs and ports the map gives backend `addr`:`port` (network order) of protocol
    /// `proto` and family `backend_family`, as the program reads them.
    pub(super) fn read(&self, addr: &Addr, port: u16, proto: u8, backend_family: u8) -> Vec<Vip> {
        let value = if backend_family == family::IPV4 {
            let key = BackendVipKey {
                addr: addr[0],
                port,
                proto,
                _pad: 0,
            };
            self.v4.get(&key, 0).ok().map(|value| BackendVips::<Addr> {
                count: value.count,
                shared: value.shared,
                vips: value.vips.map(|narrow| VipPort {
                    addr: narrow.addr.to_addr(),
                    port: narrow.port,
                    _pad: 0,
                }),
            })
        } else {
            let key = BackendVipKey {
                addr: *addr,
                port,
                proto,
                _pad: 0,
            };
            self.v6.get(&key, 0).ok()
        };
        value.map_or_else(Vec::new, |value| {
            let count = (value.count as usize).min(MAX_VIPS_PER_BACKEND);
            value.vips[..count]
                .iter()
                .map(|vip| (vip.addr, vip.port))
                .collect()
        })
    }

    /// Writes (or removes, if it serves none) the VIPs of `backend`, and its one VIP if it
    /// serves one.
    fn write(&mut self, backend: &Backend) -> Result<()> {
        self.lone.write(backend, self.index.lone(backend))?;
        let vips = self.index.listed(backend);
        if backend.3 == family::IPV4 {
            put(&mut self.v4, backend, value_of::<u32>(&vips))
        } else {
            put(&mut self.v6, backend, value_of::<Addr>(&vips))
        }
    }
}

/// The map value for `vips`: the first [`MAX_VIPS_PER_BACKEND`], and whether there are
/// more; `None` if there are none.
fn value_of<A: FlowAddr>(vips: &[Vip]) -> Option<BackendVips<A>> {
    if vips.is_empty() {
        return None;
    }
    let mut value = BackendVips::<A>::default();
    for (slot, (addr, port)) in value.vips.iter_mut().zip(vips) {
        *slot = VipPort {
            addr: A::from_addr(addr),
            port: *port,
            _pad: 0,
        };
    }
    value.count = vips.len().min(MAX_VIPS_PER_BACKEND) as u32;
    value.shared = u32::from(vips.len() > MAX_VIPS_PER_BACKEND);
    Some(value)
}

#[cfg(test)]
mod tests {
    use lb_common::consts::proto;

    use super::*;

    fn service(id: u32, vip: u32, port: u16, nat: bool) -> (ServiceKey, ServiceEntry) {
        (
            ServiceKey {
                addr: [vip, 0, 0, 0],
                port: port.to_be(),
                proto: proto::TCP,
                family: family::IPV4,
            },
            ServiceEntry {
                id,
                forwarding: if nat {
                    forwarding::NAT
                } else {
                    forwarding::DSR
                },
                ..ServiceEntry::default()
            },
        )
    }

    fn backend(service_id: u32, addr: u32, port: u16) -> BackendEntry {
        BackendEntry {
            addr: [addr, 0, 0, 0],
            port: port.to_be(),
            family: family::IPV4,
            in_use: 1,
            service_id,
            ..BackendEntry::default()
        }
    }

    #[test]
    fn a_backend_of_one_nat_vip_is_lone_with_its_ids_there() {
        let mut index = ReplyIndex::default();
        let b1 = ([11, 0, 0, 0], 8080u16.to_be(), proto::TCP, family::IPV4);
        let vip = ([100, 0, 0, 0], 80u16.to_be());
        let (key, entry) = service(7, 100, 80, true);
        index.set_service(&key, &entry);
        index.set_backend(3, &backend(7, 11, 8080));
        assert_eq!(index.lone(&b1), Some((vip, 3, 7)));
        // A DSR service with the same backend changes nothing: only NAT answers are adopted.
        let (key, entry) = service(9, 102, 8080, false);
        index.set_service(&key, &entry);
        index.set_backend(4, &backend(9, 11, 8080));
        assert_eq!(index.lone(&b1), Some((vip, 3, 7)));
        // A second NAT VIP: which flow an answer belongs to is no longer known.
        let (key, entry) = service(8, 101, 443, true);
        index.set_service(&key, &entry);
        index.set_backend(5, &backend(8, 11, 8080));
        assert_eq!(index.lone(&b1), None);
        // Released again: lone once more; and no VIP at all once the last id goes.
        index.set_backend(
            5,
            &BackendEntry {
                in_use: 0,
                ..backend(8, 11, 8080)
            },
        );
        assert_eq!(index.lone(&b1), Some((vip, 3, 7)));
        index.set_backend(
            3,
            &BackendEntry {
                in_use: 0,
                ..backend(7, 11, 8080)
            },
        );
        assert_eq!(index.lone(&b1), None);
    }

    #[test]
    fn a_backend_serves_the_vips_of_its_nat_services_until_it_is_released() {
        let mut index = ReplyIndex::default();
        let b1 = ([11, 0, 0, 0], 8080u16.to_be(), proto::TCP, family::IPV4);
        // Backends first (a new service's are written before its entry): no VIP yet.
        assert!(index.set_backend(1, &backend(7, 11, 8080)).is_empty());
        let (key, entry) = service(7, 100, 80, true);
        assert_eq!(index.set_service(&key, &entry), [b1]);
        assert_eq!(index.vips_of(&b1), [([100, 0, 0, 0], 80u16.to_be())]);
        // The same backend in a second NAT service and in a DSR one.
        let (key, entry) = service(8, 101, 443, true);
        index.set_service(&key, &entry);
        assert_eq!(index.set_backend(2, &backend(8, 11, 8080)), [b1]);
        let (key, entry) = service(9, 102, 8080, false);
        index.set_service(&key, &entry);
        index.set_backend(3, &backend(9, 11, 8080));
        assert_eq!(
            index.vips_of(&b1),
            [
                ([100, 0, 0, 0], 80u16.to_be()),
                ([101, 0, 0, 0], 443u16.to_be())
            ]
        );
        // Another port of the same address is another backend.
        let b2 = ([11, 0, 0, 0], 9090u16.to_be(), proto::TCP, family::IPV4);
        assert!(index.vips_of(&b2).is_empty());
        // Released: its service's VIP leaves.
        assert_eq!(index.set_backend(2, &BackendEntry::default()), [b1]);
        assert_eq!(index.vips_of(&b1), [([100, 0, 0, 0], 80u16.to_be())]);
        assert_eq!(index.all().into_iter().collect::<Vec<_>>(), [b1]);
    }

    #[test]
    fn a_backend_keeps_its_first_vips_listed_as_more_come_and_is_shared_past_four() {
        let mut index = ReplyIndex::default();
        let b1 = ([11, 0, 0, 0], 8080u16.to_be(), proto::TCP, family::IPV4);
        // Services 10..=14, VIPs .105 down to .101: each comes after the ones before.
        for (n, vip) in (10..15).zip((101..106).rev()) {
            let (key, entry) = service(n, vip, 80, true);
            index.set_service(&key, &entry);
            index.set_backend(n, &backend(n, 11, 8080));
            let listed = index.listed(&b1);
            assert_eq!(
                listed[0],
                ([105, 0, 0, 0], 80u16.to_be()),
                "the first stays first"
            );
            assert_eq!(listed.len(), (n - 9) as usize);
            assert_eq!(index.shared(&b1), n == 14, "shared with the fifth");
        }
        let value = value_of::<u32>(&index.listed(&b1)).unwrap();
        assert_eq!((value.count, value.shared), (4, 1));
        assert_eq!(value.vips[3].addr, 102, "the fifth, .101, is not listed");
        // The second leaves: the fifth moves up, the others keep their order.
        index.set_backend(11, &BackendEntry::default());
        let addrs: Vec<u32> = index.listed(&b1).iter().map(|(a, _)| a[0]).collect();
        assert_eq!(addrs, [105, 103, 102, 101]);
        assert!(!index.shared(&b1));
        let mut ids = index.ids_of(&b1);
        ids.sort();
        assert_eq!(ids, [10, 12, 13, 14]);
    }

    #[test]
    fn the_map_value_holds_the_vips_in_order() {
        let vips = [
            ([100, 0, 0, 0], 80u16.to_be()),
            ([101, 0, 0, 0], 443u16.to_be()),
        ];
        let value = value_of::<u32>(&vips).unwrap();
        assert_eq!(value.count, 2);
        assert_eq!((value.vips[0].addr, value.vips[1].addr), (100, 101));
        assert_eq!(value.vips[2], VipPort::default());
        assert!(value_of::<u32>(&[]).is_none());
    }
}
