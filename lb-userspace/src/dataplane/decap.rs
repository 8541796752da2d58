//! `xlb decap`'s program as userspace holds it (`lb-ebpf/src/decap.rs`): loaded, told the
//! balancers' prefixes, the VIPs and GUE's port, attached at tc ingress of one interface
//! (detached when dropped), and its counters read.

use std::net::IpAddr;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
    util::KernelVersion,
};
use ipnet::IpNet;
use lb_common::{
    consts::program_names,
    tunnel::{DecapConfig, decap_counters},
};

use super::objects;

/// What the program decapsulates: from which prefixes, to which VIPs, and GUE's port (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecapSettings {
    /// The balancers' prefixes: outer sources of the packets to decapsulate.
    pub from: Vec<IpNet>,
    /// The VIPs the inner packets go to.
    pub vips: Vec<IpAddr>,
    /// GUE's UDP port; 0: GUE packets are not decapsulated.
    pub gue_port: u16,
}

/// The decapsulating program, loaded and attached (see the module's documentation).
pub struct DecapProgram {
    ebpf: Ebpf,
}

impl DecapProgram {
    /// Loads the program and writes `settings` into its maps, without attaching it.
    pub fn load(settings: &DecapSettings) -> Result<Self> {
        let mut ebpf = Ebpf::load(objects::decap()?).context("loading the decap object")?;
        write_settings(&mut ebpf, settings)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(program_names::DECAP)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::DECAP))?
            .try_into()?;
        program
            .load()
            .context("loading the decap program (verifier)")?;
        Ok(Self { ebpf })
    }

    /// Attaches the program at tc ingress of `interface` (tcx, or a clsact filter before
    /// Linux 6.6), until the program is dropped.
    pub fn attach(&mut self, interface: &str) -> Result<()> {
        let program = self.program_mut();
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if tcx {
            program.attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
        } else {
            let _ = aya::programs::tc::qdisc_add_clsact(interface);
            program.attach(interface, TcAttachType::Ingress)
        }
        .with_context(|| format!("attaching the decap program at tc ingress of {interface}"))?;
        Ok(())
    }

    /// The program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &SchedClassifier {
        self.ebpf
            .program(program_names::DECAP)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    fn program_mut(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(program_names::DECAP)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The counters, summed over the CPUs, by `decap_counters` index.
    pub fn counters(&self) -> Result<[u64; decap_counters::COUNT as usize]> {
        let map = self
            .ebpf
            .map("DECAP_COUNTERS")
            .ok_or_else(|| anyhow!("the object has no map DECAP_COUNTERS"))?;
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut totals = [0; decap_counters::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            *total = counters.get(&(index as u32), 0)?.iter().sum();
        }
        Ok(totals)
    }
}

/// Writes the prefixes, VIPs and port into the program's maps.
fn write_settings(ebpf: &mut Ebpf, settings: &DecapSettings) -> Result<()> {
    for prefix in &settings.from {
        match prefix {
            IpNet::V4(net) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> =
                    LpmTrie::try_from(map(ebpf, "DECAP_SOURCES4")?)?;
                trie.insert(
                    &Key::new(u32::from(net.prefix_len()), net.network().octets()),
                    1,
                    0,
                )
                .with_context(|| format!("adding the prefix {prefix}"))?;
            }
            IpNet::V6(net) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
                    LpmTrie::try_from(map(ebpf, "DECAP_SOURCES6")?)?;
                trie.insert(
                    &Key::new(u32::from(net.prefix_len()), net.network().octets()),
                    1,
                    0,
                )
                .with_context(|| format!("adding the prefix {prefix}"))?;
            }
        }
    }
    for vip in &settings.vips {
        match vip {
            IpAddr::V4(address) => {
                let mut vips: HashMap<&mut MapData, [u8; 4], u8> =
                    HashMap::try_from(map(ebpf, "DECAP_VIPS4")?)?;
                vips.insert(address.octets(), 1, 0)
            }
            IpAddr::V6(address) => {
                let mut vips: HashMap<&mut MapData, [u8; 16], u8> =
                    HashMap::try_from(map(ebpf, "DECAP_VIPS6")?)?;
                vips.insert(address.octets(), 1, 0)
            }
        }
        .with_context(|| format!("adding the VIP {vip}"))?;
    }
    let mut config: Array<&mut MapData, DecapConfig> = Array::try_from(map(ebpf, "DECAP_CONFIG")?)?;
    config.set(
        0,
        DecapConfig {
            gue_port: settings.gue_port.to_be(),
            _pad: 0,
        },
        0,
    )?;
    Ok(())
}

/// The object's map `name`.
fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the object has no map {name}"))
}
