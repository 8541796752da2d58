//! The validated configuration: what the rest of xlb reads. Every value here has been checked
//! (see `validate`).

use std::{fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ipnet::IpNet;

pub use super::forwarding::{CheckVia, Forwarding, TunnelSettings};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces the program attaches to.
    pub interfaces: Vec<String>,
    /// Where the program attaches: an XDP mode or tc, or `auto` (see `hooks`).
    pub xdp_mode: XdpMode,
    /// The operator states that packets arriving on every interface carry complete
    /// checksums (for example: transmit checksum offload is off on every veth peer), which xlb
    /// cannot see for itself; native and generic XDP are then allowed there.
    pub assume_complete_checksums: bool,
    /// At tc, hand packets for a veth whose peer lives in another network namespace straight to
    /// the peer (`bpf_redirect_peer`; see `hooks`). Default true.
    pub veth_peer_redirect: bool,
    /// IPv4 flows the IPv4 flow table holds (two `FLOWS4` entries each, one per direction).
    pub flow_table_size: u32,
    /// IPv6 flows the IPv6 flow table holds (`flow_table_size` unless set).
    pub flow_table_size_ipv6: u32,
    /// bpffs directory where the maps and links are pinned, so that the data plane outlives the
    /// daemon and a restarted daemon takes it over.
    pub pin_path: PathBuf,
    /// Address of the Prometheus metrics endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Ports the host itself answers on the VIPs (sshd, BIRD...): TCP and UDP packets to a
    /// VIP that no service takes pass to the kernel on these ports, and are dropped on the
    /// others.
    pub host_ports: Vec<(Protocol, u16)>,
    /// How long flows may stay silent before they are deleted.
    pub flow_timeouts: FlowTimeouts,
    /// Route health injection: how the VIPs of services with `announce` are offered to the
    /// local BGP daemon; `None` when no service announces its VIP.
    pub announce: Option<AnnounceConfig>,
    /// Virtual services, in file order.
    pub services: Vec<ServiceConfig>,
    /// The fleet this instance shares its flows with (`[fleet]`), if any.
    pub fleet: Option<FleetConfig>,
    /// The tunnels' outer headers (`[tunnel]`; its defaults without one).
    pub tunnel: TunnelSettings,
}

/// The instances that share their flows (`[fleet]`): each tells the others of the flows it
/// makes, so that any of them can carry any flow when the routers move it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// This instance's address for the fleet's messages (UDP).
    pub listen: SocketAddr,
    /// The other instances' addresses.
    pub peers: Vec<SocketAddr>,
    /// The file of the shared key.
    pub key_file: PathBuf,
    /// The shared key (the file's contents, surrounding whitespace removed).
    pub key: Secret,
    /// How often this instance sends its peers again the flows it carried since the last
    /// time (`refresh`): their copies then outlive the flow's idle timeout, and a flow whose
    /// first message was lost reaches them then.
    pub refresh: Duration,
}

impl FleetConfig {
    /// `refresh`'s default.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
}

impl Config {
    /// How often the fleet's flows are refreshed (`refresh`; its default without a fleet).
    pub fn fleet_refresh(&self) -> Duration {
        self.fleet
            .as_ref()
            .map_or(FleetConfig::DEFAULT_REFRESH, |fleet| fleet.refresh)
    }
}

/// A secret: compared, cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Route health injection (`[announce]`): xlb holds each announced VIP as an address of a
/// TUN device of its own while the VIP can serve; the local BIRD exports the device's
/// addresses (`protocol direct`) to its BGP peers. The device lives as long as the process:
/// when xlb stops or dies, its routes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Name of the TUN device xlb creates.
    pub device: String,
    /// BIRD's control socket: xlb checks that a BIRD is there to export the routes.
    pub bird_socket: PathBuf,
    /// On SIGTERM: how long xlb keeps balancing after it withdrew its routes, so that routers
    /// move the flows elsewhere before it stops.
    pub drain: Duration,
}

/// Default name of the announcement device.
pub(super) const DEFAULT_ANNOUNCE_DEVICE: &str = "xlb-vip";
/// Default BIRD control socket (Debian's bird2).
pub(super) const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// Default drain time on SIGTERM.
pub(super) const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// Default `drain_timeout` of a backend removed from the config: five minutes, as an AWS
/// target group's deregistration delay.
pub(super) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest `persistence`: the data plane keeps it in 16 bits of seconds.
pub(super) const MAX_PERSISTENCE: Duration = Duration::from_secs(u16::MAX as u64);
/// Longest `drain_timeout`.
pub(super) const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3_600);

