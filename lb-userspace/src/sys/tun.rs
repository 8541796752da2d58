//! TUN devices of xlb's own: layer 3, no packet information, not persistent (the kernel
//! removes one, with its addresses and routes, when its last descriptor closes, which is when
//! xlb exits, however it exits).

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
};

use anyhow::{Context as _, Result, bail};
use rtnetlink::{Handle, LinkUnspec};

use super::netif;

/// `TUNSETIFF`, `_IOW('T', 202, int)` (the libc crate does not define it).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Creates the TUN device `name` for `purpose` (named in errors), sets its MTU to `mtu` if
/// given and sets it up through `netlink`. Returns its descriptor (non-blocking) and interface
/// index. Fails if a device of that name exists and is in use (another xlb, most likely).
pub(crate) async fn create(
    name: &str,
    purpose: &str,
    mtu: Option<u32>,
    netlink: &Handle,
) -> Result<(File, u32)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (is the tun driver there?)")?;
    {
        // SAFETY: a zeroed `ifreq` is valid; the name is copied within its bounds (checked below,
        // leaving the NUL).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= request.ifr_name.len() {
            bail!("device name {name:?} is too long");
        }
        for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *to = from as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the `ifreq` we pass, which outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            let hint = if error.raw_os_error() == Some(libc::EBUSY) {
                " (it is in use: is another xlb running in this network namespace?)"
            } else {
                ""
            };
            bail!("creating the {purpose} device {name}: {error}{hint}");
        }
    }
    let ifindex = netif::index(name)?;
    let mut link = LinkUnspec::new_with_index(ifindex).up();
    if let Some(mtu) = mtu {
        link = link.mtu(mtu);
    }
    netlink
        .link()
        .set(link.build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up"))?;
    Ok((file, ifindex))
}
