//! The announcement device: a TUN device of xlb's own whose addresses are the VIPs being
//! announced. Not persistent: the kernel removes it (and so its addresses, and BIRD's routes)
//! when the last descriptor closes, which is when xlb exits, however it exits. Nothing is
//! ever read from it or written to it.

use std::{fs::File, net::IpAddr};

use anyhow::{Context as _, Result, anyhow};
use futures_util::TryStreamExt as _;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;

use crate::sys::tun;

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
    /// Creates the TUN device `name` and sets it up. Fails if a device of that name exists
    /// and is in use (another xlb, most likely).
    pub(super) async fn create(name: &str) -> Result<Self> {
        let (connection, netlink, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let (file, ifindex) = tun::create(name, "announcement", None, &netlink).await?;
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