/// Where the program is attached (`xdp_mode`); see `hooks` for what is correct where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native XDP where every interface is a NIC whose driver supports it, tc otherwise.
    Auto,
    /// Native (driver) XDP: fastest; correct only where packets arrive with complete
    /// checksums.
    Native,
    /// Generic (skb) XDP: correct only where packets arrive with complete checksums and no
    /// receive offload merges them.
    Generic,
    /// tc ingress (tcx): correct with partial checksums and GRO/GSO super-packets.
    Tc,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Tc => "tc",
        })
    }
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::consts::proto::TCP,
            Self::Udp => lb_common::consts::proto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// How new flows are spread over a service's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Smooth weighted round robin, one backend per new flow.
    RoundRobin,
    /// Weighted Maglev hashing of the 5-tuple: every instance with the same backends and seed
    /// sends a flow to the same backend.
    Maglev(MaglevConfig),
    /// Round robin over a table whose weights the daemon sets from the backends' open
    /// connections (see `control::least_connections`).
    LeastConnections,
}

impl Scheduler {
    /// The name the file uses.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::LeastConnections => "least-connections",
            Self::Maglev(config) if config.client_hash => "source-hash",
            Self::Maglev(_) => "maglev",
        }
    }
}

/// A Maglev table's shape: the same on every instance that serves the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevConfig {
    /// Slots of the lookup table: a prime, at least 100 per backend.
    pub table_size: u32,
    /// Seed of the backends' permutations and of the 5-tuple hash.
    pub seed: u32,
    /// Whether new flows hash the client's address alone (`scheduler = "source-hash"`): every
    /// connection of a client to one backend while the backends stay the same.
    pub client_hash: bool,
}

/// The default Maglev table size: a prime, so that every backend's permutation visits every
/// slot (Google's Maglev paper's size for small backend sets).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
/// The default Maglev seed: any value, as long as every instance uses the same.
pub const DEFAULT_MAGLEV_SEED: u32 = 0;
/// Slots a Maglev table needs per backend at least, for even shares (the paper's rule).
pub const MAGLEV_SLOTS_PER_BACKEND: u32 = 100;

/// Whether `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// What happens to the established connections of a backend that goes Down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDown {
    /// They stay on the backend (it may still be serving them: a full accept queue, a host
    /// that stopped taking new connections), unless its host is gone; only its other flows
    /// (UDP, handshakes) are placed again. As HAProxy's default and IPVS's
    /// `expire_nodest_conn=0`.
    #[default]
    Keep,
    /// They are purged too: the clients' next packets go to other backends, which reset them.
    Reset,
}

/// One virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Unique name, used in logs and commands.
    pub name: String,
    /// Virtual IP and port.
    pub listen: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Scheduler for new flows.
    pub scheduler: Scheduler,
    /// How packets reach the backends.
    pub forwarding: Forwarding,
    /// What happens to a Down backend's established connections.
    pub on_down: OnDown,
    /// How long a backend removed from the config keeps its connections: it takes no new
    /// flow, and its flows are removed once it has no connection left or this time has
    /// passed (0: at once).
    pub drain_timeout: Duration,
    /// Source persistence: a client's new flows go to the backend of its last new flow if
    /// that came at most this long before (whole seconds; IPVS's `-p`); none: off.
    pub persistence: Option<Duration>,
    /// Whether its VIP is announced to the local BGP daemon while it can take new flows.
    pub announce: bool,
    /// Backends of every pool, in file order.
    pub backends: Vec<BackendConfig>,
    /// Locality pools; a service without `[[service.pool]]` has one, "default", with all its
    /// backends.
    pub pools: Vec<PoolConfig>,
    /// The pool of clients that match no prefix.
    pub default_pool: usize,
    /// Client prefixes and their home pools (inline and from `client_prefix_file`).
    pub client_prefixes: Arc<Vec<(IpNet, usize)>>,
    /// Health checks: can a backend serve at all?
    pub health: HealthConfig,
    /// Load checks: is a backend busy? `None`: no load checks.
    pub load: Option<LoadConfig>,
    /// Passive health: what the data plane learns from the answers to new flows (TCP only;
    /// `None` for UDP).
    pub passive: Option<PassiveConfig>,
    /// The new-flow rate limit per client prefix; `None`: no limit.
    pub admission: Option<AdmissionConfig>,
}

/// Passive health (compare HAProxy's `observe layer4` with `error-limit`, and Envoy's
/// outlier detection): a backend that refuses or ignores handshakes is skipped by new flows
/// at once, until a check decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Refused handshakes (a RST answering the SYN) within `window` that make a backend
    /// suspect; 0: not counted.
    pub refused: u32,
    /// Handshakes left unanswered until the client retransmitted the SYN, within `window`,
    /// that make a backend suspect; 0: not counted, and retransmitted SYNs stay on their
    /// backend.
    pub unanswered: u32,
    /// The window the counts are kept over.
    pub window: Duration,
    /// How long a mark lasts unless a check decides first.
    pub hold: Duration,
    /// The largest share (percent) of the service's backends that may be suspect at once.
    pub max_share: u32,
}

impl PassiveConfig {
    /// Whether anything is counted.
    pub fn enabled(&self) -> bool {
        self.refused != 0 || self.unanswered != 0
    }
}

