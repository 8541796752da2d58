//! `xlb simulate SERVICE CLIENT`: which backend a new flow would get now.

use std::net::SocketAddr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Response;
use crate::{dataplane::Dataplane, monitor::Monitor};

/// A new flow from `client` to `service`, run through the program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Simulate {
    /// The service's name.
    pub service: String,
    /// The client's address and port.
    pub client: SocketAddr,
}

impl Simulate {
    /// The simulated flow's backend and pools.
    pub fn answer(self, monitor: &Monitor, dataplane: &mut Dataplane) -> Result<Response> {
        monitor
            .simulate(dataplane, &self.service, self.client)
            .map(Response::Simulation)
    }
}
