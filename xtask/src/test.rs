//! `cargo xtask test`: setup, build, lints, and the three test tiers, each reported; fails if
//! any step fails.

use anyhow::{Result, bail};

use crate::{
    cargo::{self, TestCounts},
    janitor::Janitor,
    package,
    setup::{self, Need},
    steps::Steps,
    tiers::{self, Tier},
};

/// Everything: the tests use every tool, build the package and run the benchmarks briefly.
const NEEDS: &[Need] = setup::EVERYTHING;

const BUILD: &str = "build (cargo build --bins)";
const FORMATTING: &str = "formatting (cargo fmt --check)";
const LINTS: &str = "lints (cargo clippy -- -D warnings, host crates and the eBPF crate)";
const TIERS: &str = "test tiers (cargo metadata; every ignored test in a tier)";
const TIER_NAMES: [&str; 3] = [
    "tier 1: unit tests",
    "tier 2: packet tests (BPF_PROG_TEST_RUN)",
    "tier 3: end-to-end tests in network namespaces",
];
const BENCHMARKS: &str = "benchmarks still run (cargo xtask bench --quick)";
const NAMESPACES: &str = "no network namespace left behind";

/// Runs `cargo xtask test`.
pub fn run() -> Result<()> {
    let mut steps = Steps::new("test")
        .then(setup::plan(NEEDS))
        .then([BUILD, FORMATTING, LINTS, TIERS])
        .then(package::PLAN)
        .then(TIER_NAMES)
        .then([BENCHMARKS, NAMESPACES]);
    setup::run(&mut steps, NEEDS)?;
    build_and_lint(&mut steps)?;
    let (two, three) = steps.run(TIERS, discover_tiers)?;

    // The package, which a tier-3 test inspects and runs.
    let deb = package::build(&mut steps)?;

    let run_id = std::process::id().to_string();
    let janitor = Janitor::install(format!("xlbt{run_id}-"))?;
    let envs = [
        (xlb_tests::netns::RUN_ENV, run_id),
        ("XLB_BIN_DIR", cargo::bin_dir()?.display().to_string()),
        ("XLB_DEB", deb.display().to_string()),
    ];
    let unit = vec![vec!["test".to_owned()]];
    let results = run_tiers(
        &mut steps,
        [unit, two.cargo_runs(), three.cargo_runs()],
        &envs,
    );
    let benches = steps.run(BENCHMARKS, run_benchmarks_quickly);
    steps.run(NAMESPACES, || no_namespace_left(&janitor))?;
    summary(&results, benches.is_ok())
}

/// A tier's name, its counts, and whether it passed.
type TierResult = (&'static str, TestCounts, bool);

/// The build, formatting and lint steps; the first to fail stops the run.
fn build_and_lint(steps: &mut Steps) -> Result<()> {
    steps.run(BUILD, cargo::build_binaries)?;
    steps.run(FORMATTING, || {
        cargo::checked(&["fmt", "--all", "--check"], "cargo fmt --check")
    })?;
    steps.run(LINTS, || {
        cargo::checked(
            &["clippy", "--all-targets", "--", "-D", "warnings"],
            "cargo clippy",
        )?;
        cargo::clippy_ebpf()
    })
}

/// Tiers 2 and 3, found from the test files, and checked to cover every ignored test.
fn discover_tiers() -> Result<(Tier, Tier)> {
    // The root-only tests are `#[ignore]`d so that a plain `cargo test` (tier 1) runs without
    // privileges; tiers 2 and 3 are the test files that say so on their first line.
    let (two, three) = tiers::discover()?;
    if two.is_empty() || three.is_empty() {
        bail!("no test file declares tier 2 or tier 3 (`//! Tier 2` on its first line)");
    }
    let listing = cargo::output(&["test", "--", "--ignored", "--list"])?;
    tiers::check_coverage(&tiers::ignored_tests(&listing), &[&two, &three])?;
    Ok((two, three))
}

/// Each tier's cargo invocations as a step; a failed tier does not stop the next.
fn run_tiers(
    steps: &mut Steps,
    runs: [Vec<Vec<String>>; 3],
    envs: &[(&str, String)],
) -> Vec<TierResult> {
    let mut results = Vec::new();
    for (tier, invocations) in TIER_NAMES.into_iter().zip(runs) {
        let mut counts = TestCounts::default();
        let outcome = steps.run(tier, || {
            let mut ok = true;
            for args in &invocations {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (passed, run_counts) = cargo::test(&args, envs)?;
                ok &= passed;
                counts.add(run_counts);
            }
            if !ok {
                bail!("{} failed", counts.failed.max(1));
            }
            Ok(())
        });
        results.push((tier, counts, outcome.is_ok()));
    }
    results
}

/// The benchmarks must keep working; quick mode checks that without judging any number.
fn run_benchmarks_quickly() -> Result<()> {
    let status = cargo::command()
        .args(["xtask", "bench", "--quick"])
        .status()?;
    if !status.success() {
        bail!("cargo xtask bench --quick failed ({status})");
    }
    Ok(())
}

/// Fails if the tests left a namespace behind (the janitor removes them).
fn no_namespace_left(janitor: &Janitor) -> Result<()> {
    let left = janitor.sweep()?;
    if !left.is_empty() {
        bail!(
            "tests left these namespaces behind (now removed): {}",
            left.join(", ")
        );
    }
    Ok(())
}

/// The table of the tiers' counts and the benchmarks' outcome; fails naming what failed.
fn summary(results: &[TierResult], benches_ran: bool) -> Result<()> {
    println!();
    println!(
        "{:<48} {:>7} {:>7} {:>8}",
        "tier", "passed", "failed", "skipped"
    );
    for (tier, counts, _) in results {
        println!(
            "{tier:<48} {:>7} {:>7} {:>8}",
            counts.passed, counts.failed, counts.ignored
        );
    }
    println!(
        "{:<48} {:>7}",
        "benchmarks (--quick)",
        if benches_ran { "ran" } else { "FAILED" }
    );
    let mut failed: Vec<&str> = results
        .iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(tier, _, _)| *tier)
        .collect();
    if !benches_ran {
        failed.push("benchmarks (--quick)");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    println!("all tests passed");
    Ok(())
}
