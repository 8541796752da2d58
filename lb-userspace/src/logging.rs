//! Where `xlb run` logs: to the journal, with each event's priority, when systemd connected
//! stderr to it (`JOURNAL_STREAM` names stderr); else plain text on stderr. `RUST_LOG` sets
//! the level (default info).

use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _};

use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is "device:inode" of it.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// Sets up logging for the daemon.
pub fn init() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(journal.with_syslog_identifier("xlb".into()))
                    .init();
                return;
            }
            Err(error) => eprintln!("xlb: cannot log to the journal ({error}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