/// The new-flow rate limit per client prefix (a token bucket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// New flows per second each prefix may open, on average.
    pub rate: u64,
    /// How many it may open at once after a quiet time.
    pub burst: u64,
    /// The prefix length that groups IPv4 clients.
    pub ipv4_prefix: u8,
    /// The prefix length that groups IPv6 clients.
    pub ipv6_prefix: u8,
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Address and port new flows are sent to.
    pub address: SocketAddr,
    /// Share of new flows relative to the other backends (0: none).
    pub weight: u32,
    /// Port the health check connects to, if not the backend's own.
    pub check_port: Option<u16>,
    /// Port of the load agent, if not the service's `load.agent_port`.
    pub agent_port: Option<u16>,
    /// Index of its pool in the service's `pools`.
    pub pool: usize,
}

/// A locality pool of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Name (unique in the service).
    pub name: String,
    /// Pools (indexes) that take this pool's new flows when it has no room, in order.
    pub fallback: Vec<usize>,
}

/// The name of the pool of a service without `[[service.pool]]`.
pub const DEFAULT_POOL_NAME: &str = "default";

impl BackendConfig {
    /// Where the health check goes.
    pub fn check_address(&self) -> SocketAddr {
        SocketAddr::new(
            self.address.ip(),
            self.check_port.unwrap_or(self.address.port()),
        )
    }
}

/// How a service's backends are health-checked (HAProxy's meaning of rise and fall).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// What a check does.
    pub check: HealthCheck,
    /// Time between the starts of two checks of one backend.
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive passing checks that bring a Down backend Up.
    pub rise: u32,
    /// Consecutive failing checks that take an Up backend Down.
    pub fall: u32,
    /// After coming Up, the backend's weight ramps from nothing to full over this time.
    pub slowstart: Option<Duration>,
    /// The way the checks take to the backend.
    pub via: CheckVia,
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// No checks: backends are always Up.
    None,
    /// A TCP connection must be accepted.
    Tcp,
    /// An HTTP/1.1 GET must answer with a status in `expect`.
    Http {
        /// Request path.
        path: String,
        /// Accepted status codes, as inclusive ranges.
        expect: Vec<(u16, u16)>,
        /// Host header (default: the backend's address).
        host: Option<String>,
    },
    /// A UDP datagram `send` must get a reply (equal to `expect`, if given).
    Udp {
        /// Payload sent.
        send: Vec<u8>,
        /// Reply required, if any.
        expect: Option<Vec<u8>>,
    },
}

/// How a service's backends are load-checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadConfig {
    /// Port of the HAProxy-style agent on each backend (a backend may override it).
    pub agent_port: Option<u16>,
    /// Time between two load checks.
    pub interval: Duration,
    /// How long an agent may take to answer.
    pub timeout: Duration,
    /// A backend whose agent reports a weight below this percentage is Overloaded.
    pub overload_below: Option<u32>,
    /// A backend with more active flows than this is Overloaded.
    pub max_flows: Option<u64>,
}

impl LoadConfig {
    /// Where backend `backend`'s agent listens, if it has one.
    pub fn agent_address(&self, backend: &BackendConfig) -> Option<SocketAddr> {
        let port = backend.agent_port.or(self.agent_port)?;
        Some(SocketAddr::new(backend.address.ip(), port))
    }
}

/// How long a flow may stay silent before it is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// An established TCP flow.
    pub tcp_idle: Duration,
    /// A TCP flow after a FIN or RST, and a TCP flow whose handshake has not completed.
    pub tcp_closing: Duration,
    /// A UDP flow.
    pub udp_idle: Duration,
}

impl Default for FlowTimeouts {
    /// IPVS's TCP and Linux conntrack's closing timeouts; a UDP minute.
    fn default() -> Self {
        Self {
            tcp_idle: Duration::from_secs(900),
            tcp_closing: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
        }
    }
}

impl FlowTimeouts {
    /// The timeouts as the program takes them (`FLOW_TIMEOUTS`), in nanoseconds.
    pub fn in_nanoseconds(&self) -> lb_common::FlowTimeouts {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        lb_common::FlowTimeouts {
            tcp_idle_ns: ns(self.tcp_idle),
            tcp_closing_ns: ns(self.tcp_closing),
            udp_idle_ns: ns(self.udp_idle),
        }
    }

    /// Whether a flow (its client-to-backend entry, in the half-open table or not) is over at
    /// `now_ns`: silent past its timeout, by the rule the program applies
    /// (`lb_common::FlowTimeouts::expired`). The tables may still hold such a flow, until a
    /// packet finds it over or the LRU reclaims its room.
    pub fn is_over(
        &self,
        key: &lb_common::FlowKey,
        entry: &lb_common::FlowEntry,
        half_open: bool,
        now_ns: u64,
    ) -> bool {
        self.in_nanoseconds().expired(
            key.proto,
            entry.flags,
            half_open,
            entry.last_seen_ns,
            now_ns,
        )
    }
}

/// Default pin directory.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xlb";
