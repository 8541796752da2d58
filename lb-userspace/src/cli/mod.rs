//! The `xlb` command line: the clap definitions and what each subcommand does. `main.rs` only
//! calls [`main`].

pub mod args;
mod decap;
mod man;
mod probe;
mod render;

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use crate::{
    api::client,
    cmd::{Request, Response, status::Status},
    config::{Config, ConfigError, ConfigErrors, locate_subject},
    daemon,
    dataplane::preflight,
};
use args::{Cli, Command};
use clap::{CommandFactory as _, Parser as _};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

/// Runs the `xlb` command with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match cli.command {
        Command::Check { config, offline } => check(&config, offline, json),
        Command::Run {
            config,
            detach_on_exit,
            state_dir,
            reset_operator_state,
        } => {
            if json {
                return refuse_json("run", "it prints logs, not an answer");
            }
            crate::logging::init();
            run(
                &config,
                &daemon::Options {
                    socket: cli.socket,
                    detach_on_exit,
                    state_dir,
                    reset_operator_state,
                },
            )
        }
        Command::Decap {
            interface,
            vips,
            from,
            gue_port,
            report,
        } => {
            if json {
                return refuse_json("decap", "it prints logs and counters, not an answer");
            }
            crate::logging::init();
            decap::run(&interface, vips, from, gue_port, report)
        }
        Command::Completions { shell } => {
            if json {
                return refuse_json("completions", "it prints a shell script");
            }
            clap_complete::generate(shell, &mut Cli::command(), "xlb", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            if json {
                return refuse_json("man", "it prints a man page");
            }
            man(dir.as_deref())
        }
        Command::Top {
            service,
            interval,
            iterations,
        } => top(&cli.socket, service, interval, iterations, json),
        Command::Daemon(Request::Trace(request)) => {
            init_client_logging();
            let seconds = request.seconds;
            trace(&cli.socket, &Request::Trace(request), seconds, json)
        }
        Command::Daemon(Request::Status(status)) if status.check => {
            if json {
                return refuse_json("status --check", "it prints a probe's line");
            }
            probe(&cli.socket, status)
        }
        Command::Daemon(request) => ask(&cli.socket, &request, json),
    }
}

/// `xlb status --check`: the probe's line, and its verdict as the exit code.
fn probe(socket: &Path, status: Status) -> ExitCode {
    let (verdict, line) = match client::call(socket, &Request::Status(status)) {
        Ok(Response::Status(report)) => probe::verdict(&report),
        Ok(Response::Error(error)) => probe::unreachable(&anyhow::anyhow!(error)),
        Ok(other) => probe::unreachable(&anyhow::anyhow!("unexpected answer: {other:?}")),
        Err(error) => probe::unreachable(&error),
    };
    println!("{line}");
    ExitCode::from(verdict as u8)
}

/// Refuses `--json` for a command whose output is not an answer.
fn refuse_json(command: &str, why: &str) -> ExitCode {
    eprintln!("xlb: --json does not apply to `xlb {command}`: {why}");
    ExitCode::FAILURE
}

