//! The test and demo network: a client, a balancer and backends, each in its own namespace,
//! wired with veth pairs and a bridge. All addresses are from 198.18.0.0/15 and exist only
//! inside these namespaces; the root namespace gets no address, route or link.
//!
//! ```text
//!  TwoInterfaces                                   OneInterface
//!
//!  client 198.18.0.2                               client 198.18.0.2 ─┐
//!    │                                                                 │
//!  eth0 198.18.0.1  balancer                       balancer eth0 ─────┤ switch (br0)
//!  eth1 198.18.1.1     │                            198.18.0.1         │
//!                  switch (br0)                     198.18.1.1         │
//!                 ╱    │    ╲                                  backends┘ 198.18.1.11, .12, ...
//!  backends 198.18.1.11, .12, .13
//! ```
//!
//! Every host is dual-stack: the IPv6 addresses mirror the IPv4 ones (client fd00::2, balancer
//! fd00::1 and fd00:1::1, backends fd00:1::11, ...; VIP fd00:100::1), from fd00::/8.
//!
//! `BehindRouter` is `TwoInterfaces` with a router between the client and the balancer, whose
//! link to the client has a smaller MTU (1280) than every other link: the client is
//! 198.18.2.2 (fd00:2::2) behind router 198.18.2.1 / 198.18.0.2 (fd00:2::1 / fd00::2).
//!
//! Clients reach the VIP through the balancer; backends use the balancer as their default
//! gateway, so replies come back through it.
//!
//! Offloads ([`Offloads`]): by default every veth keeps the kernel's defaults (transmit
//! checksum offload and TSO on), with GRO turned on after the links came up, as on a container
//! host; xlb must be correct there as it is (`auto` chooses tc). The prepared variants turn
//! transmit checksum offload off on every sender, so packets carry complete checksums, which
//! XDP needs: with GRO on before the links come up (which gives each veth the NAPI instance
//! that XDP_TX and XDP_REDIRECT need on the receiving end) for native XDP, or with GRO off for
//! generic XDP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context as _, Result};

use crate::netns::Netns;

/// The virtual IP of test services.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The virtual IPv6 address of test services.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
/// The MTU of the client's link in the `BehindRouter` wiring.
pub const NARROW_MTU: u32 = 1280;
/// The client's address (without a router).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The address of backend `index` (0-based): 198.18.1.11, .12, ...
pub fn backend_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 11 + index as u8)
}

/// The IPv6 address of backend `index` (0-based): fd00:1::11, ::12, ...
pub fn backend_addr6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11 + index as u16)
}

/// How the veth links' offloads are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// The kernel's defaults (transmit checksum offload, TSO on), GRO turned on after the
    /// links came up: what a container host has.
    Default,
    /// Prepared for native XDP: transmit checksum offload off, GRO on before the links come
    /// up (tests also attach an XDP program to the balancer's peers).
    Prepared,
    /// Prepared for generic XDP: transmit checksum offload off, GRO off.
    PreparedNoGro,
}

/// How the balancer is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// Clients and backends reach the balancer through one interface (one-arm).
    OneInterface,
    /// Clients on one interface, backends on another.
    TwoInterfaces,
    /// As `TwoInterfaces`, with a router and a narrower link between client and balancer.
    BehindRouter,
    /// Backends on another network, two routed hops from the balancer (layer-3 DSR): see
    /// [`Lab::wire_tunneled`].
    Tunneled,
}

/// A built topology. Dropping it deletes every namespace.
pub struct Lab {
    /// The client host.
    pub client: Netns,
    /// The balancer host.
    pub balancer: Netns,
    /// The backend hosts, in order.
    pub backends: Vec<Netns>,
    /// The switch (a bridge) between them.
    pub switch: Netns,
    /// The router between client and balancer (`BehindRouter`), or the clients' router
    /// (`Tunneled`).
    pub router: Option<Netns>,
    /// The backends' router (`Tunneled` only).
    pub far_router: Option<Netns>,
    /// The balancer's interfaces, for its config.
    pub balancer_interfaces: Vec<String>,
    /// How the links' offloads are set.
    pub offloads: Offloads,
    wiring: Wiring,
}

