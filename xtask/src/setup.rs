//! Installs what a command needs, skipping what is already there: Debian packages, the
//! nightly toolchain with rust-src (for `-Z build-std=core`), and bpf-linker built against the
//! system's LLVM 22. Every command builds the eBPF programs, so every one gets the toolchain;
//! the rest depends on what the command runs ([`Need`]). `cargo xtask demo` installs only what
//! its namespaces use, so that a first demo on a fresh machine stays quick.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::steps::{Steps, note};

/// What a command needs installed besides the toolchain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Network namespaces and their links and routes: `ip` and `tc` (iproute2), `sysctl`
    /// (procps).
    Namespaces,
    /// `ethtool`, which sets the offloads of the topologies' veth links.
    Ethtool,
    /// The benchmarks' load and their baseline: `trafgen` (netsniff-ng), `iperf3`, `wrk`, and
    /// `nft` (nftables).
    LoadTools,
    /// BIRD 2, the BGP daemon of the scale-out test and benchmark.
    Bird,
    /// Prometheus and promtool, which read the metrics endpoint in the tests.
    Prometheus,
    /// systemd, whose `systemd-analyze` checks the unit file in the tests.
    Systemd,
    /// The Debian package: cargo-deb, and dpkg-dev, whose `dpkg-shlibdeps` cargo-deb runs to
    /// find the package's dependencies.
    Packaging,
}

impl Need {
    /// The Debian packages this need is met by.
    fn packages(self) -> &'static [&'static str] {
        match self {
            Self::Namespaces => &["iproute2", "procps"],
            Self::Ethtool => &["ethtool"],
            Self::LoadTools => &["netsniff-ng", "iperf3", "wrk", "nftables"],
            Self::Bird => &["bird2"],
            Self::Prometheus => &["prometheus"],
            Self::Systemd => &["systemd"],
            Self::Packaging => &["dpkg-dev"],
        }
    }
}

/// Every need: what `cargo xtask test` (which runs everything) and `cargo xtask setup` install.
pub const EVERYTHING: &[Need] = &[
    Need::Namespaces,
    Need::Ethtool,
    Need::LoadTools,
    Need::Bird,
    Need::Prometheus,
    Need::Systemd,
    Need::Packaging,
];

/// The LLVM that bpf-linker is built against (it must match rustc's LLVM major version).
const LLVM_PACKAGE: &str = "llvm-22-dev";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The bpf-linker release known to work with LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The cargo-deb release `cargo xtask package` uses.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// One thing setup makes sure is installed: one step.
enum Task {
    /// Not installed, checked: setup needs root for the packages, the commands for namespaces
    /// and BPF.
    Root,
    /// Debian packages.
    Packages(Vec<&'static str>),
    /// The nightly toolchain with rust-src.
    Nightly,
    /// bpf-linker.
    BpfLinker,
    /// cargo-deb.
    CargoDeb,
}

impl Task {
    fn label(&self) -> String {
        match self {
            Self::Root => "running as root".to_owned(),
            Self::Packages(packages) => format!("Debian packages ({})", packages.join(", ")),
            Self::Nightly => "Rust nightly toolchain with rust-src".to_owned(),
            Self::BpfLinker => format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"),
            Self::CargoDeb => format!("cargo-deb {CARGO_DEB_VERSION}"),
        }
    }

    fn run(&self) -> Result<()> {
        match self {
            Self::Root => check_root(),
            Self::Packages(packages) => ensure_packages(packages),
            Self::Nightly => ensure_nightly(),
            Self::BpfLinker => ensure_bpf_linker(),
            Self::CargoDeb => ensure_cargo_deb(),
        }
    }
}

/// The setup's tasks for `needs`, in order.
fn tasks(needs: &[Need]) -> Vec<Task> {
    let mut packages: Vec<&str> = Vec::new();
    for package in needs.iter().flat_map(|need| need.packages()) {
        if !packages.contains(package) {
            packages.push(package);
        }
    }
    let mut tasks = vec![Task::Root];
    if !packages.is_empty() {
        tasks.push(Task::Packages(packages));
    }
    tasks.extend([Task::Nightly, Task::BpfLinker]);
    if needs.contains(&Need::Packaging) {
        tasks.push(Task::CargoDeb);
    }
    tasks
}

/// The labels of the steps [`run`] takes for `needs`, for the plan of a command that starts
/// with it.
pub fn plan(needs: &[Need]) -> Vec<String> {
    tasks(needs).iter().map(Task::label).collect()
}

/// Runs the setup steps for `needs`.
pub fn run(steps: &mut Steps, needs: &[Need]) -> Result<()> {
    for task in tasks(needs) {
        steps.run(&task.label(), || task.run())?;
    }
    Ok(())
}

fn ensure_cargo_deb() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if let Ok(version) = output(Command::new(&cargo).args(["deb", "--version"]))
        && version.contains(CARGO_DEB_VERSION)
    {
        note(&format!("already installed: {}", version.trim()));
        return Ok(());
    }
    note("building cargo-deb with cargo install (about two minutes)");
    quiet(
        Command::new(cargo).args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]),
        "cargo install cargo-deb",
    )
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "xlb's setup, tests and demo need root (packages, network namespaces, BPF); \
             run them as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        note("already installed");
        return Ok(());
    }
    note(&format!("installing {}", missing.join(" ")));
    quiet(Command::new("apt-get").arg("update"), "apt-get update")?;
    quiet(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )
}

fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        note("installing the nightly toolchain");
        quiet(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|line| line.starts_with("rust-src")) {
        note("nightly and rust-src already installed");
        return Ok(());
    }
    note("adding rust-src to nightly");
    quiet(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src",
    )
}

fn ensure_bpf_linker() -> Result<()> {
    if let Ok(version) = output(Command::new("bpf-linker").arg("--version")) {
        note(&format!("already installed: {}", version.trim()));
        return Ok(());
    }
    if !installed(LLVM_PACKAGE) {
        note(&format!("installing {LLVM_PACKAGE}"));
        ensure_packages(&[LLVM_PACKAGE])?;
    }
    note("building bpf-linker with cargo install (about a minute)");
    quiet(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
        "cargo install bpf-linker",
    )?;
    output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but is not on PATH (add ~/.cargo/bin to PATH)")?;
    Ok(())
}

/// Runs a command, showing its output only if it fails.
fn quiet(command: &mut Command, what: &str) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_gets_only_what_it_needs() {
        assert_eq!(
            plan(&[Need::Namespaces, Need::Ethtool]),
            [
                "running as root",
                "Debian packages (iproute2, procps, ethtool)",
                "Rust nightly toolchain with rust-src",
                "bpf-linker 0.13.0 (LLVM 22)",
            ]
        );
        let package = plan(&[Need::Packaging]);
        assert_eq!(package[1], "Debian packages (dpkg-dev)");
        assert_eq!(package.last().unwrap(), "cargo-deb 3.8.0");
        assert_eq!(plan(&[]).len(), 3, "no packages step without packages");
        let everything = plan(EVERYTHING);
        assert_eq!(everything.len(), 5);
        for package in ["bird2", "prometheus", "netsniff-ng", "dpkg-dev", "systemd"] {
            assert!(everything[1].contains(package), "{package}");
        }
        // A package two needs share is installed once.
        assert_eq!(
            plan(&[Need::Namespaces, Need::Namespaces])[1],
            "Debian packages (iproute2, procps)"
        );
    }
}
