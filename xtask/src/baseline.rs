//! The A/B step of `cargo xtask bench`: the per-packet benchmarks (`connection` and
//! `packet_cost`) of the baseline commit [`BASELINE`] against those of the current tree, run in
//! turns, compared row by row with the issue's goals.
//!
//! The baseline's source is `git archive`d into `target/baseline-<commit>/src` (once) and its
//! two bench executables built there with a target directory of their own (its build script
//! builds its own XDP program); the current tree's are built in the workspace's target
//! directory. Both benchmarks load the program in-process through the xlb library and start no
//! workspace binary, so neither needs `XLB_BIN_DIR`. Each round runs both benchmarks of both
//! trees, the baseline first in even rounds and last in odd ones, so that a drift of the
//! machine during the run falls on both sides alike.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::{Message, MetadataCommand};
use xlb_tests::bench::Table;

use crate::{
    bench::sections_of,
    cargo,
    steps::{Steps, note},
};

/// The commit the current tree is compared with.
pub const BASELINE: &str = "3ac79db";

/// The benchmarks compared (bench targets of `xlb-tests` in both trees).
const BENCHES: [&str; 2] = ["connection", "packet_cost"];

/// How a goal names its rows (by their names, see [`row_name`]).
#[derive(Clone, Copy)]
enum Rows {
    /// The row of this name.
    Named(&'static str),
    /// Every row whose name contains this.
    Containing(&'static str),
}

/// The issue's goals: the first that names a row gives the most its new÷old ratio may be. A
/// reply is a packet of an established flow.
const GOALS: &[(Rows, f64)] = &[
    (Rows::Named("SYN"), 0.5),
    (Rows::Named("SYN-ACK"), 0.6),
    (Rows::Named("ACK"), 0.6),
    (Rows::Named("new UDP flow"), 0.6),
    (Rows::Containing("established"), 1.0),
    (Rows::Containing("reply of a flow"), 1.0),
];

/// The goal of a row: the most its new÷old ratio may be, if it has one.
fn goal(row: &str) -> Option<f64> {
    GOALS
        .iter()
        .find(|(rows, _)| match rows {
            Rows::Named(name) => row == *name,
            Rows::Containing(part) => row.contains(part),
        })
        .map(|&(_, ratio)| ratio)
}

/// A row's name: its first cell without the explanation in parentheses that may follow it,
/// which may say how the two versions differ ("new TCP flow (miss, round robin, one half-open
/// entry)" is the baseline's "new TCP flow (..., half-open entries for both directions)").
fn row_name(cell: &str) -> String {
    cell.split(" (").next().unwrap_or(cell).trim().to_owned()
}

/// The patch that gives the baseline's `packet_cost` the current tree's measurement of new UDP
/// flows (a UDP service and its row, nothing else), so that the goal for them has a baseline.
const BASELINE_PATCH: &str = include_str!("baseline-udp.patch");

/// Rounds of the comparison: enough for a median in a full run, one to check it works.
pub fn rounds(quick: bool) -> usize {
    if quick { 1 } else { 7 }
}

/// `n` rounds, in words: "1 round", "7 rounds".
fn in_words(rounds: usize) -> String {
    match rounds {
        1 => "1 round".to_owned(),
        n => format!("{n} rounds"),
    }
}

/// The step labels of the A/B, in the order [`run`] runs them.
pub fn labels(quick: bool) -> [String; 4] {
    [
        format!("A/B: extract {BASELINE} (git archive)"),
        format!("A/B: build {BASELINE}'s benches ({})", BENCHES.join(", ")),
        format!("A/B: build the current benches ({})", BENCHES.join(", ")),
        format!(
            "A/B: {} of both benches, {BASELINE} and current in turns",
            in_words(rounds(quick))
        ),
    ]
}

/// Where `commit` is extracted and built under the workspace's `target_dir`: its source (there
/// only once complete), where it is extracted first, and its target directory.
fn paths(target_dir: &Path, commit: &str) -> [PathBuf; 3] {
    let base = target_dir.join(format!("baseline-{commit}"));
    ["src", "src.partial", "target"].map(|name| base.join(name))
}

/// Runs the A/B steps (`labels`) and returns its section ("## title" and body).
pub fn run(steps: &mut Steps, quick: bool, run_id: &str) -> Result<String> {
    let [extract, build_old, build_new, compare] = labels(quick);
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let root = metadata.workspace_root.into_std_path_buf();
    let [src, partial, target] = paths(metadata.target_directory.as_std_path(), BASELINE);
    steps.run(&extract, || extract_baseline(&root, &src, &partial))?;
    let old = steps.run(&build_old, || build_benches(&src, Some(&target)))?;
    let new = steps.run(&build_new, || build_benches(&root, None))?;
    let samples = steps.run(&compare, || {
        compare_runs([(&src, &old), (&root, &new)], quick, run_id)
    })?;
    Ok(section(&samples, rounds(quick)))
}

/// Extracts [`BASELINE`] from the repository at `root` into `src` unless it is there: into
/// `partial` first, so that an interrupted extraction is not taken for a complete one.
fn extract_baseline(root: &Path, src: &Path, partial: &Path) -> Result<()> {
    if src.join("Cargo.toml").exists() {
        note(&format!("already extracted in {}", src.display()));
        return Ok(());
    }
    let exists = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{BASELINE}^{{commit}}"))
        .stdout(Stdio::null())
        .status()
        .context("running git rev-parse")?;
    if !exists.success() {
        bail!(
            "the baseline commit {BASELINE} is not in the repository at {} (a shallow clone? \
             `git fetch --unshallow`)",
            root.display()
        );
    }
    // What an interrupted extraction left.
    let _ = std::fs::remove_dir_all(partial);
    std::fs::create_dir_all(partial)?;
    let mut git = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", BASELINE])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(partial)
        .stdin(git.stdout.take().expect("piped"))
        .status()
        .context("running tar")?;
    let archive = git.wait()?;
    if !archive.success() || !tar.success() {
        bail!("git archive {BASELINE} | tar -x failed (git: {archive}, tar: {tar})");
    }
    let mut apply = Command::new("git")
        .current_dir(partial)
        .args(["apply", "-p1", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running git apply")?;
    std::io::Write::write_all(
        &mut apply.stdin.take().expect("piped"),
        BASELINE_PATCH.as_bytes(),
    )?;
    let applied = apply.wait()?;
    if !applied.success() {
        bail!("applying xtask/src/baseline-udp.patch to {BASELINE} failed ({applied})");
    }
    std::fs::rename(partial, src)?;
    note(&format!("extracted in {}", src.display()));
    Ok(())
}

/// The bench executables of a tree, by bench name.
type Executables = HashMap<String, PathBuf>;

/// Builds [`BENCHES`] in the workspace at `dir` (`cargo bench --no-run`), in `target_dir` if
/// given, and returns their executables.
fn build_benches(dir: &Path, target_dir: Option<&Path>) -> Result<Executables> {
    let mut command = cargo::command();
    command
        .current_dir(dir)
        .args("bench --no-run --message-format=json -p xlb-tests".split(' '))
        .args(BENCHES.iter().flat_map(|bench| ["--bench", bench]))
        .stdout(Stdio::piped());
    if let Some(target_dir) = target_dir {
        // An archive has no .git: its build script would record the enclosing checkout's
        // commit as its own.
        command
            .env("CARGO_TARGET_DIR", target_dir)
            .env("XLB_COMMIT", BASELINE);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let mut found = Executables::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().expect("piped"))) {
        let Message::CompilerArtifact(artifact) = message? else {
            continue;
        };
        if let Some(executable) = artifact.executable
            && BENCHES.contains(&artifact.target.name.as_str())
        {
            found.insert(artifact.target.name, executable.into_std_path_buf());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo bench --no-run in {dir:?} failed ({status})");
    }
    for bench in BENCHES {
        let path = found
            .get(bench)
            .context(format!("cargo built no bench {bench}"))?;
        note(&format!("{bench}: {}", path.display()));
    }
    Ok(found)
}

/// The names of the two sides: the baseline (old, index 0) and the current tree (new, 1).
const SIDES: [&str; 2] = [BASELINE, "current"];

/// The order of the sides in round `round`: the baseline first in even rounds.
fn order(round: usize) -> [usize; 2] {
    [round % 2, 1 - round % 2]
}

/// Runs [`BENCHES`] of both `trees` (source directory and executables; old, then new) for
/// [`rounds`] rounds and collects their measurements.
fn compare_runs(trees: [(&Path, &Executables); 2], quick: bool, run_id: &str) -> Result<Samples> {
    let mut samples = Samples::default();
    let rounds = rounds(quick);
    for round in 0..rounds {
        for (bench, side) in BENCHES.iter().flat_map(|b| order(round).map(|s| (b, s))) {
            let (src, executables) = trees[side];
            let start = Instant::now();
            let mut command = Command::new(&executables[*bench]);
            command
                .current_dir(src.join("tests"))
                .arg("--bench")
                .args(quick.then_some("--quick"))
                .env(xlb_tests::netns::RUN_ENV, run_id);
            let what = format!("{bench} of {}", SIDES[side]);
            for section in sections_of(&mut command, &what)? {
                samples.add(side, measurements(&section));
            }
            let (n, took) = (round + 1, start.elapsed().as_secs_f64());
            note(&format!("round {n}/{rounds}: {what} ({took:.1}s)"));
        }
    }
    Ok(samples)
}

/// What one value measures: its table ("section title — column") and its row (first cell).
type Key = (String, String);

/// The values of a section's tables that are times: those in columns whose header has the
/// word "ns", keyed by table and row; other cells, and cells that are no number, are left out.
fn measurements(section: &str) -> Vec<(Key, f64)> {
    let title = section
        .lines()
        .find_map(|line| line.strip_prefix("## "))
        .unwrap_or("untitled")
        .trim();
    let mut header: Option<Vec<String>> = None;
    let mut found = Vec::new();
    for line in section.lines().map(str::trim) {
        let Some(cells) = table_cells(line) else {
            header = None;
            continue;
        };
        if is_separator(&cells) {
            continue;
        }
        let Some(columns) = &header else {
            header = Some(cells);
            continue;
        };
        let Some(row) = cells.first() else { continue };
        for (column, cell) in columns.iter().zip(&cells).skip(1) {
            let is_time = column
                .split(|c: char| !c.is_alphanumeric())
                .any(|word| word == "ns");
            if let (true, Some(value)) = (is_time, number(cell)) {
                found.push(((format!("{title} — {column}"), row_name(row)), value));
            }
        }
    }
    found
}

/// The cells of a Markdown table's line (`| a | b |`), none for another line.
fn table_cells(line: &str) -> Option<Vec<String>> {
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_owned()).collect())
}

/// Whether a table's line is the one under its header (`| --- | :-: |`).
fn is_separator(cells: &[String]) -> bool {
    cells
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// The number a cell starts with, read leniently: "1,234 ns" is 1234; none if it starts with
/// no number.
fn number(cell: &str) -> Option<f64> {
    let digits: String = cell
        .trim()
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | '\u{202f}'))
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'))
        .collect();
    digits.parse().ok()
}

/// The measurements of all rounds, both sides, in the order their keys first appeared.
#[derive(Debug, Default)]
struct Samples {
    keys: Vec<Key>,
    values: HashMap<Key, [Vec<f64>; 2]>,
}

impl Samples {
    /// Adds one run's measurements on `side` (0: old, 1: new).
    fn add(&mut self, side: usize, measurements: Vec<(Key, f64)>) {
        for (key, value) in measurements {
            if !self.values.contains_key(&key) {
                self.keys.push(key.clone());
            }
            self.values.entry(key).or_default()[side].push(value);
        }
    }
}

/// The median and range of a row's values over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

/// The summary of `values`, none if there are none (the mean of the middle two for an even
/// count).
fn summary(values: &[f64]) -> Option<Summary> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (n, mid) = (sorted.len(), sorted.len() / 2);
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    };
    let (min, max) = (sorted[0], sorted[n - 1]);
    Some(Summary { median, min, max })
}