impl Lab {
    /// Builds the topology with `backends` backend hosts, offloads at their defaults.
    pub fn new(wiring: Wiring, backends: usize) -> Result<Self> {
        Self::with_offloads(wiring, backends, Offloads::Default)
    }

    /// Builds the topology with `backends` backend hosts and the links' offloads set as
    /// `offloads` says.
    pub fn with_offloads(wiring: Wiring, backends: usize, offloads: Offloads) -> Result<Self> {
        let lab = Self {
            client: Netns::new("client")?,
            balancer: Netns::new("lb")?,
            switch: Netns::new("sw")?,
            router: match wiring {
                Wiring::BehindRouter | Wiring::Tunneled => Some(Netns::new("rt")?),
                _ => None,
            },
            far_router: match wiring {
                Wiring::Tunneled => Some(Netns::new("rt2")?),
                _ => None,
            },
            backends: (0..backends)
                .map(|i| Netns::new(&format!("b{}", i + 1)))
                .collect::<Result<_>>()?,
            balancer_interfaces: match wiring {
                Wiring::OneInterface | Wiring::Tunneled => vec!["eth0".into()],
                Wiring::TwoInterfaces | Wiring::BehindRouter => {
                    vec!["eth0".into(), "eth1".into()]
                }
            },
            offloads,
            wiring,
        };
        lab.wire(wiring).context("building the test network")?;
        Ok(lab)
    }

    fn wire(&self, wiring: Wiring) -> Result<()> {
        let (client, lb, sw) = (&self.client, &self.balancer, &self.switch);
        sw.ip("link add name br0 type bridge")?;
        sw.ip("link set dev br0 up")?;
        if wiring == Wiring::Tunneled {
            return self.wire_tunneled();
        }

        // The balancer's client side: the client itself, or the router.
        let near = self.router.as_ref().unwrap_or(client);
        match wiring {
            Wiring::TwoInterfaces | Wiring::BehindRouter => {
                self.veth(near, "eth0", lb, "eth0")?;
                self.veth(lb, "eth1", sw, "lb")?;
                sw.ip("link set dev lb master br0")?;
                add_addr(lb, "eth0", "198.18.0.1/24", "fd00::1/64")?;
                add_addr(lb, "eth1", "198.18.1.1/24", "fd00:1::1/64")?;
            }
            Wiring::Tunneled => unreachable!("wired by wire_tunneled"),
            Wiring::OneInterface => {
                self.veth(near, "eth0", sw, "client")?;
                self.veth(lb, "eth0", sw, "lb")?;
                sw.ip("link set dev client master br0")?;
                sw.ip("link set dev lb master br0")?;
                add_addr(lb, "eth0", "198.18.0.1/24", "fd00::1/64")?;
                add_addr(lb, "eth0", "198.18.1.1/24", "fd00:1::1/64")?;
            }
        }
        add_addr(near, "eth0", "198.18.0.2/24", "fd00::2/64")?;
        if let Some(router) = &self.router {
            self.veth(client, "eth0", router, "eth1")?;
            // Only the router's side is narrow: the client advertises its full MSS, so the
            // backends send full-size segments that the router must refuse.
            router.ip(&format!("link set dev eth1 mtu {NARROW_MTU}"))?;
            add_addr(router, "eth1", "198.18.2.1/24", "fd00:2::1/64")?;
            add_addr(client, "eth0", "198.18.2.2/24", "fd00:2::2/64")?;
            client.ip("route add default via 198.18.2.1")?;
            client.ip("-6 route add default via fd00:2::1")?;
            router.ip("route add default via 198.18.0.1")?;
            router.ip("-6 route add default via fd00::1")?;
            router.sysctl("net.ipv4.conf.all.forwarding", "1")?;
            router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            lb.ip("route add 198.18.2.0/24 via 198.18.0.2")?;
            lb.ip("-6 route add fd00:2::/64 via fd00::2")?;
        } else {
            client.ip("route add default via 198.18.0.1")?;
            client.ip("-6 route add default via fd00::1")?;
        }

        self.wire_backends()?;
        for backend in &self.backends {
            backend.sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
            backend.sysctl("net.ipv6.conf.all.accept_redirects", "0")?;
        }

        lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // The kernel forwards only what XDP passes to it; it must not tell hosts to bypass us.
        lb.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        for name in &self.balancer_interfaces {
            lb.sysctl(&format!("net.ipv4.conf.{name}.send_redirects"), "0")?;
        }
        Ok(())
    }

