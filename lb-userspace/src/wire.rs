//! Conversions between socket addresses and the wire-format fields of the map keys and values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{Addr, BackendEntry, ServiceKey, VipKey, consts::family};

use crate::config::Protocol;

/// A map address field: IPv4 in the first 4 bytes, IPv6 in all 16, in wire order.
pub fn addr_field(ip: IpAddr) -> Addr {
    let mut bytes = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    std::array::from_fn(|i| {
        u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    })
}

/// The 16 wire-order bytes of a map address field.
pub(crate) fn addr_bytes(field: &Addr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, word) in field.iter().enumerate() {
        bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// The address family code of `ip`.
pub fn family_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => family::IPV4,
        IpAddr::V6(_) => family::IPV6,
    }
}

/// The IP address held in a map address field of the given family.
pub fn ip_from_field(field: &Addr, family_code: u8) -> IpAddr {
    let bytes = addr_bytes(field);
    if family_code == family::IPV6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// A port as stored in maps: network byte order.
pub fn port_field(port: u16) -> u16 {
    port.to_be()
}

/// The `SERVICES` key of a service.
pub(crate) fn service_key(listen: SocketAddr, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        addr: addr_field(listen.ip()),
        port: port_field(listen.port()),
        proto: protocol.number(),
        family: family_of(listen.ip()),
    }
}

/// The `VIPS` key of an address.
pub(crate) fn vip_key(ip: IpAddr) -> VipKey {
    VipKey {
        addr: addr_field(ip),
        family: family_of(ip),
        _pad: [0; 3],
    }
}

/// The `BACKENDS` entry of a backend of service `service_id`.
pub fn backend_entry(address: SocketAddr, service_id: u32, pool: u32) -> BackendEntry {
    BackendEntry {
        addr: addr_field(address.ip()),
        port: port_field(address.port()),
        family: family_of(address.ip()),
        in_use: 1,
        service_id,
        pool,
        flags: 0,
    }
}

/// The address of a `BACKENDS` entry.
pub(crate) fn backend_address(entry: &BackendEntry) -> SocketAddr {
    SocketAddr::new(
        ip_from_field(&entry.addr, entry.family),
        u16::from_be(entry.port),
    )
}

/// The VIP, port and protocol of a `SERVICES` key (`None` for an unknown protocol).
pub(crate) fn service_of_key(key: &ServiceKey) -> Option<(SocketAddr, Protocol)> {
    let protocol = match key.proto {
        lb_common::consts::proto::TCP => Protocol::Tcp,
        lb_common::consts::proto::UDP => Protocol::Udp,
        _ => return None,
    };
    Some((
        SocketAddr::new(ip_from_field(&key.addr, key.family), u16::from_be(key.port)),
        protocol,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_in_network_order() {
        let key = service_key("198.18.100.1:80".parse().unwrap(), Protocol::Udp);
        assert_eq!(addr_bytes(&key.addr)[..4], [198, 18, 100, 1]);
        assert_eq!(addr_bytes(&key.addr)[4..], [0; 12]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.proto, 17);
        assert_eq!(key.family, family::IPV4);

        let entry = backend_entry("[fd00::1]:8080".parse().unwrap(), 7, 2);
        assert_eq!(entry.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(entry.family, family::IPV6);
        assert_eq!(
            ip_from_field(&entry.addr, entry.family),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!((entry.in_use, entry.service_id, entry.pool), (1, 7, 2));
        assert_eq!(backend_address(&entry), "[fd00::1]:8080".parse().unwrap());
        assert_eq!(
            service_of_key(&key),
            Some(("198.18.100.1:80".parse().unwrap(), Protocol::Udp))
        );
    }
}
