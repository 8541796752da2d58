//! `xlb flows`: the flows in the flow tables, filtered (like `ipvsadm -Lnc`).

use std::net::SocketAddr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{Response, in_range};
use crate::{
    config::parse_prefix,
    dataplane::Dataplane,
    monitor::{FlowQuery, Monitor},
};

/// How many flows are listed unless told.
pub(crate) const DEFAULT_LIMIT: u32 = 100;
/// The most listed at once.
pub(crate) const MAX_LIMIT: u32 = 100_000;

/// The flows in the flow tables, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Flows {
    /// Only this service's flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only flows served by this backend (address:port).
    #[arg(long, value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    /// Only flows of clients in this prefix (or this address).
    #[arg(long, value_name = "PREFIX", value_parser = client_prefix)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// List at most this many.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT)))]
    #[serde(default = "default_limit")]
    pub limit: u32,
}

fn default_limit() -> u32 {
    DEFAULT_LIMIT
}

impl Default for Flows {
    fn default() -> Self {
        Self {
            service: None,
            backend: None,
            client: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl Flows {
    /// Checks the limit's bounds.
    pub fn check(&self) -> Result<(), String> {
        in_range("limit", self.limit, 1..=MAX_LIMIT)
    }

    /// The flows that match.
    pub fn answer(self, monitor: &Monitor, dataplane: &Dataplane) -> Result<Response> {
        let query = FlowQuery {
            service: self.service,
            backend: self.backend,
            client: self.client,
            limit: self.limit as usize,
        };
        monitor.flows(&dataplane.maps, &query).map(Response::Flows)
    }
}

/// Checks a `--client` prefix (the daemon checks it again).
pub(super) fn client_prefix(text: &str) -> Result<String, String> {
    parse_prefix(text).map(|_| text.to_owned())
}
