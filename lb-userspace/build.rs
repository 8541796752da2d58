//! Builds the XDP program (`lb-ebpf`) for `bpfel-unknown-none` with aya-build (a nested nightly
//! cargo with `-Z build-std=core`) and leaves the object in `OUT_DIR/xlb`, which
//! `dataplane` embeds. Needs the nightly toolchain with rust-src and `bpf-linker`;
//! `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    record_commit();
    // Building the object depends on the bpf-linker binary, which cargo cannot track itself.
    let Ok(bpf_linker) = which::which("bpf-linker") else {
        // Without bpf-linker the object cannot be built. Leave an empty one so that the pure
        // logic can still be checked, linted and unit-tested; loading it fails with a message
        // that says how to get the real one (see dataplane::Dataplane::load). Watching the
        // path where `cargo xtask setup` installs bpf-linker makes cargo run this script again
        // once it is there.
        println!(
            "cargo:warning=bpf-linker not found: building xlb WITHOUT its XDP program; run `cargo xtask setup`"
        );
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cargo"))
            });
        if let Some(cargo_home) = cargo_home {
            println!(
                "cargo:rerun-if-changed={}",
                cargo_home.join("bin/bpf-linker").display()
            );
        }
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
        for object in ["xlb", "xlb-noop", "xlb-decap"] {
            std::fs::write(std::path::Path::new(&out_dir).join(object), [])?;
        }
        return Ok(());
    };
    println!("cargo:rerun-if-changed={}", bpf_linker.display());

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .iter()
        .find(|package| package.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("package lb-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    // The round-robin cursor is advanced with an atomic fetch-and-add whose result is used;
    // LLVM emits that instruction (BPF_ATOMIC | BPF_FETCH, kernel 5.12+) only for BPF cpu v3
    // and later, and fails with "Invalid usage of the XADD return value" for the default cpu.
    // bpf-linker (which generates the code) asks LLVM by default to keep memcpy as a pseudo
    // instruction in order, which turns every memset (zeroing a struct) into a call to a
    // byte-by-byte loop; without that, LLVM writes the zeroes inline, a word at a time.
    // aya-build sets the nested cargo's RUSTFLAGS itself and has no way to add one, so these
    // flags go in as a release-profile rustflag, an unstable cargo feature the nested nightly cargo
    // honours. Build scripts and proc macros of that build run on the host and must not get
    // it, hence the empty build-override. The nested cargo inherits this environment.
    // SAFETY: the build script is single-threaded at this point.
    unsafe {
        std::env::set_var("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true");
        std::env::set_var(
            "CARGO_PROFILE_RELEASE_RUSTFLAGS",
            "-C target-cpu=v3 -C link-arg=--disable-expand-memcpy-in-order",
        );
        std::env::set_var("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "");
    }
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// Sets `XLB_COMMIT` for `xlb --version`: the environment's `XLB_COMMIT` if set (a package
/// built from a tarball), else the checkout's commit, else "unknown".
fn record_commit() {
    println!("cargo:rerun-if-env-changed=XLB_COMMIT");
    let commit = std::env::var("XLB_COMMIT").ok().or_else(|| {
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git").args(args).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        // Rebuild when HEAD moves: HEAD itself, and the branch it points at.
        if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
            println!("cargo:rerun-if-changed={head}");
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(reference) = git(&["rev-parse", "--git-path", &branch])
        {
            println!("cargo:rerun-if-changed={reference}");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo:rustc-env=XLB_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