    /// The far ends of the balancer's links: (host, interface). XDP_TX on a veth reaches the
    /// peer promptly only if the peer runs an XDP program, so tests attach one there.
    pub fn balancer_peers(&self) -> Vec<(&Netns, &'static str)> {
        match self.wiring {
            Wiring::OneInterface => vec![(&self.switch, "lb")],
            Wiring::TwoInterfaces => vec![(&self.client, "eth0"), (&self.switch, "lb")],
            Wiring::BehindRouter => vec![
                (self.router.as_ref().expect("a router"), "eth0"),
                (&self.switch, "lb"),
            ],
            Wiring::Tunneled => vec![(self.router.as_ref().expect("a router"), "lb")],
        }
    }

    /// The address of a backend server on `port`.
    pub fn backend_endpoint(&self, index: usize, port: u16) -> SocketAddr {
        SocketAddr::new(backend_addr(index).into(), port)
    }

    /// The IPv6 address of a backend server on `port`.
    pub fn backend_endpoint6(&self, index: usize, port: u16) -> SocketAddr {
        SocketAddr::new(backend_addr6(index).into(), port)
    }
}

impl Lab {
    /// The backends on the switch, each with its addresses and a default route via
    /// 198.18.1.1 and fd00:1::1 (the balancer, or the backends' router).
    fn wire_backends(&self) -> Result<()> {
        for (i, backend) in self.backends.iter().enumerate() {
            let port = format!("b{}", i + 1);
            self.veth(backend, "eth0", &self.switch, &port)?;
            self.switch.ip(&format!("link set dev {port} master br0"))?;
            add_addr(
                backend,
                "eth0",
                &format!("{}/24", backend_addr(i)),
                &format!("{}/64", backend_addr6(i)),
            )?;
            backend.ip("route add default via 198.18.1.1")?;
            backend.ip("-6 route add default via fd00:1::1")?;
        }
        Ok(())
    }

