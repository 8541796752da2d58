//! `cargo xtask`: the drivers behind the README's commands.
//!
//! - `cargo xtask setup`: install what building and testing need (idempotent).
//! - `cargo xtask test`: setup, build, then every test tier; non-zero exit on any failure.
//! - `cargo xtask demo`: setup, build, then balance real traffic in a namespace topology.
//! - `cargo xtask bench [--quick]`: setup, build, run the benchmarks, write BENCHMARKS.md.

mod bench;
mod cargo;
mod demo;
mod janitor;
mod setup;
mod steps;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// xlb's development tasks.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the toolchain pieces and system packages that building and testing need.
    Setup,
    /// Set up, build, and run all tests: unit tests, packet tests (BPF_PROG_TEST_RUN), and
    /// end-to-end tests in network namespaces.
    Test,
    /// Set up, build, and balance real TCP and UDP traffic over three backends in network
    /// namespaces, then print how the flows were spread.
    Demo,
    /// Set up, build (release), run the benchmarks and write BENCHMARKS.md.
    Bench {
        /// Run every part briefly, only to check that the benchmarks work; writes
        /// target/BENCHMARKS.quick.md instead.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(&mut steps::Steps::new("setup", setup::STEPS)),
        Command::Test => test::run(),
        Command::Demo => demo::run(),
        Command::Bench { quick } => bench::run(quick),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
