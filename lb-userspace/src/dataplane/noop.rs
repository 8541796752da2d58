//! The reference programs, which count a packet and pass it: what benchmarks measure the
//! balancer against, and what tests attach to the far end of veth links prepared for native
//! XDP.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{DevMapHash, HashMap},
    programs::{SchedClassifier, Xdp, XdpMode as AyaXdpMode},
};
use lb_common::consts::program_names;

use super::objects;
use crate::sys::netif;

/// The reference programs (`lb-ebpf/src/noop.rs`): count each packet and pass it, at XDP and at
/// tc. Benchmarks compare the balancer with them. Tests attach the XDP one to the far end of
/// veth links prepared for native XDP: a veth delivers XDP_TX frames to its peer promptly only
/// when the peer runs an XDP program.
pub struct NoopProgram {
    ebpf: Ebpf,
}

impl NoopProgram {
    /// Loads the program (without attaching it).
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(objects::noop()?).context("loading the reference object")?;
        let program: &mut Xdp = ebpf
            .program_mut(program_names::NOOP)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::NOOP))?
            .try_into()?;
        program
            .load()
            .context("loading the reference XDP program")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(program_names::NOOP_TC)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::NOOP_TC))?
            .try_into()?;
        program.load().context("loading the reference tc program")?;
        let program: &mut Xdp = ebpf
            .program_mut(program_names::FLOOR)
            .ok_or_else(|| anyhow!("the object has no program {}", program_names::FLOOR))?
            .try_into()?;
        program.load().context("loading the floor program")?;
        Ok(Self { ebpf })
    }

    /// The floor program (one lookup of a 16-byte key, a redirect), for `BPF_PROG_TEST_RUN`.
    pub fn floor_program(&self) -> &Xdp {
        self.ebpf
            .program(program_names::FLOOR)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Makes the floor redirect IPv4 `frame` (whose 16 bytes from its source address are the
    /// key) to interface `ifindex`, and the new flows it finds there too.
    pub fn arm_floor(&mut self, frame: &[u8], ifindex: u32) -> Result<()> {
        let bytes: [u8; 16] = frame
            .get(26..42)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                anyhow!(
                    "a frame of {} bytes is too short for the floor",
                    frame.len()
                )
            })?;
        let key: [u32; 4] = std::array::from_fn(|i| {
            u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
        });
        let mut flows: HashMap<_, [u32; 4], u32> = HashMap::try_from(
            self.ebpf
                .map_mut("FLOOR_FLOWS")
                .ok_or_else(|| anyhow!("no FLOOR_FLOWS"))?,
        )?;
        flows.insert(key, ifindex, 0)?;
        flows.insert([0; 4], ifindex, 0)?;
        let mut ports: DevMapHash<_> = DevMapHash::try_from(
            self.ebpf
                .map_mut("FLOOR_PORTS")
                .ok_or_else(|| anyhow!("no FLOOR_PORTS"))?,
        )?;
        ports.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// The tc program, for `BPF_PROG_TEST_RUN`.
    pub fn tc_program(&self) -> &SchedClassifier {
        self.ebpf
            .program(program_names::NOOP_TC)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(program_names::NOOP)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// The program, for attaching.
    pub(crate) fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(program_names::NOOP)
            .and_then(|program| program.try_into().ok())
            .expect("the program was checked at load")
    }

    /// Attaches it to `interface` in native mode; it stays attached while `self` lives.
    pub fn attach(&mut self, interface: &str) -> Result<()> {
        let ifindex = netif::index(interface)?;
        self.program_mut()
            .attach_to_if_index(ifindex, AyaXdpMode::Driver)
            .with_context(|| format!("attaching the reference program to {interface}"))?;
        Ok(())
    }
}
