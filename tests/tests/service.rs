//! Tier 3: xlb as a systemd service, as far as a machine without systemd as PID 1 allows:
//! the unit file verified and scored by `systemd-analyze`; the notify protocol spoken to a
//! socket standing in for systemd (ready, reloading, stopping); and the daemon run under the
//! unit's capability bounding set, no-new-privileges and a private, read-only mount
//! namespace, keeping its pins and its operator settings across a restart. Needs root: run
//! with `cargo xtask test`.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xlb_tests::{
    client::start_download,
    process::binary,
    scenario::{
        Launch, TCP_SERVICE_PORT, Xlb, balancer_config, start_backends, start_xlb_launched,
    },
    topology::{Lab, VIP, Wiring, backend_addr},
};

/// The unit file in the repository.
fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/xlb.service")
}

fn run(command: &mut Command) -> (i32, String) {
    let output = command.output().expect("running a command");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// A directory tree holding what the unit refers to: the xlb binary at /usr/bin/xlb, the
/// unit, and systemd's own units (for the targets it orders against).
fn unit_root() -> PathBuf {
    let root = std::env::temp_dir().join(format!("xlb-unit-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for dir in ["usr/bin", "etc/systemd/system", "usr/lib/systemd"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(binary("xlb").unwrap(), root.join("usr/bin/xlb")).unwrap();
    std::fs::copy(unit_file(), root.join("etc/systemd/system/xlb.service")).unwrap();
    let (code, text) = run(Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/systemd/system")
        .arg(root.join("usr/lib/systemd/")));
    assert_eq!(code, 0, "{text}");
    root
}

#[test]
#[ignore = "needs systemd-analyze: run with `cargo xtask test`"]
fn the_unit_file_verifies_and_is_hardened() {
    let root = unit_root();
    let root_arg = format!("--root={}", root.display());
    // verify exits 0 even for directives it ignores, so it must also say nothing.
    let (code, text) =
        run(Command::new("systemd-analyze").args(["verify", "--man=no", &root_arg, "xlb.service"]));
    assert_eq!((code, text.as_str()), (0, ""), "systemd-analyze verify");
    let (code, text) = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        &root_arg,
        "xlb.service",
    ]));
    assert_eq!(code, 0, "{text}");
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for xlb.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{text}"));
    assert!(exposure < 4.0, "exposure {exposure}:\n{text}");
    let unit = std::fs::read_to_string(unit_file()).unwrap();
    for directive in [
        "Type=notify\n",
        "ExecReload=/usr/bin/xlb reload\n",
        "RequiresMountsFor=/sys/fs/bpf\n",
        "ReadWritePaths=/sys/fs/bpf\n",
        "StateDirectory=xlb\n",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Receives the next notification (one datagram, `KEY=value` lines), or panics after 10 s.
fn notification(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let len = socket
        .recv(&mut buffer)
        .expect("a notification within 10 s");
    String::from_utf8_lossy(&buffer[..len]).into_owned()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn xlb_tells_systemd_when_it_is_ready_reloading_and_stopping() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let path = std::env::temp_dir().join(format!("xlb-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let launch = Launch {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Launch::default()
    };
    let mut xlb =
        start_xlb_launched(&lab.balancer, &balancer_config(&lab, "auto"), launch).unwrap();
    let ready = notification(&systemd);
    assert!(ready.contains("READY=1\n"), "{ready}");
    assert!(
        ready.contains("STATUS=balancing 2 services (6 backends) on eth0, eth1 at the tc hook"),
        "{ready}"
    );
    let reload = |xlb: &Xlb| xlb.cli(&["reload"]).unwrap().0;
    assert_eq!(reload(&xlb), 0);
    let reloading = notification(&systemd);
    assert!(
        reloading.contains("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(notification(&systemd).contains("READY=1\n"));
    // A refused reload is announced the same way (the daemon is ready again, unchanged).
    let good = std::fs::read_to_string(&xlb.config_path).unwrap();
    std::fs::write(&xlb.config_path, "interfaces = []\n").unwrap();
    assert_eq!(reload(&xlb), 1);
    std::fs::write(&xlb.config_path, good).unwrap();
    assert!(notification(&systemd).contains("RELOADING=1\n"));
    assert!(notification(&systemd).contains("READY=1\n"));
    xlb.stop(Duration::from_secs(10)).unwrap();
    assert!(notification(&systemd).contains("STOPPING=1\n"));
    let _ = std::fs::remove_file(path);
}

/// What the unit's sandbox does that could break xlb, done with util-linux: a private mount
/// namespace in which the root file system and /proc/sys are read-only (the run's own files,
/// standing in for /run/xlb and /var/lib/xlb, and bpffs stay writable), no new privileges,
/// and only the unit's capabilities in the bounding set.
fn sandbox(writable: &Path) -> Launch {
    let script = format!(
        "mount --bind {dir} {dir} && mount -o remount,bind,ro / && \
         mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         exec setpriv --no-new-privs --inh-caps=-all \
         --bounding-set=-all,+bpf,+net_admin,+perfmon,+sys_admin,+sys_resource \"$0\" \"$@\"",
        dir = writable.display()
    );
    Launch {
        wrapper: vec![
            "unshare".into(),
            "--mount".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            script,
        ],
        ..Launch::default()
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_daemon_sandboxed_like_the_unit_keeps_its_pins_and_settings_across_a_restart() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let files = xlb_tests::process::temp_file("sandbox-probe", "")
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let launch = sandbox(&files);
    let mut xlb =
        start_xlb_launched(&lab.balancer, &balancer_config(&lab, "auto"), launch).unwrap();
    // The sandbox is real: the daemon cannot write outside its own files.
    let status = std::fs::read_to_string(format!("/proc/{}/status", xlb.pid())).unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_owned();
    let no_new_privs = status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .unwrap()
        .trim()
        .to_owned();
    // At most the unit's: CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21), CAP_SYS_RESOURCE (24; a
    // container may not have it to give), CAP_PERFMON (38), CAP_BPF (39).
    let needed = (1u64 << 12) | (1 << 21) | (1 << 38) | (1 << 39);
    let allowed = needed | (1 << 24);
    let bounding = u64::from_str_radix(&bounding, 16).unwrap();
    assert_eq!(bounding & !allowed, 0, "bounding set {bounding:x}");
    assert_eq!(bounding & needed, needed, "bounding set {bounding:x}");
    assert_eq!(no_new_privs, "1");

    let b1 = format!("{}:8080", backend_addr(0));
    let (code, _, stderr) = xlb.cli(&["backend", "drain", "web", &b1]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let vip = std::net::SocketAddr::from((VIP, TCP_SERVICE_PORT));
    let (backend, bytes) = std::thread::scope(|scope| {
        let client = &lab.client;
        let download = scope.spawn(|| {
            client
                .block_on(async {
                    let download = start_download(vip, 2_000_000, 2_500).await?;
                    let backend = download.backend.clone();
                    download.finish().await.map(|bytes| (backend, bytes))
                })
                .unwrap()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(600));
        assert!(xlb.stop(Duration::from_secs(10)).unwrap().success());
        xlb.restart(&lab.balancer, &[]).unwrap();
        download.join().unwrap()
    });
    assert!(
        xlb.output().contains("took over the pinned maps"),
        "{}",
        xlb.output()
    );
    assert_eq!(bytes, 2_000_000, "the download across the restart is whole");
    assert_ne!(backend, "b1", "b1 was drained");
    assert!(
        xlb.output().contains("operator setting kept"),
        "{}",
        xlb.output()
    );
}
