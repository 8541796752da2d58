//! `xlb status`: every service's backends with their state and why, weights, load, active
//! flows and rates; pools; route health injection.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::health::state::Operator;

/// All services (or the one asked for), and the daemon.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version and commit, as `xlb --version` prints them.
    #[serde(default)]
    pub version: String,
    /// The interfaces and the hook the program runs at on each.
    #[serde(default)]
    pub interfaces: Vec<InterfaceHook>,
    /// Services in config order.
    pub services: Vec<ServiceStatus>,
    /// Route health injection, if any service announces its VIP.
    #[serde(default)]
    pub announce: Option<AnnounceReport>,
}

/// An interface and the hook the program runs at there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceHook {
    /// The interface's name.
    pub name: String,
    /// The hook: "tc", "native", "generic", or "xdp (adopted)".
    pub hook: String,
}

/// Route health injection: the device, the BGP daemon, each VIP's announcement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceReport {
    /// The TUN device whose addresses are the announced VIPs.
    pub device: String,
    /// "BIRD 2.0.12 at /run/bird/bird.ctl", or why no BIRD answers there.
    pub bird: String,
    /// Whether a BIRD answered at the last probe.
    pub bird_reachable: bool,
    /// Each announced VIP, in address order.
    pub vips: Vec<VipReport>,
}

/// One VIP's announcement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipReport {
    /// The address.
    pub vip: std::net::IpAddr,
    /// Whether it is on the device (so exported by BIRD) now.
    pub announced: bool,
    /// Why.
    pub reason: String,
    /// Seconds since the last change, as of the report.
    #[serde(serialize_with = "super::seconds::millis")]
    pub since_seconds: f64,
    /// Times it was announced and withdrawn since xlb started.
    pub announcements: u64,
    /// Times it was withdrawn.
    pub withdrawals: u64,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP and port.
    pub listen: SocketAddr,
    /// "tcp" or "udp".
    pub protocol: String,
    /// Packets per second, both directions, over the last second.
    pub packets_per_second: f64,
    /// Bits per second, both directions, over the last second.
    pub bits_per_second: f64,
    /// Backends in config order.
    pub backends: Vec<BackendStatusReport>,
    /// How many backends can take new flows (a weight in the service's published tables);
    /// none is an outage of the service.
    #[serde(default)]
    pub available: usize,
    /// Locality pools (empty for a service without `[[service.pool]]`s).
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
    /// Backends removed from the config that keep their connections until these end or the
    /// service's `drain_timeout` passes.
    #[serde(default)]
    pub leaving: Vec<LeavingBackendReport>,
}

/// A backend removed from the config, draining: no new flow, its connections kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeavingBackendReport {
    /// Address and port.
    pub address: SocketAddr,
    /// Its connections in the flow tables, by state.
    pub connections: Connections,
    /// Seconds since it left the config.
    #[serde(serialize_with = "super::seconds::millis")]
    pub since_seconds: f64,
    /// Seconds until its connections are cut, unless they end first.
    #[serde(serialize_with = "super::seconds::millis")]
    pub cut_in_seconds: f64,
}

/// One locality pool of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Its backends that have room for new flows (Up), and all of them.
    pub up: usize,
    /// Its backends.
    pub backends: usize,
    /// The pool that takes its clients' new flows now: itself, or a fallback.
    pub serving: String,
    /// New flows of its clients placed in other pools so far, by pool.
    pub spilled: Vec<(String, u64)>,
}

/// One backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatusReport {
    /// Address and port.
    pub address: SocketAddr,
    /// Up, Overloaded, Draining or Down.
    pub state: String,
    /// Why.
    pub reason: String,
    /// Seconds in this state.
    #[serde(serialize_with = "super::seconds::millis")]
    pub since_seconds: f64,
    /// Weight in the config.
    pub weight: u32,
    /// Weight in the published table, in hundredths of a weight unit (slow start and the
    /// agent's percentage scale the weight in force: an operator's, or the configured one).
    pub effective_weight: u32,
    /// The agent's last weight, if it has an agent.
    pub agent_weight_percent: Option<u32>,
    /// Flows with a packet in the last 10 seconds.
    pub active_flows: u64,
    /// Connections in the flow tables, idle ones included, by state.
    #[serde(default)]
    pub connections: Connections,
    /// Packets per second, both directions, over the last second.
    pub packets_per_second: f64,
    /// Bits per second, both directions, over the last second.
    pub bits_per_second: f64,
    /// What an operator set, who and when, if anything.
    #[serde(default)]
    pub operator: Option<Operator>,
    /// Why the data plane marked it suspect, while a check has not decided (passive health).
    #[serde(default)]
    pub suspect: Option<String>,
    /// Times the data plane marked it suspect since the daemon started.
    #[serde(default)]
    pub passive_marks: u64,
    /// What its health checks say, apart from what an operator set: "up", "down", or
    /// "unknown" before the first verdict.
    #[serde(default)]
    pub health: String,
    /// Its pool, when the service has several.
    #[serde(default)]
    pub pool: Option<String>,
}

/// One backend's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// Established TCP connections, idle ones included.
    pub established: u64,
    /// TCP handshakes not completed.
    pub half_open: u64,
    /// TCP connections closed by a FIN or RST whose entry is not over yet.
    pub closing: u64,
    /// UDP flows whose entry is not over.
    pub udp: u64,
}

impl Connections {
    /// The connections that are open: established TCP connections and UDP flows.
    pub fn open(&self) -> u64 {
        self.established + self.udp
    }
}
