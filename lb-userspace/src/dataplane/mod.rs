//! The data plane as userspace holds it: the loaded programs (XDP and tc) and their maps, in
//! three groups:
//!
//! - loading (this module, `objects`, `pins`, `noop`, and `decap`, the backends' program): the object, verified and loaded, its
//!   maps pinned in bpffs; and `simulate`, which runs a packet through the loaded program;
//! - `attach`: where each interface gets the program (`links` reads the host, `hooks`
//!   decides, `preflight` checks it all) and the links that attach it;
//! - `maps`: the maps' contents (tables, flows, counters, passive marks, the trace's maps).

pub mod attach;
mod decap;
pub(crate) mod maps;
mod noop;
mod objects;
pub(crate) mod pins;
pub(crate) mod simulate;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};
use lb_common::consts::{limits::HALF_OPEN_DIVISOR, map_names, program_names};
use tracing::{info, warn};

use self::{
    attach::Attachments,
    maps::{legacy_flows::LegacyFlows, passive, trace},
};
pub use self::{
    attach::{
        Attachment,
        hooks::{Hook, Plan},
        preflight::preflight,
    },
    decap::{DecapProgram, DecapSettings},
    maps::{
        Maps, TablePublisher, handshake_budget,
        legacy_flows::pin_as_earlier_version,
        monotonic_ns,
        share::{FleetSwitch, FlowEvents},
    },
    noop::NoopProgram,
};
use crate::sys::netif;

/// The balancer's programs (XDP and tc), loaded and verified, with their maps.
///
/// With a pin directory, the maps and the links that attach a program to interfaces are
/// pinned in bpffs: they outlive the process, so the data plane keeps forwarding while no daemon
/// runs, and the next daemon takes them over (maps with their contents; links by swapping its
/// own program in, atomically). Without one (tests, benchmarks), everything goes away with the
/// process.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The maps.
    pub maps: Maps,
    /// The trace maps, until the monitor takes them.
    pub tracer: Option<trace::Tracer>,
    /// The marks the program reports, until the monitor takes them.
    pub passive_events: Option<passive::PassiveEvents>,
    /// The flows the program tells of for a fleet, until the fleet's sender takes them.
    pub flow_events: Option<FlowEvents>,
    /// Whether the program tells of its flows.
    pub fleet_switch: FleetSwitch,
    attachments: Attachments,
    pin_dir: Option<PathBuf>,
    adopted: bool,
    /// The flow tables of an earlier version (two entries per flow) taken over, until the
    /// program replaces the old one (see `maps::legacy_flows`).
    legacy: Option<LegacyFlows>,
}

impl Dataplane {
    /// Loads the program into the kernel (without attaching it) with flow tables for
    /// `flow_table_size` flows of each family, nothing pinned.
    pub fn load(flow_table_size: u32) -> Result<Self> {
        Self::load_with(objects::balancer()?, [flow_table_size; 2], None)
    }

    /// Loads the program with its maps pinned in `pin_dir` (a bpffs directory): maps already
    /// pinned there by an earlier daemon are reused, contents and all ([`Self::adopted`]).
    /// (IPv4 flows, and IPv6 flows, as the flow tables hold them.)
    pub fn load_pinned(ipv4_flows: u32, ipv6_flows: u32, pin_dir: &Path) -> Result<Self> {
        Self::load_with(
            objects::balancer()?,
            [ipv4_flows, ipv6_flows],
            Some(pin_dir),
        )
    }

    /// Loads `object`, whose flow tables hold `[IPv4, IPv6]` flows. Flow tables pinned by an
    /// earlier version with two entries per flow are taken over (see `maps::legacy_flows`):
    /// put back as they were if loading fails.
    fn load_with(object: &[u8], sizes: [u32; 2], pin_dir: Option<&Path>) -> Result<Self> {
        let legacy = match pin_dir {
            Some(dir) => {
                pins::check_retired(dir)?;
                LegacyFlows::take_pinned(dir)?
            }
            None => None,
        };
        match Self::load_over(object, sizes, pin_dir, legacy.is_some()) {
            Ok(mut dataplane) => {
                if let Some(legacy) = legacy {
                    let flows = legacy.flows()?;
                    let written = dataplane.maps.adopt_flows(&flows, false);
                    info!(
                        "took over {written} flows of the earlier flow tables (two entries per \
                         flow, now one)"
                    );
                    dataplane.legacy = Some(legacy);
                }
                Ok(dataplane)
            }
            Err(error) => {
                if let Some(legacy) = legacy {
                    legacy.restore();
                }
                Err(error)
            }
        }
    }

