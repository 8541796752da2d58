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

/// The name of the interface with index `index`, if there is one.
pub fn name_of(index: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buffer.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
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

/// The MAC address of the interface with index `ifindex` (in this network namespace).
pub fn mac(ifindex: u32) -> Result<[u8; 6]> {
    let request = interface_ioctl(ifindex, libc::SIOCGIFHWADDR, "the MAC address")?;
    // SAFETY: SIOCGIFHWADDR filled the union's hardware address.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| address[i] as u8))
}

/// The MTU of the interface with index `ifindex` (in this network namespace: an ioctl, as
/// /sys may show another namespace's interfaces).
pub fn mtu(ifindex: u32) -> Result<u32> {
    let request = interface_ioctl(ifindex, libc::SIOCGIFMTU, "the MTU")?;
    // SAFETY: SIOCGIFMTU filled the union's MTU.
    Ok(unsafe { request.ifr_ifru.ifru_mtu } as u32)
}

/// An `ifreq` about interface `ifindex`, filled by ioctl `request` (`what` it reads, for the
/// error).
fn interface_ioctl(ifindex: u32, request: libc::c_ulong, what: &str) -> Result<libc::ifreq> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL-terminated, into `name`.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        bail!("interface {ifindex} does not exist");
    }
    // SAFETY: an ifreq is plain data, for which all zeroes is valid.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    ifreq.ifr_name = name;
    // SAFETY: a datagram socket, closed below; the ioctl reads the name and writes its answer
    // into `ifreq`.
    let (socket, result) = unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let result = libc::ioctl(socket, request, &mut ifreq);
        (socket, result)
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(socket) };
    if result != 0 {
        bail!("reading {what} of interface {ifindex}: {error}");
    }
    Ok(ifreq)
}
