//! Tier 3: the Debian package that `cargo xtask package` builds (`cargo xtask test` builds it
//! first and passes its path in `XLB_DEB`): what it holds, that its pieces work together when
//! unpacked (the unit verifies, the example configuration is valid, the man page and
//! completions are there), and that its binary balances real traffic in namespaces. Needs
//! root: run with `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use xlb::cmd::Response;
use xlb_tests::{
    scenario::{Launch, balancer_config, run_traffic, start_backends, start_xlb_launched, tally},
    topology::{Lab, Wiring},
};

/// The package: `XLB_DEB`, or the one in target/package/.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("XLB_DEB") {
        return deb.into();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/package");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        })
        .unwrap_or_else(|| panic!("no package in {}: run `cargo xtask package`", dir.display()))
}

fn output(command: &mut Command) -> String {
    let out = command.output().expect("running a command");
    assert!(out.status.success(), "{command:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package unpacked into a fresh directory of its own (`label`: tests run side by side).
fn unpacked(label: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("xlb-deb-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    output(Command::new("dpkg-deb").arg("-x").arg(package()).arg(&root));
    root
}

#[test]
#[ignore = "needs the package: run with `cargo xtask test`"]
fn the_package_holds_the_binary_unit_config_docs_man_pages_and_completions() {
    let deb = package();
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/xlb",
        "./usr/lib/systemd/system/xlb.service",
        "./etc/xlb/xlb.toml",
        "./usr/share/man/man1/xlb.1.gz",
        "./usr/share/man/man1/xlb-trace.1.gz",
        "./usr/share/man/man1/xlb-backend-weight.1.gz",
        "./usr/share/man/man5/xlb.toml.5.gz",
        "./usr/share/bash-completion/completions/xlb",
        "./usr/share/zsh/vendor-completions/_xlb",
        "./usr/share/fish/vendor_completions.d/xlb.fish",
        "./usr/share/doc/xlb/README.md",
        "./usr/share/doc/xlb/LICENSE-MIT",
        "./usr/share/doc/xlb/LICENSE-APACHE",
        "./usr/share/doc/xlb/copyright",
        "./usr/share/doc/xlb/grafana-dashboard.json",
        "./usr/share/doc/xlb/dsr-backend.sh",
        "./usr/share/doc/xlb/bird/balancer.conf",
        "./usr/share/doc/xlb/bird/router.conf",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "the package lacks {path}:\n{contents}"
        );
    }
    let binary = contents
        .lines()
        .find(|l| l.ends_with(" ./usr/bin/xlb"))
        .unwrap();
    assert!(
        binary.starts_with("-rwxr-xr-x 0/0 "),
        "root-owned and executable: {binary}"
    );
    let info = output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for field in ["Package: xlb", "Section: net", "Depends: libc6"] {
        assert!(info.contains(field), "{info}");
    }
    let control = std::env::temp_dir().join(format!("xlb-deb-control-{}", std::process::id()));
    output(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.trim(),
        "/etc/xlb/xlb.toml",
        "the config survives upgrades"
    );
    let _ = std::fs::remove_dir_all(control);

    let root = unpacked("contents");
    let xlb = root.join("usr/bin/xlb");
    let version = output(Command::new(&xlb).arg("--version"));
    assert!(
        version.starts_with(&format!("xlb {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let check = output(
        Command::new(&xlb)
            .args(["check", "--offline", "--config"])
            .arg(root.join("etc/xlb/xlb.toml")),
    );
    assert!(check.contains("ok (5 services"), "{check}");
    let man = output(
        Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man1/xlb.1.gz")),
    );
    assert!(man.contains(".TH xlb 1"), "{man}");
    assert!(
        man.contains("EXIT STATUS") && man.contains("SEE ALSO"),
        "{man}"
    );
    let config = output(
        Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man5/xlb.toml.5.gz")),
    );
    assert!(config.contains("[[service]]"), "{config}");
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/xlb")).unwrap();
    assert!(bash.contains("_xlb()"));

    // The unit, as installed: systemd-analyze finds the binary where the unit says.
    let (code, text) = {
        let cp = Command::new("cp")
            .arg("-rn")
            .arg("/usr/lib/systemd/system/.")
            .arg(root.join("usr/lib/systemd/system/"))
            .status()
            .unwrap();
        assert!(cp.success());
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .arg("xlb.service")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert_eq!(
        (code, text.as_str()),
        (Some(0), ""),
        "systemd-analyze verify"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
#[ignore = "needs root and the package: run with `cargo xtask test`"]
fn the_packaged_binary_balances_traffic() {
    let root = unpacked("run");
    let packaged = root.join("usr/bin/xlb");
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    // The harness passes its own xlb first; the wrapper runs the packaged one instead.
    let launch = Launch {
        wrapper: vec![
            "sh".into(),
            "-c".into(),
            format!("shift; exec {} \"$@\"", packaged.display()),
            "sh".into(),
        ],
        ..Launch::default()
    };
    let xlb = start_xlb_launched(&lab.balancer, &balancer_config(&lab, "auto"), launch).unwrap();
    let traffic = run_traffic(&lab, 30, 30).unwrap();
    let expected: Vec<usize> = vec![10, 10, 10];
    assert_eq!(
        tally(&traffic.tcp).into_values().collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        tally(&traffic.udp).into_values().collect::<Vec<_>>(),
        expected
    );
    // The daemon is the packaged binary, and says so.
    let exe = std::fs::read_link(format!("/proc/{}/exe", xlb.pid())).unwrap();
    assert_eq!(exe, packaged);
    let (_, status, _) = xlb.cli(&["--json", "status"]).unwrap();
    let Ok(Response::Status(report)) = serde_json::from_str::<Response>(&status) else {
        panic!("{status}");
    };
    let version = output(Command::new(&packaged).arg("--version"));
    assert_eq!(format!("xlb {}", report.version), version.trim());
    drop(xlb);
    let _ = std::fs::remove_dir_all(root);
}
