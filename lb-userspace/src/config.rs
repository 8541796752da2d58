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
};

use lb_common::consts::limits;
use serde::Deserialize;
use toml::Spanned;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces the XDP program attaches to.
    pub interfaces: Vec<String>,
    /// How the XDP program attaches.
    pub xdp_mode: XdpMode,
    /// Entries in each flow table (`FLOWS` and `REPLIES`).
    pub flow_table_size: u32,
    /// Virtual services, in file order.
    pub services: Vec<ServiceConfig>,
}

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic mode otherwise.
    Auto,
    /// Native mode only: fail if the driver does not support XDP.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
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
    /// Backends, in file order.
    pub backends: Vec<BackendConfig>,
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Address and port new flows are sent to.
    pub address: SocketAddr,
    /// Share of new flows relative to the other backends (0: none).
    pub weight: u32,
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
        Self::parse(&text).map_err(|errors| ConfigErrors {
            path: path.to_owned(),
            errors,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigError>> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            let span = error.span().unwrap_or(0..0);
            vec![locate(text, &span, error.message().trim_end().to_owned())]
        })?;
        let mut validator = Validator {
            text,
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
    flow_table_size: Option<Spanned<i64>>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<Spanned<String>>,
    weight: Option<Spanned<i64>>,
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;
/// Longest service name.
const MAX_SERVICE_NAME: usize = 64;
/// Smallest flow table: below this the LRU evicts live flows under trivial load.
const MIN_FLOW_TABLE_SIZE: i64 = 1_024;
/// Largest flow table (each entry costs about 150 bytes of kernel memory, twice).
const MAX_FLOW_TABLE_SIZE: i64 = 1 << 26;

struct Validator<'a> {
    text: &'a str,
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
                other => {
                    self.error(&mode.span(), format!("xdp_mode: unknown mode {other:?}, expected \"auto\", \"native\" or \"generic\""));
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
                        "service {:?}: the name is already used by the service at line {first}",
                        service.name
                    ),
                );
            } else {
                names.insert(service.name.clone(), line_of(self.text, span.start));
            }
            let listener = (service.listen, service.protocol);
            if let Some(first) = listeners.get(&listener) {
                self.error(
                    &span,
                    format!(
                        "service {:?}: {} {} is already the service at line {first}",
                        service.name, service.protocol, service.listen
                    ),
                );
            } else {
                listeners.insert(listener, line_of(self.text, span.start));
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
            flow_table_size,
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
                if value.is_empty()
                    || value.len() > MAX_SERVICE_NAME
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
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
        let backends = match raw.backends {
            None => {
                self.error(span, format!("{label}: missing key `backends`"));
                Vec::new()
            }
            Some(backends) => self.backends(backends, &label, listen),
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(ServiceConfig {
            name,
            listen: listen?,
            protocol,
            scheduler,
            backends,
        })
    }

    fn backends(
        &mut self,
        list: Spanned<Vec<Spanned<RawBackend>>>,
        label: &str,
        listen: Option<SocketAddr>,
    ) -> Vec<BackendConfig> {
        let span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            self.error(
                &span,
                format!("{label}: no backends; a service needs at least one"),
            );
        }
        if list.len() > limits::MAX_BACKENDS_PER_SERVICE as usize {
            self.error(
                &span,
                format!(
                    "{label}: {} backends, at most {} are supported",
                    list.len(),
                    limits::MAX_BACKENDS_PER_SERVICE
                ),
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
                            self.error(&address.span(), format!("{label}: backend {backend} is listed twice (first at line {first})"));
                        } else {
                            seen.insert(backend, line_of(self.text, address.span().start));
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
            if let Some(address) = address {
                backends.push(BackendConfig { address, weight });
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
        } else if ip.is_ipv6() {
            Some("IPv6 is not supported yet; this version balances IPv4 only")
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
                    weight: 1
                },
                BackendConfig {
                    address: "198.18.1.12:8080".parse().unwrap(),
                    weight: 2
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
            ("[fd00::1]:80", "IPv6 is not supported yet"),
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
}
