//! A service's locality pools (`[[service.pool]]`) and the client prefixes that choose them.

use std::{collections::BTreeMap, collections::HashMap, net::SocketAddr};

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
    raw::RawPool,
};

/// Bad client prefixes reported one by one, per source; the rest are counted.
const MAX_PREFIX_ERRORS: usize = 10;

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
        let mut names: Vec<String> = Vec::new();
        for raw in &list {
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
        let mut backends = Vec::new();
        let mut pools = Vec::new();
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        for (index, raw) in list.into_iter().enumerate() {
            let pool_span = raw.span();
            let raw = raw.into_inner();
            let name = raw.name.map(|n| n.into_inner()).unwrap_or_default();
            let pool_place = place.pool(&name);
            let pool_backends = match raw.backends {
                None => {
                    self.error(&pool_span, format!("{pool_place}: missing key `backends`"));
                    Vec::new()
                }
                Some(list) => self.backends(list, &pool_place, listen, index),
            };
            for backend in &pool_backends {
                if let Some(other) = seen.get(&backend.address) {
                    self.error(&pool_span, format!("{pool_place}: backend {} is already in pool {other:?}; a backend belongs to one pool", backend.address));
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
                                "{pool_place}: fallback {:?} is not a pool of the service",
                                other.get_ref()
                            ),
                        ),
                        Some(i) if i == index => self.error(
                            &other.span(),
                            format!("{pool_place}: a pool cannot fall back to itself"),
                        ),
                        Some(i) if fallback.contains(&i) => self.error(
                            &other.span(),
                            format!(
                                "{pool_place}: fallback {:?} is listed twice",
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
    pub(super) fn client_prefixes(
        &mut self,
        inline: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
        file: Option<Spanned<String>>,
        place: &Place,
        listen: Option<SocketAddr>,
        pools: &[PoolConfig],
    ) -> Vec<(IpNet, usize)> {
        let mut prefixes: Vec<(IpNet, usize)> = Vec::new();
        let mut seen: HashMap<IpNet, String> = HashMap::new();
        // Checks one entry; `Err` is the problem, which the caller reports where it belongs.
        let mut add = |prefix: &str, pool: &str, origin: String| -> Result<(), String> {
            let net = parse_prefix(prefix)?;
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
                        self.error(&pool.span(), format!("{place}: client_prefixes: {problem}"));
                    }
                }
            }
            if bad > MAX_PREFIX_ERRORS {
                self.error(
                    &span,
                    format!(
                        "{place}: client_prefixes: {} more bad entries",
                        bad - MAX_PREFIX_ERRORS
                    ),
                );
            }
        }
        if let Some(file) = file {
            let path = self.base.join(file.get_ref());
            match std::fs::read_to_string(&path) {
                Err(error) => self.error(
                    &file.span(),
                    format!("{place}: client_prefix_file {}: {error}", path.display()),
                ),
                Ok(text) => {
                    let mut problems: Vec<(usize, String)> = Vec::new();
                    match parse_prefix_file(&text) {
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
                        self.error(
                            &file.span(),
                            format!("{place}: {}:{line}: {problem}", path.display()),
                        );
                    }
                    if problems.len() > MAX_PREFIX_ERRORS {
                        self.error(
                            &file.span(),
                            format!(
                                "{place}: {}: {} more bad lines",
                                path.display(),
                                problems.len() - MAX_PREFIX_ERRORS
                            ),
                        );
                    }
                }
            }
        }
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
}