/// A daemon command: sends `request` and prints the answer (as JSON with `--json`); fails if
/// the daemon cannot be reached or answers with an error.
fn ask(socket: &Path, request: &Request, json: bool) -> ExitCode {
    init_client_logging();
    let response = match client::call(socket, request) {
        Ok(response) => response,
        Err(error) => {
            eprintln!("xlb: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        print_json(&response);
        return if matches!(response, Response::Error(_) | Response::Invalid(_)) {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    print_response(response)
}

/// Prints the daemon's answer for people; an error goes to stderr and fails.
fn print_response(response: Response) -> ExitCode {
    match response {
        Response::Status(report) => print!("{}", render::status(&report)),
        Response::Stats(report) => print!("{}", render::stats(&report)),
        Response::Simulation(report) => print!("{}", render::simulation(&report)),
        Response::Flows(report) => print!("{}", render::flows(&report)),
        Response::TraceEvent(event) => println!("{}", render::trace_event(&event)),
        Response::TraceEnd(summary) => println!("{}", render::trace_end(&summary)),
        Response::Done(message) => println!("{message}"),
        Response::Error(error) => {
            eprintln!("xlb: {error}");
            return ExitCode::FAILURE;
        }
        Response::Invalid(errors) => {
            eprintln!("{}\nnothing was changed", counted(&errors));
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Logging for commands other than `run`: warnings and errors to stderr.
fn init_client_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

/// What `xlb check --json` prints.
#[derive(Serialize)]
struct CheckReport {
    file: PathBuf,
    ok: bool,
    /// Every problem: line and column (0 when the problem has no position) and message.
    errors: Vec<ConfigError>,
    services: usize,
    backends: usize,
    interfaces: usize,
    /// The host's checks: skipped with --offline.
    host_checked: bool,
    /// What each interface gets, and why.
    hooks: Vec<String>,
}

/// `xlb check`: validates the configuration and, unless `offline`, asks the host where the
/// program would attach; prints the outcome (as JSON with `--json`).
fn check(path: &Path, offline: bool, json: bool) -> ExitCode {
    init_client_logging();
    let mut report = CheckReport {
        file: path.to_owned(),
        ok: false,
        errors: Vec::new(),
        services: 0,
        backends: 0,
        interfaces: 0,
        host_checked: !offline,
        hooks: Vec::new(),
    };
    let outcome = run_checks(path, offline, &mut report);
    report.ok = outcome.is_ok();
    if json {
        print_json(&report);
    } else {
        print_check(path, offline, &report, &outcome);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The configuration's checks, then (unless `offline`) the host's, recorded in `report`; on
/// failure, the text `xlb check` prints.
fn run_checks(path: &Path, offline: bool, report: &mut CheckReport) -> Result<(), String> {
    match Config::load(path) {
        Err(errors) => {
            report.errors = errors.errors.clone();
            Err(counted(&errors))
        }
        Ok(config) => {
            report.services = config.services.len();
            report.backends = config.backend_count();
            report.interfaces = config.interfaces.len();
            if offline {
                Ok(())
            } else {
                check_host(path, &config, report)
            }
        }
    }
}

/// The host's checks of a valid `config` (its interfaces, their hooks, the backends' routes),
/// recorded in `report`, every problem at the place the file writes what it is about.
fn check_host(path: &Path, config: &Config, report: &mut CheckReport) -> Result<(), String> {
    match preflight(config) {
        Ok(plan) => {
            report.hooks = plan.reasons.clone();
            Ok(())
        }
        Err(problems) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let errors = ConfigErrors {
                path: path.to_owned(),
                errors: problems
                    .0
                    .into_iter()
                    .map(|p| locate_subject(&text, &p.subject, p.message))
                    .collect(),
            };
            report.errors.extend(errors.errors.iter().cloned());
            Err(counted(&errors))
        }
    }
}

/// `errors` as `xlb check` prints them, and their count.
fn counted(errors: &ConfigErrors) -> String {
    let n = errors.errors.len();
    format!(
        "{errors}\n{}: {n} error{}",
        errors.path.display(),
        if n == 1 { "" } else { "s" }
    )
}

/// Prints `xlb check`'s outcome for people: the errors to stderr, or each interface's hook and
/// a summary.
fn print_check(path: &Path, offline: bool, report: &CheckReport, outcome: &Result<(), String>) {
    match outcome {
        Err(text) => eprintln!("{text}"),
        Ok(()) => {
            for reason in &report.hooks {
                println!("interface {reason}");
            }
            println!(
                "{}: ok ({} services, {} backends, {} interfaces{})",
                path.display(),
                report.services,
                report.backends,
                report.interfaces,
                if offline { "; host not checked" } else { "" }
            );
        }
    }
}

/// `xlb trace`: prints each event as it comes (JSON lines with --json), then the summary.
fn trace(socket: &Path, request: &Request, seconds: u64, json: bool) -> ExitCode {
    let print = |response: &Response| {
        if json {
            println!("{}", serde_json::to_string(response).expect("serializable"));
        } else if let Response::TraceEvent(event) = response {
            println!("{}", render::trace_event(event));
        }
    };
    // The daemon may say nothing for the whole trace.
    let silence = Duration::from_secs(seconds + 30);
    match client::stream(socket, request, silence, print) {
        Ok(Response::TraceEnd(summary)) => {
            if json {
                print_json_line(&Response::TraceEnd(summary));
            } else {
                println!("{}", render::trace_end(&summary));
            }
            ExitCode::SUCCESS
        }
        Ok(Response::Error(error)) => {
            if json {
                print_json_line(&Response::Error(error));
            } else {
                eprintln!("xlb: {error}");
            }
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("xlb: unexpected answer: {other:?}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("xlb: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json_line(value: &impl Serialize) {
    println!("{}", serde_json::to_string(value).expect("serializable"));
}

/// `xlb man`: the page of `xlb` on stdout, or every command's page and `xlb.toml(5)` in
/// `dir`.
fn man(dir: Option<&Path>) -> ExitCode {
    let result = match dir {
        None => man::main_page(&mut std::io::stdout()),
        Some(dir) => man::write_all(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xlb: writing the man page: {error}");
            ExitCode::FAILURE
        }
    }
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
    let signals = {
        let _runtime = runtime.enter();
        daemon::Signals::install()
    };
    let signals = match signals {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("xlb: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(path, options, signals)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xlb top`: the status of every service (or one) every `interval` seconds, `iterations`
/// times or until interrupted; the screen is cleared between frames on a terminal.
fn top(
    socket: &Path,
    service: Option<String>,
    interval: f64,
    iterations: Option<u64>,
    json: bool,
) -> ExitCode {
    init_client_logging();
    if !(interval.is_finite() && interval > 0.0) {
        eprintln!("xlb: --interval must be a positive number of seconds, not {interval}");
        return ExitCode::FAILURE;
    }
    let clear = std::io::stdout().is_terminal() && !json;
    let mut shown = 0u64;
    loop {
        let request = Request::Status(Status {
            service: service.clone(),
            check: false,
        });
        match client::call(socket, &request) {
            Ok(response @ Response::Status(_)) if json => print_json_line(&response),
            Ok(Response::Status(report)) => {
                if clear {
                    print!("\x1b[H\x1b[2J");
                }
                println!("xlb top (every {interval}s, Ctrl-C to quit)");
                print!("{}", render::status(&report));
            }
            Ok(Response::Error(error)) => {
                eprintln!("xlb: {error}");
                return ExitCode::FAILURE;
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