/// A table's row of the comparison: name, old and new median, new÷old, the spreads, the goal
/// and whether it is met ("—" where there is nothing to show).
fn comparison_row(row: &str, old: Option<Summary>, new: Option<Summary>) -> Vec<String> {
    let dash = || "—".to_owned();
    let median = |s: Option<Summary>| s.map_or_else(dash, |s| format!("{:.0}", s.median));
    let spread = |s: Option<Summary>| s.map_or_else(dash, |s| format!("{:.0}–{:.0}", s.min, s.max));
    let ratio = old.zip(new).map(|(old, new)| new.median / old.median);
    let goal = goal(row);
    let met = match (ratio, goal) {
        (Some(ratio), Some(goal)) if ratio <= goal => "yes".to_owned(),
        (Some(_), Some(_)) => "no".to_owned(),
        _ => dash(),
    };
    vec![
        row.to_owned(),
        median(old),
        median(new),
        ratio.map_or_else(dash, |r| format!("{r:.2}")),
        spread(old),
        spread(new),
        goal.map_or_else(dash, |g| format!("≤ {g:.1}")),
        met,
    ]
}

/// The A/B section: a paragraph, then one table per benchmark table and time column.
fn section(samples: &Samples, rounds: usize) -> String {
    let rounds = in_words(rounds);
    let mut out = format!(
        "## A/B against {BASELINE}\n\nThe benchmarks {} of {BASELINE} and of the current tree, \
         {rounds}, each running every benchmark of both trees in turns (the baseline \
         first in every other round). Medians and spreads (min–max) are over the rounds of \
         each benchmark's own median, in ns; new÷old is the ratio of the medians. Goals: a \
         SYN of a new flow at most 0.5 of {BASELINE}'s, its SYN-ACK and the ACK that \
         completes the handshake 0.6, a new UDP flow 0.6, a packet of an established flow \
         no more than before (1.0).\n",
        BENCHES.join(" and ")
    );
    let keys = &samples.keys;
    for (i, (name, _)) in keys.iter().enumerate() {
        if keys[..i].iter().any(|(earlier, _)| earlier == name) {
            continue;
        }
        let mut table = Table::new(&HEADER);
        for key @ (_, row) in keys.iter().filter(|(table, _)| table == name) {
            let [old, new] = &samples.values[key];
            table.row(comparison_row(row, summary(old), summary(new)));
        }
        let _ = write!(out, "\n### {name}\n\n{}", table.markdown());
    }
    out
}

