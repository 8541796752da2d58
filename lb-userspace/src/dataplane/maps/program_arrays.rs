//! The program arrays of tail calls (`RERUN_XDP`/`RERUN_TC`, `ENCAP_XDP`/`ENCAP_TC`), filled
//! with the loaded programs they jump to.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, ProgramArray},
};

use super::take;

/// Takes the program array `map` out of the loaded object with the loaded program `program`
/// in slot 0 (a tail call's target).
pub(in crate::dataplane) fn program_array(
    ebpf: &mut Ebpf,
    map: &str,
    program: &str,
) -> Result<ProgramArray<MapData>> {
    let fd = ebpf
        .program(program)
        .with_context(|| format!("the object has no program {program}"))?
        .fd()?
        .try_clone()?;
    let mut array: ProgramArray<MapData> = take(ebpf, map)?;
    array
        .set(0, &fd, 0)
        .with_context(|| format!("writing {map}"))?;
    Ok(array)
}
