//! `cargo xtask package`: the Debian package, with cargo-deb. The release binary is built,
//! then asked for its man pages and shell completions (generated from its clap definitions),
//! and cargo-deb packs them with the unit, the example configuration and the docs as
//! `lb-userspace/Cargo.toml` lists them (`[package.metadata.deb]`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo,
    setup::{self, Need},
    steps::Steps,
};

/// cargo-deb and what it runs (and, like every command, the toolchain: it builds xlb).
const NEEDS: &[Need] = &[Need::Packaging];

const RELEASE_BUILD: &str = "release build (cargo build --release -p lb-userspace)";
const MAN_PAGES: &str = "man pages and completions (from the binary)";
const DEB: &str = "the package (cargo deb)";
/// The steps [`build`] takes.
pub const PLAN: [&str; 3] = [RELEASE_BUILD, MAN_PAGES, DEB];

/// Where the package is written.
pub fn output_dir() -> Result<PathBuf> {
    Ok(cargo::target_dir()?.join("package"))
}

/// Runs `cargo xtask package`.
pub fn run() -> Result<()> {
    let mut steps = Steps::new("package").then(setup::plan(NEEDS)).then(PLAN);
    setup::run(&mut steps, NEEDS)?;
    let deb = build(&mut steps)?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the package; returns its path.
pub fn build(steps: &mut Steps) -> Result<PathBuf> {
    steps.run(RELEASE_BUILD, || {
        cargo::checked(
            &["build", "--release", "-p", "lb-userspace", "--bin", "xlb"],
            "cargo build --release",
        )
    })?;
    let release = cargo::target_dir()?.join("release");
    let generated = release.join("package");
    steps.run(MAN_PAGES, || {
        let _ = std::fs::remove_dir_all(&generated);
        let (man, completions) = (generated.join("man"), generated.join("completions"));
        std::fs::create_dir_all(&completions)?;
        let xlb = release.join("xlb");
        execute(
            Command::new(&xlb).arg("man").arg("--dir").arg(&man),
            "xlb man",
        )?;
        for page in std::fs::read_dir(&man)? {
            execute(Command::new("gzip").arg("-9nf").arg(page?.path()), "gzip")?;
        }
        for (shell, file) in [("bash", "xlb.bash"), ("zsh", "_xlb"), ("fish", "xlb.fish")] {
            let out = Command::new(&xlb)
                .args(["completions", shell])
                .output()
                .context("xlb completions")?;
            if !out.status.success() {
                bail!("xlb completions {shell} failed ({})", out.status);
            }
            std::fs::write(completions.join(file), out.stdout)?;
        }
        Ok(())
    })?;
    let output = output_dir()?;
    steps.run(DEB, || {
        let _ = std::fs::remove_dir_all(&output);
        std::fs::create_dir_all(&output)?;
        cargo::checked(
            &[
                "deb",
                "-p",
                "lb-userspace",
                "--no-build",
                "--output",
                &output.display().to_string(),
            ],
            "cargo deb",
        )?;
        let debs: Vec<PathBuf> = std::fs::read_dir(&output)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        match &debs[..] {
            [deb] => Ok(deb.clone()),
            _ => bail!("expected one .deb in {}, found {debs:?}", output.display()),
        }
    })
}

fn execute(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
