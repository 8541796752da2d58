//! `cargo xtask test`: setup, build, and the three test tiers, each reported; fails if any
//! test fails.

use anyhow::{Result, bail};

use crate::{
    cargo::{self, TestCounts},
    janitor::Janitor,
    setup,
    steps::Steps,
};

/// The tiers: name and cargo arguments. The root-only tests are `#[ignore]`d so that a plain
/// `cargo test` (tier 1) runs without privileges; tiers 2 and 3 run exactly those.
const TIERS: [(&str, &str); 3] = [
    ("tier 1: unit tests", "test"),
    (
        "tier 2: packet tests (BPF_PROG_TEST_RUN)",
        "test --no-fail-fast -p xlb-tests --test packet --test fuzz -- --ignored",
    ),
    (
        "tier 3: end-to-end tests in network namespaces",
        "test --no-fail-fast -p xlb-tests --test balance --test health --test operator --test hostile --test locality --test offloads -- --ignored",
    ),
];

/// Runs `cargo xtask test`.
pub fn run() -> Result<()> {
    let mut steps = Steps::new("test", setup::STEPS + 3 + TIERS.len());
    setup::run(&mut steps)?;
    steps.run("build (cargo build --bins)", cargo::build_binaries)?;

    let run_id = std::process::id().to_string();
    let janitor = Janitor::install(format!("xlbt{run_id}-"))?;
    let envs = [
        (xlb_tests::netns::RUN_ENV, run_id),
        ("XLB_BIN_DIR", cargo::bin_dir()?.display().to_string()),
    ];

    let mut results: Vec<(&str, TestCounts, bool)> = Vec::new();
    for (tier, args) in TIERS {
        let mut counts = TestCounts::default();
        let outcome = steps.run(tier, || {
            let args: Vec<&str> = args.split_whitespace().collect();
            let (ok, tier_counts) = cargo::test(&args, &envs)?;
            counts = tier_counts;
            if !ok {
                bail!("{} failed", counts.failed.max(1));
            }
            Ok(())
        });
        results.push((tier, counts, outcome.is_ok()));
    }
    // The benchmarks must keep working; quick mode checks that without judging any number.
    let benches = steps.run("benchmarks still run (cargo xtask bench --quick)", || {
        let status = cargo::command()
            .args(["xtask", "bench", "--quick"])
            .status()?;
        if !status.success() {
            bail!("cargo xtask bench --quick failed ({status})");
        }
        Ok(())
    });
    steps.run("no network namespace left behind", || {
        let left = janitor.sweep()?;
        if !left.is_empty() {
            bail!(
                "tests left these namespaces behind (now removed): {}",
                left.join(", ")
            );
        }
        Ok(())
    })?;

    println!();
    println!(
        "{:<48} {:>7} {:>7} {:>8}",
        "tier", "passed", "failed", "skipped"
    );
    for (tier, counts, _) in &results {
        println!(
            "{tier:<48} {:>7} {:>7} {:>8}",
            counts.passed, counts.failed, counts.ignored
        );
    }
    println!(
        "{:<48} {:>7}",
        "benchmarks (--quick)",
        if benches.is_ok() { "ran" } else { "FAILED" }
    );
    let mut failed: Vec<&str> = results
        .iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(tier, _, _)| *tier)
        .collect();
    if benches.is_err() {
        failed.push("benchmarks (--quick)");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    println!("all tests passed");
    Ok(())
}