/// The columns of the comparison's tables.
#[rustfmt::skip]
const HEADER: [&str; 8] = [
    "row", "old median", "new median", "new÷old", "old spread", "new spread", "goal", "met?",
];

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: &str = "## A connection, packet by packet\n\nText | with a bar.\n\n\
        | packet | XDP: ns (median) | × reference | tc: ns (median) | × reference |\n\
        | --- | --- | --- | --- | --- |\n\
        | SYN (new flow) | 1,985 ns | 18.2 | 864 | 16.3 |\n\
        | SYN-ACK (the backend's answer) | 520 | 9.6 | — | 9.3 |\n";

    #[test]
    fn time_columns_are_read_by_table_and_row() {
        let found = measurements(SECTION);
        let key = |column: &str, row: &str| {
            (
                format!("A connection, packet by packet — {column}"),
                row.to_owned(),
            )
        };
        assert_eq!(
            found,
            [
                (key("XDP: ns (median)", "SYN"), 1985.0),
                (key("tc: ns (median)", "SYN"), 864.0),
                (key("XDP: ns (median)", "SYN-ACK"), 520.0),
            ]
        );
        assert_eq!(number("12.5ns"), Some(12.5));
        assert_eq!(number("—"), None);
        assert!(is_separator(&table_cells("| --- | :-: |").unwrap()));
        assert_eq!(table_cells("text | with a bar"), None);
    }

    #[test]
    fn rounds_are_summed_up_by_median_and_range() {
        let s = summary(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(summary(&[4.0, 2.0]).unwrap().median, 3.0);
        assert_eq!(summary(&[]), None);
        let mut samples = Samples::default();
        samples.add(0, measurements(SECTION));
        samples.add(1, measurements(SECTION));
        samples.add(1, vec![(("t: ns".into(), "new row".into()), 7.0)]);
        let text = section(&samples, 1);
        assert!(
            text.contains("### A connection, packet by packet — tc: ns (median)"),
            "{text}"
        );
        assert!(
            text.contains("| SYN | 1985 | 1985 | 1.00 | 1985–1985 | 1985–1985 | ≤ 0.5 | no |"),
            "{text}"
        );
        assert!(
            text.contains("| new row | — | 7 | — | — | 7–7 | — | — |"),
            "{text}"
        );
    }

    #[test]
    fn goals_match_the_rows_of_the_issue() {
        let row = |name: &str, old: f64, new: f64| {
            let at = |v: f64| summary(&[v]);
            comparison_row(name, at(old), at(new))[6..].join(" ")
        };
        assert_eq!(row("SYN", 1000.0, 480.0), "≤ 0.5 yes");
        assert_eq!(row("SYN-ACK", 500.0, 400.0), "≤ 0.6 no");
        assert_eq!(goal("ACK"), Some(0.6));
        assert_eq!(goal("new UDP flow"), Some(0.6));
        assert_eq!(row_name("new UDP flow (miss, round robin)"), "new UDP flow");
        assert_eq!(row_name("request"), "request");
        assert_eq!(goal("tc: established TCP flow, IPv6"), Some(1.0));
        assert_eq!(goal("reply of a flow, IPv4"), Some(1.0));
        assert_eq!(goal("client's last ACK"), None);
        assert_eq!(row("request", 100.0, 90.0), "— —");
    }

    #[test]
    fn the_baseline_lives_under_the_target_directory() {
        let base = Path::new("/w/target/baseline-3ac79db");
        assert_eq!(
            paths(Path::new("/w/target"), "3ac79db"),
            ["src", "src.partial", "target"].map(|name| base.join(name))
        );
        assert_eq!((order(0), order(1), order(6)), ([0, 1], [1, 0], [0, 1]));
        assert!(labels(true)[3].starts_with("A/B: 1 round of"));
    }
}
