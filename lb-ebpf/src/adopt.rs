//! A flow taken over from its backend's packet. In a fleet of NAT instances behind ECMP, the
//! backend's answers may come back through another instance than the one that placed the flow,
//! and the first of them (a SYN-ACK, a UDP reply) comes sooner than the flow's entry, which
//! the placing instance shares once the flow is established. Such a packet's flow is known
//! when its backend serves one VIP (`LONE_VIPS4`/`6`): the client is the packet's destination,
//! the VIP that one. The entry is made here, as the daemon makes a shared one (half-open for a
//! SYN-ACK, so that the client's ACK completes it wherever it arrives), and the program runs
//! again on the packet (`Frame::rerun`), which then finds its flow as any packet does: the
//! established path's code is not laid out twice for the verifier. Only while the instance shares flows (`FLEET`): otherwise a
//! backend's packet in no flow passes untouched, as it always has.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    BackendVipKey, FlowAddr,
    consts::{events, proto, tcp_flags},
    share::fill_shared_entry,
};

use crate::{clock, family::Family, flows::table, maps::count_event, scratch::Scratch};

/// What a backend's packet whose flow was just adopted gets instead of a verdict: the program
/// runs again on it, from its top level (`balance::process`), where a tail call may be made.
/// No hook's verdict has this value.
pub const RERUN: u32 = 0xffff_fffc;

/// `EEXIST`: an insert found the key there.
const EEXIST: i32 = 17;

/// Takes over the flow of the packet in this CPU's `scratch` area, from a backend's port and
/// in no flow, and returns whether its flow has an entry now (made here, or by another CPU
/// meanwhile): not if its source is no NAT backend that serves one VIP, or the entry could
/// not be made. The backend's key (`BACKEND_VIPS4`/`6`) is left in the scratch area.
#[inline(always)]
pub fn adopt<Fam: Family>(scratch: *mut Scratch) -> bool {
    let areas = Fam::areas(scratch);
    // SAFETY: this CPU's scratch area: the parsed packet; the backend's and the flow's keys
    // and the entry being built are used here only.
    let (pkt, backend, key, entry) = unsafe {
        (
            &(*scratch).pkt,
            &mut *areas.backend,
            &mut *areas.key,
            &mut *areas.entry,
        )
    };
    *backend = BackendVipKey {
        addr: *Fam::Addr::in_addr(&pkt.src),
        port: pkt.sport,
        proto: pkt.proto,
        _pad: 0,
    };
    let backend: &BackendVipKey<Fam::Addr> = backend;
    let Some(lone) = Fam::lone_vips().get_ptr(backend) else {
        return false;
    };
    // SAFETY: a valid map value, copied at once (userspace replaces it whole).
    let lone = unsafe { *lone };
    *key = Fam::key(
        Fam::Addr::in_addr(&pkt.dst),
        &lone.vip.addr,
        pkt.dport,
        lone.vip.port,
        backend.proto,
    );
    fill_shared_entry(
        entry,
        (&lone.vip.addr, lone.vip.port),
        (&backend.addr, backend.port),
        (lone.backend_id, lone.service_id),
        0,
        clock::now_in(scratch),
    );
    // A SYN-ACK, the backend's answer to the client's SYN: the handshake is not complete.
    let half_open = pkt.proto == proto::TCP && pkt.tcp_flags & tcp_flags::SYN != 0;
    match table::<Fam>(half_open).insert(&*key, &*entry, BPF_NOEXIST as u64) {
        Ok(()) => {
            count_event(events::FLOW_ADOPTED);
            true
        }
        // (Another CPU adopted it meanwhile: its entry serves.)
        Err(error) => error == -EEXIST,
    }
}
