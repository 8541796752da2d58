//! Facts about the host's network interfaces.

use std::ffi::CString;

use anyhow::{Result, bail};

/// The index of interface `name`.
pub fn index(name: &str) -> Result<u32> {
    let Ok(c_name) = CString::new(name) else {
        bail!("interface name {name:?} contains a NUL byte");
    };
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("interface {name} does not exist");
    }
    Ok(index)
}

/// Whether the kernel forwards IPv4 packets that arrive on `name`
/// (`net.ipv4.conf.<name>.forwarding`). The FIB lookup xlb uses to forward refuses to answer
/// for an interface that does not forward.
pub(crate) fn ipv4_forwarding(name: &str) -> Result<bool> {
    forwarding("ipv4", name)
}

/// Whether the kernel forwards IPv6 packets that arrive on `name`
/// (`net.ipv6.conf.<name>.forwarding`), which IPv6 services need likewise.
pub(crate) fn ipv6_forwarding(name: &str) -> Result<bool> {
    forwarding("ipv6", name)
}

fn forwarding(family: &str, name: &str) -> Result<bool> {
    let path = format!("/proc/sys/net/{family}/conf/{name}/forwarding");
    let value = std::fs::read_to_string(&path)
        .map_err(|error| anyhow::anyhow!("reading {path}: {error}"))?;
    Ok(value.trim() == "1")
}
