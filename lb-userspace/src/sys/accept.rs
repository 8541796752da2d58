//! Accept loops that survive errors: a listener whose `accept` fails (too many open files,
//! no buffers) would otherwise spin on the daemon's one thread.

use std::{io, time::Duration};

use tracing::{info, warn};

/// The first wait after a failed `accept`.
const FIRST: Duration = Duration::from_millis(10);
/// The longest wait.
const LONGEST: Duration = Duration::from_secs(1);

/// Backoff for an accept loop: after a failure it waits 10 ms, doubling up to 1 s while the
/// failures go on, and says so once per streak.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    /// A connection was accepted: the streak of failures, if any, is over.
    pub(crate) fn succeeded(&mut self) {
        if self.delay.take().is_some() {
            info!("accepting connections again");
        }
    }

    /// `accept` failed with `error`: waits before the next try (`what` names the listener).
    pub(crate) async fn failed(&mut self, what: &str, error: &io::Error) {
        let delay = match self.delay {
            None => {
                warn!("{what}: accepting a connection: {error}; trying again with a backoff");
                FIRST
            }
            Some(delay) => (delay * 2).min(LONGEST),
        };
        self.delay = Some(delay);
        tokio::time::sleep(delay).await;
    }

    /// The wait after the last failure, while failures go on.
    #[cfg(test)]
    fn delay(&self) -> Option<Duration> {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_to_a_second_and_a_success_resets() {
        let mut backoff = AcceptBackoff::default();
        let error = io::Error::from_raw_os_error(libc::EMFILE);
        let mut delays = Vec::new();
        for _ in 0..9 {
            backoff.failed("test", &error).await;
            delays.push(backoff.delay().unwrap().as_millis());
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.delay(), None);
    }
}
