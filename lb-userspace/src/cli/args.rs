//! The `xlb` command line's definitions (clap): what `--help`, the man pages and the shell
//! completions are generated from.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{api, cmd::Request};

/// Where the daemon keeps operators' settings unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xlb";

/// xlb: an XDP Layer-4 load balancer for TCP and UDP.
#[derive(Debug, Parser)]
#[command(name = "xlb", version = crate::VERSION)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the answer as JSON (`run`, `completions` and `man` print no answer and refuse
    /// it).
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
        /// Where operators' drains, disables, weights and paused checks are kept across restarts.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Forget every operator setting (drain, disable, weight, paused checks) at start.
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
    /// Commands that ask the running daemon (over its control socket).
    #[command(flatten)]
    Daemon(Request),
    /// `xlb status` refreshed every second, like top (with --json: one JSON line per refresh).
    Top {
        /// Only this service.
        service: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// On a backend of a `forwarding = "ipip"` or `"gue"` service: strip the outer header of
    /// the balancers' packets to the VIPs, at tc ingress of INTERFACE, and hand the inner
    /// packets to the stack (for hosts without the kernel's ipip or fou modules; the VIPs
    /// must also be on a local interface, such as lo). Everything else passes untouched;
    /// encapsulated packets from elsewhere, to other addresses, or malformed are dropped and
    /// counted. Runs until SIGINT or SIGTERM, then detaches and prints its counters.
    Decap {
        /// The interface the balancers' packets arrive on.
        #[arg(long, value_name = "INTERFACE")]
        interface: String,
        /// A VIP the inner packets go to (repeat for each).
        #[arg(long = "vip", value_name = "ADDRESS", required = true)]
        vips: Vec<std::net::IpAddr>,
        /// A prefix the balancers' outer source addresses (their `[tunnel] source`) are in
        /// (repeat for each).
        #[arg(long = "from", value_name = "PREFIX", required = true)]
        from: Vec<ipnet::IpNet>,
        /// GUE's UDP port (the balancers' `[tunnel] gue_port`); 0 takes no GUE.
        #[arg(long, value_name = "PORT", default_value_t = lb_common::tunnel::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Seconds between lines of counters while running (0: only at exit).
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        report: u64,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR.
    Man {
        /// Write xlb.1, xlb-run.1, ... and xlb.toml.5 here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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
        let address = error(&["xlb", "backend", "drain", "web", "backend-1:80"]);
        assert!(
            address.contains("\"backend-1:80\" is not a backend"),
            "{address}"
        );
        let prefix = error(&["xlb", "flows", "--client", "198.18.0.1/16"]);
        assert!(
            prefix.contains("did you mean \"198.18.0.0/16\""),
            "{prefix}"
        );
        let limit = error(&["xlb", "flows", "--limit", "0"]);
        assert!(limit.contains("0 is not in 1..=100000"), "{limit}");
    }
}
