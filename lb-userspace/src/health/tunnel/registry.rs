//! Which backend each check socket's packets go to: the relay reads a packet's local end (its
//! protocol, source address and port) and finds the tunnel hop the check registered for it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use lb_common::frame::locate_ip;

/// How long after its check ends a socket's packets still go to its backend: what the kernel
/// sends as the socket closes (a TCP check closes with a RST, a UDP check sends nothing), and
/// any retransmission of what it sent before.
const LINGER: Duration = Duration::from_secs(10);
/// How often released entries are looked for (at a registration, at most this often): a
/// registry of many checks is not walked at every one of them.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// How a check's packets reach its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TunnelHop {
    /// The outer header's destination: the backend's own address.
    pub backend: IpAddr,
    /// The outer header's source: this instance's tunnel source of that family.
    pub source: IpAddr,
    /// The outer header.
    pub encapsulation: Encapsulation,
}

/// The outer header of a check's packets, as the service's data packets have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Encapsulation {
    /// An outer IP header (IPv4 in IPv4, IPv6 in IPv6).
    Ipip,
    /// An outer IP and UDP header to the backends' GUE port.
    Gue {
        /// The UDP port the backends take GUE packets on.
        port: u16,
    },
}

/// A check socket's local end: its protocol number (TCP or UDP) and its address.
pub(crate) type LocalEnd = (u8, SocketAddr);

/// A registered socket's hop, and when its check released it.
struct Entry {
    hop: TunnelHop,
    released: Option<Instant>,
}

/// The hops of the check sockets open (and of those released less than [`LINGER`] ago, or
/// [`PURGE_EVERY`] more).
#[derive(Default)]
pub(crate) struct Registry {
    entries: Mutex<Entries>,
}

/// The registered ends, and when released ones were last purged.
#[derive(Default)]
struct Entries {
    by_end: HashMap<LocalEnd, Entry>,
    purged: Option<Instant>,
}

impl Registry {
    /// Sends the packets of the socket whose local end is `end` to `hop` until the returned
    /// registration is dropped, and [`LINGER`] after. A newer socket on the same end (the
    /// kernel gave the port again) takes it over.
    pub(crate) fn register(self: &Arc<Self>, end: LocalEnd, hop: TunnelHop) -> Registration {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.purged.is_none_or(|at| now - at >= PURGE_EVERY) {
            entries
                .by_end
                .retain(|_, entry| entry.released.is_none_or(|at| now - at < LINGER));
            entries.purged = Some(now);
        }
        entries.by_end.insert(
            end,
            Entry {
                hop,
                released: None,
            },
        );
        Registration {
            registry: Arc::clone(self),
            end,
            hop,
        }
    }

    /// The hop of the packets from `end`, if a check registered it.
    pub(crate) fn hop(&self, end: &LocalEnd) -> Option<TunnelHop> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.by_end.get(end).map(|entry| entry.hop)
    }

    /// How many ends are registered (released ones included until purged).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().by_end.len()
    }

    /// Marks `end` released (unless a newer socket took it over), as of `at`.
    fn release(&self, end: &LocalEnd, hop: TunnelHop, at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.by_end.get_mut(end)
            && entry.hop == hop
            && entry.released.is_none()
        {
            entry.released = Some(at);
        }
    }
}

/// A check socket's registration: its packets go to its hop while it is held.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    end: LocalEnd,
    hop: TunnelHop,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.release(&self.end, self.hop, Instant::now());
    }
}

