//! The configuration file: TOML in, a validated [`Config`] out, or every error with its line
//! and column (`xlb check` prints them like `nginx -t`).
//!
//! Parsing happens in two steps. serde reads the file into loosely typed `Raw*` structs whose
//! leaves carry their position ([`toml::Spanned`]); syntax errors, unknown keys and wrong
//! types stop there with one located error. Validation then checks every value and collects
//! all the problems it finds, so an operator fixes a file in one pass.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use lb_common::consts::limits;
use serde::Deserialize;
use toml::Spanned;

use crate::{flows::FlowTimeouts, locality};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces the XDP program attaches to.
    pub interfaces: Vec<String>,
    /// Where the program attaches: an XDP mode or tc, or `auto` (see `hooks`).
    pub xdp_mode: XdpMode,
    /// The operator states that packets arriving on every interface carry complete
    /// checksums (for example: transmit checksum offload is off on every veth peer), which xlb
    /// cannot see for itself; native and generic XDP are then allowed there.
    pub assume_complete_checksums: bool,
    /// Flows the flow table holds (two `FLOWS` entries each, one per direction).
    pub flow_table_size: u32,
    /// bpffs directory where the maps and links are pinned, so that the data plane outlives the
    /// daemon and a restarted daemon takes it over.
    pub pin_path: PathBuf,
    /// Address of the Prometheus metrics endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// How long flows may stay silent before they are deleted.
    pub flow_timeouts: FlowTimeouts,
    /// Virtual services, in file order.
    pub services: Vec<ServiceConfig>,
}

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

