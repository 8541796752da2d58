//! Validation: from the file as read ([`super::raw`]) to a [`Config`], collecting every
//! problem with its position rather than stopping at the first. One concern per file: the
//! top-level keys here, services and their backends (`service`), health and load checks
//! (`health`), locality pools and client prefixes (`pools`), scheduler and forwarding
//! (`scaleout`).

mod fleet;
mod health;
mod passive;
mod pools;
mod scaleout;
mod service;
mod tunnel;

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::Hash,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::consts::limits;
use toml::Spanned;

use super::{
    error::{ConfigError, Place, line_of, locate},
    model::{Config, DEFAULT_PIN_PATH, FlowTimeouts, Protocol, ServiceConfig, XdpMode},
    raw::{Checked, Field, FlowTableSize, Leaf, RawConfig, RawService, within},
};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;
/// Bounds of check and agent intervals.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Validates `raw`, read from `text` (relative paths are relative to `base`): the config, or
/// every problem found, in file order.
pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    base: &Path,
) -> Result<Config, Vec<ConfigError>> {
    let mut validator = Validator {
        text,
        base,
        errors: Vec::new(),
    };
    let config = validator.config(raw);
    if validator.errors.is_empty() {
        Ok(config)
    } else {
        let mut errors = validator.errors;
        errors.sort_by_key(|error| (error.line, error.column));
        Err(errors)
    }
}

/// Why `text`, which does not parse as an address with a port, is not one (`example`: what
/// one looks like here): a port out of range, an IPv6 address without brackets, no port, or
/// no address at all.
pub(super) fn not_an_address(text: &str, example: &str) -> String {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        // "fd00::10:80": the last group may be meant as the port.
        if let Some((ip, port)) = text.rsplit_once(':')
            && ip.parse::<std::net::Ipv6Addr>().is_ok()
            && port.parse::<u16>().is_ok_and(|port| port > 0)
        {
            return format!(
                "{text:?} is an IPv6 address without a port: an IPv6 address with a port is written in brackets, like \"[{ip}]:{port}\""
            );
        }
        let _ = ip;
        return format!("{text:?} has no port: write it like {example}");
    }
    if let Some((ip, port)) = text.rsplit_once(':') {
        let ip = ip
            .strip_prefix('[')
            .and_then(|ip| ip.strip_suffix(']'))
            .unwrap_or(ip);
        if let (Ok(ip), Ok(port)) = (ip.parse::<std::net::IpAddr>(), port.parse::<u64>()) {
            if ip.is_ipv6() && !text.starts_with('[') {
                return format!(
                    "{text:?}: an IPv6 address with a port is written in brackets, like \"[{ip}]:{port}\""
                );
            }
            return format!("{text:?}: port {port} is out of range 1..=65535");
        }
    }
    format!("{text:?} is not an address with a port, like {example}")
}

/// Collects the problems of one file.
struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

/// The whole file: where a problem has no better position.
const WHOLE_FILE: Range<usize> = 0..0;

/// Whether `name` is a name Linux could give an interface: 1 to [`MAX_INTERFACE_NAME`]
/// characters, not "." or "..", without '/', ':', spaces or control characters.
fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// The line of `key`'s first occurrence if `seen` has one; otherwise `None`, after recording
/// `key` at byte `at` of `text`. For messages like "... is listed twice (first at line 12)".
fn earlier_line<K: Eq + Hash>(
    text: &str,
    seen: &mut HashMap<K, usize>,
    key: K,
    at: usize,
) -> Option<usize> {
    match seen.entry(key) {
        Entry::Occupied(first) => Some(line_of(text, *first.get())),
        Entry::Vacant(entry) => {
            entry.insert(at);
            None
        }
    }
}

