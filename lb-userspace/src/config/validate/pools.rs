//! A service's locality pools (`[[service.pool]]`) and the client prefixes that choose them.

use std::{collections::BTreeMap, collections::HashMap, net::SocketAddr, ops::Range};

use ipnet::IpNet;
use lb_common::consts::limits;
use toml::Spanned;

use super::{
    Place, Validator, WHOLE_FILE, line_of,
    service::{MAX_NAME, valid_name},
};
use crate::config::{
    model::{BackendConfig, PoolConfig},
    prefixes::{parse_prefix, parse_prefix_file},
    raw::{RawBackend, RawPool},
};

/// Bad client prefixes reported one by one, per source; the rest are counted.
const MAX_PREFIX_ERRORS: usize = 10;

/// A service's client prefixes as they are gathered from its sources (inline, then its file).
struct ClientPrefixes<'a> {
    listen: Option<SocketAddr>,
    pools: &'a [PoolConfig],
    /// Each prefix with the index of its pool, in the order given.
    prefixes: Vec<(IpNet, usize)>,
    /// Where each prefix was given ("at line 12", "at /etc/xlb/regions.txt:3").
    seen: HashMap<IpNet, String>,
}

impl ClientPrefixes<'_> {
    /// Adds the entry `prefix` → `pool`, given at `origin`, if the prefix is of the service's
    /// address family, names one of its pools and is new; `Err` is the problem, which the
    /// caller reports where it belongs.
    fn add(&mut self, prefix: &str, pool: &str, origin: String) -> Result<(), String> {
        let net = parse_prefix(prefix)?;
        if let Some(listen) = self.listen
            && net.addr().is_ipv4() != listen.is_ipv4()
        {
            return Err(format!("{net} is not of the service's address family"));
        }
        let Some(index) = self.pools.iter().position(|p| p.name == pool) else {
            return Err(format!("{net}: {pool:?} is not a pool of the service"));
        };
        if let Some(first) = self.seen.get(&net) {
            return Err(format!("{net} is listed twice (first {first})"));
        }
        self.seen.insert(net, origin);
        self.prefixes.push((net, index));
        Ok(())
    }
}