/// One problem in a configuration file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Line of the offending value (1-based; 0 when the problem has no position).
    pub line: usize,
    /// Column of the offending value (1-based).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if error.line == 0 {
                write!(f, "{}: {}", self.path.display(), error.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.path.display(),
                    error.line,
                    error.column,
                    error.message
                )?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigErrors {
            path: path.to_owned(),
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                message: format!("cannot read the file: {error}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, base).map_err(|errors| ConfigErrors {
            path: path.to_owned(),
            errors,
        })
    }

    /// Parses and validates configuration text (relative prefix-file paths are relative to the
    /// current directory).
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigError>> {
        Self::parse_in(text, Path::new("."))
    }

    /// Parses and validates configuration text whose relative paths are relative to `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Self, Vec<ConfigError>> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            let span = error.span().unwrap_or(0..0);
            vec![locate(text, &span, error.message().trim_end().to_owned())]
        })?;
        let mut validator = Validator {
            text,
            base,
            errors: Vec::new(),
        };
        let config = validator.config(raw);
        if validator.errors.is_empty() {
            Ok(config)
        } else {
            validator
                .errors
                .sort_by_key(|error| (error.line, error.column));
            Err(validator.errors)
        }
    }

    /// Number of backends across all services.
    pub fn backend_count(&self) -> usize {
        self.services
            .iter()
            .map(|service| service.backends.len())
            .sum()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    xdp_mode: Option<Spanned<String>>,
    assume_complete_checksums: Option<bool>,
    flow_table_size: Option<Spanned<i64>>,
    pin_path: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    tcp_idle_timeout: Option<Spanned<String>>,
    tcp_closing_timeout: Option<Spanned<String>>,
    udp_idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    scheduler: Option<Spanned<String>>,
    backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pool: Option<Spanned<Vec<Spanned<RawPool>>>>,
    client_prefixes: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    client_prefix_file: Option<Spanned<String>>,
    default_pool: Option<Spanned<String>>,
    health: Option<Spanned<RawHealth>>,
    load: Option<Spanned<RawLoad>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Option<Spanned<String>>,
    backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    fallback: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
    check_port: Option<Spanned<i64>>,
    agent_port: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    check: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    send: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    slowstart: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    agent_port: Option<Spanned<i64>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    overload_below: Option<Spanned<String>>,
    max_flows: Option<Spanned<i64>>,
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;
/// Longest service name.
const MAX_SERVICE_NAME: usize = 64;
/// Smallest flow table: below this the LRU evicts live flows under trivial load.
const MIN_FLOW_TABLE_SIZE: i64 = 1_024;
/// Default pin directory.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xlb";
/// Largest flow table (each entry costs about 150 bytes of kernel memory, twice).
const MAX_FLOW_TABLE_SIZE: i64 = 1 << 26;
/// Defaults of the health checks (HAProxy's: inter 2s, rise 2, fall 3).
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
/// Bounds of check and agent intervals.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Highest rise or fall.
const MAX_RISE_FALL: i64 = 100;
/// Bad client prefixes reported one by one, per source; the rest are counted.
const MAX_PREFIX_ERRORS: usize = 10;
/// Default agent (load check) interval.
const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_secs(2);

struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: &Range<usize>, message: String) {
        self.errors.push(locate(self.text, span, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let whole_file = 0..0;
        let interfaces = match raw.interfaces {
            None => {
                self.error(
                    &whole_file,
                    "missing key `interfaces` (the interfaces to attach to, e.g. [\"eth0\"])"
                        .into(),
                );
                Vec::new()
            }
            Some(list) => self.interfaces(list),
        };
        let xdp_mode = match raw.xdp_mode {
            None => XdpMode::Auto,
            Some(mode) => match mode.get_ref().as_str() {
                "auto" => XdpMode::Auto,
                "native" => XdpMode::Native,
                "generic" => XdpMode::Generic,
                "tc" => XdpMode::Tc,
                other => {
                    self.error(&mode.span(), format!("xdp_mode: unknown mode {other:?}, expected \"auto\", \"native\", \"generic\" or \"tc\""));
                    XdpMode::Auto
                }
            },
        };
        let flow_table_size = match raw.flow_table_size {
            None => limits::DEFAULT_FLOW_TABLE_SIZE,
            Some(size) => {
                let value = *size.get_ref();
                if (MIN_FLOW_TABLE_SIZE..=MAX_FLOW_TABLE_SIZE).contains(&value) {
                    value as u32
                } else {
                    self.error(&size.span(), format!("flow_table_size: {value} is out of range {MIN_FLOW_TABLE_SIZE}..={MAX_FLOW_TABLE_SIZE}"));
                    limits::DEFAULT_FLOW_TABLE_SIZE
                }
            }
        };

        let pin_path = match raw.pin_path {
            None => PathBuf::from(DEFAULT_PIN_PATH),
            Some(path) => {
                let value = PathBuf::from(path.get_ref());
                if !value.is_absolute() || path.get_ref().contains("..") {
                    self.error(
                        &path.span(),
                        format!(
                            "pin_path: {:?} must be an absolute path without '..'",
                            path.get_ref()
                        ),
                    );
                }
                value
            }
        };
        let metrics =
            raw.metrics
                .and_then(|address| match address.get_ref().parse::<SocketAddr>() {
                    Ok(parsed) if parsed.port() != 0 => Some(parsed),
                    _ => {
                        self.error(
                        &address.span(),
                        format!(
                            "metrics: {:?} is not an address with a port, like \"127.0.0.1:9100\"",
                            address.get_ref()
                        ),
                    );
                        None
                    }
                });

        let defaults = FlowTimeouts::default();
        let flow_timeouts = FlowTimeouts {
            tcp_idle: self.duration_or(
                &raw.tcp_idle_timeout,
                "tcp_idle_timeout",
                defaults.tcp_idle,
                Duration::from_secs(10),
                Duration::from_secs(7 * 86_400),
            ),
            tcp_closing: self.duration_or(
                &raw.tcp_closing_timeout,
                "tcp_closing_timeout",
                defaults.tcp_closing,
                Duration::from_secs(1),
                Duration::from_secs(600),
            ),
            udp_idle: self.duration_or(
                &raw.udp_idle_timeout,
                "udp_idle_timeout",
                defaults.udp_idle,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            ),
        };

        if raw.service.is_empty() {
            self.error(
                &whole_file,
                "no [[service]] defined: xlb would balance nothing".into(),
            );
        }
        if raw.service.len() > limits::MAX_SERVICES as usize {
            self.error(
                &raw.service[limits::MAX_SERVICES as usize].span(),
                format!(
                    "too many services: at most {} are supported",
                    limits::MAX_SERVICES
                ),
            );
        }
        let mut services = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listeners: HashMap<(SocketAddr, Protocol), usize> = HashMap::new();
        for raw_service in raw.service {
            let span = raw_service.span();
            let Some(service) = self.service(raw_service.into_inner(), &span) else {
                continue;
            };
            if let Some(first) = names.get(&service.name) {
                self.error(
                    &span,
                    format!(
                        "service {:?}: the name is already used by the service at line {}",
                        service.name,
                        line_of(self.text, *first)
                    ),
                );
            } else {
                names.insert(service.name.clone(), span.start);
            }
            let listener = (service.listen, service.protocol);
            if let Some(first) = listeners.get(&listener) {
                self.error(
                    &span,
                    format!(
                        "service {:?}: {} {} is already the service at line {}",
                        service.name,
                        service.protocol,
                        service.listen,
                        line_of(self.text, *first)
                    ),
                );
            } else {
                listeners.insert(listener, span.start);
            }
            services.push(service);
        }
        let backends: usize = services.iter().map(|service| service.backends.len()).sum();
        if backends > limits::MAX_BACKENDS as usize {
            self.error(
                &whole_file,
                format!(
                    "{backends} backends in all: at most {} are supported",
                    limits::MAX_BACKENDS
                ),
            );
        }
        Config {
            interfaces,
            xdp_mode,
            assume_complete_checksums: raw.assume_complete_checksums.unwrap_or(false),
            flow_table_size,
            pin_path,
            metrics,
            flow_timeouts,
            services,
        }
    }

    fn interfaces(&mut self, list: Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        let span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            self.error(
                &span,
                "interfaces: the list is empty; name at least one interface".into(),
            );
        }
        if list.len() > limits::MAX_INTERFACES as usize {
            self.error(
                &span,
                format!(
                    "interfaces: at most {} are supported",
                    limits::MAX_INTERFACES
                ),
            );
        }
        let mut names = Vec::new();
        for name in list {
            let value = name.get_ref();
            if value.is_empty()
                || value.len() > MAX_INTERFACE_NAME
                || value == "."
                || value == ".."
                || value
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            {
                self.error(
                    &name.span(),
                    format!("interfaces: {value:?} is not a valid interface name"),
                );
            } else if names.contains(value) {
                self.error(
                    &name.span(),
                    format!("interfaces: {value:?} is listed twice"),
                );
            } else {
                names.push(value.clone());
            }
        }
        names
    }

    fn service(&mut self, raw: RawService, span: &Range<usize>) -> Option<ServiceConfig> {
        let errors_before = self.errors.len();
        let name = match raw.name {
            None => {
                self.error(span, "service: missing key `name`".into());
                String::new()
            }
            Some(name) => {
                let value = name.get_ref();
                if !valid_name(value) {
                    self.error(&name.span(), format!("service name {value:?}: use 1 to {MAX_SERVICE_NAME} letters, digits, '-', '_' or '.'"));
                }
                value.clone()
            }
        };
        let label = format!("service {name:?}");
        let protocol = match raw.protocol {
            None => {
                self.error(
                    span,
                    format!("{label}: missing key `protocol` (\"tcp\" or \"udp\")"),
                );
                Protocol::Tcp
            }
            Some(protocol) => match protocol.get_ref().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => {
                    self.error(
                        &protocol.span(),
                        format!("{label}: unknown protocol {other:?}, expected \"tcp\" or \"udp\""),
                    );
                    Protocol::Tcp
                }
            },
        };
        let scheduler = match raw.scheduler {
            None => Scheduler::RoundRobin,
            Some(scheduler) => match scheduler.get_ref().as_str() {
                "round-robin" => Scheduler::RoundRobin,
                other => {
                    self.error(
                        &scheduler.span(),
                        format!("{label}: unknown scheduler {other:?}, expected \"round-robin\""),
                    );
                    Scheduler::RoundRobin
                }
            },
        };
        let listen = match raw.listen {
            None => {
                self.error(span, format!("{label}: missing key `listen` (the virtual IP and port, e.g. \"198.18.100.1:80\")"));
                None
            }
            Some(listen) => self.endpoint(&listen, &format!("{label}: listen")),
        };
        let (backends, pools) = match (raw.backends, raw.pool) {
            (Some(backends), None) => {
                let backends = self.backends(backends, &label, listen, 0);
                let pool = PoolConfig {
                    name: DEFAULT_POOL_NAME.into(),
                    fallback: Vec::new(),
                };
                (backends, vec![pool])
            }
            (None, Some(pools)) => self.pools(pools, &label, listen),
            (Some(backends), Some(_)) => {
                self.error(&backends.span(), format!("{label}: `backends` and `[[service.pool]]` exclude each other: put every backend in a pool"));
                (Vec::new(), Vec::new())
            }
            (None, None) => {
                self.error(
                    span,
                    format!("{label}: missing key `backends` (or `[[service.pool]]`s)"),
                );
                (Vec::new(), Vec::new())
            }
        };
        if backends.len() > limits::MAX_BACKENDS_PER_SERVICE as usize {
            self.error(
                span,
                format!(
                    "{label}: {} backends, at most {} are supported",
                    backends.len(),
                    limits::MAX_BACKENDS_PER_SERVICE
                ),
            );
        }
        let has_pools =
            pools.len() > 1 || pools.first().is_some_and(|p| p.name != DEFAULT_POOL_NAME);
        let pool_index = |name: &str| pools.iter().position(|p| p.name == name);
        let default_pool = match &raw.default_pool {
            None => 0,
            Some(name) => pool_index(name.get_ref()).unwrap_or_else(|| {
                self.error(
                    &name.span(),
                    format!(
                        "{label}: default_pool {:?} is not a pool of the service",
                        name.get_ref()
                    ),
                );
                0
            }),
        };
        let client_prefixes = self.client_prefixes(
            raw.client_prefixes,
            raw.client_prefix_file,
            &label,
            listen,
            &pools,
        );
        if !has_pools && !client_prefixes.is_empty() {
            self.error(span, format!("{label}: client prefixes choose among `[[service.pool]]`s, and the service has none"));
        }
        let health = self.health(raw.health, protocol, &label);
        let load = raw.load.map(|load| self.load(load, &label));
        match &load {
            None => {
                if backends.iter().any(|b| b.agent_port.is_some()) {
                    self.error(span, format!("{label}: a backend sets `agent_port` but the service has no `load` checks"));
                }
            }
            Some(load) => {
                let has_agent =
                    load.agent_port.is_some() || backends.iter().any(|b| b.agent_port.is_some());
                if !has_agent && load.max_flows.is_none() {
                    self.error(span, format!("{label}: load: set `agent_port` (an agent reports the load) or `max_flows` (xlb counts active flows), or both"));
                }
                if load.overload_below.is_some() && !has_agent {
                    self.error(span, format!("{label}: load: `overload_below` compares the agents' weights, so it needs `agent_port`"));
                }
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(ServiceConfig {
            name,
            listen: listen?,
            protocol,
            scheduler,
            backends,
            pools,
            default_pool,
            client_prefixes: Arc::new(client_prefixes),
            health,
            load,
        })
    }

    fn health(
        &mut self,
        raw: Option<Spanned<RawHealth>>,
        protocol: Protocol,
        label: &str,
    ) -> HealthConfig {
        let defaults = |check| HealthConfig {
            check,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            slowstart: None,
        };
        let Some(raw) = raw else {
            // TCP services are checked by connecting; a UDP service has no universal check.
            return defaults(match protocol {
                Protocol::Tcp => HealthCheck::Tcp,
                Protocol::Udp => HealthCheck::None,
            });
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let what = format!("{label}: health");
        let kind = match &raw.check {
            None => {
                self.error(
                    &span,
                    format!("{what}: missing key `check` (\"tcp\", \"http\", \"udp\" or \"none\")"),
                );
                "none".to_owned()
            }
            Some(check) => check.get_ref().clone(),
        };
        // Keys that only some kinds of check take.
        let only_for =
            |validator: &mut Self, key: &Option<Spanned<String>>, name: &str, kinds: &[&str]| {
                if let Some(value) = key
                    && !kinds.contains(&kind.as_str())
                {
                    validator.error(
                        &value.span(),
                        format!("{what}: `{name}` does not apply to check = {kind:?}"),
                    );
                }
            };
        only_for(self, &raw.path, "path", &["http"]);
        only_for(self, &raw.host, "host", &["http"]);
        only_for(self, &raw.send, "send", &["udp"]);
        only_for(self, &raw.expect, "expect", &["http", "udp"]);

        let check = match kind.as_str() {
            "none" => HealthCheck::None,
            "tcp" => HealthCheck::Tcp,
            "http" => {
                let path = match &raw.path {
                    None => "/".to_owned(),
                    Some(path)
                        if !path.get_ref().starts_with('/')
                            || path.get_ref().chars().any(char::is_whitespace) =>
                    {
                        self.error(
                            &path.span(),
                            format!(
                                "{what}: path {:?} must start with '/' and contain no spaces",
                                path.get_ref()
                            ),
                        );
                        "/".to_owned()
                    }
                    Some(path) => path.get_ref().clone(),
                };
                let expect = match &raw.expect {
                    None => vec![(200, 399)],
                    Some(expect) => {
                        parse_status_ranges(expect.get_ref()).unwrap_or_else(|problem| {
                            self.error(
                                &expect.span(),
                                format!("{what}: expect {:?}: {problem}", expect.get_ref()),
                            );
                            vec![(200, 399)]
                        })
                    }
                };
                let host = raw.host.as_ref().map(|host| {
                    let value = host.get_ref();
                    if value.is_empty()
                        || value.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        self.error(
                            &host.span(),
                            format!("{what}: host {value:?} is not a valid Host header"),
                        );
                    }
                    value.clone()
                });
                HealthCheck::Http { path, expect, host }
            }
            "udp" => {
                let send = match &raw.send {
                    None => {
                        self.error(&span, format!("{what}: a udp check needs `send`, the payload of the probe datagram"));
                        Vec::new()
                    }
                    Some(send) if send.get_ref().is_empty() => {
                        self.error(&send.span(), format!("{what}: `send` is empty"));
                        Vec::new()
                    }
                    Some(send) => send.get_ref().as_bytes().to_vec(),
                };
                let expect = raw
                    .expect
                    .as_ref()
                    .map(|expect| expect.get_ref().as_bytes().to_vec());
                HealthCheck::Udp { send, expect }
            }
            other => {
                if let Some(check) = &raw.check {
                    self.error(&check.span(), format!("{what}: unknown check {other:?}, expected \"tcp\", \"http\", \"udp\" or \"none\""));
                }
                HealthCheck::None
            }
        };
        let interval = self.duration_or(
            &raw.interval,
            &format!("{what}: interval"),
            DEFAULT_CHECK_INTERVAL,
            MIN_INTERVAL,
            MAX_INTERVAL,
        );
        let timeout = self.duration_or(
            &raw.timeout,
            &format!("{what}: timeout"),
            DEFAULT_CHECK_TIMEOUT.min(interval),
            Duration::from_millis(1),
            MAX_INTERVAL,
        );
        if let Some(raw_timeout) = &raw.timeout
            && timeout > interval
        {
            self.error(
                &raw_timeout.span(),
                format!(
                    "{what}: timeout {} is longer than the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let rise = self.count_or(&raw.rise, &format!("{what}: rise"), DEFAULT_RISE);
        let fall = self.count_or(&raw.fall, &format!("{what}: fall"), DEFAULT_FALL);
        let slowstart = raw.slowstart.as_ref().and_then(|value| {
            self.duration(
                value,
                &format!("{what}: slowstart"),
                Duration::from_millis(1),
                MAX_INTERVAL,
            )
        });
        HealthConfig {
            check,
            interval,
            timeout: timeout.min(interval),
            rise,
            fall,
            slowstart,
        }
    }

    fn load(&mut self, raw: Spanned<RawLoad>, label: &str) -> LoadConfig {
        let raw = raw.into_inner();
        let what = format!("{label}: load");
        let agent_port = raw
            .agent_port
            .as_ref()
            .and_then(|port| self.port(port, &format!("{what}: agent_port")));
        let interval = self.duration_or(
            &raw.interval,
            &format!("{what}: interval"),
            DEFAULT_LOAD_INTERVAL,
            MIN_INTERVAL,
            MAX_INTERVAL,
        );
        let timeout = self.duration_or(
            &raw.timeout,
            &format!("{what}: timeout"),
            interval.min(DEFAULT_CHECK_TIMEOUT),
            Duration::from_millis(1),
            MAX_INTERVAL,
        );
        if let Some(raw_timeout) = &raw.timeout
            && timeout > interval
        {
            self.error(
                &raw_timeout.span(),
                format!("{what}: timeout is longer than the interval"),
            );
        }
        let overload_below = raw.overload_below.as_ref().and_then(|value| {
            let parsed = value
                .get_ref()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u32>().ok())
                .filter(|n| *n <= 100);
            if parsed.is_none() {
                self.error(
                    &value.span(),
                    format!(
                        "{what}: overload_below {:?} is not a percentage like \"20%\"",
                        value.get_ref()
                    ),
                );
            }
            parsed
        });
        let max_flows = raw.max_flows.as_ref().and_then(|value| {
            let n = *value.get_ref();
            if (1..=i64::from(u32::MAX)).contains(&n) {
                Some(n as u64)
            } else {
                self.error(
                    &value.span(),
                    format!("{what}: max_flows {n} is out of range 1..={}", u32::MAX),
                );
                None
            }
        });
        LoadConfig {
            agent_port,
            interval,
            timeout: timeout.min(interval),
            overload_below,
            max_flows,
        }
    }

    fn duration(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(duration) if (min..=max).contains(&duration) => Some(duration),
            Ok(_) => {
                self.error(
                    &value.span(),
                    format!(
                        "{what}: {:?} is out of range {}..={}",
                        value.get_ref(),
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                None
            }
            Err(error) => {
                self.error(
                    &value.span(),
                    format!(
                        "{what}: {:?} is not a duration like \"500ms\" or \"2s\" ({error})",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration_or(
        &mut self,
        value: &Option<Spanned<String>>,
        what: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        value
            .as_ref()
            .and_then(|value| self.duration(value, what, min, max))
            .unwrap_or(default)
    }

    fn count_or(&mut self, value: &Option<Spanned<i64>>, what: &str, default: u32) -> u32 {
        match value {
            None => default,
            Some(value) if (1..=MAX_RISE_FALL).contains(value.get_ref()) => *value.get_ref() as u32,
            Some(value) => {
                self.error(
                    &value.span(),
                    format!(
                        "{what}: {} is out of range 1..={MAX_RISE_FALL}",
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn port(&mut self, value: &Spanned<i64>, what: &str) -> Option<u16> {
        match u16::try_from(*value.get_ref()) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.error(
                    &value.span(),
                    format!("{what}: {} is not a port (1..=65535)", value.get_ref()),
                );
                None
            }
        }
    }

    fn backends(
        &mut self,
        list: Spanned<Vec<Spanned<RawBackend>>>,
        label: &str,
        listen: Option<SocketAddr>,
        pool: usize,
    ) -> Vec<BackendConfig> {
        let span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            let what = if label.contains(": pool ") {
                "a pool"
            } else {
                "a service"
            };
            self.error(
                &span,
                format!("{label}: no backends; {what} needs at least one"),
            );
        }
        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for raw in list {
            let entry_span = raw.span();
            let raw = raw.into_inner();
            let address = match raw.address {
                None => {
                    self.error(&entry_span, format!("{label}: backend without `address`"));
                    None
                }
                Some(address) => {
                    let parsed = self.endpoint(&address, &format!("{label}: backend"));
                    if let (Some(backend), Some(vip)) = (parsed, listen)
                        && backend.is_ipv4() != vip.is_ipv4()
                    {
                        self.error(&address.span(), format!("{label}: backend {backend} is not of the same address family as the service's {vip}"));
                    }
                    if let Some(backend) = parsed {
                        if let Some(first) = seen.get(&backend) {
                            let first = line_of(self.text, *first);
                            self.error(&address.span(), format!("{label}: backend {backend} is listed twice (first at line {first})"));
                        } else {
                            seen.insert(backend, address.span().start);
                        }
                    }
                    parsed
                }
            };
            let weight = match raw.weight {
                None => 1,
                Some(weight) => {
                    let value = *weight.get_ref();
                    if (0..=limits::MAX_WEIGHT as i64).contains(&value) {
                        value as u32
                    } else {
                        self.error(
                            &weight.span(),
                            format!(
                                "{label}: weight {value} is out of range 0..={}",
                                limits::MAX_WEIGHT
                            ),
                        );
                        1
                    }
                }
            };
            let check_port = raw
                .check_port
                .as_ref()
                .and_then(|port| self.port(port, &format!("{label}: check_port")));
            let agent_port = raw
                .agent_port
                .as_ref()
                .and_then(|port| self.port(port, &format!("{label}: agent_port")));
            if let Some(address) = address {
                backends.push(BackendConfig {
                    address,
                    weight,
                    check_port,
                    agent_port,
                    pool,
                });
            }
        }
        if !backends.is_empty() && backends.iter().all(|backend| backend.weight == 0) {
            self.error(
                &span,
                format!("{label}: every backend has weight 0, so no new flow could be placed"),
            );
        }
        backends
    }

    /// The `[[service.pool]]`s of a service: their backends (in pool order) and the pools.
    fn pools(
        &mut self,
        list: Spanned<Vec<Spanned<RawPool>>>,
        label: &str,
        listen: Option<SocketAddr>,
    ) -> (Vec<BackendConfig>, Vec<PoolConfig>) {
        let span = list.span();
        let list = list.into_inner();
        if list.len() > limits::MAX_POOLS_PER_SERVICE as usize {
            self.error(
                &span,
                format!(
                    "{label}: {} pools, at most {} are supported",
                    list.len(),
                    limits::MAX_POOLS_PER_SERVICE
                ),
            );
        }
        let mut names: Vec<String> = Vec::new();
        for raw in &list {
            match &raw.get_ref().name {
                None => self.error(&raw.span(), format!("{label}: a pool without `name`")),
                Some(name) => {
                    let value = name.get_ref();
                    if !valid_name(value) {
                        self.error(&name.span(), format!("{label}: pool name {value:?}: use 1 to {MAX_SERVICE_NAME} letters, digits, '-', '_' or '.'"));
                    }
                    if names.contains(value) {
                        self.error(
                            &name.span(),
                            format!("{label}: pool {value:?} is defined twice"),
                        );
                    }
                    names.push(value.clone());
                }
            }
        }
        let mut backends = Vec::new();
        let mut pools = Vec::new();
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        for (index, raw) in list.into_iter().enumerate() {
            let pool_span = raw.span();
            let raw = raw.into_inner();
            let name = raw.name.map(|n| n.into_inner()).unwrap_or_default();
            let pool_label = format!("{label}: pool {name:?}");
            let pool_backends = match raw.backends {
                None => {
                    self.error(&pool_span, format!("{pool_label}: missing key `backends`"));
                    Vec::new()
                }
                Some(list) => self.backends(list, &pool_label, listen, index),
            };
            for backend in &pool_backends {
                if let Some(other) = seen.get(&backend.address) {
                    self.error(&pool_span, format!("{pool_label}: backend {} is already in pool {other:?}; a backend belongs to one pool", backend.address));
                } else {
                    seen.insert(backend.address, name.clone());
                }
            }
            backends.extend(pool_backends);
            let mut fallback = Vec::new();
            if let Some(list) = raw.fallback {
                for other in list.into_inner() {
                    match names.iter().position(|n| n == other.get_ref()) {
                        None => self.error(
                            &other.span(),
                            format!(
                                "{pool_label}: fallback {:?} is not a pool of the service",
                                other.get_ref()
                            ),
                        ),
                        Some(i) if i == index => self.error(
                            &other.span(),
                            format!("{pool_label}: a pool cannot fall back to itself"),
                        ),
                        Some(i) if fallback.contains(&i) => self.error(
                            &other.span(),
                            format!(
                                "{pool_label}: fallback {:?} is listed twice",
                                other.get_ref()
                            ),
                        ),
                        Some(i) => fallback.push(i),
                    }
                }
            }
            pools.push(PoolConfig { name, fallback });
        }
        (backends, pools)
    }

    /// The client prefixes of a service, inline and from its prefix file, as (prefix, pool).
    fn client_prefixes(
        &mut self,
        inline: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
        file: Option<Spanned<String>>,
        label: &str,
        listen: Option<SocketAddr>,
        pools: &[PoolConfig],
    ) -> Vec<(IpNet, usize)> {
        let mut prefixes: Vec<(IpNet, usize)> = Vec::new();
        let mut seen: HashMap<IpNet, String> = HashMap::new();
        // Checks one entry; `Err` is the problem, which the caller reports where it belongs.
        let mut add = |prefix: &str, pool: &str, origin: String| -> Result<(), String> {
            let net = locality::parse_prefix(prefix)?;
            if let Some(listen) = listen
                && net.addr().is_ipv4() != listen.is_ipv4()
            {
                return Err(format!("{net} is not of the service's address family"));
            }
            let Some(index) = pools.iter().position(|p| p.name == pool) else {
                return Err(format!("{net}: {pool:?} is not a pool of the service"));
            };
            if let Some(first) = seen.get(&net) {
                return Err(format!("{net} is listed twice (first {first})"));
            }
            seen.insert(net, origin);
            prefixes.push((net, index));
            Ok(())
        };
        if let Some(inline) = inline {
            let span = inline.span();
            let mut bad = 0;
            for (prefix, pool) in inline.into_inner() {
                let origin = format!("at line {}", line_of(self.text, pool.span().start));
                if let Err(problem) = add(&prefix, pool.get_ref(), origin) {
                    bad += 1;
                    // At most a few, so a long bad table does not bury the other errors; each
                    // at its own entry, whose line says which one.
                    if bad <= MAX_PREFIX_ERRORS {
                        self.errors.push(locate(
                            self.text,
                            &pool.span(),
                            format!("{label}: client_prefixes: {problem}"),
                        ));
                    }
                }
            }
            if bad > MAX_PREFIX_ERRORS {
                self.errors.push(locate(
                    self.text,
                    &span,
                    format!(
                        "{label}: client_prefixes: {} more bad entries",
                        bad - MAX_PREFIX_ERRORS
                    ),
                ));
            }
        }
        if let Some(file) = file {
            let path = self.base.join(file.get_ref());
            match std::fs::read_to_string(&path) {
                Err(error) => self.errors.push(locate(
                    self.text,
                    &file.span(),
                    format!("{label}: client_prefix_file {}: {error}", path.display()),
                )),
                Ok(text) => {
                    let mut problems: Vec<(usize, String)> = Vec::new();
                    match locality::parse_prefix_file(&text) {
                        Err(errors) => problems = errors,
                        Ok(entries) => {
                            for (line, net, pool) in entries {
                                let origin = format!("at {}:{line}", path.display());
                                if let Err(problem) = add(&net.to_string(), &pool, origin) {
                                    problems.push((line, problem));
                                }
                            }
                        }
                    }
                    // At most a few, so a wrong file does not bury the other errors.
                    for (line, problem) in problems.iter().take(MAX_PREFIX_ERRORS) {
                        self.errors.push(locate(
                            self.text,
                            &file.span(),
                            format!("{label}: {}:{line}: {problem}", path.display()),
                        ));
                    }
                    if problems.len() > MAX_PREFIX_ERRORS {
                        self.errors.push(locate(
                            self.text,
                            &file.span(),
                            format!(
                                "{label}: {}: {} more bad lines",
                                path.display(),
                                problems.len() - MAX_PREFIX_ERRORS
                            ),
                        ));
                    }
                }
            }
        }
        if prefixes.len() > limits::MAX_PREFIXES_PER_SERVICE as usize {
            self.errors.push(locate(
                self.text,
                &(0..0),
                format!(
                    "{label}: {} client prefixes, at most {} are supported",
                    prefixes.len(),
                    limits::MAX_PREFIXES_PER_SERVICE
                ),
            ));
        }
        prefixes
    }

    /// Parses `IP:port` and rejects addresses no flow can use.
    fn endpoint(&mut self, value: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        let text = value.get_ref();
        let Ok(address) = text.parse::<SocketAddr>() else {
            self.error(&value.span(), format!("{what}: {text:?} is not an address with a port, like \"198.18.1.10:80\" or \"[fd00::10]:80\""));
            return None;
        };
        let ip = address.ip();
        let problem = if address.port() == 0 {
            Some("port 0 is not a usable port")
        } else if ip.is_unspecified() {
            Some("the unspecified address cannot receive traffic")
        } else if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            Some("multicast and broadcast addresses cannot be balanced")
        } else if let IpAddr::V6(v6) = ip
            && v6.to_ipv4_mapped().is_some()
        {
            Some("an IPv4-mapped IPv6 address; write the IPv4 address instead")
        } else if let IpAddr::V6(v6) = ip
            && v6.is_unicast_link_local()
        {
            Some("link-local addresses are not supported (they need an interface scope)")
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.error(&value.span(), format!("{what}: {address}: {problem}"));
                None
            }
            None => Some(address),
        }
    }
}

/// Whether `name` is a usable service or pool name: 1 to `MAX_SERVICE_NAME` letters, digits,
/// '-', '_' or '.'.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses HTTP status ranges like "200-399" or "200,204,301-302".
fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let status = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|code| (100..=599).contains(code))
            .ok_or_else(|| format!("{s:?} is not an HTTP status (100..=599)"))
    };
    text.split(',')
        .map(|part| match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (status(low)?, status(high)?);
                if low > high {
                    return Err(format!("range {low}-{high} is empty"));
                }
                Ok((low, high))
            }
            None => status(part).map(|code| (code, code)),
        })
        .collect()
}

/// A [`ConfigError`] at the position of byte offset `span.start` of `text`.
fn locate(text: &str, span: &Range<usize>, message: String) -> ConfigError {
    if span.is_empty() && span.start == 0 {
        return ConfigError {
            line: 0,
            column: 0,
            message,
        };
    }
    let start = span.start.min(text.len());
    let line = line_of(text, start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    ConfigError {
        line,
        column: text[line_start..start].chars().count() + 1,
        message,
    }
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
interfaces = ["eth0"]
xdp_mode = "native"

[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
scheduler = "round-robin"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080", weight = 2 } ]

[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353", weight = 0 }, { address = "198.18.1.13:5353" } ]
"#;

    fn errors_of(text: &str) -> Vec<String> {
        Config::parse(text)
            .expect_err("the config should be rejected")
            .into_iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect()
    }

    #[test]
    fn parses_a_valid_config() {
        let config = Config::parse(VALID).unwrap();
        assert_eq!(config.interfaces, ["eth0"]);
        assert_eq!(config.xdp_mode, XdpMode::Native);
        assert_eq!(config.flow_table_size, limits::DEFAULT_FLOW_TABLE_SIZE);
        assert_eq!(config.pin_path, PathBuf::from("/sys/fs/bpf/xlb"));
        assert_eq!(config.metrics, None);
        assert_eq!(config.services.len(), 2);
        let web = &config.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.listen, "198.18.100.1:80".parse().unwrap());
        assert_eq!(web.protocol, Protocol::Tcp);
        assert_eq!(web.scheduler, Scheduler::RoundRobin);
        assert_eq!(
            web.backends,
            [
                BackendConfig {
                    address: "198.18.1.11:8080".parse().unwrap(),
                    weight: 1,
                    check_port: None,
                    agent_port: None,
                    pool: 0,
                },
                BackendConfig {
                    address: "198.18.1.12:8080".parse().unwrap(),
                    weight: 2,
                    check_port: None,
                    agent_port: None,
                    pool: 0,
                },
            ]
        );
        let dns = &config.services[1];
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.backends[0].weight, 0);
        assert_eq!(config.backend_count(), 4);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_position() {
        let text = "interfaces = [\"eth0\"]\nbogus = 1\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("2:1: unknown field `bogus`"),
            "{errors:?}"
        );

        let text = VALID.replace("scheduler = \"round-robin\"", "schedular = \"round-robin\"");
        let errors = errors_of(&text);
        assert!(
            errors[0].contains("unknown field `schedular`"),
            "{errors:?}"
        );
        assert!(errors[0].starts_with("9:"), "{errors:?}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let errors = errors_of("interfaces = [\"eth0\"\n");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("1:") || errors[0].starts_with("2:"),
            "{errors:?}"
        );
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let text = r#"
interfaces = ["eth0", "eth0", "a/b"]
xdp_mode = "turbo"
flow_table_size = 12

[[service]]
name = "web"
listen = "198.18.100.300:80"
protocol = "sctp"
scheduler = "least-conn"
backends = [ { address = "198.18.1.11" }, { address = "198.18.1.12:8080", weight = 999 }, { address = "198.18.1.12:8080" } ]
"#;
        let errors = errors_of(text);
        let expected = [
            "2:23: interfaces: \"eth0\" is listed twice",
            "2:31: interfaces: \"a/b\" is not a valid interface name",
            "3:12: xdp_mode: unknown mode \"turbo\"",
            "4:19: flow_table_size: 12 is out of range",
            "8:10: service \"web\": listen: \"198.18.100.300:80\" is not an address with a port",
            "9:12: service \"web\": unknown protocol \"sctp\"",
            "10:13: service \"web\": unknown scheduler \"least-conn\"",
            "11:26: service \"web\": backend: \"198.18.1.11\" is not an address with a port",
            "11:84: service \"web\": weight 999 is out of range 0..=256",
            "11:103: service \"web\": backend 198.18.1.12:8080 is listed twice (first at line 11)",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(
                error.starts_with(expected),
                "got {error:?}, expected it to start with {expected:?}"
            );
        }
    }

    #[test]
    fn duplicate_services_are_rejected() {
        let text = format!(
            "{VALID}\n[[service]]\nname = \"web\"\nlisten = \"198.18.100.1:80\"\nprotocol = \"tcp\"\nbackends = [ {{ address = \"198.18.1.11:80\" }} ]\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(
            errors[0].contains("the name is already used by the service at line 5"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("tcp 198.18.100.1:80 is already the service at line 5"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_same_vip_and_port_may_serve_tcp_and_udp() {
        let text = VALID.replace("198.18.100.1:53", "198.18.100.1:80");
        assert!(Config::parse(&text).is_ok());
    }

    #[test]
    fn services_need_usable_backends() {
        let no_backends = VALID.replace(
            "backends = [ { address = \"198.18.1.11:8080\" }, { address = \"198.18.1.12:8080\", weight = 2 } ]",
            "backends = []",
        );
        assert!(errors_of(&no_backends)[0].contains("no backends; a service needs at least one"));

        let all_zero = VALID.replace(
            "{ address = \"198.18.1.13:5353\" }",
            "{ address = \"198.18.1.13:5353\", weight = 0 }",
        );
        assert!(errors_of(&all_zero)[0].contains("every backend has weight 0"));

        let missing = "interfaces = [\"eth0\"]\n[[service]]\nname = \"x\"\n";
        let errors = errors_of(missing);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("missing key `protocol`")));
        assert!(errors.iter().any(|e| e.contains("missing key `listen`")));
        assert!(errors.iter().any(|e| e.contains("missing key `backends`")));
    }

    #[test]
    fn unusable_addresses_are_rejected() {
        for (listen, problem) in [
            ("0.0.0.0:80", "unspecified"),
            ("198.18.100.1:0", "port 0"),
            ("224.0.0.1:80", "multicast"),
            ("255.255.255.255:80", "broadcast"),
            ("[::ffff:198.18.0.1]:80", "IPv4-mapped"),
            ("[fe80::1]:80", "link-local addresses are not supported"),
        ] {
            let text = VALID.replace("198.18.100.1:80", listen);
            let errors = errors_of(&text);
            assert!(
                errors.iter().any(|e| e.contains(problem)),
                "{listen}: {errors:?}"
            );
        }
    }

    #[test]
    fn missing_interfaces_and_services_are_reported() {
        let errors = errors_of("xdp_mode = \"auto\"\n");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("missing key `interfaces`"));
        assert!(errors[1].contains("no [[service]] defined"));
    }

    #[test]
    fn errors_display_with_the_file_name() {
        let errors = ConfigErrors {
            path: "/etc/xlb.toml".into(),
            errors: vec![
                ConfigError {
                    line: 3,
                    column: 7,
                    message: "bad".into(),
                },
                ConfigError {
                    line: 0,
                    column: 0,
                    message: "worse".into(),
                },
            ],
        };
        assert_eq!(
            errors.to_string(),
            "/etc/xlb.toml:3:7: bad\n/etc/xlb.toml: worse"
        );
    }

    fn with_service_keys(keys: &str) -> String {
        format!(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nlisten = \"198.18.100.1:80\"\nprotocol = \"tcp\"\nbackends = [ {{ address = \"198.18.1.11:8080\" }} ]\n{keys}\n"
        )
    }

    #[test]
    fn health_and_load_as_in_the_documentation() {
        let text = r#"
interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080", check_port = 8081, agent_port = 9778 }, { address = "198.18.1.12:8080" } ]
health = { check = "http", path = "/", expect = "200-399", interval = "500ms", timeout = "300ms", rise = 2, fall = 3, slowstart = "5s" }
load = { agent_port = 9777, interval = "1s", overload_below = "20%", max_flows = 10000 }
"#;
        let service = &Config::parse(text).unwrap().services[0];
        assert_eq!(
            service.health,
            HealthConfig {
                check: HealthCheck::Http {
                    path: "/".into(),
                    expect: vec![(200, 399)],
                    host: None
                },
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(300),
                rise: 2,
                fall: 3,
                slowstart: Some(Duration::from_secs(5)),
            }
        );
        let load = service.load.as_ref().unwrap();
        assert_eq!(load.agent_port, Some(9777));
        assert_eq!(load.interval, Duration::from_secs(1));
        assert_eq!(load.overload_below, Some(20));
        assert_eq!(load.max_flows, Some(10_000));
        let (first, second) = (&service.backends[0], &service.backends[1]);
        assert_eq!(first.check_address(), "198.18.1.11:8081".parse().unwrap());
        assert_eq!(second.check_address(), "198.18.1.12:8080".parse().unwrap());
        assert_eq!(
            load.agent_address(first),
            Some("198.18.1.11:9778".parse().unwrap())
        );
        assert_eq!(
            load.agent_address(second),
            Some("198.18.1.12:9777".parse().unwrap())
        );
    }

    #[test]
    fn health_defaults_depend_on_the_protocol() {
        let config = Config::parse(VALID).unwrap();
        assert_eq!(config.services[0].health.check, HealthCheck::Tcp);
        assert_eq!(config.services[0].health.interval, Duration::from_secs(2));
        assert_eq!(
            (
                config.services[0].health.rise,
                config.services[0].health.fall
            ),
            (2, 3)
        );
        assert_eq!(
            config.services[1].health.check,
            HealthCheck::None,
            "UDP has no default check"
        );
        assert_eq!(config.services[0].load, None);
    }

    #[test]
    fn udp_and_http_checks() {
        let udp = Config::parse(&with_service_keys(
            r#"health = { check = "udp", send = "ping", expect = "pong", interval = "1s", timeout = "1s" }"#,
        ))
        .unwrap();
        assert_eq!(
            udp.services[0].health.check,
            HealthCheck::Udp {
                send: b"ping".to_vec(),
                expect: Some(b"pong".to_vec())
            }
        );
        let http = Config::parse(&with_service_keys(
            r#"health = { check = "http", path = "/healthz", expect = "200,204,301-302", host = "app.example" }"#,
        ))
        .unwrap();
        assert_eq!(
            http.services[0].health.check,
            HealthCheck::Http {
                path: "/healthz".into(),
                expect: vec![(200, 200), (204, 204), (301, 302)],
                host: Some("app.example".into()),
            }
        );
    }

    #[test]
    fn bad_health_and_load_settings_are_reported() {
        for (keys, problem) in [
            (r#"health = { check = "icmp" }"#, "unknown check \"icmp\""),
            (r#"health = { interval = "1s" }"#, "missing key `check`"),
            (
                r#"health = { check = "tcp", interval = "soon" }"#,
                "\"soon\" is not a duration",
            ),
            (
                r#"health = { check = "tcp", interval = "1ms" }"#,
                "is out of range 10ms..=1h",
            ),
            (
                r#"health = { check = "tcp", interval = "1s", timeout = "2s" }"#,
                "timeout 2s is longer than the interval 1s",
            ),
            (
                r#"health = { check = "tcp", rise = 0 }"#,
                "rise: 0 is out of range 1..=100",
            ),
            (
                r#"health = { check = "tcp", fall = 1000 }"#,
                "fall: 1000 is out of range",
            ),
            (
                r#"health = { check = "tcp", path = "/" }"#,
                "`path` does not apply to check = \"tcp\"",
            ),
            (
                r#"health = { check = "http", send = "x" }"#,
                "`send` does not apply",
            ),
            (
                r#"health = { check = "http", expect = "2xx" }"#,
                "\"2xx\" is not an HTTP status",
            ),
            (
                r#"health = { check = "http", expect = "399-200" }"#,
                "range 399-200 is empty",
            ),
            (
                r#"health = { check = "http", path = "health" }"#,
                "must start with '/'",
            ),
            (r#"health = { check = "udp" }"#, "a udp check needs `send`"),
            (
                r#"health = { check = "tcp", slowstart = "forever" }"#,
                "slowstart",
            ),
            (
                r#"health = { check = "tcp", retries = 3 }"#,
                "unknown field `retries`",
            ),
            (r#"load = { interval = "1s" }"#, "set `agent_port`"),
            (
                r#"load = { max_flows = 10, overload_below = "20%" }"#,
                "`overload_below` compares the agents' weights",
            ),
            (
                r#"load = { agent_port = 70000 }"#,
                "agent_port: 70000 is not a port",
            ),
            (
                r#"load = { agent_port = 9777, overload_below = "20" }"#,
                "is not a percentage",
            ),
            (
                r#"load = { agent_port = 9777, overload_below = "120%" }"#,
                "is not a percentage",
            ),
            (r#"load = { max_flows = 0 }"#, "max_flows 0 is out of range"),
        ] {
            let errors = errors_of(&with_service_keys(keys));
            assert!(
                errors.iter().any(|e| e.contains(problem)),
                "{keys}: expected {problem:?} in {errors:#?}"
            );
        }
        let agent_without_load = VALID.replace(
            "{ address = \"198.18.1.11:8080\" }",
            "{ address = \"198.18.1.11:8080\", agent_port = 9777 }",
        );
        assert!(errors_of(&agent_without_load)[0].contains("has no `load` checks"));
    }

    const POOLS: &str = r#"
interfaces = ["eth0"]

[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
default_pool = "jp"
client_prefixes = { "198.18.0.0/25" = "kr", "198.18.0.128/25" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.13:8080" } ]
fallback = ["kr"]
"#;

    #[test]
    fn pools_with_fallbacks_and_client_prefixes() {
        let dir = std::env::temp_dir().join(format!("xlb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("regions.txt"),
            "# more\n198.18.5.0/24 jp\n198.18.6.7 kr\n",
        )
        .unwrap();
        let text = POOLS.replace(
            "default_pool = \"jp\"",
            "default_pool = \"jp\"\nclient_prefix_file = \"regions.txt\"",
        );
        let config = Config::parse_in(&text, &dir).unwrap();
        let video = &config.services[0];
        let names: Vec<&str> = video.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["kr", "jp"]);
        assert_eq!(video.pools[0].fallback, [1]);
        assert_eq!(video.pools[1].fallback, [0]);
        assert_eq!(video.default_pool, 1);
        let pools: Vec<usize> = video.backends.iter().map(|b| b.pool).collect();
        assert_eq!(pools, [0, 0, 1]);
        let prefixes: Vec<(String, usize)> = video
            .client_prefixes
            .iter()
            .map(|(net, pool)| (net.to_string(), *pool))
            .collect();
        assert_eq!(
            prefixes,
            [
                ("198.18.0.0/25".to_owned(), 0),
                ("198.18.0.128/25".to_owned(), 1),
                ("198.18.5.0/24".to_owned(), 1),
                ("198.18.6.7/32".to_owned(), 0)
            ]
        );
        // A service without pools has one, "default", with every backend.
        let plain = Config::parse(VALID).unwrap();
        assert_eq!(plain.services[0].pools.len(), 1);
        assert_eq!(plain.services[0].pools[0].name, DEFAULT_POOL_NAME);

        std::fs::write(
            dir.join("regions.txt"),
            "198.18.5.0/24 jp\n198.18.5.0/33 jp\nfd00::/8 kr\n198.18.7.0/24 us\n",
        )
        .unwrap();
        let errors = errors_of_in(&text, &dir);
        let file = dir.join("regions.txt").display().to_string();
        assert!(
            errors[0].contains(&format!("{file}:2: \"198.18.5.0/33\" is not a prefix")),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 1, "a bad line stops the file: {errors:?}");
        std::fs::write(
            dir.join("regions.txt"),
            "fd00::/8 kr\n198.18.7.0/24 us\n198.18.0.0/25 kr\n",
        )
        .unwrap();
        let errors = errors_of_in(&text, &dir);
        assert!(
            errors[0].contains(&format!(
                "{file}:1: fd00::/8 is not of the service's address family"
            )),
            "{errors:?}"
        );
        assert!(
            errors[1].contains(&format!("{file}:2: 198.18.7.0/24: \"us\" is not a pool")),
            "{errors:?}"
        );
        assert!(
            errors[2].contains(&format!(
                "{file}:3: 198.18.0.0/25 is listed twice (first at line 10)"
            )),
            "{errors:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let errors = errors_of_in(&text, &dir);
        assert!(
            errors[0].contains("client_prefix_file") && errors[0].contains("No such file"),
            "{errors:?}"
        );
    }

    fn errors_of_in(text: &str, dir: &Path) -> Vec<String> {
        Config::parse_in(text, dir)
            .unwrap_err()
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect()
    }

    #[test]
    fn a_long_bad_prefix_table_is_reported_briefly() {
        let entries: Vec<String> = (0..25)
            .map(|i| format!("\"198.18.{i}.1/24\" = \"kr\""))
            .collect();
        let text = POOLS.replace(
            "\"198.18.0.0/25\" = \"kr\", \"198.18.0.128/25\" = \"jp\"",
            &entries.join(", "),
        );
        let errors = errors_of(&text);
        let prefix_errors = errors
            .iter()
            .filter(|e| e.contains("client_prefixes"))
            .count();
        assert_eq!(prefix_errors, 11, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("15 more bad entries")),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_pools_are_reported() {
        let cases = [
            (
                POOLS.replace("fallback = [\"jp\"]", "fallback = [\"us\"]"),
                "fallback \"us\" is not a pool of the service",
            ),
            (
                POOLS.replace("fallback = [\"jp\"]", "fallback = [\"kr\"]"),
                "a pool cannot fall back to itself",
            ),
            (
                POOLS.replace("fallback = [\"jp\"]", "fallback = [\"jp\", \"jp\"]"),
                "fallback \"jp\" is listed twice",
            ),
            (
                POOLS.replace("name = \"jp\"", "name = \"kr\""),
                "pool \"kr\" is defined twice",
            ),
            (
                POOLS.replace("198.18.1.13:8080", "198.18.1.12:8080"),
                "backend 198.18.1.12:8080 is already in pool \"kr\"",
            ),
            (
                POOLS.replace("default_pool = \"jp\"", "default_pool = \"us\""),
                "default_pool \"us\" is not a pool",
            ),
            (
                POOLS.replace(
                    "\"198.18.0.128/25\" = \"jp\"",
                    "\"198.18.0.128/25\" = \"us\"",
                ),
                "\"us\" is not a pool of the service",
            ),
            (
                POOLS.replace("\"198.18.0.128/25\" = \"jp\"", "\"fd00::/64\" = \"jp\""),
                "fd00::/64 is not of the service's address family",
            ),
            (
                POOLS.replace(
                    "\"198.18.0.128/25\" = \"jp\"",
                    "\"198.18.0.129/25\" = \"jp\"",
                ),
                "did you mean \"198.18.0.128/25\"",
            ),
            (
                POOLS.replace(
                    "protocol = \"tcp\"",
                    "protocol = \"tcp\"\nbackends = [ { address = \"198.18.1.9:80\" } ]",
                ),
                "`backends` and `[[service.pool]]` exclude each other",
            ),
            (
                VALID.replace(
                    "scheduler = \"round-robin\"",
                    "client_prefixes = { \"198.18.0.0/24\" = \"default\" }",
                ),
                "client prefixes choose among `[[service.pool]]`s, and the service has none",
            ),
        ];
        for (text, expected) in cases {
            let errors = errors_of(&text);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "expected {expected:?} in {errors:?}"
            );
        }
    }

    /// The documented limits are config errors, not surprises at run time.
    #[test]
    fn limits_are_enforced() {
        let service = |i: usize, backends: usize| {
            let list: Vec<String> = (0..backends)
                .map(|b| format!("{{ address = \"198.19.{}.{}:80\" }}", b / 250, 1 + b % 250))
                .collect();
            format!(
                "[[service]]\nname = \"s{i}\"\nlisten = \"198.18.{}.{}:{}\"\nprotocol = \"tcp\"\nbackends = [ {} ]\n",
                100 + i / 60_000,
                1 + (i / 250) % 250,
                1 + i % 250,
                list.join(", ")
            )
        };
        let config =
            |services: Vec<String>| format!("interfaces = [\"eth0\"]\n{}", services.concat());
        let errors = |text: String| -> String {
            Config::parse(&text)
                .unwrap_err()
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("\n")
        };

        let too_many_backends = errors(config(vec![service(0, 1_025)]));
        assert!(
            too_many_backends.contains("1025 backends, at most 1024"),
            "{too_many_backends}"
        );
        assert!(Config::parse(&config(vec![service(0, 1_024)])).is_ok());

        let services = (0..limits::MAX_SERVICES as usize + 1)
            .map(|i| service(i, 1))
            .collect();
        let too_many_services = errors(config(services));
        assert!(
            too_many_services.contains("too many services: at most 16384"),
            "{too_many_services}"
        );

        let services = (0..65).map(|i| service(i, 1_024)).collect();
        let too_many_in_all = errors(config(services));
        assert!(
            too_many_in_all.contains("66560 backends in all: at most 65536"),
            "{too_many_in_all}"
        );
    }

    #[test]
    fn pin_path_and_metrics() {
        let text = format!("pin_path = \"/sys/fs/bpf/lb1\"\nmetrics = \"127.0.0.1:9100\"\n{VALID}");
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.pin_path, PathBuf::from("/sys/fs/bpf/lb1"));
        assert_eq!(config.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        let bad = format!("pin_path = \"xlb\"\nmetrics = \"localhost\"\n{VALID}");
        let errors = errors_of(&bad);
        assert!(
            errors[0].contains("pin_path: \"xlb\" must be an absolute path"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("metrics: \"localhost\" is not an address"),
            "{errors:?}"
        );
    }
}
