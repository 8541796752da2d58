//! `VIP_HINTS4`/`VIP_HINTS6`: per slot of a backend address and port
//! (`lb_common::reply::hint_slot`), the one VIP and port that the NAT backends of the slot
//! serve in a family, where there is exactly one (zero otherwise). The program
//! tries that flow first for a backend's packet and looks up `BACKEND_VIPS4`/`6` only when the
//! hint is missing or finds nothing; it checks a hinted flow as any candidate, so a hint is
//! never trusted alone and may be written in any order with the other maps. Kept by
//! `BackendVipMaps`, from what each backend id contributes: its slot and family, and its NAT
//! service's VIP.

use std::collections::HashMap;

use anyhow::Result;
use aya::maps::{Array, MapData};
use lb_common::{Addr, FlowAddr, VipPort, consts::family};

/// A slot (`hint_slot`) and family.
pub(super) type Slot = (u32, u8);
/// A VIP and its port (network order).
pub(super) type Vip = (Addr, u16);

/// Per slot and family, which VIPs its backend ids serve. Pure, so that it is tested without
/// a kernel.
#[derive(Default)]
struct SlotHints {
    /// What each backend id contributes: its slot and family, and its service's VIP.
    of: HashMap<u32, (Slot, Vip)>,
    /// Per slot and family: how many ids serve each VIP.
    vips: HashMap<Slot, HashMap<Vip, u32>>,
}

impl SlotHints {
    /// Backend `id` now contributes `to` (none: released, or not a NAT backend). Returns the
    /// slots whose hint may have changed.
    fn change(&mut self, id: u32, to: Option<(Slot, Vip)>) -> Vec<Slot> {
        let old = self.of.get(&id).copied();
        if old == to {
            return Vec::new();
        }
        let mut slots = Vec::new();
        if let Some((slot, vip)) = old {
            self.of.remove(&id);
            if let Some(vips) = self.vips.get_mut(&slot) {
                if let Some(count) = vips.get_mut(&vip) {
                    *count -= 1;
                    if *count == 0 {
                        vips.remove(&vip);
                    }
                }
                if vips.is_empty() {
                    self.vips.remove(&slot);
                }
            }
            slots.push(slot);
        }
        if let Some((slot, vip)) = to {
            self.of.insert(id, (slot, vip));
            *self.vips.entry(slot).or_default().entry(vip).or_default() += 1;
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        slots
    }

    /// The hint of `slot`: its one VIP, if its backends serve exactly one.
    fn hint(&self, slot: &Slot) -> Option<Vip> {
        let vips = self.vips.get(slot)?;
        match vips.len() {
            1 => vips.keys().next().copied(),
            _ => None,
        }
    }
}

/// The two arrays and the contributions they are written from.
pub(super) struct VipHintMaps {
    v4: Array<MapData, VipPort<u32>>,
    v6: Array<MapData, VipPort<Addr>>,
    hints: SlotHints,
}

impl VipHintMaps {
    /// Wraps the arrays (new with each program: all zero) and writes the hints of the
    /// backend ids' `contributions`.
    pub(super) fn new(
        v4: Array<MapData, VipPort<u32>>,
        v6: Array<MapData, VipPort<Addr>>,
        contributions: impl IntoIterator<Item = (u32, (Slot, Vip))>,
    ) -> Result<Self> {
        let mut maps = Self {
            v4,
            v6,
            hints: SlotHints::default(),
        };
        for (id, contribution) in contributions {
            maps.hints.change(id, Some(contribution));
        }
        let slots: Vec<Slot> = maps.hints.vips.keys().copied().collect();
        for slot in slots {
            maps.write(slot)?;
        }
        Ok(maps)
    }

    /// Records that backend `id` contributes `to` (see [`SlotHints::change`]), writing the
    /// hints that change.
    pub(super) fn change(&mut self, id: u32, to: Option<(Slot, Vip)>) -> Result<()> {
        for slot in self.hints.change(id, to) {
            self.write(slot)?;
        }
        Ok(())
    }

    /// Writes the hint of `slot` (zero if it has none).
    fn write(&mut self, (index, slot_family): Slot) -> Result<()> {
        let (addr, vip_port) = self.hints.hint(&(index, slot_family)).unwrap_or_default();
        if slot_family == family::IPV4 {
            let value = VipPort {
                addr: u32::from_addr(&addr),
                port: vip_port,
                _pad: 0,
            };
            self.v4.set(index, value, 0)?;
        } else {
            let value = VipPort {
                addr,
                port: vip_port,
                _pad: 0,
            };
            self.v6.set(index, value, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: Slot = (8080, family::IPV4);
    const A: Vip = ([1, 0, 0, 0], 80);
    const B: Vip = ([2, 0, 0, 0], 80);

    #[test]
    fn a_slot_has_a_hint_while_its_backends_serve_exactly_one_vip() {
        let mut hints = SlotHints::default();
        assert_eq!(hints.change(1, Some((SLOT, A))), [SLOT]);
        assert_eq!(hints.change(2, Some((SLOT, A))), [SLOT]);
        assert_eq!(hints.hint(&SLOT), Some(A));
        // Another VIP in the same slot: ambiguous, no hint.
        hints.change(3, Some((SLOT, B)));
        assert_eq!(hints.hint(&SLOT), None);
        // Its backend released: one VIP again.
        assert_eq!(hints.change(3, None), [SLOT]);
        assert_eq!(hints.hint(&SLOT), Some(A));
        // Nothing changes, nothing to write.
        assert!(hints.change(1, Some((SLOT, A))).is_empty());
        // A backend that moves writes both slots.
        let other = (9090, family::IPV4);
        assert_eq!(hints.change(2, Some((other, B))), [SLOT, other]);
        assert_eq!((hints.hint(&SLOT), hints.hint(&other)), (Some(A), Some(B)));
        hints.change(1, None);
        hints.change(2, None);
        assert_eq!((hints.hint(&SLOT), hints.hint(&other)), (None, None));
        assert!(hints.vips.is_empty() && hints.of.is_empty());
    }

    #[test]
    fn each_family_has_hints_of_its_own() {
        let mut hints = SlotHints::default();
        let v6 = (8080, family::IPV6);
        hints.change(1, Some((SLOT, A)));
        hints.change(2, Some((v6, B)));
        assert_eq!((hints.hint(&SLOT), hints.hint(&v6)), (Some(A), Some(B)));
    }
}
