//! The programs' objects, built from `lb-ebpf` by build.rs and embedded in the binary.

use anyhow::{Result, bail};

/// The balancer's object (its XDP and tc programs).
static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// `xlb decap`'s object (see `DecapProgram`).
static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// The reference program's object (see `NoopProgram`).
static NOOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-noop"));

/// The balancer's object, or an error that says how to get it.
pub(super) fn balancer() -> Result<&'static [u8]> {
    ensure_built(BALANCER)
}

/// The reference programs' object, or an error that says how to get it.
pub(super) fn noop() -> Result<&'static [u8]> {
    ensure_built(NOOP)
}

/// `xlb decap`'s object, or an error that says how to get it.
pub(super) fn decap() -> Result<&'static [u8]> {
    ensure_built(DECAP)
}

/// An empty object means bpf-linker was missing when xlb was built.
fn ensure_built(object: &'static [u8]) -> Result<&'static [u8]> {
    if object.is_empty() {
        bail!(
            "this xlb was built without its XDP programs because bpf-linker was missing; \
             run `cargo xtask setup` and build again"
        );
    }
    Ok(object)
}
