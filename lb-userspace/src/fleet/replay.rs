//! Replay protection: a message recorded off the wire and sent again is refused. Each sender
//! numbers its messages within an epoch (a number it picks when it starts); a receiver keeps,
//! per peer, the epoch, the highest number seen and which of the 64 before it were seen
//! (IPsec's anti-replay window). A message sent more than [`MAX_SKEW_MS`] from the
//! receiver's clock is refused too, and so is a new epoch older than the current one's last
//! message: an old epoch's messages cannot be replayed once their time is past.

/// How far a message's send time may be from the receiver's clock (the instances' clocks are
/// assumed kept by NTP).
pub const MAX_SKEW_MS: u64 = 30_000;
/// How many numbers below the highest are remembered.
const WINDOW: u64 = 64;

/// Why a message is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Seen before, or too old to tell.
    Replayed,
    /// Its send time is too far from this clock.
    Stale,
}

/// One peer's window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    epoch: u64,
    highest: u64,
    /// Bit `i`: `highest - i` was seen.
    seen: u64,
    last_sent_ms: u64,
}

impl Window {
    /// Accepts the message `(epoch, sequence, sent_ms)` at `now_ms`, and remembers it.
    pub fn accept(
        &mut self,
        epoch: u64,
        sequence: u64,
        sent_ms: u64,
        now_ms: u64,
    ) -> Result<(), Rejected> {
        if sent_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Rejected::Stale);
        }
        if epoch != self.epoch {
            // A new epoch (the peer restarted) must be newer than what we have.
            if self.highest != 0 && sent_ms < self.last_sent_ms {
                return Err(Rejected::Replayed);
            }
            *self = Self {
                epoch,
                highest: sequence,
                seen: 1,
                last_sent_ms: sent_ms,
            };
            return Ok(());
        }
        if sequence > self.highest {
            let shift = sequence - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            } | 1;
            self.highest = sequence;
        } else {
            let age = self.highest - sequence;
            if age >= WINDOW || self.seen & (1 << age) != 0 {
                return Err(Rejected::Replayed);
            }
            self.seen |= 1 << age;
        }
        self.last_sent_ms = self.last_sent_ms.max(sent_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_765_000_000_000;

    #[test]
    fn each_message_is_accepted_once_in_any_order_within_the_window() {
        let mut window = Window::default();
        assert_eq!(window.accept(7, 1, NOW, NOW), Ok(()));
        assert_eq!(window.accept(7, 1, NOW, NOW), Err(Rejected::Replayed));
        assert_eq!(window.accept(7, 5, NOW, NOW), Ok(()));
        assert_eq!(window.accept(7, 3, NOW, NOW), Ok(()), "late, but not seen");
        assert_eq!(window.accept(7, 3, NOW, NOW), Err(Rejected::Replayed));
        assert_eq!(window.accept(7, 200, NOW, NOW), Ok(()));
        assert_eq!(
            window.accept(7, 100, NOW, NOW),
            Err(Rejected::Replayed),
            "too old to tell"
        );
        assert_eq!(window.accept(7, 199, NOW, NOW), Ok(()));
    }

    #[test]
    fn a_restarted_peer_starts_a_new_epoch_and_an_old_one_cannot_come_back() {
        let mut window = Window::default();
        for n in 1..=10 {
            window.accept(7, n, NOW + n, NOW).unwrap();
        }
        // Restarted: a new epoch, its numbers from 1 again.
        assert_eq!(window.accept(8, 1, NOW + 20, NOW + 20), Ok(()));
        assert_eq!(window.accept(8, 2, NOW + 21, NOW + 21), Ok(()));
        // The old epoch's messages, replayed: older than the current epoch's.
        assert_eq!(
            window.accept(7, 11, NOW + 10, NOW + 22),
            Err(Rejected::Replayed)
        );
        // Far from this clock either way.
        assert_eq!(
            window.accept(8, 3, NOW - MAX_SKEW_MS - 1, NOW),
            Err(Rejected::Stale)
        );
        assert_eq!(
            window.accept(8, 3, NOW + MAX_SKEW_MS + 1, NOW),
            Err(Rejected::Stale)
        );
    }
}
