//! `xlb backend reset`: ends a backend's connections (or one client's) without taking the
//! backend out. Deleting a flow's entry would not end its connection (its next packet is
//! placed again, on the same backend with Maglev), and a reset needs the sequence number the
//! receiver expects, which only a packet of the connection carries: so each established TCP
//! connection's entry is marked, and its next packet in either direction leaves as a RST (see
//! `flow_flags::RESET`); its peer then answers the other side's next packet with a RST of its
//! own. UDP flows are forgotten (their next datagram is placed anew).

use anyhow::{Result, bail};
use lb_common::consts::{flow_flags, proto};

use super::{
    Monitor,
    targets::{self, BackendAddress},
};
use crate::{control::DataplaneReads as _, dataplane::maps::Maps, wire};

impl Monitor {
    /// Ends the connections of the backends `service` and `backend` name (see `targets`),
    /// only those of `client` (an address, or an address and port) if given. Returns what
    /// was done, in words.
    pub fn reset_connections(
        &mut self,
        maps: &mut Maps,
        service: &str,
        backend: BackendAddress,
        client: Option<BackendAddress>,
    ) -> Result<String> {
        let config = self.core.config();
        let named = targets::targets(config, service, backend)?;
        let mut ids = Vec::new();
        for (name, address) in &named {
            let s = self.core.service_index(name)?;
            let b = config.services[s]
                .backends
                .iter()
                .position(|b| b.address == *address);
            if let Some(id) = b.and_then(|b| self.core.backend_id(s, b)) {
                ids.push(id);
            }
        }
        let (mut reset, mut forgotten) = (0, 0);
        for (key, entry, half_open) in maps.flows()? {
            let from = std::net::SocketAddr::new(
                wire::ip_from_field(&key.src_addr, key.family),
                u16::from_be(key.src_port),
            );
            if half_open
                || !ids.contains(&entry.backend_id)
                || client.is_some_and(|client| !client.names(from))
            {
                continue;
            }
            if key.proto == proto::UDP {
                maps.flows.remove(&key);
                forgotten += 1;
            } else if entry.flags & flow_flags::CLOSING == 0
                && maps.flows.update(&key, |entry| {
                    entry.flags |= flow_flags::RESET;
                    entry.to_backend.ifindex = 0;
                    entry.to_client.ifindex = 0;
                    true
                })
            {
                reset += 1;
            }
        }
        if reset + forgotten == 0 && client.is_some() {
            bail!("no connection of that client on {service} {backend}");
        }
        let whom = named
            .iter()
            .map(|(s, a)| format!("{s} {a}"))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            backends = whom,
            reset,
            forgotten,
            "operator reset connections"
        );
        Ok(format!(
            "{whom}: {reset} TCP connections end at their next packet (a RST to each side), \
             {forgotten} UDP flows forgotten; the backend keeps taking new flows"
        ))
    }
}
