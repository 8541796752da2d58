//! `cargo xtask bench`: runs the benchmark programs of `tests/benches` and writes their results
//! to BENCHMARKS.md with the date, the machine and the commit. `--quick` runs every part
//! briefly (to check the benchmarks still work) and writes to `target/BENCHMARKS.quick.md`.
//!
//! The benchmarks are found, not listed: every bench target of the tests package (cargo
//! metadata), run in the order of their `[[bench]]` entries in `tests/Cargo.toml`, which each
//! needs anyway (`harness = false`: it has its own `main`). That order is the order of their
//! sections in BENCHMARKS.md. Last comes the A/B against the baseline commit
//! ([`baseline`](crate::baseline)), which `--ab-only` runs alone (its document:
//! `target/BENCHMARKS.ab.md`, or `.ab.quick.md`).

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use xlb_tests::bench::{BEGIN, END};

use crate::{
    baseline, cargo,
    janitor::Janitor,
    setup::{self, Need},
    steps::Steps,
};

/// What the benchmarks run: namespaces and their links, the load generators and nftables,
/// and BIRD for the scale-out benchmark.
const NEEDS: &[Need] = &[Need::Namespaces, Need::Ethtool, Need::LoadTools, Need::Bird];

/// What the A/B alone runs: the per-packet benchmarks' namespace.
const AB_NEEDS: &[Need] = &[Need::Namespaces];

/// Runs `cargo xtask bench [--quick] [--ab-only]`.
pub fn run(quick: bool, ab_only: bool) -> Result<()> {
    if ab_only {
        return run_ab_only(quick);
    }
    let benches = discover()?;
    let bench_steps: Vec<String> = benches.iter().map(|b| format!("benchmark {b}")).collect();
    let path = if quick {
        cargo::bin_dir()?.with_file_name("BENCHMARKS.quick.md")
    } else {
        std::path::PathBuf::from("BENCHMARKS.md")
    };
    let write = format!("write {}", path.display());
    let build = "build (cargo build --release --bins)";
    let mut steps = Steps::new("bench")
        .then(setup::plan(NEEDS))
        .then([build])
        .then(&bench_steps)
        .then(baseline::labels(quick))
        .then([write.as_str()]);
    setup::run(&mut steps, NEEDS)?;
    steps.run(build, build_release)?;
    let run_id = std::process::id().to_string();
    let _janitor = Janitor::install(format!("xlbt{run_id}-"))?;
    let bin_dir = cargo::bin_dir()?.with_file_name("release");

    let mut sections = Vec::new();
    for (bench, step) in benches.iter().zip(&bench_steps) {
        let section = steps.run(step, || run_bench(bench, quick, &run_id, &bin_dir))?;
        println!("{section}");
        sections.push(section);
    }
    let ab = baseline::run(&mut steps, quick, &run_id)?;
    println!("{BEGIN}\n{ab}\n{END}");
    sections.push(ab);

    steps.run(&write, || write_document(&path, quick, false, &sections))?;
    Ok(())
}

/// Runs `cargo xtask bench --ab-only [--quick]`: only the A/B against the baseline, written
/// to `target/BENCHMARKS.ab.md` (quick: `.ab.quick.md`).
fn run_ab_only(quick: bool) -> Result<()> {
    let name = if quick {
        "BENCHMARKS.ab.quick.md"
    } else {
        "BENCHMARKS.ab.md"
    };
    let path = cargo::bin_dir()?.with_file_name(name);
    let write = format!("write {}", path.display());
    let mut steps = Steps::new("bench")
        .then(setup::plan(AB_NEEDS))
        .then(baseline::labels(quick))
        .then([write.as_str()]);
    setup::run(&mut steps, AB_NEEDS)?;
    let run_id = std::process::id().to_string();
    let _janitor = Janitor::install(format!("xlbt{run_id}-"))?;
    let ab = baseline::run(&mut steps, quick, &run_id)?;
    println!("{BEGIN}\n{ab}\n{END}");
    steps.run(&write, || write_document(&path, quick, true, &[ab]))?;
    Ok(())
}

