//! A service: its name, address, protocol and scheduler, its backends, and the rules that tie
//! its parts together.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use lb_common::consts::limits;
use toml::Spanned;

use super::{Place, Validator, earlier_line, not_an_address};
use crate::config::{
    model::{
        BackendConfig, CheckVia, DEFAULT_DRAIN_TIMEOUT, DEFAULT_POOL_NAME, Forwarding, LoadConfig,
        MAX_DRAIN_TIMEOUT, MAX_PERSISTENCE, OnDown, PoolConfig, Protocol, ServiceConfig,
    },
    raw::{Field, RawBackend, RawPool, RawService},
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
        let name = self.service_name(raw.name, span);
        let place = Place::service(&name);
        let protocol = self.protocol(raw.protocol, span, &place);
        let listen = self.listen(raw.listen, span, &place);
        let (backends, pools) =
            self.backends_or_pools(raw.backends, raw.pool, span, &place, listen);
        let default_pool = self.default_pool(raw.default_pool, &pools, &place);
        let client_prefixes = self.client_prefixes(
            raw.client_prefixes,
            raw.client_prefix_file,
            &place,
            listen,
            &pools,
        );
        self.prefixes_have_pools(&client_prefixes, &pools, span, &place);
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
        let health = self.health(raw.health, protocol, forwarding, &place);
        if health.via == CheckVia::Tunnel
            && let Some(announce) = raw.announce.as_ref().filter(|a| *a.get_ref())
        {
            self.error(&announce.span(), format!("{place}: announce = true cannot go with health via = \"tunnel\": announcing makes the VIP an address of this host, and the host's packets to its own addresses never leave it; check via = \"direct\""));
        }
        let on_down = self.leaf(raw.on_down, || format!("{place}:"), OnDown::Keep);
        let drain_timeout = self.duration_or(
            &raw.drain_timeout,
            &format!("{place}: drain_timeout"),
            DEFAULT_DRAIN_TIMEOUT,
            Duration::ZERO..=MAX_DRAIN_TIMEOUT,
        );
        let persistence = raw.persistence.as_ref().and_then(|value| {
            let what = format!("{place}: persistence");
            let persistence =
                self.duration(value, &what, Duration::from_secs(1)..=MAX_PERSISTENCE)?;
            Some(Duration::from_secs(persistence.as_secs()))
        });
        let passive = match forwarding {
            Forwarding::Nat => self.passive(raw.passive, protocol, &place),
            Forwarding::Dsr | Forwarding::Ipip | Forwarding::Gue => None,
        };
        let admission = raw
            .admission
            .map(|admission| self.admission(admission, &place));
        self.load_has_a_source(load.as_ref(), &backends, span, &place);
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
            drain_timeout,
            persistence,
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

    /// A service's `name`: required, and a [`valid_name`].
    fn service_name(&mut self, name: Option<Spanned<String>>, span: &Range<usize>) -> String {
        let Some(name) = name else {
            self.error(span, "service: missing key `name`".into());
            return String::new();
        };
        let value = name.get_ref();
        if !valid_name(value) {
            self.error(
                &name.span(),
                format!(
                    "service name {value:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
                ),
            );
        }
        value.clone()
    }

    /// A service's `protocol`: required, "tcp" or "udp".
    fn protocol(&mut self, field: Field<Protocol>, span: &Range<usize>, place: &Place) -> Protocol {
        if field.is_none() {
            self.error(
                span,
                format!("{place}: missing key `protocol` (\"tcp\" or \"udp\")"),
            );
            return Protocol::Tcp;
        }
        self.leaf(field, || format!("{place}:"), Protocol::Tcp)
    }

    /// A service's `listen`: required, an [`Self::endpoint`].
    fn listen(
        &mut self,
        listen: Option<Spanned<String>>,
        span: &Range<usize>,
        place: &Place,
    ) -> Option<SocketAddr> {
        let Some(listen) = listen else {
            self.error(span, format!("{place}: missing key `listen` (the virtual IP and port, e.g. \"198.18.100.1:80\")"));
            return None;
        };
        self.endpoint(&listen, &format!("{place}: listen"))
    }

    /// A service's backends, either in `backends` (one default pool) or in
    /// `[[service.pool]]`s, never both; at most `MAX_BACKENDS_PER_SERVICE`.
    fn backends_or_pools(
        &mut self,
        backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
        pools: Option<Spanned<Vec<Spanned<RawPool>>>>,
        span: &Range<usize>,
        place: &Place,
        listen: Option<SocketAddr>,
    ) -> (Vec<BackendConfig>, Vec<PoolConfig>) {
        let (backends, pools) = match (backends, pools) {
            (Some(backends), None) => {
                let backends = self.backends(backends, place, listen, 0);
                let pool = PoolConfig {
                    name: DEFAULT_POOL_NAME.into(),
                    fallback: Vec::new(),
                };
                (backends, vec![pool])
            }
            (None, Some(pools)) => self.pools(pools, place, listen),
            (Some(backends), Some(pools)) => {
                self.error(&backends.span(), format!("{place}: `backends` and `[[service.pool]]` exclude each other: put every backend in a pool"));
                // The pools are checked all the same, so that what names them is not taken
                // for wrong.
                self.pools(pools, place, listen)
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
        (backends, pools)
    }

    /// A service's `default_pool`: one of its pools (the first if absent).
    fn default_pool(
        &mut self,
        name: Option<Spanned<String>>,
        pools: &[PoolConfig],
        place: &Place,
    ) -> usize {
        let Some(name) = name else {
            return 0;
        };
        pools
            .iter()
            .position(|p| p.name == *name.get_ref())
            .unwrap_or_else(|| {
                self.error(
                    &name.span(),
                    format!(
                        "{place}: default_pool {:?} is not a pool of the service",
                        name.get_ref()
                    ),
                );
                0
            })
    }

    /// That a service with client prefixes has `[[service.pool]]`s for them to choose among.
    fn prefixes_have_pools(
        &mut self,
        client_prefixes: &[(IpNet, usize)],
        pools: &[PoolConfig],
        span: &Range<usize>,
        place: &Place,
    ) {
        let has_pools =
            pools.len() > 1 || pools.first().is_some_and(|p| p.name != DEFAULT_POOL_NAME);
        if !has_pools && !client_prefixes.is_empty() {
            self.error(span, format!("{place}: client prefixes choose among `[[service.pool]]`s, and the service has none"));
        }
    }

    /// That a service's `load` checks have something to report the load (agents, on the
    /// service or its backends, or counted flows), and that a backend's `agent_port` has
    /// `load` checks to serve.
    fn load_has_a_source(
        &mut self,
        load: Option<&LoadConfig>,
        backends: &[BackendConfig],
        span: &Range<usize>,
        place: &Place,
    ) {
        let backend_agents = backends.iter().any(|b| b.agent_port.is_some());
        let Some(load) = load else {
            if backend_agents {
                self.error(
                    span,
                    format!(
                        "{place}: a backend sets `agent_port` but the service has no `load` checks"
                    ),
                );
            }
            return;
        };
        let has_agent = load.agent_port.is_some() || backend_agents;
        if !has_agent && load.max_flows.is_none() {
            self.error(span, format!("{place}: load: set `agent_port` (an agent reports the load) or `max_flows` (xlb counts active flows), or both"));
        }
        if load.overload_below.is_some() && !has_agent {
            self.error(span, format!("{place}: load: `overload_below` compares the agents' weights, so it needs `agent_port`"));
        }
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
            let address = self.backend_address(raw.address, &entry_span, place, listen, &mut seen);
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

    /// A backend's `address`: required, an [`Self::endpoint`] of the service's address family,
    /// and not listed before in the same list (`seen`: the earlier addresses' positions).
    fn backend_address(
        &mut self,
        address: Option<Spanned<String>>,
        span: &Range<usize>,
        place: &Place,
        listen: Option<SocketAddr>,
        seen: &mut HashMap<SocketAddr, usize>,
    ) -> Option<SocketAddr> {
        let Some(address) = address else {
            self.error(span, format!("{place}: backend without `address`"));
            return None;
        };
        let parsed = self.endpoint(&address, &format!("{place}: backend"));
        if let (Some(backend), Some(vip)) = (parsed, listen)
            && backend.is_ipv4() != vip.is_ipv4()
        {
            self.error(&address.span(), format!("{place}: backend {backend} is not of the same address family as the service's {vip}"));
        }
        if let Some(backend) = parsed
            && let Some(first) = earlier_line(self.text, seen, backend, address.span().start)
        {
            self.error(
                &address.span(),
                format!("{place}: backend {backend} is listed twice (first at line {first})"),
            );
        }
        parsed
    }

    /// Parses `IP:port` and rejects addresses no flow can use; problems are reported as
    /// "`what`: ...".
    pub(super) fn endpoint(&mut self, value: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        let text = value.get_ref();
        let Ok(address) = text.parse::<SocketAddr>() else {
            let problem = not_an_address(text, "\"198.18.1.10:80\" or \"[fd00::10]:80\"");
            self.error(&value.span(), format!("{what}: {problem}"));
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
