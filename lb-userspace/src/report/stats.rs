//! `xlb stats`: counters since the program was loaded (or since an operator zeroed them),
//! data-plane events, the flow tables.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Counters since the program was loaded, or since `since`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// When an operator last zeroed the counters (`xlb stats --zero`), which count from
    /// then; none: since the program was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Zeroed>,
    /// The counters were zeroed after this report was read (the answer to `--zero`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zeroed_now: bool,
    /// Services in config order.
    pub services: Vec<ServiceStats>,
    /// Data-plane events, by name.
    pub events: Vec<(String, u64)>,
    /// The flow tables: active flows against their size.
    pub flow_table: FlowTableStats,
    /// Every VIP with the TCP and UDP packets to it that no flow or service took (dropped,
    /// but for `host_ports`). Absent from older daemons' answers.
    #[serde(default)]
    pub unserved: Vec<(std::net::IpAddr, u64)>,
}

/// Who zeroed the counters, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zeroed {
    /// The user of the socket's peer, by uid.
    pub by: String,
    /// In seconds since the Unix epoch.
    pub at: u64,
}

/// The flow tables: their live flows against their size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableStats {
    /// Flows of IPv4 services whose client sent a packet in the last activity epoch (about
    /// 8.6 s), or so far in the one under way if that is more.
    pub active_ipv4: u64,
    /// The same for IPv6 services.
    pub active_ipv6: u64,
    /// Flows the IPv4 established table holds (`flow_table_size`); when full, the least
    /// recently used are evicted.
    pub capacity: u64,
    /// The same for IPv6 (`flow_table_size_ipv6`).
    #[serde(default)]
    pub capacity_ipv6: u64,
    /// Flows the IPv4 half-open table holds; when full, the least recently used are evicted.
    pub half_open_capacity: u64,
    /// Flows a packet found silent past their timeout (deleted, and the packet handled as a new
    /// flow's), as the data plane counted them.
    pub expired: u64,
    /// New TCP flows per 100 ms window above which SYNs are placed by hash, not round robin
    /// (the handshake guard; see the README). Absent from older daemons' answers.
    #[serde(default)]
    pub handshake_budget: u64,
    /// Whether the handshake guard is placing SYNs by hash now (a SYN flood).
    #[serde(default)]
    pub handshake_guard_on: bool,
}

/// Counters of one service and its backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Name.
    pub name: String,
    /// The service's counters.
    pub counters: Counters,
    /// Each backend's counters.
    pub backends: Vec<BackendCounters>,
}

/// One backend's counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendCounters {
    /// Its address and port.
    pub address: SocketAddr,
    /// Its counters.
    pub counters: Counters,
}

/// Traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets client to backend.
    pub packets_to_backend: u64,
    /// Bytes client to backend.
    pub bytes_to_backend: u64,
    /// Packets backend to client.
    pub packets_to_client: u64,
    /// Bytes backend to client.
    pub bytes_to_client: u64,
    /// Flows created.
    pub new_flows: u64,
    /// New flows dropped for want of a backend.
    pub no_backend: u64,
    /// Handshakes refused: a RST answering the client's SYN (passive health).
    #[serde(default)]
    pub refused: u64,
    /// Handshakes left unanswered until the client retransmitted its SYN, then re-placed.
    #[serde(default)]
    pub unanswered: u64,
    /// New flows dropped by the per-prefix admission limit (services).
    #[serde(default)]
    pub admission_dropped: u64,
}

impl Counters {
    /// What was counted since `base` was read; `None` if a counter went back (the data plane's
    /// counters were reset since: a service or backend id freed and used again).
    pub fn since(&self, base: &Self) -> Option<Self> {
        let pairs = [
            (self.packets_to_backend, base.packets_to_backend),
            (self.bytes_to_backend, base.bytes_to_backend),
            (self.packets_to_client, base.packets_to_client),
            (self.bytes_to_client, base.bytes_to_client),
            (self.new_flows, base.new_flows),
            (self.no_backend, base.no_backend),
            (self.refused, base.refused),
            (self.unanswered, base.unanswered),
            (self.admission_dropped, base.admission_dropped),
        ];
        let [a, b, c, d, e, f, g, h, i] = pairs.map(|(now, then)| now.checked_sub(then));
        Some(Self {
            packets_to_backend: a?,
            bytes_to_backend: b?,
            packets_to_client: c?,
            bytes_to_client: d?,
            new_flows: e?,
            no_backend: f?,
            refused: g?,
            unanswered: h?,
            admission_dropped: i?,
        })
    }
}

impl From<lb_common::TrafficCounters> for Counters {
    fn from(c: lb_common::TrafficCounters) -> Self {
        Self {
            packets_to_backend: c.fwd_packets,
            bytes_to_backend: c.fwd_bytes,
            packets_to_client: c.rev_packets,
            bytes_to_client: c.rev_bytes,
            new_flows: c.new_flows,
            no_backend: c.no_backend,
            refused: c.refused,
            unanswered: c.unanswered,
            admission_dropped: c.admission_dropped,
        }
    }
}
