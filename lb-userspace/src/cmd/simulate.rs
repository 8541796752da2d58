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
    /// The client's address and port, or its address alone (port 32768, the first of
    /// Linux's ephemeral ports, then).
    #[arg(value_parser = client_address)]
    pub client: SocketAddr,
}

/// The port a client given without one is simulated from.
const CLIENT_PORT: u16 = 32_768;

/// `text` as a client: an address and port, or an address (port [`CLIENT_PORT`]).
fn client_address(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, CLIENT_PORT)))
        .map_err(|_| format!("{text:?} is not an address, with or without a port (like 198.18.0.2:40000 or [fd00::2]:40000)"))
}

impl Simulate {
    /// The simulated flow's backend and pools.
    pub fn answer(self, monitor: &Monitor, dataplane: &mut Dataplane) -> Result<Response> {
        monitor
            .simulate(dataplane, &self.service, self.client)
            .map(Response::Simulation)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_is_an_address_with_or_without_a_port() {
        let parse = |text| super::client_address(text).map(|a| a.to_string());
        assert_eq!(parse("198.18.0.2:40000").unwrap(), "198.18.0.2:40000");
        assert_eq!(parse("198.18.0.2").unwrap(), "198.18.0.2:32768");
        assert_eq!(parse("fd00::2").unwrap(), "[fd00::2]:32768");
        assert!(
            parse("client-1")
                .unwrap_err()
                .contains("\"client-1\" is not an address")
        );
    }
}
