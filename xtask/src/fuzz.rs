//! `cargo xtask fuzz`: the long fuzzing run. The same harness as the 20,000 cases `cargo xtask
//! test` runs (`tests/tests/fuzz.rs`), with a million cases by default and any seed.

use anyhow::{Result, bail};

use crate::{
    cargo,
    janitor::Janitor,
    setup::{self, Need},
    steps::Steps,
};

/// The fuzzer's namespace (BPF_PROG_TEST_RUN needs its interfaces and routes).
const NEEDS: &[Need] = &[Need::Namespaces];

/// Runs `cases` cases from `seed`.
pub fn run(cases: u64, seed: u64) -> Result<()> {
    let fuzz = format!("{cases} cases from seed {seed:#x}");
    let namespaces = "no network namespace left behind";
    let mut steps = Steps::new("fuzz")
        .then(setup::plan(NEEDS))
        .then([fuzz.as_str(), namespaces]);
    setup::run(&mut steps, NEEDS)?;
    let run_id = std::process::id().to_string();
    let janitor = Janitor::install(format!("xlbt{run_id}-"))?;
    steps.run(&fuzz, || {
        let envs = [
            (xlb_tests::netns::RUN_ENV, run_id.clone()),
            ("XLB_FUZZ_CASES", cases.to_string()),
            ("XLB_FUZZ_SEED", format!("{seed:#x}")),
        ];
        let args = [
            "test",
            "-p",
            "xlb-tests",
            "--test",
            "fuzz",
            "--",
            "--ignored",
            "--nocapture",
        ];
        let (ok, counts) = cargo::test(&args, &envs)?;
        if !ok || counts.passed != 1 {
            bail!("the fuzzer found a violation (the failing case says how to replay it)");
        }
        Ok(())
    })?;
    steps.run(namespaces, || {
        let left = janitor.sweep()?;
        if !left.is_empty() {
            bail!("left behind (now removed): {}", left.join(", "));
        }
        Ok(())
    })
}
