//! Health checks inside the tunnel (`health.via = "tunnel"`): a check connects to the VIP
//! from this instance's tunnel source, as a client would, and its packets reach the backend
//! inside the outer header the service's packets have. A backend that does not take them out
//! of the tunnel, or does not hold the VIP, fails its checks; its answers come back directly,
//! as its answers to clients do.
//!
//! The check sockets are marked; policy routing ([`routing`]) sends their packets into a TUN
//! device of xlb's own, `xlb-check`, which the relay ([`relay`]) reads, and which backend each
//! packet goes to is what its socket registered ([`registry`]). The kernel keeps the
//! sockets' TCP and UDP as for any other check.

mod registry;
mod relay;
mod routing;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use rtnetlink::Handle;
use socket2::SockRef;
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpSocket, TcpStream, UdpSocket},
    sync::OnceCell,
    task::JoinHandle,
};
use tracing::{info, warn};

use self::registry::Registry;
pub(crate) use self::registry::{Encapsulation, Registration, TunnelHop};
use crate::sys::tun;

/// The check device's name.
const DEVICE: &str = "xlb-check";
/// The check device's MTU: IPv6's minimum (a device with less has no IPv6). A check's packets
/// are small; with an outer header, a full one still fits a link of MTU 1500.
const DEVICE_MTU: u32 = 1280;

/// The check device, its routing and its relay, opened by the first check that needs them and
/// shared by every checker (cheap to clone).
#[derive(Clone, Default)]
pub(crate) struct CheckTunnel {
    opened: Arc<OnceCell<Opened>>,
}

/// What an opened check tunnel holds; the device closes with the relay.
struct Opened {
    registry: Arc<Registry>,
    relay: JoinHandle<()>,
    netlink: Handle,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

impl CheckTunnel {
    /// A TCP connection to `target` (the VIP) inside the tunnel of `hop`, and the registration
    /// that keeps its packets going there: hold it as long as the connection.
    pub(crate) async fn connect(
        &self,
        target: SocketAddr,
        hop: TunnelHop,
    ) -> io::Result<(TcpStream, Registration)> {
        let registry = self.registry(target.ip()).await?;
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        let options = SockRef::from(&socket);
        options.set_mark(routing::MARK)?;
        // Closed with a RST, as HAProxy closes its checks: no TIME_WAIT holds the port (every
        // check of a service goes to the same VIP and port, from the same address), and the
        // backend is left with nothing to close.
        options.set_linger(Some(std::time::Duration::ZERO))?;
        socket.bind(SocketAddr::new(hop.source, 0))?;
        let end = (libc::IPPROTO_TCP as u8, socket.local_addr()?);
        let registration = registry.register(end, hop);
        Ok((socket.connect(target).await?, registration))
    }

    /// A UDP socket connected to `target` (the VIP) inside the tunnel of `hop`, and its
    /// registration (see [`Self::connect`]).
    pub(crate) async fn udp(
        &self,
        target: SocketAddr,
        hop: TunnelHop,
    ) -> io::Result<(UdpSocket, Registration)> {
        let registry = self.registry(target.ip()).await?;
        let socket = UdpSocket::bind(SocketAddr::new(hop.source, 0)).await?;
        SockRef::from(&socket).set_mark(routing::MARK)?;
        let end = (libc::IPPROTO_UDP as u8, socket.local_addr()?);
        let registration = registry.register(end, hop);
        socket.connect(target).await?;
        Ok((socket, registration))
    }

    /// Removes the routing rules, if the tunnel was opened (the device and its routes go when
    /// xlb exits).
    pub(crate) async fn close(&self) {
        if let Some(opened) = self.opened.get() {
            opened.relay.abort();
            if let Err(error) = routing::remove(&opened.netlink).await {
                warn!("removing the check sockets' routing rules: {error:#}");
            }
        }
    }

    /// The registry of the opened tunnel (opening it first if need be), for a check to `vip`,
    /// which must not be an address of this host: the host's packets to its own addresses
    /// never leave it.
    async fn registry(&self, vip: IpAddr) -> io::Result<Arc<Registry>> {
        if std::net::UdpSocket::bind(SocketAddr::new(vip, 0)).is_ok() {
            return Err(io::Error::other(format!(
                "{vip} is an address of this host: a check inside the tunnel cannot leave it"
            )));
        }
        let opened = self
            .opened
            .get_or_try_init(open)
            .await
            .map_err(|error| io::Error::other(format!("{error:#}")))?;
        Ok(Arc::clone(&opened.registry))
    }
}

/// Creates the check device, routes the marked sockets into it and starts the relay.
async fn open() -> Result<Opened> {
    let (connection, netlink, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let (file, ifindex) = tun::create(DEVICE, "check", Some(DEVICE_MTU), &netlink).await?;
    routing::install(&netlink, ifindex)
        .await
        .context("routing the checks into the tunnel")?;
    let registry = Arc::new(Registry::default());
    // SAFETY: the `File` owns its descriptor, which stays open and the same for as long as
    // the `AsyncFd` holds it (nothing else reaches the `File`).
    let device = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }
        .map_err(|error| error.into_parts().1)
        .context("watching the check device")?;
    let relay = tokio::spawn(relay::relay(device, Arc::clone(&registry)));
    info!("checks inside the tunnel go through {DEVICE}");
    Ok(Opened {
        registry,
        relay,
        netlink,
    })
}
