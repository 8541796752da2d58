//! Next hops: where a rewritten packet goes (an interface and the MAC addresses of its
//! Ethernet header), as the kernel's FIB answers. A flow entry caches the next hop toward its
//! client; the next hop toward each backend is cached once per backend (`BACKEND_HOPS`), so a
//! new flow asks the FIB nothing.

/// One next hop: the interface, the next hop's MAC address and the source MAC address to use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hop {
    /// The interface the packet leaves by; 0: not resolved (or to be resolved again).
    pub ifindex: u32,
    /// The next hop's MAC address.
    pub dst_mac: [u8; 6],
    /// The source MAC address (the interface's).
    pub src_mac: [u8; 6],
    /// Whether the interface is a veth whose packets the tc program hands straight to its peer
    /// (`bpf_redirect_peer`, see `VETH_PEERS`): 1 or 0.
    pub peer: u8,
    /// Explicit padding; zero.
    pub _pad: u8,
    /// Explicit padding to the struct's alignment; zero. Named, so that a copy of a hop
    /// copies defined bytes (LLVM may fill unnamed padding from any register, which the
    /// verifier refuses to read).
    pub _tail: u16,
}

impl Hop {
    /// Whether the hop is resolved (has an interface).
    #[inline(always)]
    pub const fn resolved(&self) -> bool {
        self.ifindex != 0
    }
}

/// Value of `BACKEND_HOPS`: the next hop toward a backend, and when the FIB gave it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendHop {
    /// Coarse monotonic time (ns) of the FIB's answer; 0: never resolved.
    pub resolved_ns: u64,
    /// The next hop.
    pub hop: Hop,
    /// Explicit padding; zero.
    pub _pad: u32,
}

/// How long a backend's cached next hop serves new flows: a neighbour or route change
/// reaches new flows within this time, as the once-a-second refresh of a flow's entry does
/// for existing flows.
pub const BACKEND_HOP_MAX_AGE_NS: u64 = 1_000_000_000;

impl BackendHop {
    /// Whether the cached hop may serve a new flow at `now_ns`: resolved, and resolved less
    /// than [`BACKEND_HOP_MAX_AGE_NS`] ago (a time after `now_ns`, written by another CPU
    /// after `now_ns` was read, is fresh).
    #[inline(always)]
    pub const fn fresh(&self, now_ns: u64) -> bool {
        self.hop.ifindex != 0
            && self.resolved_ns != 0
            && (now_ns <= self.resolved_ns || now_ns - self.resolved_ns < BACKEND_HOP_MAX_AGE_NS)
    }
}

const _: () = assert!(size_of::<Hop>() == 20);
const _: () = assert!(size_of::<BackendHop>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_hop_serves_new_flows_for_a_second_after_it_was_resolved() {
        let second = 1_000_000_000;
        let cached = BackendHop {
            resolved_ns: 10 * second,
            hop: Hop {
                ifindex: 3,
                ..Hop::default()
            },
            _pad: 0,
        };
        assert!(cached.fresh(10 * second));
        assert!(cached.fresh(11 * second - 1));
        assert!(!cached.fresh(11 * second));
        assert!(cached.fresh(9 * second), "stamped after now was read");
        let unresolved = BackendHop {
            hop: Hop::default(),
            ..cached
        };
        assert!(!unresolved.fresh(10 * second));
        assert!(!BackendHop::default().fresh(1));
    }
}
