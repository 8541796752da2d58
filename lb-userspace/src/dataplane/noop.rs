//! The reference programs, which count a packet and pass it: what benchmarks measure the
//! balancer against, and what tests attach to the far end of veth links prepared for native
//! XDP.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp, XdpMode as AyaXdpMode},
};
use lb_common::consts::program_names;

use super::{netif, objects};

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
        Ok(Self { ebpf })
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
    pub fn program_mut(&mut self) -> &mut Xdp {
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