    /// `Tunneled`: the clients' router (`router`) routes the VIPs to a one-armed balancer and
    /// the backends' network to the backends' router (`far_router`); the backends, on a
    /// switch behind that router, answer the client directly through both routers. Neither
    /// router filters by reverse path (a DSR backend's answer comes from the VIP by another
    /// way than the VIP's route).
    ///
    /// ```text
    ///  client 198.18.0.2 ── rt 198.18.0.1 ── lb 198.18.5.2 (eth0; its tunnels' source)
    ///                        │ 198.18.6.1
    ///                       rt2 198.18.6.2 / 198.18.1.1 ── switch ── backends 198.18.1.11, ...
    /// ```
    ///
    /// IPv6 mirrors it: client fd00::2, rt fd00::1 / fd00:5::1 / fd00:6::1, lb fd00:5::2,
    /// rt2 fd00:6::2 / fd00:1::1, backends fd00:1::11, ...
    fn wire_tunneled(&self) -> Result<()> {
        let (client, lb, sw) = (&self.client, &self.balancer, &self.switch);
        let near = self.router.as_ref().expect("a router");
        let far = self.far_router.as_ref().expect("a far router");
        self.veth(client, "eth0", near, "eth0")?;
        self.veth(near, "lb", lb, "eth0")?;
        self.veth(near, "far", far, "eth0")?;
        self.veth(far, "eth1", sw, "rt2")?;
        sw.ip("link set dev rt2 master br0")?;
        add_addr(client, "eth0", "198.18.0.2/24", "fd00::2/64")?;
        add_addr(near, "eth0", "198.18.0.1/24", "fd00::1/64")?;
        add_addr(near, "lb", "198.18.5.1/24", "fd00:5::1/64")?;
        add_addr(lb, "eth0", "198.18.5.2/24", "fd00:5::2/64")?;
        add_addr(near, "far", "198.18.6.1/24", "fd00:6::1/64")?;
        add_addr(far, "eth0", "198.18.6.2/24", "fd00:6::2/64")?;
        add_addr(far, "eth1", "198.18.1.1/24", "fd00:1::1/64")?;
        client.ip("route add default via 198.18.0.1")?;
        client.ip("-6 route add default via fd00::1")?;
        near.ip(&format!("route add {VIP}/32 via 198.18.5.2"))?;
        near.ip(&format!("-6 route add {VIP6}/128 via fd00:5::2"))?;
        near.ip("route add 198.18.1.0/24 via 198.18.6.2")?;
        near.ip("-6 route add fd00:1::/64 via fd00:6::2")?;
        lb.ip("route add default via 198.18.5.1")?;
        lb.ip("-6 route add default via fd00:5::1")?;
        far.ip("route add default via 198.18.6.1")?;
        far.ip("-6 route add default via fd00:6::1")?;
        for router in [near, far] {
            router.sysctl("net.ipv4.conf.all.forwarding", "1")?;
            router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            router.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            router.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        for name in ["eth0", "lb", "far"] {
            near.sysctl(&format!("net.ipv4.conf.{name}.rp_filter"), "0")?;
        }
        self.wire_backends()?;
        lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(())
    }
}

/// Adds an IPv4 and an IPv6 address to `interface` (IPv6 without duplicate address
/// detection, so the address is usable at once).
fn add_addr(ns: &Netns, interface: &str, v4: &str, v6: &str) -> Result<()> {
    ns.ip(&format!("addr add {v4} dev {interface}"))?;
    ns.ip(&format!("-6 addr add {v6} dev {interface} nodad"))?;
    Ok(())
}

impl Lab {
    /// A veth pair between two of the lab's hosts, with the lab's offloads (see [`veth`]).
    fn veth(&self, a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
        veth(a, a_name, b, b_name, self.offloads)
    }
}

/// A veth pair with one end in each namespace, both up, with the offloads set as
/// [`Offloads`] says.
///
/// For native XDP the order matters: a veth accepts XDP_REDIRECTed frames only if its peer
/// had GRO (or an XDP program) when the veth came up, because the kernel computes its
/// `ndo_xdp_xmit` capability then. So both ends get their offloads before either comes up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str, offloads: Offloads) -> Result<()> {
    a.ip(&format!(
        "link add name {a_name} type veth peer name {b_name} netns {}",
        b.name()
    ))?;
    let before_up: &[&str] = match offloads {
        Offloads::Default => &[],
        Offloads::Prepared => &["tx", "off", "gro", "on"],
        Offloads::PreparedNoGro => &["tx", "off", "gro", "off"],
    };
    for (ns, name) in [(a, a_name), (b, b_name)] {
        if !before_up.is_empty() {
            ns.exec("ethtool", &[&["-K", name][..], before_up].concat())?;
        }
    }
    for (ns, name) in [(a, a_name), (b, b_name)] {
        ns.ip(&format!("link set dev {name} up"))?;
    }
    if offloads == Offloads::Default {
        for (ns, name) in [(a, a_name), (b, b_name)] {
            ns.exec("ethtool", &["-K", name, "gro", "on"])?;
        }
    }
    Ok(())
}
