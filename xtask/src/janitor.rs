//! Removes this run's network namespaces when the run ends, fails, or is interrupted
//! (SIGINT/SIGTERM), so no test or demo leaves anything behind.

use anyhow::Result;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};
use xlb_tests::{netns::delete_all_with_prefix, scenario::remove_pins_with_prefix};

/// Deletes the namespaces named with `prefix` on drop and on SIGINT/SIGTERM.
pub struct Janitor {
    prefix: String,
}

impl Janitor {
    /// Starts watching for SIGINT/SIGTERM.
    pub fn install(prefix: String) -> Result<Self> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let on_signal = prefix.clone();
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("xtask: interrupted; removing namespaces and pins {on_signal}*");
                let _ = delete_all_with_prefix(&on_signal);
                let _ = remove_pins_with_prefix(&on_signal);
                std::process::exit(128 + signal);
            }
        });
        Ok(Self { prefix })
    }

    /// Deletes the namespaces and pins now; returns the names of those that were still there.
    pub fn sweep(&self) -> Result<Vec<String>> {
        let mut left = delete_all_with_prefix(&self.prefix)?;
        left.extend(remove_pins_with_prefix(&self.prefix));
        Ok(left)
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let _ = self.sweep();
    }
}
