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
//! Clients reach the VIP through the balancer; backends use the balancer as their default
//! gateway, so replies come back through it. Offloads: transmit checksum offload is off on
//! every sender (an XDP program sees frames, and a partial checksum would be rewritten as if
//! it were complete), and GRO is on, which gives each veth the NAPI instance that XDP_TX and
//! XDP_REDIRECT need on the receiving end.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context as _, Result};

use crate::netns::Netns;

/// The virtual IP of test services.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The balancer's address on the client side.
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The balancer's address on the backend side.
pub const LB_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// The address of backend `index` (0-based): 198.18.1.11, .12, ...
pub fn backend_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 11 + index as u8)
}

/// How the balancer is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// Clients and backends reach the balancer through one interface (one-arm).
    OneInterface,
    /// Clients on one interface, backends on another.
    TwoInterfaces,
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
    /// The balancer's interfaces, for its config.
    pub balancer_interfaces: Vec<String>,
    wiring: Wiring,
}

impl Lab {
    /// Builds the topology with `backends` backend hosts.
    pub fn new(wiring: Wiring, backends: usize) -> Result<Self> {
        let lab = Self {
            client: Netns::new("client")?,
            balancer: Netns::new("lb")?,
            switch: Netns::new("sw")?,
            backends: (0..backends)
                .map(|i| Netns::new(&format!("b{}", i + 1)))
                .collect::<Result<_>>()?,
            balancer_interfaces: match wiring {
                Wiring::OneInterface => vec!["eth0".into()],
                Wiring::TwoInterfaces => vec!["eth0".into(), "eth1".into()],
            },
            wiring,
        };
        lab.wire(wiring).context("building the test network")?;
        Ok(lab)
    }

    fn wire(&self, wiring: Wiring) -> Result<()> {
        let (client, lb, sw) = (&self.client, &self.balancer, &self.switch);
        sw.ip("link add name br0 type bridge")?;
        sw.ip("link set dev br0 up")?;

        match wiring {
            Wiring::TwoInterfaces => {
                veth(client, "eth0", lb, "eth0")?;
                veth(lb, "eth1", sw, "lb")?;
                sw.ip("link set dev lb master br0")?;
                lb.ip(&format!("addr add {LB_CLIENT_SIDE}/24 dev eth0"))?;
                lb.ip(&format!("addr add {LB_BACKEND_SIDE}/24 dev eth1"))?;
            }
            Wiring::OneInterface => {
                veth(client, "eth0", sw, "client")?;
                veth(lb, "eth0", sw, "lb")?;
                sw.ip("link set dev client master br0")?;
                sw.ip("link set dev lb master br0")?;
                lb.ip(&format!("addr add {LB_CLIENT_SIDE}/24 dev eth0"))?;
                lb.ip(&format!("addr add {LB_BACKEND_SIDE}/24 dev eth0"))?;
            }
        }
        client.ip(&format!("addr add {CLIENT}/24 dev eth0"))?;
        client.ip(&format!("route add default via {LB_CLIENT_SIDE}"))?;

        for (i, backend) in self.backends.iter().enumerate() {
            let port = format!("b{}", i + 1);
            veth(backend, "eth0", sw, &port)?;
            sw.ip(&format!("link set dev {port} master br0"))?;
            backend.ip(&format!("addr add {}/24 dev eth0", backend_addr(i)))?;
            backend.ip(&format!("route add default via {LB_BACKEND_SIDE}"))?;
            backend.sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
        }

        lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
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
        }
    }

    /// The address of a backend server on `port`.
    pub fn backend_endpoint(&self, index: usize, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(backend_addr(index), port))
    }
}

/// A veth pair with one end in each namespace, both up, with the offloads set as the module
/// documentation explains.
///
/// The order matters: a veth accepts XDP_REDIRECTed frames only if its peer had GRO (or an
/// XDP program) when the veth came up, because the kernel computes its `ndo_xdp_xmit`
/// capability then. So both ends get their offloads before either comes up.
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&format!(
        "link add name {a_name} type veth peer name {b_name} netns {}",
        b.name()
    ))?;
    for (ns, name) in [(a, a_name), (b, b_name)] {
        ns.exec("ethtool", &["-K", name, "tx", "off", "gro", "on"])?;
    }
    for (ns, name) in [(a, a_name), (b, b_name)] {
        ns.ip(&format!("link set dev {name} up"))?;
    }
    Ok(())
}
