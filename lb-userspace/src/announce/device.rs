//! The announcement device: a TUN device of xlb's own whose addresses are the VIPs being
//! announced. Not persistent: the kernel removes it (and so its addresses, and BIRD's routes)
//! when the last descriptor closes, which is when xlb exits, however it exits. Nothing is
//! ever read from it or written to it.

use std::{
    fs::{File, OpenOptions},
    net::IpAddr,
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::TryStreamExt as _;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::{Handle, LinkUnspec};

use crate::sys::netif;

/// `TUNSETIFF`, `_IOW('T', 202, int)` (the libc crate does not define it).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// The device, held open.
pub(super) struct VipDevice {
    /// Keeps the device alive.
    _file: File,
    /// Its name.
    pub name: String,
    /// Its interface index.
    pub ifindex: u32,
    netlink: Handle,
}

impl VipDevice {
    /// Creates the TUN device `name` (IFF_TUN, no packet information) and sets it up. Fails
    /// if a device of that name exists and is in use (another xlb, most likely).
    pub(super) async fn create(name: &str) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun (is the tun driver there?)")?;
        // SAFETY: a zeroed `ifreq` is valid; the name is copied within its bounds (the
        // config allows at most 15 bytes, leaving the NUL).
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
                " (it is in use: is another xlb announcing from it?)"
            } else {
                ""
            };
            bail!("creating the announcement device {name}: {error}{hint}");
        }
        let ifindex = netif::index(name)?;
        let (connection, netlink, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        netlink
            .link()
            .set(LinkUnspec::new_with_index(ifindex).up().build())
            .execute()
            .await
            .with_context(|| format!("setting {name} up"))?;
        Ok(Self {
            _file: file,
            name: name.to_owned(),
            ifindex,
            netlink,
        })
    }

    /// Adds `vip` (a host route: /32 or /128); already there is fine.
    pub(super) async fn add(&self, vip: IpAddr) -> Result<()> {
        let len = if vip.is_ipv4() { 32 } else { 128 };
        match self
            .netlink
            .address()
            .add(self.ifindex, vip, len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(anyhow!("adding {vip} to {}: {e}", self.name)),
        }
    }

    /// Removes `vip`; not there is fine.
    pub(super) async fn remove(&self, vip: IpAddr) -> Result<()> {
        let mut addresses = self
            .netlink
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .execute();
        while let Some(message) = addresses.try_next().await? {
            let matches = message
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == vip));
            if matches {
                self.netlink
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .with_context(|| format!("removing {vip} from {}", self.name))?;
            }
        }
        Ok(())
    }
}
