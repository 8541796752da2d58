//! The handshake guard's decisions (see `HANDSHAKE_GUARD` in `lb-ebpf/src/maps.rs`), written
//! once: the program takes them for every new TCP flow, and userspace reads the guard's state
//! with them to say whether the guard is on (`xlb stats`). A packet test checks that the two
//! agree.

use crate::{HandshakeGuard, consts::timing::HANDSHAKE_WINDOW_NS};

/// Whether a window that started `elapsed_ns` ago (signed: another CPU may have restarted it
/// after this packet read the clock) has ended.
#[inline(always)]
pub const fn window_ended(elapsed_ns: i64) -> bool {
    elapsed_ns > HANDSHAKE_WINDOW_NS as i64
}

/// The `flooded` flag of a window that restarts `elapsed_ns` after the previous one started,
/// which counted `ended_flows` new flows: set if that window reached the budget and was the
/// one just before (a gap of more than a window means the last one saw no flows at all).
#[inline(always)]
pub const fn starts_flooded(elapsed_ns: i64, ended_flows: u64, budget: u64) -> bool {
    elapsed_ns <= 2 * HANDSHAKE_WINDOW_NS as i64 && ended_flows >= budget
}

/// Whether a SYN is placed by hash, given the new flows its window counted before it and the
/// window's `flooded` flag: when the window is over budget, or follows one that was. A budget
/// of 0 keeps SYNs on round robin.
#[inline(always)]
pub const fn hashes_syn(flows_before: u64, budget: u64, flooded: bool) -> bool {
    budget != 0 && (flooded || flows_before >= budget)
}

/// Whether the next SYN, at `now_ns` (coarse monotonic clock), would be placed by hash, from
/// the guard's state as userspace reads it: within the current window, as [`hashes_syn`] says
/// for the flows counted so far; once the window has ended, as the window the SYN restarts
/// would start ([`starts_flooded`]).
pub const fn next_syn_hashed(guard: &HandshakeGuard, now_ns: u64) -> bool {
    let elapsed = now_ns.wrapping_sub(guard.window_start_ns) as i64;
    if window_ended(elapsed) {
        let flooded = starts_flooded(elapsed, guard.window_flows, guard.budget);
        hashes_syn(0, guard.budget, flooded)
    } else {
        hashes_syn(guard.window_flows, guard.budget, guard.flooded != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = HANDSHAKE_WINDOW_NS;

    fn guard(flows: u64, flooded: u32) -> HandshakeGuard {
        HandshakeGuard {
            window_start_ns: 10 * WINDOW,
            window_flows: flows,
            budget: 100,
            flooded,
            ..HandshakeGuard::default()
        }
    }

    #[test]
    fn on_in_a_window_over_budget_or_after_one_and_off_once_stale() {
        let now = 10 * WINDOW + WINDOW / 2;
        assert!(!next_syn_hashed(&guard(99, 0), now));
        assert!(next_syn_hashed(&guard(100, 0), now));
        assert!(next_syn_hashed(&guard(3, 1), now));
        // The window has ended: what counts is whether it ended over budget.
        let ended = 11 * WINDOW + WINDOW / 2;
        assert!(next_syn_hashed(&guard(100, 0), ended));
        assert!(!next_syn_hashed(&guard(3, 1), ended));
        assert!(!next_syn_hashed(&guard(1_000, 1), 13 * WINDOW));
        let off = HandshakeGuard {
            budget: 0,
            ..guard(1_000, 1)
        };
        assert!(!next_syn_hashed(&off, now));
    }

    #[test]
    fn a_window_restarted_late_is_not_flooded() {
        assert!(starts_flooded(WINDOW as i64 + 1, 100, 100));
        assert!(!starts_flooded(2 * WINDOW as i64 + 1, 100, 100));
        assert!(!starts_flooded(WINDOW as i64 + 1, 99, 100));
        assert!(!window_ended(WINDOW as i64));
        assert!(window_ended(WINDOW as i64 + 1));
        assert!(!window_ended(-5));
    }
}
