//! What the data plane should serve, as the monitor decides it: services, their backends'
//! weights, their locality pools.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ipnet::IpNet;
use lb_common::{
    Addr,
    passive::{ServicePolicy, admission_times, max_suspects},
};

use crate::config::{Config, Forwarding, Protocol, Scheduler, ServiceConfig};

/// What the data plane should serve: a service, the weights its backends should have in the
/// tables right now (0: no new flows, but the backend and its flows stay), and its locality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name (for logs and errors).
    pub name: String,
    /// Virtual IP and port.
    pub listen: SocketAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Backends, in config order.
    pub backends: Vec<BackendSpec>,
    /// Locality pools.
    pub locality: Locality,
    /// Passive health and admission, as the data plane takes them.
    pub policy: ServicePolicy,
    /// How new flows find their backend.
    pub scheduler: Scheduler,
    /// How packets reach the backends.
    pub forwarding: Forwarding,
    /// How long a backend that leaves keeps its flows (0: they are purged with it): it takes
    /// no new flow, and the monitor releases it once it has no connection left or this time
    /// has passed.
    pub drain_timeout: Duration,
}

/// A backend as the data plane should have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Address and port.
    pub address: SocketAddr,
    /// Weight in its pool's table.
    pub weight: u32,
    /// Its pool.
    pub pool: u32,
    /// Weight in its pool's Maglev table: its configured (or operator's) weight while it
    /// takes new flows, else 0. Not the table weight, which moves with slow start, agents and
    /// each instance's own flow counts: instances behind ECMP must build the same Maglev
    /// table, so it moves only with what they all see the same.
    pub maglev_weight: u32,
}

/// A service's locality pools as the data plane should have them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locality {
    /// Number of pools (at least 1).
    pub pools: u32,
    /// For each home pool, the pool whose backends take its new flows now (itself, or a
    /// fallback when it has no room).
    pub serving: Vec<u32>,
    /// The pool of clients that match no prefix.
    pub default_pool: u32,
    /// Client prefixes and their home pools.
    pub prefixes: Arc<Vec<(IpNet, usize)>>,
}

impl Locality {
    /// One pool, serving itself: a service without locality.
    pub fn single() -> Self {
        Self {
            pools: 1,
            serving: vec![0],
            default_pool: 0,
            prefixes: Arc::new(Vec::new()),
        }
    }
}

impl ServiceSpec {
    /// `service` with its backends at `weights` (in config order; their configured or
    /// operator's weights are `base`, in the same unit) and each home pool served by the pool
    /// `serving` names.
    pub fn of(service: &ServiceConfig, weights: &[u32], base: &[u32], serving: Vec<u32>) -> Self {
        Self {
            name: service.name.clone(),
            listen: service.listen,
            protocol: service.protocol,
            backends: service
                .backends
                .iter()
                .zip(weights.iter().zip(base))
                .map(|(b, (&weight, &base))| BackendSpec {
                    address: b.address,
                    weight,
                    pool: b.pool as u32,
                    maglev_weight: if weight > 0 { base } else { 0 },
                })
                .collect(),
            locality: Locality {
                pools: service.pools.len() as u32,
                serving,
                default_pool: service.default_pool as u32,
                prefixes: Arc::clone(&service.client_prefixes),
            },
            policy: policy(service),
            scheduler: service.scheduler,
            forwarding: service.forwarding,
            drain_timeout: service.drain_timeout,
        }
    }

    /// Every service of `config` with every backend at its configured weight, each pool
    /// serving itself.
    pub fn all_up(config: &Config) -> Vec<Self> {
        config
            .services
            .iter()
            .map(|service| {
                let weights: Vec<u32> = service.backends.iter().map(|b| b.weight).collect();
                let serving = (0..service.pools.len() as u32).collect();
                Self::of(service, &weights, &weights, serving)
            })
            .collect()
    }
}

/// A service's passive health and admission settings as the data plane takes them.
pub(super) fn policy(service: &ServiceConfig) -> ServicePolicy {
    let mut policy = ServicePolicy::default();
    if let Some(passive) = service.passive.as_ref().filter(|p| p.enabled()) {
        policy.refused = passive.refused as u16;
        policy.unanswered = passive.unanswered as u16;
        policy.max_suspects = max_suspects(service.backends.len(), passive.max_share);
        policy.window_ns = passive.window.as_nanos() as u64;
        policy.hold_ns = passive.hold.as_nanos() as u64;
    }
    // (At most u16::MAX seconds: configuration makes sure of it.)
    policy.persist_s = service.persistence.map_or(0, |p| p.as_secs() as u16);
    if let Some(admission) = &service.admission {
        let (interval, tolerance) = admission_times(admission.rate, admission.burst);
        policy.admit_interval_ns = interval;
        policy.admit_tolerance_ns = tolerance;
        let bits = if service.listen.is_ipv4() {
            admission.ipv4_prefix
        } else {
            admission.ipv6_prefix
        };
        policy.admit_mask = prefix_mask(bits);
    }
    policy
}

/// The mask of a prefix of `bits` bits, as an [`Addr`] (words holding wire-order bytes).
pub(super) fn prefix_mask(bits: u8) -> Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    let bytes = mask.to_be_bytes();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    })
}
