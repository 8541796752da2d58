//! The relay: reads what the check sockets send into the check device and sends each packet
//! to its backend inside an outer header, as the data plane sends the service's packets. The
//! kernel writes the outer header: an IPIP packet leaves through a raw socket of protocol 4
//! (IPv4) or 41 (IPv6), a GUE packet through a UDP socket to the backends' GUE port (variant 1:
//! the inner packet right after the UDP header).

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use super::registry::{Encapsulation, Registry, TunnelHop, local_end};

/// Largest packet read from the device (its MTU is smaller).
const MAX_PACKET: usize = 65_535;

/// Relays the packets read from `device` (non-blocking) until the task is aborted or the
/// device fails.
pub(super) async fn relay(device: AsyncFd<File>, registry: Arc<Registry>) {
    let mut senders = Senders::default();
    let mut packet = vec![0u8; MAX_PACKET];
    loop {
        let read = match device.readable().await {
            Ok(mut ready) => match ready.try_io(|device| device.get_ref().read(&mut packet)) {
                Ok(read) => read,
                Err(_would_block) => continue,
            },
            Err(error) => Err(error),
        };
        let len = match read {
            Ok(len) => len,
            Err(error) => {
                warn!("the check device failed, checks inside the tunnel stop: {error}");
                return;
            }
        };
        let packet = &packet[..len];
        // Packets of no check (the device's own IPv6 router solicitations) are dropped.
        let Some(hop) = local_end(packet).and_then(|end| registry.hop(&end)) else {
            continue;
        };
        if let Err(error) = senders.send(&hop, packet) {
            // As a lost packet: TCP sends it again, and a check that gets no answer fails.
            debug!("a check's packet to {} was not sent: {error}", hop.backend);
        }
    }
}

/// The sockets that send the outer headers, one per source address and encapsulation.
#[derive(Default)]
struct Senders(HashMap<(IpAddr, Encapsulation), Socket>);

impl Senders {
    /// Sends `packet` to `hop`.
    fn send(&mut self, hop: &TunnelHop, packet: &[u8]) -> io::Result<()> {
        let key = (hop.source, hop.encapsulation);
        let socket = match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(socket) => socket.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(sender(hop.source, hop.encapsulation)?)
            }
        };
        let port = match hop.encapsulation {
            Encapsulation::Ipip => 0,
            Encapsulation::Gue { port } => port,
        };
        socket.send_to(packet, &SocketAddr::new(hop.backend, port).into())?;
        Ok(())
    }
}

/// A non-blocking socket that sends packets from `source` inside `encapsulation`.
fn sender(source: IpAddr, encapsulation: Encapsulation) -> io::Result<Socket> {
    let domain = Domain::for_address(SocketAddr::new(source, 0));
    let socket = match (encapsulation, source) {
        (Encapsulation::Ipip, IpAddr::V4(_)) => {
            Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_IPIP)))?
        }
        (Encapsulation::Ipip, IpAddr::V6(_)) => {
            Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_IPV6)))?
        }
        (Encapsulation::Gue { .. }, _) => Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
    };
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nonblocking(true)?;
    // Nothing is read from these sockets: a raw socket would keep copies of the host's own
    // tunnel packets, if it had any.
    socket.set_recv_buffer_size(0)?;
    Ok(socket)
}
