//! Validation: from the file as read ([`super::raw`]) to a [`Config`], collecting every
//! problem with its position rather than stopping at the first. One concern per file: the
//! top-level keys here, services and their backends (`service`), health and load checks
//! (`health`), locality pools and client prefixes (`pools`), scheduler and forwarding
//! (`scaleout`).

mod health;
mod passive;
mod pools;
mod scaleout;
mod service;

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::consts::limits;
use toml::Spanned;

use super::{
    error::{ConfigError, Place, line_of, locate},
    model::{Config, DEFAULT_PIN_PATH, FlowTimeouts, Protocol, XdpMode},
    raw::{Checked, Field, Leaf, RawConfig, within},
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

/// Collects the problems of one file.
struct Validator<'a> {
    text: &'a str,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

/// The whole file: where a problem has no better position.
const WHOLE_FILE: Range<usize> = 0..0;

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

    fn config(&mut self, raw: RawConfig) -> Config {
        let interfaces = match raw.interfaces {
            None => {
                self.error(
                    &WHOLE_FILE,
                    "missing key `interfaces` (the interfaces to attach to, e.g. [\"eth0\"])"
                        .into(),
                );
                Vec::new()
            }
            Some(list) => self.interfaces(list),
        };
        let xdp_mode = self.leaf(raw.xdp_mode, || "xdp_mode:".into(), XdpMode::Auto);
        let flow_table_size = self
            .optional_leaf(raw.flow_table_size, || "flow_table_size:".into())
            .map_or(limits::DEFAULT_FLOW_TABLE_SIZE, |size| size.0 as u32);
        let flow_table_size_ipv6 = self
            .optional_leaf(raw.flow_table_size_ipv6, || "flow_table_size_ipv6:".into())
            .map_or(flow_table_size, |size| size.0 as u32);

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
                Duration::from_secs(10)..=Duration::from_secs(7 * 86_400),
            ),
            tcp_closing: self.duration_or(
                &raw.tcp_closing_timeout,
                "tcp_closing_timeout",
                defaults.tcp_closing,
                Duration::from_secs(1)..=Duration::from_secs(600),
            ),
            udp_idle: self.duration_or(
                &raw.udp_idle_timeout,
                "udp_idle_timeout",
                defaults.udp_idle,
                Duration::from_secs(1)..=Duration::from_secs(86_400),
            ),
        };

        if raw.service.is_empty() {
            self.error(
                &WHOLE_FILE,
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
            let place = Place::service(&service.name);
            if let Some(first) = names.get(&service.name) {
                self.error(
                    &span,
                    format!(
                        "{place}: the name is already used by the service at line {}",
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
                        "{place}: {} {} is already the service at line {}",
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
                &WHOLE_FILE,
                format!(
                    "{backends} backends in all: at most {} are supported",
                    limits::MAX_BACKENDS
                ),
            );
        }
        let announce = self.announce(raw.announce, &services);
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
