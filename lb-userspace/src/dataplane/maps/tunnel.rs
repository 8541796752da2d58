//! The tunnels' maps as userspace holds them (see `lb-ebpf/src/tunnel.rs`): the encapsulating
//! programs put in their program arrays (`ENCAP_XDP`, `ENCAP_TC`), and the outer headers'
//! settings (`TUNNEL`), written from the config's `[tunnel]`.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, ProgramArray},
};
use lb_common::{
    consts::{map_names, program_names},
    tunnel::TunnelConfig,
};

use super::{program_arrays::program_array, take};
use crate::{config::TunnelSettings, wire::addr_field};

/// The encapsulating programs' arrays (held: a program array keeps its programs only while a
/// process or a pin holds it) and the outer headers' settings.
pub struct TunnelMaps {
    settings: Array<MapData, TunnelConfig>,
    _encapsulators: [ProgramArray<MapData>; 2],
}

impl TunnelMaps {
    /// Takes the maps out of the loaded object, and puts each loaded encapsulating program in
    /// its hook's array.
    pub(in crate::dataplane) fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let encapsulators = [
            program_array(ebpf, map_names::ENCAP_XDP, program_names::ENCAP)?,
            program_array(ebpf, map_names::ENCAP_TC, program_names::ENCAP_TC)?,
        ];
        Ok(Self {
            settings: take(ebpf, map_names::TUNNEL)?,
            _encapsulators: encapsulators,
        })
    }

    /// Writes the outer headers' settings.
    pub fn set(&mut self, settings: &TunnelSettings) -> Result<()> {
        self.settings
            .set(0, tunnel_config(settings), 0)
            .with_context(|| format!("writing {}", map_names::TUNNEL))
    }
}

/// `TUNNEL`'s value for `settings`: addresses and port in network order, zero where unset.
pub(crate) fn tunnel_config(settings: &TunnelSettings) -> TunnelConfig {
    TunnelConfig {
        source4: settings
            .source
            .map_or(0, |address| addr_field(address.into())[0]),
        source6: settings
            .source_ipv6
            .map_or([0; 4], |address| addr_field(address.into())),
        gue_port: settings.gue_port.to_be(),
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_go_to_the_map_in_network_order() {
        let config = tunnel_config(&TunnelSettings {
            source: Some("198.18.0.2".parse().unwrap()),
            source_ipv6: Some("fd00::2".parse().unwrap()),
            gue_port: 6080,
        });
        assert_eq!(config.source4.to_ne_bytes(), [198, 18, 0, 2]);
        assert_eq!(config.source6[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(config.source6[3].to_ne_bytes(), [0, 0, 0, 2]);
        assert_eq!(config.gue_port.to_ne_bytes(), [0x17, 0xc0]);
        let unset = tunnel_config(&TunnelSettings::default());
        assert_eq!((unset.source4, unset.source6), (0, [0; 4]));
    }
}
