//! Where `xlb run` logs: to the journal, with each event's priority, when systemd connected
//! stderr to it (`JOURNAL_STREAM` names stderr); else plain text on stderr. `RUST_LOG` sets
//! the level (default info).

use std::{io::IsTerminal as _, os::unix::fs::MetadataExt as _};

use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` is "device:inode" of it.
fn stderr_is_journal() -> bool {
    let stderr = std::fs::metadata("/proc/self/fd/2").ok();
    names_stream(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr.map(|m| (m.dev(), m.ino())),
    )
}

/// Whether a `JOURNAL_STREAM` value names the file of (device, inode).
fn names_stream(journal_stream: Option<&str>, file: Option<(u64, u64)>) -> bool {
    match (journal_stream, file) {
        (Some(stream), Some((dev, ino))) => stream == format!("{dev}:{ino}"),
        _ => false,
    }
}

/// Sets up logging for the daemon.
pub(crate) fn init() {
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

/// `text` (an error with several lines, such as every error of a config file) as one line,
/// its lines joined by "; ": a log record is one line in the journal and in grep.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::{names_stream, one_line};

    #[test]
    fn an_error_of_several_lines_is_logged_as_one() {
        assert_eq!(
            one_line(
                "xlb.toml:3:12: xdp_mode: unknown mode\n  xlb.toml:9:1: no service\n\nnothing was changed"
            ),
            "xlb.toml:3:12: xdp_mode: unknown mode; xlb.toml:9:1: no service; nothing was changed"
        );
        assert_eq!(one_line("one"), "one");
    }

    #[test]
    fn the_journal_is_used_only_when_systemd_connected_stderr_to_it() {
        assert!(names_stream(Some("8:1234"), Some((8, 1234))));
        // A child of a service inherits JOURNAL_STREAM with another stderr.
        assert!(!names_stream(Some("8:1234"), Some((8, 99))));
        assert!(!names_stream(None, Some((8, 1234))));
        assert!(!names_stream(Some("8:1234"), None));
    }
}