impl Validator<'_> {
    /// The `[[service.pool]]`s of a service: their backends (in pool order) and the pools.
    pub(super) fn pools(
        &mut self,
        list: Spanned<Vec<Spanned<RawPool>>>,
        place: &Place,
        listen: Option<SocketAddr>,
    ) -> (Vec<BackendConfig>, Vec<PoolConfig>) {
        let span = list.span();
        let list = list.into_inner();
        if list.len() > limits::MAX_POOLS_PER_SERVICE as usize {
            self.error(
                &span,
                format!(
                    "{place}: {} pools, at most {} are supported",
                    list.len(),
                    limits::MAX_POOLS_PER_SERVICE
                ),
            );
        }
        let names = self.pool_names(&list, place);
        let mut backends = Vec::new();
        let mut pools = Vec::new();
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        for (index, raw) in list.into_iter().enumerate() {
            let pool_span = raw.span();
            let raw = raw.into_inner();
            let name = raw.name.map(|n| n.into_inner()).unwrap_or_default();
            let pool_place = place.pool(&name);
            let pool_backends =
                self.pool_backends(raw.backends, &pool_span, &pool_place, listen, index);
            self.backends_in_one_pool(&pool_backends, &name, &mut seen, &pool_span, &pool_place);
            backends.extend(pool_backends);
            let fallback = match raw.fallback {
                None => Vec::new(),
                Some(list) => self.fallback(list, &names, index, &pool_place),
            };
            pools.push(PoolConfig { name, fallback });
        }
        (backends, pools)
    }

    /// The pools' names, in order ("" for a pool without one): each present, a
    /// [`valid_name`], and defined once.
    fn pool_names(&mut self, list: &[Spanned<RawPool>], place: &Place) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for raw in list {
            match &raw.get_ref().name {
                None => self.error(&raw.span(), format!("{place}: a pool without `name`")),
                Some(name) => {
                    let value = name.get_ref();
                    if !valid_name(value) {
                        self.error(&name.span(), format!("{place}: pool name {value:?}: use 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"));
                    }
                    if names.contains(value) {
                        self.error(
                            &name.span(),
                            format!("{place}: pool {value:?} is defined twice"),
                        );
                    }
                    names.push(value.clone());
                }
            }
        }
        names
    }

    /// A pool's `backends`: required, checked as a service's (index `pool`).
    fn pool_backends(
        &mut self,
        list: Option<Spanned<Vec<Spanned<RawBackend>>>>,
        span: &Range<usize>,
        place: &Place,
        listen: Option<SocketAddr>,
        pool: usize,
    ) -> Vec<BackendConfig> {
        let Some(list) = list else {
            self.error(span, format!("{place}: missing key `backends`"));
            return Vec::new();
        };
        self.backends(list, place, listen, pool)
    }

    /// That no backend of pool `name` is in an earlier pool (`seen`: each earlier backend's
    /// pool).
    fn backends_in_one_pool(
        &mut self,
        backends: &[BackendConfig],
        name: &str,
        seen: &mut HashMap<SocketAddr, String>,
        span: &Range<usize>,
        place: &Place,
    ) {
        for backend in backends {
            if let Some(other) = seen.get(&backend.address) {
                self.error(span, format!("{place}: backend {} is already in pool {other:?}; a backend belongs to one pool", backend.address));
            } else {
                seen.insert(backend.address, name.to_owned());
            }
        }
    }

    /// A pool's `fallback`, as pool indexes: each a pool of the service (`names`), not the
    /// pool itself (index `pool`), and listed once.
    fn fallback(
        &mut self,
        list: Spanned<Vec<Spanned<String>>>,
        names: &[String],
        pool: usize,
        place: &Place,
    ) -> Vec<usize> {
        let mut fallback = Vec::new();
        for other in list.into_inner() {
            match names.iter().position(|n| n == other.get_ref()) {
                None => self.error(
                    &other.span(),
                    format!(
                        "{place}: fallback {:?} is not a pool of the service",
                        other.get_ref()
                    ),
                ),
                Some(i) if i == pool => self.error(
                    &other.span(),
                    format!("{place}: a pool cannot fall back to itself"),
                ),
                Some(i) if fallback.contains(&i) => self.error(
                    &other.span(),
                    format!("{place}: fallback {:?} is listed twice", other.get_ref()),
                ),
                Some(i) => fallback.push(i),
            }
        }
        fallback
    }

    /// The client prefixes of a service, inline and from its prefix file, as (prefix, pool):
    /// at most `MAX_PREFIXES_PER_SERVICE`.
    pub(super) fn client_prefixes(
        &mut self,
        inline: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
        file: Option<Spanned<String>>,
        place: &Place,
        listen: Option<SocketAddr>,
        pools: &[PoolConfig],
    ) -> Vec<(IpNet, usize)> {
        let mut table = ClientPrefixes {
            listen,
            pools,
            prefixes: Vec::new(),
            seen: HashMap::new(),
        };
        if let Some(inline) = inline {
            self.inline_client_prefixes(inline, &mut table, place);
        }
        if let Some(file) = file {
            self.client_prefix_file(file, &mut table, place);
        }
        let prefixes = table.prefixes;
        if prefixes.len() > limits::MAX_PREFIXES_PER_SERVICE as usize {
            self.error(
                &WHOLE_FILE,
                format!(
                    "{place}: {} client prefixes, at most {} are supported",
                    prefixes.len(),
                    limits::MAX_PREFIXES_PER_SERVICE
                ),
            );
        }
        prefixes
    }

    /// `client_prefixes`, the inline table: each bad entry reported at its own line.
    fn inline_client_prefixes(
        &mut self,
        inline: Spanned<BTreeMap<String, Spanned<String>>>,
        table: &mut ClientPrefixes,
        place: &Place,
    ) {
        let span = inline.span();
        let mut problems = Vec::new();
        for (prefix, pool) in inline.into_inner() {
            let origin = format!("at line {}", line_of(self.text, pool.span().start));
            if let Err(problem) = table.add(&prefix, pool.get_ref(), origin) {
                problems.push((pool.span(), format!("{place}: client_prefixes: {problem}")));
            }
        }
        self.report_a_few(problems, |more| {
            (
                span,
                format!("{place}: client_prefixes: {more} more bad entries"),
            )
        });
    }

    /// `client_prefix_file`, relative to the config's folder: each bad line reported at the
    /// key, with its line number in the file.
    fn client_prefix_file(
        &mut self,
        file: Spanned<String>,
        table: &mut ClientPrefixes,
        place: &Place,
    ) {
        let path = self.base.join(file.get_ref());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                self.error(
                    &file.span(),
                    format!("{place}: client_prefix_file {}: {error}", path.display()),
                );
                return;
            }
        };
        let mut problems: Vec<(usize, String)> = Vec::new();
        match parse_prefix_file(&text) {
            Err(errors) => problems = errors,
            Ok(entries) => {
                for (line, net, pool) in entries {
                    let origin = format!("at {}:{line}", path.display());
                    if let Err(problem) = table.add(&net.to_string(), &pool, origin) {
                        problems.push((line, problem));
                    }
                }
            }
        }
        let problems = problems
            .into_iter()
            .map(|(line, problem)| {
                let message = format!("{place}: {}:{line}: {problem}", path.display());
                (file.span(), message)
            })
            .collect();
        self.report_a_few(problems, |more| {
            let message = format!("{place}: {}: {more} more bad lines", path.display());
            (file.span(), message)
        });
    }

    /// Reports the first [`MAX_PREFIX_ERRORS`] of `problems` (position, message), then how
    /// many more there are, in the words of `more(count)`: a long bad list must not bury the
    /// other errors.
    fn report_a_few(
        &mut self,
        problems: Vec<(Range<usize>, String)>,
        more: impl FnOnce(usize) -> (Range<usize>, String),
    ) {
        let count = problems.len();
        for (span, message) in problems.into_iter().take(MAX_PREFIX_ERRORS) {
            self.error(&span, message);
        }
        if count > MAX_PREFIX_ERRORS {
            let (span, message) = more(count - MAX_PREFIX_ERRORS);
            self.error(&span, message);
        }
    }
}
