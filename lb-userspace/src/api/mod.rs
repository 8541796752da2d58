//! The control API's transport: the daemon serves it on a Unix socket (`server`: owner-only,
//! and it refuses peers that are neither root nor the daemon's user); every CLI subcommand
//! that asks the daemon speaks it (`client`). One JSON request per connection and one JSON
//! response back (or a stream of them), each on one line; the messages are the commands'
//! ([`crate::cmd`]).

pub(crate) mod client;
pub(crate) mod server;

use std::time::Duration;

/// Where the daemon listens unless told otherwise.
pub(crate) const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// How long a client may take to send its request, and the CLI to wait for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
