//! How a service's packets, and its health checks, reach its backends: NAT, direct server
//! return at layer 2 or through a tunnel (`forwarding`), this instance's side of the tunnels
//! (`[tunnel]`), and the way of the checks (`health.via`).

/// How a service's packets reach its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Destination rewritten to the backend, replies rewritten back through xlb.
    Nat,
    /// Layer-2 direct server return: only the destination MAC changes; the backend holds the
    /// VIP on a loopback and answers the client directly.
    Dsr,
    /// Layer-3 direct server return over IPIP: the packet inside an outer IP header to the
    /// backend's address, any number of routed hops away; the backend strips it (`xlb decap`
    /// or the kernel's ipip device), holds the VIP and answers the client directly.
    Ipip,
    /// Layer-3 direct server return over GUE (an outer IP and UDP header), as [`Self::Ipip`].
    Gue,
}

impl Forwarding {
    /// The name the file uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dsr => "dsr",
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        }
    }

    /// Whether the backend answers the client directly (L2 or L3 DSR): packets keep their
    /// addresses and ports, and xlb never sees the answers.
    pub fn direct(self) -> bool {
        self != Self::Nat
    }

    /// Whether packets reach the backend through a tunnel (L3 DSR).
    pub fn tunnel(self) -> bool {
        matches!(self, Self::Ipip | Self::Gue)
    }

    /// The value of `ServiceEntry::forwarding` (`lb_common::consts::forwarding`).
    pub fn code(self) -> u8 {
        use lb_common::consts::forwarding;
        match self {
            Self::Nat => forwarding::NAT,
            Self::Dsr => forwarding::DSR,
            Self::Ipip => forwarding::IPIP,
            Self::Gue => forwarding::GUE,
        }
    }

    /// The forwarding of `ServiceEntry::forwarding` value `code` (NAT for unknown values).
    pub fn from_code(code: u8) -> Self {
        use lb_common::consts::forwarding;
        match code {
            forwarding::DSR => Self::Dsr,
            forwarding::IPIP => Self::Ipip,
            forwarding::GUE => Self::Gue,
            _ => Self::Nat,
        }
    }

    /// The flags of its flows' entries (`lb_common::consts::flow_flags`) that say how their
    /// packets reach the backend.
    pub fn flow_flags(self) -> u8 {
        use lb_common::consts::flow_flags;
        match self {
            Self::Nat => 0,
            Self::Dsr => flow_flags::DSR,
            Self::Ipip => flow_flags::DSR | flow_flags::IPIP,
            Self::Gue => flow_flags::DSR | flow_flags::GUE,
        }
    }
}

/// `[tunnel]`: this instance's side of the tunnels to backends on other networks (services
/// with `forwarding = "ipip"` or `"gue"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelSettings {
    /// The outer IPv4 header's source (`source`): this instance's own address.
    pub source: Option<std::net::Ipv4Addr>,
    /// The outer IPv6 header's source (`source_ipv6`).
    pub source_ipv6: Option<std::net::Ipv6Addr>,
    /// The UDP port GUE packets go to on the backends (`gue_port`).
    pub gue_port: u16,
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            source: None,
            source_ipv6: None,
            gue_port: lb_common::tunnel::DEFAULT_GUE_PORT,
        }
    }
}

/// The way a service's health checks take to its backends (`health.via`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckVia {
    /// To the backend's own address (or its `check_port`), as any client of it would.
    #[default]
    Direct,
    /// To the VIP, inside the tunnel the service's packets take (`forwarding = "ipip"` or
    /// `"gue"`): a backend that does not take them out of the tunnel, or does not hold the
    /// VIP, fails its checks.
    Tunnel,
}

impl CheckVia {
    /// The name the file uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Tunnel => "tunnel",
        }
    }
}