/// Builds the binaries the benchmarks run, in release mode.
fn build_release() -> Result<()> {
    let status = cargo::command()
        .args(["build", "--release", "--bins"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

/// Runs one benchmark program (`cargo bench`, with the release binaries of `bin_dir`) and
/// returns the sections it printed, joined.
fn run_bench(bench: &str, quick: bool, run_id: &str, bin_dir: &Path) -> Result<String> {
    let mut command = cargo::command();
    command
        .args([
            "bench",
            "--quiet",
            "-p",
            "xlb-tests",
            "--bench",
            bench,
            "--",
        ])
        .args(quick.then_some("--quick"))
        .env(xlb_tests::netns::RUN_ENV, run_id)
        .env("XLB_BIN_DIR", bin_dir);
    Ok(sections_of(&mut command, bench)?.join("\n\n"))
}

/// Runs a benchmark program (`what` in errors) and returns the sections it printed; fails if
/// it fails or prints none. Its standard error passes through.
pub fn sections_of(command: &mut Command, what: &str) -> Result<Vec<String>> {
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("benchmark {what} failed ({}):\n{stdout}", output.status);
    }
    let found = extract_sections(&stdout);
    if found.is_empty() {
        bail!("benchmark {what} printed no section");
    }
    Ok(found)
}

/// Writes the header, the benchmarks' sections and (unless quick or the A/B alone) the analysis
/// to `path`.
fn write_document(path: &Path, quick: bool, ab_only: bool, sections: &[String]) -> Result<()> {
    let mut document = header(quick, ab_only)?;
    for section in sections {
        let _ = writeln!(document, "\n{section}");
    }
    // The hand-written analysis of the results, kept with the benchmarks.
    if !quick && !ab_only {
        let analysis = std::fs::read_to_string("tests/benches/ANALYSIS.md")
            .context("reading tests/benches/ANALYSIS.md")?;
        let _ = write!(document, "\n{analysis}");
    }
    std::fs::write(path, document)?;
    Ok(())
}

/// The package whose bench targets are the benchmarks.
const PACKAGE: &str = "xlb-tests";

/// The benchmark programs, in the order their `[[bench]]` entries have in the package's
/// manifest.
fn discover() -> Result<Vec<String>> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == PACKAGE)
        .with_context(|| format!("no package {PACKAGE} in the workspace"))?;
    let found = package
        .targets
        .iter()
        .filter(|t| t.kind.iter().any(|k| k.to_string() == "bench"))
        .map(|t| t.name.clone());
    let manifest = std::fs::read_to_string(&package.manifest_path)
        .with_context(|| format!("reading {}", package.manifest_path))?;
    in_declared_order(&manifest, found)
        .with_context(|| format!("the benchmarks of {}", package.manifest_path))
}

/// The `found` bench targets in the order of the manifest's `[[bench]]` entries; fails if one
/// has no entry (there would be no place for its section).
fn in_declared_order(
    manifest: &str,
    found: impl IntoIterator<Item = String>,
) -> Result<Vec<String>> {
    let manifest: toml::Table = manifest.parse().context("parsing the manifest")?;
    let declared: Vec<&str> = manifest
        .get("bench")
        .and_then(toml::Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| entry.get("name")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut found: Vec<String> = found.into_iter().collect();
    let undeclared: Vec<&str> = found
        .iter()
        .map(String::as_str)
        .filter(|name| !declared.contains(name))
        .collect();
    if !undeclared.is_empty() {
        bail!(
            "no [[bench]] entry for {} (add one, with harness = false, where its section \
             belongs in BENCHMARKS.md)",
            undeclared.join(", ")
        );
    }
    found.sort_by_key(|name| declared.iter().position(|d| d == name));
    Ok(found)
}

/// The texts between the markers a benchmark prints (one section or several), in order.
fn extract_sections(stdout: &str) -> Vec<String> {
    let mut sections = Vec::new();
    let mut rest = stdout;
    while let Some(start) = rest.find(BEGIN) {
        let text = &rest[start + BEGIN.len()..];
        let Some(end) = text.find(END) else { break };
        sections.push(text[..end].trim().to_owned());
        rest = &text[end + END.len()..];
    }
    sections
}

/// Title, date, machine, commit and command.
fn header(quick: bool, ab_only: bool) -> Result<String> {
    let text = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let dirty = if text("git", &["status", "--porcelain"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let mut out = String::from("# Benchmarks\n\n");
    if quick {
        out.push_str(
            "Quick mode: every part ran briefly to check it works; the numbers mean little.\n\n",
        );
    }
    let _ = writeln!(
        out,
        "- date: {}",
        text("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        out,
        "- machine: {cpus} CPUs ({cpu}), Linux {}",
        text("uname", &["-r"])
    );
    let _ = writeln!(
        out,
        "- commit: {}{dirty}",
        text("git", &["rev-parse", "--short", "HEAD"])
    );
    let _ = writeln!(
        out,
        "- command: `cargo xtask bench{}{}` (as root)",
        if ab_only { " --ab-only" } else { "" },
        if quick { " --quick" } else { "" }
    );
    out.push_str(
        "\nThese machines are shared and noisy: compare numbers within one run, not across runs.\n",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_run_in_the_order_of_their_entries() {
        let manifest = r#"
[package]
name = "xlb-tests"

[[bin]]
name = "xlb-backend"

[[bench]]
name = "packet_cost"
harness = false

[[bench]]
name = "e2e"
harness = false

[[bench]]
name = "connection"
harness = false
"#;
        // cargo metadata lists targets sorted by name.
        let found = ["connection", "e2e", "packet_cost"].map(String::from);
        assert_eq!(
            in_declared_order(manifest, found).unwrap(),
            ["packet_cost", "e2e", "connection"]
        );
        let error = in_declared_order(manifest, ["e2e", "new_one"].map(String::from))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no [[bench]] entry for new_one"), "{error}");
        assert!(in_declared_order("", []).unwrap().is_empty());
    }

    #[test]
    fn sections_are_found_between_the_markers() {
        let stdout =
            format!("noise\n{BEGIN}\n## Title\n\ntext\n{END}\nmore\n{BEGIN}\n## Second\n{END}\n");
        assert_eq!(extract_sections(&stdout), ["## Title\n\ntext", "## Second"]);
        assert!(extract_sections("nothing").is_empty());
    }
}