    /// Loads `object` (see [`Self::load_with`]); `legacy`: the earlier flow tables were moved
    /// aside, and the pins are adopted all the same.
    fn load_over(
        object: &[u8],
        sizes: [u32; 2],
        pin_dir: Option<&Path>,
        legacy: bool,
    ) -> Result<Self> {
        let flow_table_size = sizes[0];
        let (mut loader, adopted) = loader(sizes, pin_dir, legacy)?;
        let mut ebpf = loader.load(object).with_context(|| match pin_dir {
            Some(dir) if adopted => format!(
                "loading the XDP object with the maps pinned in {} (if xlb was upgraded and its \
                 maps changed, run the old version with --detach-on-exit first, or remove the pins)",
                dir.display()
            ),
            _ => "loading the XDP object".to_owned(),
        })?;
        if adopted {
            check_pinned_sizes(&ebpf, sizes)?;
        }
        load_programs(&mut ebpf)?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.arm_handshake_guard(flow_table_size)?;
        let tracer = trace::Tracer::take(&mut ebpf)?;
        let passive_events = passive::PassiveEvents::take(&mut ebpf)?;
        let flow_events = FlowEvents::take(&mut ebpf)?;
        let fleet_switch = FleetSwitch::take(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            tracer: Some(tracer),
            passive_events: Some(passive_events),
            flow_events: Some(flow_events),
            fleet_switch,
            attachments: Attachments::new(pin_dir.map(Path::to_owned)),
            pin_dir: pin_dir.map(Path::to_owned),
            adopted,
            legacy: None,
        })
    }

    /// Whether the maps were pinned by an earlier daemon and taken over with their contents.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(program_names::BALANCER)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The tc program, for `BPF_PROG_TEST_RUN`.
    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(program_names::BALANCER_TC)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Attaches as `plan` says: at its hook on every interface, or, if that fails and the
    /// plan allows it, at tc on every interface; or to none, with an error naming the
    /// interface.
    pub fn attach_planned(&mut self, interfaces: &[String], plan: &Plan) -> Result<Hook> {
        match self.attach_all(interfaces, plan.hook) {
            Ok(()) => Ok(plan.hook),
            Err(error) if plan.fall_back_to_tc => {
                warn!("{error:#}; using tc on every interface instead");
                self.attach_all(interfaces, Hook::Tc)?;
                Ok(Hook::Tc)
            }
            Err(error) => Err(error),
        }
    }

    /// Attaches at `hook` to every interface, or to none: if one attach fails, the ones made
    /// by this call are undone and the error names the interface.
    pub fn attach_all(&mut self, interfaces: &[String], hook: Hook) -> Result<()> {
        for interface in interfaces {
            self.maps.add_egress_port(netif::index(interface)?)?;
        }
        self.last_flows_of_earlier_tables();
        let result = self
            .attachments
            .attach_all(&mut self.ebpf, interfaces, hook);
        if result.is_err() {
            for interface in interfaces {
                if let Ok(ifindex) = netif::index(interface)
                    && !self.attachments.list().iter().any(|a| a.ifindex == ifindex)
                {
                    self.maps.remove_egress_port(ifindex);
                }
            }
        }
        result
    }

    /// Just before the program replaces an earlier version's: the flows that version made
    /// since its tables were taken over, written too; then its tables' pins are removed.
    fn last_flows_of_earlier_tables(&mut self) {
        let Some(legacy) = self.legacy.take() else {
            return;
        };
        match legacy.flows() {
            Ok(flows) => {
                let written = self.maps.adopt_flows(&flows, true);
                info!("took over {written} more flows of the earlier flow tables");
            }
            Err(error) => warn!("reading the earlier flow tables again: {error:#}"),
        }
        legacy.finish();
    }

    /// Makes the tc program hand packets to the veth peer of each interface in `interfaces`
    /// (`bpf_redirect_peer`, see `hooks::Plan::peer_handoff`) and transmit them on every other
    /// attached interface. Only interfaces attached at tc are handed over. Returns the
    /// interfaces handed over.
    pub fn set_peer_handoff(&mut self, interfaces: &[String]) -> Result<Vec<String>> {
        let mut handed = Vec::new();
        for attachment in self.attachments.list() {
            let on =
                attachment.hook == Some(Hook::Tc) && interfaces.contains(&attachment.interface);
            self.maps.set_veth_peer(attachment.ifindex, on)?;
            if on {
                handed.push(attachment.interface.clone());
            }
        }
        Ok(handed)
    }

    /// Attaches at `hook` to `interface` (see `attach`).
    pub fn attach(&mut self, interface: &str, hook: Hook) -> Result<()> {
        self.attach_all(&[interface.to_owned()], hook)
    }

    /// Detaches the program from `interface` and removes its pinned link.
    pub fn detach(&mut self, interface: &str) {
        if let Some(ifindex) = self.attachments.detach(&mut self.ebpf, interface) {
            self.maps.remove_egress_port(ifindex);
        }
    }

    /// Detaches the program from every interface and removes the pinned links.
    pub fn detach_all(&mut self) {
        for ifindex in self.attachments.detach_all(&mut self.ebpf) {
            self.maps.remove_egress_port(ifindex);
        }
    }

    /// Removes the pinned maps (after [`Self::detach_all`]): the next daemon starts empty.
    pub fn unpin_maps(&self) {
        if let Some(dir) = &self.pin_dir {
            for name in map_names::PINNED {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Reads the MAC address of every attached interface again and tells the program of
    /// those that changed (an operator may change an interface's address while xlb runs).
    pub(crate) fn refresh_interface_macs(&mut self) {
        for attachment in self.attachments.list() {
            let Ok(mac) = netif::mac(attachment.ifindex) else {
                continue;
            };
            if self.maps.interface_mac(attachment.ifindex) != Some(mac) {
                match self.maps.set_interface_mac(attachment.ifindex, mac) {
                    Ok(()) => info!(
                        interface = attachment.interface,
                        "its MAC address changed: frames to the new one are balanced"
                    ),
                    Err(error) => warn!(
                        interface = attachment.interface,
                        "its MAC address changed, but telling the program failed: {error:#}"
                    ),
                }
            }
        }
    }

    /// The interfaces the program is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        self.attachments.list()
    }

    /// The hook the program runs at, if it is attached and the hook is known (an XDP link
    /// adopted from an older xlb has no recorded mode).
    pub fn hook(&self) -> Option<Hook> {
        self.attachments.list().iter().find_map(|a| a.hook)
    }
}

/// The entries of a flow table for `sizes` (`[IPv4, IPv6]` flows): one per flow; the
/// half-open tables hold a part of them.
fn flow_entries(sizes: [u32; 2], half_open: bool, ipv6: bool) -> u32 {
    let flows = sizes[usize::from(ipv6)];
    if half_open {
        flows / HALF_OPEN_DIVISOR
    } else {
        flows
    }
}

/// The loader, with the flow tables sized and, with `pin_dir`, every pinned map's path; and
/// whether an earlier daemon's maps are pinned there to be taken over (their layouts checked).
/// (`legacy`: the earlier flow tables were moved aside, the other pins are to be taken over.)
fn loader(
    sizes: [u32; 2],
    pin_dir: Option<&Path>,
    legacy: bool,
) -> Result<(EbpfLoader<'static>, bool)> {
    let mut loader = EbpfLoader::new();
    // For developers: the verifier's whole log in a refused load's error.
    if std::env::var_os("XLB_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    for (name, half_open, ipv6) in map_names::FLOW_TABLES {
        loader.map_max_entries(name, flow_entries(sizes, half_open, ipv6));
    }
    // The replies' VIPs of shared backends' flows: as many as half-open flows.
    loader.map_max_entries(map_names::REPLY_VIPS4, flow_entries(sizes, true, false));
    loader.map_max_entries(map_names::REPLY_VIPS6, flow_entries(sizes, true, true));
    let mut adopted = false;
    if let Some(dir) = pin_dir {
        adopted = legacy || dir.join(map_names::FLOWS4).exists();
        if adopted {
            pins::check_layouts(dir)?;
        }
        for name in map_names::PINNED {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok((loader, adopted))
}

/// Fails unless the pinned flow tables taken over hold as many flows as `sizes` says: a map's
/// size cannot change while it is pinned.
fn check_pinned_sizes(ebpf: &Ebpf, sizes: [u32; 2]) -> Result<()> {
    for (name, key, ipv6) in [
        (map_names::FLOWS4, "flow_table_size", false),
        (map_names::FLOWS6, "flow_table_size_ipv6", true),
    ] {
        let pinned = match ebpf.map(name) {
            Some(aya::maps::Map::LruHashMap(data)) => data.info()?.max_entries(),
            Some(_) => bail!("{name} is not an LRU hash map"),
            None => 0,
        };
        if pinned != flow_entries(sizes, false, ipv6) {
            bail!(
                "the pinned flow table {name} holds {} flows but {key} is {}: keep the \
                 old size, or stop xlb with --detach-on-exit (dropping every flow) to \
                 change it",
                pinned,
                sizes[usize::from(ipv6)]
            );
        }
    }
    Ok(())
}

/// Loads the XDP and the tc programs (the balancer and its encapsulation) into the kernel, each
/// past the verifier.
fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(program_names::BALANCER)
        .ok_or_else(|| anyhow!("the object has no program {}", program_names::BALANCER))?
        .try_into()?;
    program
        .load()
        .context("loading the XDP program (verifier)")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(program_names::BALANCER_TC)
        .ok_or_else(|| anyhow!("the object has no program {}", program_names::BALANCER_TC))?
        .try_into()?;
    program
        .load()
        .context("loading the tc program (verifier)")?;
    let program: &mut Xdp = ebpf
        .program_mut(program_names::ENCAP)
        .ok_or_else(|| anyhow!("the object has no program {}", program_names::ENCAP))?
        .try_into()?;
    program
        .load()
        .context("loading the encapsulating XDP program (verifier)")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(program_names::ENCAP_TC)
        .ok_or_else(|| anyhow!("the object has no program {}", program_names::ENCAP_TC))?
        .try_into()?;
    program
        .load()
        .context("loading the encapsulating tc program (verifier)")?;
    Ok(())
}
