//! The `xlb` command line: the clap definitions and what each subcommand does. `main.rs` only
//! calls [`main`].

mod render;

use std::{
    io::IsTerminal as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use crate::{
    api::{self, AdminAction, Request, Response, client},
    config::Config,
    daemon,
    dataplane::preflight,
};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// xlb: an XDP Layer-4 load balancer for TCP and UDP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
    /// Validate a configuration file and print every error with its location.
    Check {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Services and backends: state and why, weights, load, active flows, rates.
    Status,
    /// Counters of every service and backend, and data-plane events.
    Stats,
    /// `xlb status` refreshed every second, like top.
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Drain, disable or enable one backend until `enable` or a reload.
    Backend {
        /// drain: no new flows; disable: out of the table, flows purged; enable: undo.
        action: Action,
        /// The service's name.
        service: String,
        /// The backend's address and port.
        backend: SocketAddr,
    },
    /// Re-read the configuration file and apply the difference (like SIGHUP).
    Reload,
    /// Which backend would a new flow from CLIENT get now? (Runs a packet through the program.)
    Simulate {
        /// The service's name.
        service: String,
        /// The client's address and port.
        client: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Action {
    Drain,
    Enable,
    Disable,
}

/// Runs the `xlb` command with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let request = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run {
            config,
            detach_on_exit,
        } => {
            return run(
                &config,
                &daemon::Options {
                    socket: cli.socket,
                    detach_on_exit,
                },
            );
        }
        Command::Top {
            interval,
            iterations,
        } => return top(&cli.socket, interval, iterations),
        Command::Status => Request::Status {},
        Command::Stats => Request::Stats {},
        Command::Backend {
            action,
            service,
            backend,
        } => Request::Backend {
            service,
            backend,
            action: match action {
                Action::Drain => AdminAction::Drain,
                Action::Enable => AdminAction::Enable,
                Action::Disable => AdminAction::Disable,
            },
        },
        Command::Reload => Request::Reload {},
        Command::Simulate { service, client } => Request::Simulate { service, client },
    };
    let response = match client::call(&cli.socket, &request) {
        Ok(response) => response,
        Err(error) => {
            eprintln!("xlb: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).expect("serializable")
        );
        return if matches!(response, Response::Error(_)) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    match response {
        Response::Status(report) => print!("{}", render::status(&report)),
        Response::Stats(report) => print!("{}", render::stats(&report)),
        Response::Simulation(report) => print!("{}", render::simulation(&report)),
        Response::Done(message) => println!("{message}"),
        Response::Error(error) => {
            eprintln!("xlb: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.errors.len(),
                if errors.errors.len() == 1 { "" } else { "s" }
            );
            return ExitCode::FAILURE;
        }
    };
    let plan = match preflight(&config) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("{}: {error:#}", path.display());
            return ExitCode::FAILURE;
        }
    };
    for reason in &plan.reasons {
        println!("interface {reason}");
    }
    println!(
        "{}: ok ({} services, {} backends, {} interfaces)",
        path.display(),
        config.services.len(),
        config.backend_count(),
        config.interfaces.len()
    );
    ExitCode::SUCCESS
}

fn run(path: &Path, options: &daemon::Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("xlb: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(path, options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn top(socket: &Path, interval: f64, iterations: Option<u64>) -> ExitCode {
    let clear = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        match client::call(socket, &Request::Status {}) {
            Ok(Response::Status(report)) => {
                if clear {
                    print!("\x1b[H\x1b[2J");
                }
                println!("xlb top (every {interval}s, Ctrl-C to quit)");
                print!("{}", render::status(&report));
            }
            Ok(other) => {
                eprintln!("xlb: unexpected answer: {other:?}");
                return ExitCode::FAILURE;
            }
            Err(error) => {
                eprintln!("xlb: {error:#}");
                return ExitCode::FAILURE;
            }
        }
        shown += 1;
        if iterations.is_some_and(|n| shown >= n) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_secs_f64(interval.max(0.1)));
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
