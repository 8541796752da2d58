//! Running cargo from xtask.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The cargo that runs xtask.
pub fn command() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The workspace's target directory.
pub fn target_dir() -> Result<PathBuf> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    Ok(metadata.target_directory.into_std_path_buf())
}

/// The directory where the workspace's debug binaries are built.
pub fn bin_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("debug"))
}

/// Builds every binary of the workspace's default members (debug).
pub fn build_binaries() -> Result<()> {
    let status = command()
        .args(["build", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --bins failed ({status})");
    }
    Ok(())
}

/// Runs `cargo <args>`, failing with `what` if it fails.
pub fn checked(args: &[&str], what: &str) -> Result<()> {
    let status = command()
        .args(args)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The standard output of `cargo <args>` (its standard error passes through).
pub fn output(args: &[&str]) -> Result<String> {
    let out = command()
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lints the eBPF crate for its own target, as `lb-userspace/build.rs` builds it (nightly,
/// `-Z build-std=core`, BPF cpu v3), in a target directory of its own.
pub fn clippy_ebpf() -> Result<()> {
    let target_dir = bin_dir()?.with_file_name("clippy-ebpf");
    let status = Command::new("cargo")
        .current_dir(
            cargo_metadata::MetadataCommand::new()
                .no_deps()
                .exec()
                .context("cargo metadata")?
                .workspace_root
                .join("lb-ebpf"),
        )
        .args(["+nightly", "clippy", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--release", "--target-dir"])
        .arg(target_dir)
        .args(["--", "-D", "warnings"])
        .env("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true")
        .env("CARGO_PROFILE_RELEASE_RUSTFLAGS", "-C target-cpu=v3")
        .env("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .status()
        .context("running cargo clippy on lb-ebpf")?;
    if !status.success() {
        bail!("cargo clippy on lb-ebpf failed ({status})");
    }
    Ok(())
}

/// Totals of cargo test's "test result:" lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestCounts {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests that were not run.
    pub ignored: usize,
}

impl TestCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs `cargo <args>` with `envs`, echoing its output, and adds up its test results.
pub fn test(args: &[&str], envs: &[(&str, String)]) -> Result<(bool, TestCounts)> {
    let mut child = command()
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let mut counts = TestCounts::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            counts.passed += count(result, "passed");
            counts.failed += count(result, "failed");
            counts.ignored += count(result, "ignored");
        }
    }
    let status = child.wait()?;
    Ok((status.success(), counts))
}

/// The number before `label` in a "ok. N passed; M failed; ..." summary.
fn count(summary: &str, label: &str) -> usize {
    summary
        .split(';')
        .filter_map(|part| {
            let mut words = part
                .split_whitespace()
                .filter(|w| *w != "ok." && *w != "FAILED.");
            let n: usize = words.next()?.parse().ok()?;
            (words.next()? == label).then_some(n)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_are_read_from_the_summary() {
        let ok =
            "ok. 23 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.08s";
        assert_eq!(
            (
                count(ok, "passed"),
                count(ok, "failed"),
                count(ok, "ignored")
            ),
            (23, 0, 2)
        );
        let failed = "FAILED. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!((count(failed, "passed"), count(failed, "failed")), (7, 1));
    }
}
