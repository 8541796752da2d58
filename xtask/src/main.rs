//! `cargo xtask`: the drivers behind the README's commands.
//!
//! - `cargo xtask setup`: install what every command needs (idempotent); each command
//!   installs what it needs itself.
//! - `cargo xtask test`: setup, build, then every test tier; non-zero exit on any failure.
//! - `cargo xtask demo`: setup, build, then balance real traffic in a namespace topology.
//! - `cargo xtask bench [--quick] [--ab-only]`: setup, build, run the benchmarks and the A/B
//!   against the baseline commit, write BENCHMARKS.md (`--ab-only`: the A/B alone).
//! - `cargo xtask fuzz [--cases N] [--seed S]`: the long fuzzing run of the data plane.
//! - `cargo xtask package`: setup, then the Debian package (cargo-deb) in target/package/.

mod baseline;
mod bench;
mod cargo;
mod demo;
mod fuzz;
mod janitor;
mod package;
mod setup;
mod steps;
mod test;
mod tiers;

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
    /// Install the toolchain pieces and system packages that every command needs (each
    /// command installs what it needs itself).
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
        /// Run only the A/B of the per-packet benchmarks against the baseline commit (3ac79db),
        /// without the rest of the suite; writes target/BENCHMARKS.ab.md (or .ab.quick.md).
        #[arg(long)]
        ab_only: bool,
    },
    /// Set up, then build the Debian package (cargo-deb): the binary, the systemd unit, an
    /// example configuration in /etc/xlb/, man pages, completions; in target/package/.
    Package,
    /// Set up, then run the data-plane fuzzer: generated and mutated frames through the
    /// program (BPF_PROG_TEST_RUN), each result checked against the invariants.
    Fuzz {
        /// How many frames.
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
        /// The generator's seed (decimal or 0x-hex); the same seed gives the same frames.
        #[arg(long, default_value = "0x786c6266757a7a31", value_parser = parse_seed)]
        seed: u64,
    },
}

fn parse_seed(text: &str) -> Result<u64, String> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("{text:?} is not a number (decimal or 0x-hex)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => {
            let mut steps = steps::Steps::new("setup").then(setup::plan(setup::EVERYTHING));
            setup::run(&mut steps, setup::EVERYTHING)
        }
        Command::Test => test::run(),
        Command::Demo => demo::run(),
        Command::Bench { quick, ab_only } => bench::run(quick, ab_only),
        Command::Fuzz { cases, seed } => fuzz::run(cases, seed),
        Command::Package => package::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
