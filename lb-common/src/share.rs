//! Flows shared by the instances of a fleet: what the program tells its daemon of the flows it
//! makes (`FLOW_EVENTS`), and the entry an instance builds for a flow another instance made.
//!
//! An instance's backend and service ids are its own (each allocates them), and its next hops
//! are its own interfaces, so what travels between instances is addresses: the flow's key and
//! its backend's address and port. The receiving daemon builds the entry from them with
//! [`shared_entry`] (the same rewrite the program would have worked out: [`fill_shared_entry`],
//! which the program uses too when it takes a flow over from a backend's packet), its own ids,
//! and next hops left to be resolved by the first packet through the FIB.

use crate::{Addr, FlowAddr, FlowEntry, FlowKey, Hop, consts::family, csum, epoch};

/// Kinds of [`FlowEvent`].
pub mod flow_event {
    /// The flow is established: a TCP handshake completed, or a UDP flow's (or a mid-stream
    /// TCP packet's) entry was made.
    pub const OPENED: u8 = 1;
    /// A TCP FIN or RST closed the flow: its entry times out after `tcp_closing_timeout`.
    pub const CLOSING: u8 = 2;
}

/// A record of `FLOW_EVENTS`: a flow the program made established, or closed, while the
/// daemon shares flows. Written by the program; read by the daemon, which sends it to the
/// fleet's other instances.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// The flow's key (client, VIP, ports, protocol, family).
    pub key: FlowKey,
    /// The backend's address.
    pub backend: Addr,
    /// The backend's port, network order.
    pub backend_port: u16,
    /// [`flow_event`].
    pub kind: u8,
    /// Explicit padding; zero.
    pub _pad: [u8; 5],
}

const _: () = assert!(size_of::<FlowEvent>() == 64);

/// The entry an instance makes for a flow of `key` that another instance placed on the
/// backend at `backend:backend_port`, which is this instance's backend `backend_id` of its
/// service `service_id`; `flags` are the flow's (`flow_flags::DSR` for a DSR service),
/// `now_ns` the coarse monotonic time. Its next hops are unresolved (the first packet in
/// either direction asks the FIB), and it counts as active from its first packet here.
pub fn shared_entry(
    key: &FlowKey,
    backend: &Addr,
    backend_port: u16,
    ids: (u32, u32),
    flags: u8,
    now_ns: u64,
) -> FlowEntry {
    let vip = (key.dst_addr, key.dst_port);
    if key.family == family::IPV4 {
        let mut entry = FlowEntry::<u32>::default();
        let backend = (backend[0], backend_port);
        fill_shared_entry(
            &mut entry,
            (&vip.0[0], vip.1),
            (&backend.0, backend.1),
            ids,
            flags,
            now_ns,
        );
        return entry.widen();
    }
    let mut entry = FlowEntry::default();
    fill_shared_entry(
        &mut entry,
        (&vip.0, vip.1),
        (backend, backend_port),
        ids,
        flags,
        now_ns,
    );
    entry
}

/// Fills `entry` as [`shared_entry`] describes, for a flow to `vip` (address and port, network
/// order) whose backend is `backend`; the program fills its own entries so when it takes over
/// a flow from a backend's packet (`reply::LoneVip`). Generic over the address's form, so that
/// the daemon and the program make the same entry.
#[inline(always)]
pub fn fill_shared_entry<A: FlowAddr>(
    entry: &mut FlowEntry<A>,
    vip: (&A, u16),
    backend: (&A, u16),
    ids: (u32, u32),
    flags: u8,
    now_ns: u64,
) {
    entry.last_seen_ns = now_ns;
    entry.addr = *backend.0;
    entry.port = backend.1;
    entry.flags = flags;
    entry._pad = 0;
    (entry.backend_id, entry.service_id) = ids;
    entry.csum_addr = A::csum_delta(vip.0, backend.0);
    entry.csum_port = csum::delta16(vip.1, backend.1);
    entry.to_backend = Hop::default();
    entry.to_client = Hop::default();
    // Not the current epoch: the flow's first packet here counts it active.
    entry.epoch = (epoch(now_ns) as u16).wrapping_sub(1);
    entry._pad2 = 0;
    entry.created_s = (now_ns / 1_000_000_000) as u32;
    entry.handshake_ack = 0;
    entry._tail = Default::default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::proto;

    #[test]
    fn a_shared_entry_rewrites_as_the_programs_own_would() {
        let vip = [0x0164_12c6, 0, 0, 0];
        let backend = [0x0b01_12c6, 0, 0, 0];
        let key = FlowKey {
            src_addr: [0x0200_12c6, 0, 0, 0],
            dst_addr: vip,
            src_port: 40_000u16.to_be(),
            dst_port: 80u16.to_be(),
            proto: proto::TCP,
            family: family::IPV4,
            _pad: [0; 2],
        };
        let entry = shared_entry(&key, &backend, 8080u16.to_be(), (7, 3), 0, 5_000_000_000);
        assert_eq!(entry.csum_addr, csum::delta32(vip[0], backend[0]));
        assert_eq!(
            entry.csum_port,
            csum::delta16(80u16.to_be(), 8080u16.to_be())
        );
        assert_eq!((entry.backend_id, entry.service_id), (7, 3));
        assert!(!entry.to_backend.resolved() && !entry.to_client.resolved());
        assert_ne!(u32::from(entry.epoch), epoch(5_000_000_000));
        assert_eq!(entry.created_s, 5);
        // IPv6: the whole address.
        let six = FlowKey {
            family: family::IPV6,
            dst_addr: [1, 2, 3, 4],
            ..key
        };
        let entry = shared_entry(&six, &[5, 6, 7, 8], 80u16.to_be(), (1, 1), 0, 0);
        assert_eq!(
            entry.csum_addr,
            csum::delta128(&[1, 2, 3, 4], &[5, 6, 7, 8])
        );
        assert_eq!(entry.csum_port, csum::delta16(80u16.to_be(), 80u16.to_be()));
    }
}
