//! The `[tunnel]` section: this instance's outer source addresses and GUE's port, which the
//! services with `forwarding = "ipip"` or `"gue"` need.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use toml::Spanned;

use super::{Validator, WHOLE_FILE};
use crate::config::{
    Forwarding, Protocol,
    model::{ServiceConfig, TunnelSettings},
    raw::RawTunnel,
};

impl Validator<'_> {
    /// `[tunnel]` (its defaults if absent), checked against the services that use it: each
    /// tunnel service needs a source address of its VIP's family, and no UDP service may listen
    /// on GUE's port while a service uses GUE (the backends take that port for the tunnel).
    pub(super) fn tunnel(
        &mut self,
        raw: Option<Spanned<RawTunnel>>,
        services: &[ServiceConfig],
    ) -> TunnelSettings {
        let span = raw.as_ref().map_or(WHOLE_FILE, Spanned::span);
        let raw = raw.map(Spanned::into_inner);
        let mut settings = TunnelSettings::default();
        if let Some(raw) = raw {
            settings.source = raw
                .source
                .and_then(|value| self.tunnel_source::<Ipv4Addr>(&value, "source", "198.18.0.2"));
            settings.source_ipv6 = raw
                .source_ipv6
                .and_then(|value| self.tunnel_source::<Ipv6Addr>(&value, "source_ipv6", "fd00::2"));
            if let Some(port) = self.optional_leaf(raw.gue_port, || "tunnel: gue_port:".into()) {
                settings.gue_port = port.0 as u16;
            }
        }
        for service in services.iter().filter(|s| s.forwarding.tunnel()) {
            let (missing, key, example) = match service.listen.ip() {
                IpAddr::V4(_) => (settings.source.is_none(), "source", "198.18.0.2"),
                IpAddr::V6(_) => (settings.source_ipv6.is_none(), "source_ipv6", "fd00::2"),
            };
            if missing {
                self.error(&span, format!("service {:?}: forwarding {:?} needs `{key}` in [tunnel]: this instance's own address, the source of the outer header (like {key} = \"{example}\")", service.name, service.forwarding.name()));
            }
        }
        if services.iter().any(|s| s.forwarding == Forwarding::Gue) {
            for service in services
                .iter()
                .filter(|s| s.protocol == Protocol::Udp && s.listen.port() == settings.gue_port)
            {
                self.error(&span, format!("service {:?}: it listens on UDP port {}, which is [tunnel] gue_port, where backends take GUE packets; choose another gue_port", service.name, settings.gue_port));
            }
        }
        settings
    }

    /// An outer source address of family `A`: a unicast address of this host.
    fn tunnel_source<A: std::str::FromStr + Into<IpAddr>>(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        example: &str,
    ) -> Option<A> {
        match value.get_ref().parse::<A>() {
            Ok(address) => {
                let ip: IpAddr = address.into();
                if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                    self.error(&value.span(), format!("tunnel: {key}: {ip} is not a unicast address of this host (the outer header's source, like \"{example}\")"));
                    return None;
                }
                ip.to_string().parse::<A>().ok()
            }
            Err(_) => {
                self.error(
                    &value.span(),
                    format!(
                        "tunnel: {key}: {:?} is not an {} address (like \"{example}\")",
                        value.get_ref(),
                        if key == "source" { "IPv4" } else { "IPv6" }
                    ),
                );
                None
            }
        }
    }
}
