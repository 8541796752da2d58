//! The `[fleet]` section: this instance's address for the fleet's messages, its peers', and
//! the shared key that authenticates them.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use toml::Spanned;

use super::Validator;
use crate::config::{
    model::{FleetConfig, FlowTimeouts, Secret, ServiceConfig},
    raw::RawFleet,
};

/// The shortest key accepted, in bytes.
const MIN_KEY: usize = 32;
/// The most peers: a new flow is sent to each.
const MAX_PEERS: usize = 64;
/// The shortest `refresh`: each one reads every flow table, and a flow's entry is stamped
/// at most once a second (`LAST_SEEN_REFRESH_NS`).
const MIN_REFRESH: Duration = Duration::from_secs(2);
/// The longest `refresh`.
const MAX_REFRESH: Duration = Duration::from_secs(3_600);

impl Validator<'_> {
    /// `[fleet]`; `None` if it has a problem (reported).
    pub(super) fn fleet(
        &mut self,
        raw: Spanned<RawFleet>,
        services: &[ServiceConfig],
        timeouts: &FlowTimeouts,
    ) -> Option<FleetConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        let errors_before = self.errors.len();
        let listen = match &raw.listen {
            Some(listen) => self.fleet_address(listen, "fleet: listen"),
            None => {
                self.error(&span, "fleet: missing key `listen` (this instance's address for the fleet, like \"198.18.1.21:7470\")".into());
                None
            }
        };
        if let (Some(listen), Some(raw_listen)) = (listen, &raw.listen)
            && let Some(service) = services.iter().find(|s| s.listen.ip() == listen.ip())
        {
            self.error(&raw_listen.span(), format!("fleet: listen {listen} is on the VIP of service {:?}: the balancer takes what is sent to a VIP; use this host's own address", service.name));
        }
        let peers = self.fleet_peers(raw.peers, &span, listen);
        let key_file = match &raw.key_file {
            Some(path) => Some(path),
            None => {
                self.error(&span, "fleet: missing key `key_file` (the file of the key the fleet shares, at least 32 bytes, readable by root only)".into());
                None
            }
        };
        let key = key_file.and_then(|path| self.fleet_key(path));
        let refresh = self.fleet_refresh(raw.refresh.as_ref(), &span, timeouts);
        if self.errors.len() > errors_before {
            return None;
        }
        Some(FleetConfig {
            listen: listen?,
            peers,
            key_file: self.base.join(key_file?.get_ref()),
            key: key?,
            refresh,
        })
    }

    /// `refresh`: within [`MIN_REFRESH`] and [`MAX_REFRESH`], and at most a third of the
    /// shortest idle timeout, so that a peer's copy of a live flow is refreshed twice before
    /// it could expire. By default [`FleetConfig::DEFAULT_REFRESH`], or that third if shorter.
    fn fleet_refresh(
        &mut self,
        raw: Option<&Spanned<String>>,
        span: &std::ops::Range<usize>,
        timeouts: &FlowTimeouts,
    ) -> Duration {
        let (idle_key, idle) = if timeouts.udp_idle <= timeouts.tcp_idle {
            ("udp_idle_timeout", timeouts.udp_idle)
        } else {
            ("tcp_idle_timeout", timeouts.tcp_idle)
        };
        let third = idle / 3;
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        let Some(raw) = raw else {
            if third < MIN_REFRESH {
                self.error(span, format!("fleet: {idle_key} {} is too short for a fleet: peers' copies of a flow are refreshed every {} at the fastest, and at most every third of the timeout; use at least {}", shown(idle), shown(MIN_REFRESH), shown(MIN_REFRESH * 3)));
            }
            return FleetConfig::DEFAULT_REFRESH.min(third).max(MIN_REFRESH);
        };
        let Some(refresh) = self.duration(raw, "fleet: refresh", MIN_REFRESH..=MAX_REFRESH) else {
            return FleetConfig::DEFAULT_REFRESH;
        };
        if refresh > third {
            self.error(&raw.span(), format!("fleet: refresh {:?} is more than a third of {idle_key} ({}): peers' copies of an idle flow could expire between two refreshes; use at most {}", raw.get_ref(), shown(idle), shown(third)));
        }
        refresh
    }

    /// An address with a port other than 0, named `what` in errors.
    fn fleet_address(&mut self, value: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(address) if address.port() != 0 && !address.ip().is_unspecified() => Some(address),
            Ok(_) => {
                self.error(&value.span(), format!("{what}: {:?}: not 0.0.0.0, :: or port 0 (this host's own address and a port, like \"198.18.1.22:7470\")", value.get_ref()));
                None
            }
            Err(_) => {
                let problem = super::not_an_address(value.get_ref(), "\"198.18.1.22:7470\"");
                self.error(&value.span(), format!("{what}: {problem}"));
                None
            }
        }
    }

    /// `peers`: 1 to [`MAX_PEERS`] addresses, each once, none this instance's `listen`, all
    /// of its family.
    fn fleet_peers(
        &mut self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
        span: &std::ops::Range<usize>,
        listen: Option<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let Some(raw) = raw else {
            self.error(
                span,
                "fleet: missing key `peers` (the other instances' addresses)".into(),
            );
            return Vec::new();
        };
        let list_span = raw.span();
        let list = raw.into_inner();
        if list.is_empty() || list.len() > MAX_PEERS {
            self.error(
                &list_span,
                format!("fleet: peers: list 1 to {MAX_PEERS} other instances"),
            );
        }
        let mut peers: Vec<SocketAddr> = Vec::new();
        for value in &list {
            let Some(peer) = self.fleet_address(value, "fleet: peers") else {
                continue;
            };
            let problem = if peers.contains(&peer) {
                Some(format!("fleet: peers: {peer} is listed twice"))
            } else if Some(peer) == listen {
                Some(format!(
                    "fleet: peers: {peer} is this instance's own `listen`"
                ))
            } else if listen.is_some_and(|l| l.is_ipv4() != peer.is_ipv4()) {
                Some(format!(
                    "fleet: peers: {peer} is not of the family of `listen`"
                ))
            } else {
                None
            };
            match problem {
                Some(problem) => self.error(&value.span(), problem),
                None => peers.push(peer),
            }
        }
        peers
    }

    /// The key in `path` (relative to the config's directory): a regular file readable by
    /// its owner only, of at least [`MIN_KEY`] bytes once surrounding whitespace is removed.
    fn fleet_key(&mut self, path: &Spanned<String>) -> Option<Secret> {
        let full: PathBuf = self.base.join(path.get_ref());
        let shown = full.display();
        let problem = match std::fs::metadata(&full) {
            Err(error) => format!("fleet: key_file {shown}: {error}"),
            Ok(meta) if !meta.is_file() => format!("fleet: key_file {shown} is not a file"),
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => format!(
                "fleet: key_file {shown} can be read by others than its owner (mode {:o}): chmod 600 it",
                meta.permissions().mode() & 0o777
            ),
            Ok(_) => match std::fs::read(&full) {
                Err(error) => format!("fleet: key_file {shown}: {error}"),
                Ok(bytes) => {
                    let key = bytes.trim_ascii();
                    if key.len() >= MIN_KEY {
                        return Some(Secret(key.to_vec()));
                    }
                    format!(
                        "fleet: key_file {shown} holds {} bytes: a key needs at least {MIN_KEY} (e.g. `head -c 32 /dev/urandom | base64 > {shown}`)",
                        key.len()
                    )
                }
            },
        };
        self.error(&path.span(), problem);
        None
    }
}
