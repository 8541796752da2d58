//! A service: its name, address, protocol and scheduler, its backends, and the rules that tie
//! its parts together.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    sync::Arc,
};

use lb_common::consts::limits;
use toml::Spanned;

use super::{Place, Validator, line_of};
use crate::config::{
    model::{
        BackendConfig, DEFAULT_POOL_NAME, Forwarding, OnDown, PoolConfig, Protocol, ServiceConfig,
    },
    raw::{RawBackend, RawService},
};

/// Longest service or pool name.
pub(super) const MAX_NAME: usize = 64;

/// Whether `name` is a usable service or pool name: 1 to [`MAX_NAME`] letters, digits, '-',
/// '_' or '.'.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Validator<'_> {
    /// One `[[service]]`; `None` if it has a problem (reported).
    pub(super) fn service(
        &mut self,
        raw: RawService,
        span: &Range<usize>,
    ) -> Option<ServiceConfig> {
        let errors_before = self.errors.len();
        let name = match raw.name {
            None => {
                self.error(span, "service: missing key `name`".into());
                String::new()
            }
            Some(name) => {
                let value = name.get_ref();
                if !valid_name(value) {
                    self.error(&name.span(), format!("service name {value:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"));
                }
                value.clone()
            }
        };
        let place = Place::service(&name);
        let protocol = match raw.protocol {
            None => {
                self.error(
                    span,
                    format!("{place}: missing key `protocol` (\"tcp\" or \"udp\")"),
                );
                Protocol::Tcp
            }
            some => self.leaf(some, || format!("{place}:"), Protocol::Tcp),
        };
        let listen = match raw.listen {
            None => {
                self.error(span, format!("{place}: missing key `listen` (the virtual IP and port, e.g. \"198.18.100.1:80\")"));
                None
            }
            Some(listen) => self.endpoint(&listen, &format!("{place}: listen")),
        };
        let (backends, pools) = match (raw.backends, raw.pool) {
            (Some(backends), None) => {
                let backends = self.backends(backends, &place, listen, 0);
                let pool = PoolConfig {
                    name: DEFAULT_POOL_NAME.into(),
                    fallback: Vec::new(),
                };
                (backends, vec![pool])
            }
            (None, Some(pools)) => self.pools(pools, &place, listen),
            (Some(backends), Some(_)) => {
                self.error(&backends.span(), format!("{place}: `backends` and `[[service.pool]]` exclude each other: put every backend in a pool"));
                (Vec::new(), Vec::new())
            }
            (None, None) => {
                self.error(
                    span,
                    format!("{place}: missing key `backends` (or `[[service.pool]]`s)"),
                );
                (Vec::new(), Vec::new())
            }
        };
        if backends.len() > limits::MAX_BACKENDS_PER_SERVICE as usize {
            self.error(
                span,
                format!(
                    "{place}: {} backends, at most {} are supported",
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
                        "{place}: default_pool {:?} is not a pool of the service",
                        name.get_ref()
                    ),
                );
                0
            }),
        };
        let client_prefixes = self.client_prefixes(
            raw.client_prefixes,
            raw.client_prefix_file,
            &place,
            listen,
            &pools,
        );
        if !has_pools && !client_prefixes.is_empty() {
            self.error(span, format!("{place}: client prefixes choose among `[[service.pool]]`s, and the service has none"));
        }
        let health = self.health(raw.health, protocol, &place);
        let load = raw.load.map(|load| self.load(load, &place));
        let scheduler = self.scheduler(raw.scheduler, raw.maglev, backends.len(), &place);
        let passive_span = raw.passive.as_ref().map(Spanned::span);
        let forwarding = self.forwarding(
            raw.forwarding,
            &backends,
            listen.map(|l| l.port()),
            passive_span.as_ref(),
            &place,
        );
        let on_down = self.leaf(raw.on_down, || format!("{place}:"), OnDown::Keep);
        let passive = match forwarding {
            Forwarding::Nat => self.passive(raw.passive, protocol, &place),
            Forwarding::Dsr => None,
        };
        let admission = raw
            .admission
            .map(|admission| self.admission(admission, &place));
        match &load {
            None => {
                if backends.iter().any(|b| b.agent_port.is_some()) {
                    self.error(span, format!("{place}: a backend sets `agent_port` but the service has no `load` checks"));
                }
            }
            Some(load) => {
                let has_agent =
                    load.agent_port.is_some() || backends.iter().any(|b| b.agent_port.is_some());
                if !has_agent && load.max_flows.is_none() {
                    self.error(span, format!("{place}: load: set `agent_port` (an agent reports the load) or `max_flows` (xlb counts active flows), or both"));
                }
                if load.overload_below.is_some() && !has_agent {
                    self.error(span, format!("{place}: load: `overload_below` compares the agents' weights, so it needs `agent_port`"));
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
            forwarding,
            on_down,
            announce: raw.announce.is_some_and(Spanned::into_inner),
            backends,
            pools,
            default_pool,
            client_prefixes: Arc::new(client_prefixes),
            health,
            load,
            passive,
            admission,
        })
    }

    /// The backends of a service (or of one of its pools, index `pool`).
    pub(super) fn backends(
        &mut self,
        list: Spanned<Vec<Spanned<RawBackend>>>,
        place: &Place,
        listen: Option<SocketAddr>,
        pool: usize,
    ) -> Vec<BackendConfig> {
        let span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            let what = if place.in_pool() {
                "a pool"
            } else {
                "a service"
            };
            self.error(
                &span,
                format!("{place}: no backends; {what} needs at least one"),
            );
        }
        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for raw in list {
            let entry_span = raw.span();
            let raw = raw.into_inner();
            let address = match raw.address {
                None => {
                    self.error(&entry_span, format!("{place}: backend without `address`"));
                    None
                }
                Some(address) => {
                    let parsed = self.endpoint(&address, &format!("{place}: backend"));
                    if let (Some(backend), Some(vip)) = (parsed, listen)
                        && backend.is_ipv4() != vip.is_ipv4()
                    {
                        self.error(&address.span(), format!("{place}: backend {backend} is not of the same address family as the service's {vip}"));
                    }
                    if let Some(backend) = parsed {
                        if let Some(first) = seen.get(&backend) {
                            let first = line_of(self.text, *first);
                            self.error(&address.span(), format!("{place}: backend {backend} is listed twice (first at line {first})"));
                        } else {
                            seen.insert(backend, address.span().start);
                        }
                    }
                    parsed
                }
            };
            let weight = self
                .optional_leaf(raw.weight, || format!("{place}: weight"))
                .map_or(1, |w| w.0 as u32);
            let check_port = self
                .optional_leaf(raw.check_port, || format!("{place}: check_port:"))
                .map(|p| p.0);
            let agent_port = self
                .optional_leaf(raw.agent_port, || format!("{place}: agent_port:"))
                .map(|p| p.0);
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
                format!("{place}: every backend has weight 0, so no new flow could be placed"),
            );
        }
        backends
    }

    /// Parses `IP:port` and rejects addresses no flow can use; problems are reported as
    /// "`what`: ...".
    pub(super) fn endpoint(&mut self, value: &Spanned<String>, what: &str) -> Option<SocketAddr> {
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
