//! Which test binaries each tier runs, found rather than listed: a test target of the
//! workspace whose source starts with `//! Tier 2` (packet tests, BPF_PROG_TEST_RUN) or
//! `//! Tier 3` (end to end, in network namespaces) runs its `#[ignore]`d (root-only) tests in
//! that tier; everything else runs in tier 1 (`cargo test`). A new file under `tests/tests`
//! is picked up by its first line, and [`check_coverage`] fails the run when an ignored test
//! lives where no tier would run it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, bail};

/// A tier of root-only tests: its number and the test targets it runs, by package.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tier {
    /// Test targets by package name.
    pub targets: BTreeMap<String, Vec<String>>,
}

impl Tier {
    /// The `cargo test` runs of this tier's ignored tests, one per package (each runs all of
    /// them, even after a failure).
    pub fn cargo_runs(&self) -> Vec<Vec<String>> {
        self.targets
            .iter()
            .map(|(package, targets)| {
                let mut args = vec!["test", "--no-fail-fast", "-p", package.as_str()];
                for target in targets {
                    args.extend(["--test", target.as_str()]);
                }
                args.extend(["--", "--ignored"]);
                args.into_iter().map(str::to_owned).collect()
            })
            .collect()
    }

    /// Whether the tier has nothing to run.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// The tier a test target's source declares on its first line (2 or 3), if any.
pub fn declared_tier(source: &str) -> Option<u8> {
    let first = source.lines().next()?;
    ["2", "3"]
        .into_iter()
        .find(|n| first.starts_with(&format!("//! Tier {n}")))
        .and_then(|n| n.parse().ok())
}

/// Tiers 2 and 3 of the workspace's default members, from cargo metadata and the first line
/// of each test target.
pub fn discover() -> Result<(Tier, Tier)> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .exec()
        .context("cargo metadata")?;
    let members: BTreeSet<_> = metadata.workspace_default_members.iter().collect();
    let (mut two, mut three) = (Tier::default(), Tier::default());
    for package in metadata.packages.iter().filter(|p| members.contains(&p.id)) {
        for target in &package.targets {
            if !target.kind.iter().any(|k| k.to_string() == "test") {
                continue;
            }
            let source = std::fs::read_to_string(&target.src_path)
                .with_context(|| format!("reading {}", target.src_path))?;
            let tier = match declared_tier(&source) {
                Some(2) => &mut two,
                Some(3) => &mut three,
                _ => continue,
            };
            tier.targets
                .entry(package.name.to_string())
                .or_default()
                .push(target.name.clone());
        }
    }
    Ok((two, three))
}

/// The ignored tests of each test binary, from the output of `cargo test -- --ignored
/// --list`: binary name (the target, without cargo's hash) to test names.
pub fn ignored_tests(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut tests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut binary: Option<String> = None;
    for line in listing.lines() {
        let line = line.trim();
        if let Some(running) = line.strip_prefix("Running ") {
            // "Running tests/balance.rs (target/debug/deps/balance-0123abcd)"
            binary = running
                .rsplit('/')
                .next()
                .and_then(|file| file.trim_end_matches(')').rsplit_once('-'))
                .map(|(name, _hash)| name.to_owned());
        } else if let (Some(name), Some(binary)) = (line.strip_suffix(": test"), &binary) {
            tests
                .entry(binary.clone())
                .or_default()
                .push(name.to_owned());
        }
    }
    tests
}

/// Fails if a binary has ignored tests that neither tier runs (naming them); `ignored` is
/// [`ignored_tests`]' answer.
pub fn check_coverage(ignored: &BTreeMap<String, Vec<String>>, tiers: &[&Tier]) -> Result<()> {
    let covered: BTreeSet<String> = tiers
        .iter()
        .flat_map(|tier| tier.targets.values().flatten())
        .map(|target| target.replace('-', "_"))
        .collect();
    let orphans: Vec<String> = ignored
        .iter()
        .filter(|(binary, _)| !covered.contains(*binary))
        .flat_map(|(binary, tests)| tests.iter().map(move |t| format!("{binary}: {t}")))
        .collect();
    if !orphans.is_empty() {
        bail!(
            "these #[ignore]d tests run in no tier (start their file with `//! Tier 2` or \
             `//! Tier 3`): {}",
            orphans.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_declares_the_tier() {
        assert_eq!(declared_tier("//! Tier 2: packet tests\n"), Some(2));
        assert_eq!(declared_tier("//! Tier 3: end to end"), Some(3));
        assert_eq!(declared_tier("//! The CLI's errors\n//! Tier 3"), None);
        assert_eq!(declared_tier(""), None);
    }

    #[test]
    fn the_listing_gives_ignored_tests_per_binary() {
        let listing = "\
     Running unittests src/lib.rs (target/debug/deps/xlb-3f920e0a9fe628e3)
0 tests, 0 benchmarks
     Running tests/balance.rs (target/debug/deps/balance-be81bd97bd9a7c31)
clients_and_backends_behind_two_interfaces: test
native_xdp_on_links_prepared_for_it_one_interface: test
2 tests, 0 benchmarks
     Running tests/cli.rs (target/debug/deps/cli-aba90ca8e6eb41fe)
needs_root_but_no_tier: test
";
        let tests = ignored_tests(listing);
        assert_eq!(tests["balance"].len(), 2);
        assert!(!tests.contains_key("xlb"));
        let mut three = Tier::default();
        three
            .targets
            .insert("xlb-tests".into(), vec!["balance".into()]);
        let error = check_coverage(&tests, &[&three]).unwrap_err().to_string();
        assert!(error.contains("cli: needs_root_but_no_tier"), "{error}");
        let mut all = three.clone();
        all.targets
            .insert("lb-userspace".into(), vec!["cli".into()]);
        check_coverage(&tests, &[&all]).unwrap();
        let runs: Vec<String> = all.cargo_runs().iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            runs,
            [
                "test --no-fail-fast -p lb-userspace --test cli -- --ignored",
                "test --no-fail-fast -p xlb-tests --test balance -- --ignored"
            ]
        );
    }
}
