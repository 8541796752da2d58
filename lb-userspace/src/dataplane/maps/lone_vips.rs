//! `LONE_VIPS4`/`LONE_VIPS6`: the NAT backends (address, port, protocol) that serve one VIP,
//! with that VIP and their ids in its service (`lb_common::reply::LoneVip`), with which an
//! instance of a fleet takes over a flow whose backend's packet comes before the flow's entry.
//! Written by `BackendVipMaps` beside `BACKEND_VIPS4`/`6`, from the same index; the program
//! reads them only for a NAT backend's packet in no flow, while the instance shares flows.
//! Not pinned: each daemon writes them whole at start.

use anyhow::Result;
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData},
};
use lb_common::{Addr, BackendVipKey, FlowAddr, LoneVip, VipPort, consts::family};

/// A NAT backend as its packets show it: address, port (network order), protocol, family.
pub(super) type Backend = (Addr, u16, u8, u8);
/// A VIP and port (network order).
pub(super) type Vip = (Addr, u16);

/// The one VIP a backend serves, its backend id there and that service's id.
pub(super) type Lone = (Vip, u32, u32);

/// The two maps.
pub(super) struct LoneVipMaps {
    v4: BpfHashMap<MapData, BackendVipKey<u32>, LoneVip<u32>>,
    v6: BpfHashMap<MapData, BackendVipKey<Addr>, LoneVip<Addr>>,
}

impl LoneVipMaps {
    /// Wraps the maps (new with the program: empty).
    pub(super) fn new(
        v4: BpfHashMap<MapData, BackendVipKey<u32>, LoneVip<u32>>,
        v6: BpfHashMap<MapData, BackendVipKey<Addr>, LoneVip<Addr>>,
    ) -> Self {
        Self { v4, v6 }
    }

    /// Writes `backend`'s one VIP and ids, or removes its element if it serves none or more
    /// than one (`lone` is `None`).
    pub(super) fn write(&mut self, backend: &Backend, lone: Option<Lone>) -> Result<()> {
        if backend.3 == family::IPV4 {
            put(&mut self.v4, backend, lone.map(value_of::<u32>))
        } else {
            put(&mut self.v6, backend, lone.map(value_of::<Addr>))
        }
    }
}

/// Writes `value` under `backend`'s key in `map`, a map of its family keyed by backend
/// (`LONE_VIPS4`/`6`, `BACKEND_VIPS4`/`6`), or removes the key if `value` is `None`.
pub(super) fn put<A: FlowAddr, V: Pod>(
    map: &mut BpfHashMap<MapData, BackendVipKey<A>, V>,
    backend: &Backend,
    value: Option<V>,
) -> Result<()>
where
    BackendVipKey<A>: Pod,
{
    let &(addr, port, proto, _) = backend;
    let key = BackendVipKey {
        addr: A::from_addr(&addr),
        port,
        proto,
        _pad: 0,
    };
    match value {
        Some(value) => map.insert(key, value, 0)?,
        None => super::absent_is_removed(map.remove(&key))?,
    }
    Ok(())
}

/// The map value of `lone`.
fn value_of<A: FlowAddr>(((addr, port), backend_id, service_id): Lone) -> LoneVip<A> {
    LoneVip {
        vip: VipPort {
            addr: A::from_addr(&addr),
            port,
            _pad: 0,
        },
        backend_id,
        service_id,
    }
}