/// The local end of an IP packet that a check socket sent (TCP or UDP, IPv4 or IPv6 without
/// extension headers); `None` for any other packet, or one cut short.
pub(crate) fn local_end(packet: &[u8]) -> Option<LocalEnd> {
    let parsed = locate_ip(packet)?;
    if !matches!(parsed.proto as i32, libc::IPPROTO_TCP | libc::IPPROTO_UDP) {
        return None;
    }
    let source = match <[u8; 16]>::try_from(parsed.src.as_slice()) {
        Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
        Err(_) => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(parsed.src.as_slice()).ok()?,
        )),
    };
    let port = packet.get(parsed.l4..parsed.l4 + 2)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    Some((parsed.proto, SocketAddr::new(source, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = libc::IPPROTO_TCP as u8;

    fn hop(backend: &str) -> TunnelHop {
        TunnelHop {
            backend: backend.parse().unwrap(),
            source: "198.18.5.2".parse().unwrap(),
            encapsulation: Encapsulation::Ipip,
        }
    }

    fn end(address: &str) -> LocalEnd {
        (TCP, address.parse().unwrap())
    }

    #[test]
    fn a_registered_end_finds_its_hop_until_released_and_lingers_after() {
        let registry = Arc::new(Registry::default());
        let registration = registry.register(end("198.18.5.2:40000"), hop("198.18.1.11"));
        assert_eq!(
            registry.hop(&end("198.18.5.2:40000")),
            Some(hop("198.18.1.11"))
        );
        assert_eq!(registry.hop(&end("198.18.5.2:40001")), None);
        assert_eq!(
            registry.hop(&(17, "198.18.5.2:40000".parse().unwrap())),
            None
        );
        drop(registration);
        // Released: its FIN and last ACK still go.
        assert_eq!(
            registry.hop(&end("198.18.5.2:40000")),
            Some(hop("198.18.1.11"))
        );
        let at = Instant::now() - LINGER - Duration::from_secs(1);
        {
            let mut entries = registry.entries.lock().unwrap();
            let entry = entries.by_end.get_mut(&end("198.18.5.2:40000")).unwrap();
            entry.released = Some(at);
            entries.purged = Some(at);
        }
        // The next registration purges what lingered long enough.
        let _other = registry.register(end("198.18.5.2:40001"), hop("198.18.1.12"));
        assert_eq!(registry.hop(&end("198.18.5.2:40000")), None);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn a_newer_socket_on_the_same_end_takes_it_over() {
        let registry = Arc::new(Registry::default());
        let old = registry.register(end("[fd00:5::2]:40000"), hop("fd00:1::11"));
        let new = registry.register(end("[fd00:5::2]:40000"), hop("fd00:1::12"));
        // The old check's release does not touch the new one's entry.
        drop(old);
        assert_eq!(
            registry.hop(&end("[fd00:5::2]:40000")),
            Some(hop("fd00:1::12"))
        );
        assert!(
            registry.entries.lock().unwrap().by_end[&end("[fd00:5::2]:40000")]
                .released
                .is_none()
        );
        drop(new);
        assert!(
            registry.entries.lock().unwrap().by_end[&end("[fd00:5::2]:40000")]
                .released
                .is_some()
        );
    }

    #[test]
    fn the_local_end_of_tcp_and_udp_packets_of_both_families() {
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[9] = TCP;
        v4[12..16].copy_from_slice(&[198, 18, 5, 2]);
        v4[2..4].copy_from_slice(&28u16.to_be_bytes());
        v4[20..22].copy_from_slice(&40000u16.to_be_bytes());
        assert_eq!(local_end(&v4), Some(end("198.18.5.2:40000")));
        // IPv4 with options: the port is after them.
        let mut options = v4.clone();
        options[0] = 0x46;
        options[2..4].copy_from_slice(&32u16.to_be_bytes());
        options.splice(20..20, [1, 1, 1, 1]);
        assert_eq!(local_end(&options), Some(end("198.18.5.2:40000")));
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        v6[6] = 17;
        v6[8..24].copy_from_slice(&"fd00:5::2".parse::<Ipv6Addr>().unwrap().octets());
        v6[40..42].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(
            local_end(&v6),
            Some((17, "[fd00:5::2]:53".parse().unwrap()))
        );
        // Not TCP or UDP (ICMPv6, such as the device's own router solicitations), cut short,
        // or not IP at all: no end.
        let mut icmp = v6.clone();
        icmp[6] = 58;
        assert_eq!(local_end(&icmp), None);
        assert_eq!(local_end(&v4[..21]), None);
        assert_eq!(local_end(&v6[..30]), None);
        assert_eq!(local_end(&[]), None);
        assert_eq!(local_end(&[0x10; 40]), None);
    }
}
