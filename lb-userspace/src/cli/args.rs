//! The `xlb` command line's definitions (clap): what `--help`, the man pages and the shell
//! completions are generated from.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::{api, config::parse_prefix};

/// Where the daemon keeps operators' settings unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xlb";

/// xlb: an XDP Layer-4 load balancer for TCP and UDP.
#[derive(Debug, Parser)]
#[command(name = "xlb", version = crate::VERSION)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the answer as JSON (refused by commands that print no answer).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the configured interfaces and balance until SIGINT or SIGTERM (SIGHUP
    /// reloads). On exit the data plane keeps forwarding and the next `xlb run` takes it over.
    Run {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// On exit, detach from the interfaces and remove the pinned maps (dropping every flow)
        /// instead of leaving the data plane forwarding.
        #[arg(long)]
        detach_on_exit: bool,
        /// Where operators' drains, disables and weights are kept across restarts.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Forget every operator setting (drain, disable, weight) at start.
        #[arg(long)]
        reset_operator_state: bool,
    },
    /// Validate a configuration file and print every error with its location; then check
    /// this host (interfaces, forwarding, the hook each interface gets) unless --offline.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Check only the file, not this host: for a file meant for another machine.
        #[arg(long)]
        offline: bool,
    },
    /// Services and backends: state and why, weights, operator settings, load, active flows,
    /// rates.
    Status {
        /// Only this service.
        service: Option<String>,
    },
    /// Counters of every service and backend, and data-plane events.
    Stats,
    /// `xlb status` refreshed every second, like top (with --json: one JSON line per refresh).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// The flows in the flow tables, oldest first (like `ipvsadm -Lnc`).
    Flows {
        /// Only this service's flows.
        service: Option<String>,
        /// Only flows served by this backend (address:port).
        #[arg(long, value_name = "ADDR")]
        backend: Option<SocketAddr>,
        /// Only flows of clients in this prefix (or this address).
        #[arg(long, value_name = "PREFIX", value_parser = client_prefix)]
        client: Option<String>,
        /// List at most this many.
        #[arg(long, value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
    /// Change one backend: kept across reloads and restarts until `xlb backend enable`.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Re-read the configuration file and apply the difference (like SIGHUP); a file with
    /// errors changes nothing and the errors are printed.
    Reload,
    /// Which backend would a new flow from CLIENT get now? (Runs a packet through the program.)
    Simulate {
        /// The service's name.
        service: String,
        /// The client's address and port.
        client: SocketAddr,
    },
    /// What the data plane decides for a service's packets, as they pass (like `cilium
    /// monitor`): new flows with their backend and why, drops, established packets, ICMP
    /// errors translated. Filtered and sampled in the kernel.
    Trace {
        /// The service's name.
        service: String,
        /// Only flows of clients in this prefix (or this address), of the service's family.
        #[arg(long, value_name = "PREFIX", value_parser = client_prefix)]
        client: Option<String>,
        /// For how long.
        #[arg(long, value_name = "N", default_value_t = 10,
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        seconds: u64,
        /// Record one matching packet in N.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        sample: u32,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR.
    Man {
        /// Write xlb.1, xlb-run.1, ... here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `xlb backend ...`: an operator's setting on one backend.
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// No new flows; established flows continue.
    Drain(BackendArgs),
    /// Out of the table at once; its flows are purged.
    Disable(BackendArgs),
    /// Clear what an operator set (drain, disable, weight): back to the config and checks.
    Enable(BackendArgs),
    /// Replace the configured weight (0 to 256; 0 drains).
    Weight {
        /// Which backend.
        #[command(flatten)]
        backend: BackendArgs,
        /// The new weight.
        #[arg(value_parser = clap::value_parser!(u32).range(0..=256))]
        weight: u32,
    },
}

/// Which backend.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// The service's name.
    pub service: String,
    /// The backend's address and port.
    pub backend: SocketAddr,
}

/// Checks a `--client` prefix (the daemon checks it again).
fn client_prefix(text: &str) -> Result<String, String> {
    parse_prefix(text).map(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_arguments_are_refused_with_what_is_wrong() {
        let error = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let weight = error(&["xlb", "backend", "weight", "web", "198.18.1.1:80", "300"]);
        assert!(weight.contains("300 is not in 0..=256"), "{weight}");
        let address = error(&["xlb", "backend", "drain", "web", "198.18.1.1"]);
        assert!(address.contains("invalid socket address"), "{address}");
        let prefix = error(&["xlb", "flows", "--client", "198.18.0.1/16"]);
        assert!(
            prefix.contains("did you mean \"198.18.0.0/16\""),
            "{prefix}"
        );
        let limit = error(&["xlb", "flows", "--limit", "0"]);
        assert!(limit.contains("0 is not in 1..=100000"), "{limit}");
    }
}
