//! The interfaces the program works with, as the maps tell it: the MAC address it balances
//! frames to on each (`IFACE_MACS`), the ones it may redirect to (`EGRESS_PORTS`) and the veth
//! interfaces whose peer the tc program hands packets to (`VETH_PEERS`).

use anyhow::{Context as _, Result};
use lb_common::consts::map_names;

use super::Maps;
use crate::sys::netif;

impl Maps {
    /// Removes `ifindex` from the interfaces the program may redirect to (and hand to their
    /// veth peer).
    pub fn remove_egress_port(&mut self, ifindex: u32) {
        let _ = self.egress_ports.remove(ifindex);
        let _ = self.veth_peers.remove(&ifindex);
        if self.iface_macs.remove(&ifindex).is_ok() {
            let _ = self.bump_mac_generation();
        }
    }

    /// Tells the program interface `ifindex`'s MAC address (`IFACE_MACS`): it balances only
    /// frames addressed to it. Attaching does this, and the daemon again when the address
    /// changes; every CPU looks it up anew (`IFACE_MACS_GENERATION`).
    pub fn set_interface_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        let mut value = [0u8; 8];
        value[..6].copy_from_slice(&mac);
        if self.iface_macs.get(&ifindex, 0).ok() == Some(value) {
            return Ok(());
        }
        self.iface_macs
            .insert(ifindex, value, 0)
            .with_context(|| format!("adding interface {ifindex} to {}", map_names::IFACE_MACS))?;
        self.bump_mac_generation()
    }

    /// The MAC address the program holds for interface `ifindex`, if any.
    pub(crate) fn interface_mac(&self, ifindex: u32) -> Option<[u8; 6]> {
        let value = self.iface_macs.get(&ifindex, 0).ok()?;
        Some(std::array::from_fn(|i| value[i]))
    }

    /// Makes every CPU look the interfaces' MAC addresses up again.
    fn bump_mac_generation(&mut self) -> Result<()> {
        let generation = self.iface_macs_generation.get(&0, 0)?;
        self.iface_macs_generation
            .set(0, generation.wrapping_add(1), 0)
            .with_context(|| format!("writing {}", map_names::IFACE_MACS_GENERATION))
    }

    /// Whether the tc program hands packets for interface `ifindex` to its veth peer
    /// (`VETH_PEERS`); flows pick the change up when their next hop is next resolved.
    pub fn set_veth_peer(&mut self, ifindex: u32, hand_over: bool) -> Result<()> {
        if hand_over {
            self.veth_peers
                .insert(ifindex, 1, 0)
                .with_context(|| format!("adding interface {ifindex} to {}", map_names::VETH_PEERS))
        } else {
            match self.veth_peers.remove(&ifindex) {
                Ok(()) => Ok(()),
                // Never added (the kernel answers ENOENT).
                Err(aya::maps::MapError::SyscallError(error))
                    if error.io_error.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(())
                }
                Err(error) => Err(error).with_context(|| {
                    format!(
                        "removing interface {ifindex} from {}",
                        map_names::VETH_PEERS
                    )
                }),
            }
        }
    }

    /// Lets the program redirect packets to interface `ifindex` (attaching does this; tests
    /// that run the program without attaching it call it directly).
    pub fn add_egress_port(&mut self, ifindex: u32) -> Result<()> {
        self.set_interface_mac(ifindex, netif::mac(ifindex)?)?;
        self.egress_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding interface {ifindex} to {}", map_names::EGRESS_PORTS))
    }
}