impl Validator<'_> {
    fn error(&mut self, span: &Range<usize>, message: String) {
        self.errors.push(locate(self.text, span, message));
    }

    /// The value of a typed leaf, or `default` after reporting what is wrong with it, as
    /// "`prefix` `problem`" (the prefix names the key: "xdp_mode:", "service \"web\": weight").
    fn leaf<T: Leaf>(&mut self, field: Field<T>, prefix: impl FnOnce() -> String, default: T) -> T {
        match field {
            None => default,
            Some(field) => {
                let span = field.span();
                match field.into_inner() {
                    Checked(Ok(value)) => value,
                    Checked(Err(problem)) => {
                        self.error(&span, format!("{} {problem}", prefix()));
                        default
                    }
                }
            }
        }
    }

    /// Like [`Self::leaf`], for a leaf without a default: `None` if absent or wrong.
    fn optional_leaf<T: Leaf>(
        &mut self,
        field: Field<T>,
        prefix: impl FnOnce() -> String,
    ) -> Option<T> {
        let field = field?;
        let span = field.span();
        match field.into_inner() {
            Checked(Ok(value)) => Some(value),
            Checked(Err(problem)) => {
                self.error(&span, format!("{} {problem}", prefix()));
                None
            }
        }
    }

    /// The whole file: its top-level keys, then its services and what depends on them.
    fn config(&mut self, raw: RawConfig) -> Config {
        let interfaces = self.interfaces(raw.interfaces);
        let xdp_mode = self.leaf(raw.xdp_mode, || "xdp_mode:".into(), XdpMode::Auto);
        let (flow_table_size, flow_table_size_ipv6) =
            self.flow_table_sizes(raw.flow_table_size, raw.flow_table_size_ipv6);
        let pin_path = self.pin_path(raw.pin_path);
        let metrics = self.metrics(raw.metrics);
        let host_ports = self.host_ports(raw.host_ports);
        let flow_timeouts = self.flow_timeouts(
            &raw.tcp_idle_timeout,
            &raw.tcp_closing_timeout,
            &raw.udp_idle_timeout,
        );
        // Whether the file asks to announce, also by a service that turns out invalid.
        let declared = raw.service.iter().any(|service| {
            let announce = service.get_ref().announce.as_ref();
            announce.is_some_and(|announce| *announce.get_ref())
        });
        let services = self.services(raw.service);
        let announce = self.announce(raw.announce, &services, declared);
        let fleet = raw
            .fleet
            .and_then(|fleet| self.fleet(fleet, &services, &flow_timeouts));
        let tunnel = self.tunnel(raw.tunnel, &services);
        Config {
            interfaces,
            xdp_mode,
            announce,
            assume_complete_checksums: raw.assume_complete_checksums.unwrap_or(false),
            veth_peer_redirect: raw.veth_peer_redirect.unwrap_or(true),
            flow_table_size,
            flow_table_size_ipv6,
            pin_path,
            metrics,
            host_ports,
            flow_timeouts,
            services,
            fleet,
            tunnel,
        }
    }

    /// `interfaces`: required, 1 to `MAX_INTERFACES` valid names, none listed twice.
    fn interfaces(&mut self, list: Option<Spanned<Vec<Spanned<String>>>>) -> Vec<String> {
        let Some(list) = list else {
            self.error(
                &WHOLE_FILE,
                "missing key `interfaces` (the interfaces to attach to, e.g. [\"eth0\"])".into(),
            );
            return Vec::new();
        };
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
            if !valid_interface_name(value) {
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

    /// `flow_table_size`, and `flow_table_size_ipv6`, which defaults to it.
    fn flow_table_sizes(
        &mut self,
        ipv4: Field<FlowTableSize>,
        ipv6: Field<FlowTableSize>,
    ) -> (u32, u32) {
        let ipv4 = self
            .optional_leaf(ipv4, || "flow_table_size:".into())
            .map_or(limits::DEFAULT_FLOW_TABLE_SIZE, |size| size.0 as u32);
        let ipv6 = self
            .optional_leaf(ipv6, || "flow_table_size_ipv6:".into())
            .map_or(ipv4, |size| size.0 as u32);
        (ipv4, ipv6)
    }

    /// `pin_path`: an absolute path without "..".
    fn pin_path(&mut self, path: Option<Spanned<String>>) -> PathBuf {
        let Some(path) = path else {
            return PathBuf::from(DEFAULT_PIN_PATH);
        };
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

    /// `metrics`: an address with a port other than 0.
    fn metrics(&mut self, address: Option<Spanned<String>>) -> Option<SocketAddr> {
        let address = address?;
        match address.get_ref().parse::<SocketAddr>() {
            Ok(parsed) if parsed.port() != 0 => Some(parsed),
            Ok(_) => {
                self.error(
                    &address.span(),
                    "metrics: port 0 is not a usable port".into(),
                );
                None
            }
            Err(_) => {
                let problem = not_an_address(address.get_ref(), "\"127.0.0.1:9100\"");
                self.error(&address.span(), format!("metrics: {problem}"));
                None
            }
        }
    }

    /// `host_ports`: each "tcp/PORT" or "udp/PORT", once, at most
    /// `limits::MAX_HOST_PORTS`.
    fn host_ports(&mut self, raw: Option<Spanned<Vec<Spanned<String>>>>) -> Vec<(Protocol, u16)> {
        let Some(raw) = raw else {
            return Vec::new();
        };
        let max = limits::MAX_HOST_PORTS as usize;
        if raw.get_ref().len() > max {
            self.error(&raw.span(), format!("host_ports: at most {max} ports"));
        }
        let mut ports = Vec::new();
        for entry in raw.into_inner() {
            let text = entry.get_ref();
            let parsed = text.split_once('/').and_then(|(protocol, port)| {
                let protocol = match protocol {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return None,
                };
                Some((protocol, port.parse::<u16>().ok().filter(|p| *p != 0)?))
            });
            match parsed {
                None => self.error(
                    &entry.span(),
                    format!("host_ports: {text:?} is not a protocol and a port, like \"tcp/22\""),
                ),
                Some(port) if ports.contains(&port) => {
                    self.error(
                        &entry.span(),
                        format!("host_ports: {text:?} is listed twice"),
                    );
                }
                Some(port) => ports.push(port),
            }
        }
        ports
    }

    /// The flows' idle timeouts (`tcp_idle_timeout`, `tcp_closing_timeout`,
    /// `udp_idle_timeout`), each within its bounds.
    fn flow_timeouts(
        &mut self,
        tcp_idle: &Option<Spanned<String>>,
        tcp_closing: &Option<Spanned<String>>,
        udp_idle: &Option<Spanned<String>>,
    ) -> FlowTimeouts {
        let defaults = FlowTimeouts::default();
        FlowTimeouts {
            tcp_idle: self.duration_or(
                tcp_idle,
                "tcp_idle_timeout",
                defaults.tcp_idle,
                Duration::from_secs(10)..=Duration::from_secs(7 * 86_400),
            ),
            tcp_closing: self.duration_or(
                tcp_closing,
                "tcp_closing_timeout",
                defaults.tcp_closing,
                Duration::from_secs(1)..=Duration::from_secs(600),
            ),
            udp_idle: self.duration_or(
                udp_idle,
                "udp_idle_timeout",
                defaults.udp_idle,
                Duration::from_secs(1)..=Duration::from_secs(86_400),
            ),
        }
    }

    /// The `[[service]]`s that are valid, in file order: at least one and at most
    /// `MAX_SERVICES`, each with its own name and listener, at most `MAX_BACKENDS` backends in
    /// all.
    fn services(&mut self, list: Vec<Spanned<RawService>>) -> Vec<ServiceConfig> {
        self.service_count(&list);
        self.service_names_are_unique(&list);
        let mut services = Vec::new();
        let mut listeners = HashMap::new();
        let mut spans = Vec::new();
        for raw in list {
            let span = raw.span();
            let Some(service) = self.service(raw.into_inner(), &span) else {
                continue;
            };
            self.listener_is_unique(&service, &span, &mut listeners);
            services.push(service);
            spans.push(span);
        }
        self.backend_count(&services);
        self.backends_are_not_vips(&services, &spans);
        services
    }

    /// That no backend's address is a VIP of the config (`spans`: each service's position):
    /// the program balances or drops whatever is sent to a VIP, so a backend there is never
    /// reached.
    fn backends_are_not_vips(&mut self, services: &[ServiceConfig], spans: &[Range<usize>]) {
        let mut vips: HashMap<std::net::IpAddr, &str> = HashMap::new();
        for service in services {
            vips.entry(service.listen.ip()).or_insert(&service.name);
        }
        for (service, span) in services.iter().zip(spans) {
            for backend in &service.backends {
                if let Some(owner) = vips.get(&backend.address.ip()) {
                    let place = Place::service(&service.name);
                    self.error(
                        span,
                        format!(
                            "{place}: backend {} is on {}, a VIP of this config (service \
                             {owner:?} listens there): packets to a VIP are the balancer's, so \
                             this backend would never be reached",
                            backend.address,
                            backend.address.ip()
                        ),
                    );
                }
            }
        }
    }

    /// That there is at least one service, and at most `MAX_SERVICES`.
    fn service_count(&mut self, list: &[Spanned<RawService>]) {
        if list.is_empty() {
            self.error(
                &WHOLE_FILE,
                "no [[service]] defined: xlb would balance nothing".into(),
            );
        }
        if list.len() > limits::MAX_SERVICES as usize {
            self.error(
                &list[limits::MAX_SERVICES as usize].span(),
                format!(
                    "too many services: at most {} are supported",
                    limits::MAX_SERVICES
                ),
            );
        }
    }

    /// That no two services have one name, whether or not they are otherwise valid.
    fn service_names_are_unique(&mut self, list: &[Spanned<RawService>]) {
        let mut names = HashMap::new();
        for service in list {
            let Some(name) = &service.get_ref().name else {
                continue;
            };
            let span = service.span();
            if let Some(first) = earlier_line(self.text, &mut names, name.get_ref(), span.start) {
                let place = Place::service(name.get_ref());
                self.error(
                    &span,
                    format!("{place}: the name is already used by the service at line {first}"),
                );
            }
        }
    }

    /// That no earlier valid service has `service`'s address, port and protocol (`listeners`
    /// holds the earlier services' positions).
    fn listener_is_unique(
        &mut self,
        service: &ServiceConfig,
        span: &Range<usize>,
        listeners: &mut HashMap<(SocketAddr, Protocol), usize>,
    ) {
        let place = Place::service(&service.name);
        let listener = (service.listen, service.protocol);
        if let Some(first) = earlier_line(self.text, listeners, listener, span.start) {
            self.error(
                span,
                format!(
                    "{place}: {} {} is already the service at line {first}",
                    service.protocol, service.listen
                ),
            );
        }
    }

    /// That the services have at most `MAX_BACKENDS` backends in all.
    fn backend_count(&mut self, services: &[ServiceConfig]) {
        let backends: usize = services.iter().map(|service| service.backends.len()).sum();
        if backends > limits::MAX_BACKENDS as usize {
            self.error(
                &WHOLE_FILE,
                format!(
                    "{backends} backends in all: at most {} are supported",
                    limits::MAX_BACKENDS
                ),
            );
        }
    }

    /// A duration like "500ms" within `range`, or `None` after reporting the problem as
    /// "`what`: ...".
    fn duration(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let problem = match humantime::parse_duration(value.get_ref()) {
            Ok(duration) => {
                let shown = format!("{:?}", value.get_ref());
                let bound = |d: &Duration| humantime::format_duration(*d).to_string();
                match within(duration, &range, shown, bound) {
                    Ok(duration) => return Some(duration),
                    Err(problem) => problem,
                }
            }
            Err(error) => format!(
                "{:?} is not a duration like \"500ms\" or \"2s\" ({error})",
                value.get_ref()
            ),
        };
        self.error(&value.span(), format!("{what}: {problem}"));
        None
    }

    /// [`Self::duration`] for an optional key, with its default.
    fn duration_or(
        &mut self,
        value: &Option<Spanned<String>>,
        what: &str,
        default: Duration,
        range: std::ops::RangeInclusive<Duration>,
    ) -> Duration {
        value
            .as_ref()
            .and_then(|value| self.duration(value, what, range))
            .unwrap_or(default)
    }
}
