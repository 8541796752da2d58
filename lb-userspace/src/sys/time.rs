//! The wall clock, for what operators read (when a setting was made, when a reload last
//! succeeded); durations use tokio's monotonic clock.

use std::time::SystemTime;

/// Seconds since the Unix epoch (0 if the clock is set before it).
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
