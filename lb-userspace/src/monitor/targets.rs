//! Which backends an operator's command names: one (a service and an address with its port),
//! every backend of a host in a service (the address alone), or across every service (`*`
//! as the service), as taking a host out of service asks.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::Config;

/// The service name that stands for every service.
pub(crate) const EVERY_SERVICE: &str = "*";

/// A backend as a command names it: its address and port, or its host alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendAddress {
    /// One backend.
    One(SocketAddr),
    /// Every backend on this host, whatever its port.
    Host(IpAddr),
}

impl BackendAddress {
    /// Whether the backend at `address` is one this names.
    pub fn names(self, address: SocketAddr) -> bool {
        match self {
            Self::One(one) => one == address,
            Self::Host(host) => host == address.ip(),
        }
    }
}

impl FromStr for BackendAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse::<SocketAddr>()
            .map(Self::One)
            .or_else(|_| text.parse::<IpAddr>().map(Self::Host))
            .map_err(|_| {
                format!("{text:?} is not a backend: an address and port (198.18.1.11:8080), or an address alone for every backend on that host")
            })
    }
}

impl fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(address) => address.fmt(f),
            Self::Host(host) => host.fmt(f),
        }
    }
}

impl Serialize for BackendAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackendAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The backends (service name, address) of `config` that `service` (a name, or
/// [`EVERY_SERVICE`]) and `backend` name, in config order. One backend the service does not
/// list is returned as it is: the operator's settings explain it, or clear a setting it
/// kept from an earlier config.
pub(crate) fn targets(
    config: &Config,
    service: &str,
    backend: BackendAddress,
) -> Result<Vec<(String, SocketAddr)>> {
    let every = service == EVERY_SERVICE;
    if !every && !config.services.iter().any(|s| s.name == service) {
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "no service named {service:?} (services: {})",
            names.join(", ")
        );
    }
    let found: Vec<(String, SocketAddr)> = config
        .services
        .iter()
        .filter(|s| every || s.name == service)
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(move |b| backend.names(b.address))
                .map(move |b| (s.name.clone(), b.address))
        })
        .collect();
    match backend {
        _ if !found.is_empty() => Ok(found),
        BackendAddress::One(address) if !every => Ok(vec![(service.to_owned(), address)]),
        _ if every => bail!("no service has a backend {backend}"),
        _ => bail!("service {service:?} has no backend on {backend}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.12:5353" } ]
"#;

    #[test]
    fn a_host_is_named_in_a_service_or_across_every_service() {
        let config = Config::parse(CONFIG).unwrap();
        let names = |service: &str, backend: &str| -> Result<Vec<String>> {
            let found = targets(&config, service, backend.parse().unwrap())?;
            Ok(found.iter().map(|(s, a)| format!("{s} {a}")).collect())
        };
        assert_eq!(
            names("web", "198.18.1.12:8080").unwrap(),
            ["web 198.18.1.12:8080"]
        );
        assert_eq!(
            names("*", "198.18.1.12").unwrap(),
            ["web 198.18.1.12:8080", "dns 198.18.1.12:5353"]
        );
        assert_eq!(
            names("dns", "198.18.1.12").unwrap(),
            ["dns 198.18.1.12:5353"]
        );
        // Left to the operator's settings, which say what the service has.
        assert_eq!(
            names("web", "198.18.1.99:8080").unwrap(),
            ["web 198.18.1.99:8080"]
        );
        let error = |s, b| names(s, b).unwrap_err().to_string();
        assert_eq!(
            error("*", "198.18.1.99"),
            "no service has a backend 198.18.1.99"
        );
        assert_eq!(
            error("web", "198.18.1.99"),
            "service \"web\" has no backend on 198.18.1.99"
        );
        assert!(error("nope", "198.18.1.12").starts_with("no service named \"nope\""));
        assert!("backend-1".parse::<BackendAddress>().is_err());
    }
}
