//! Restarting the daemon: every flow survives, also when the hook changes.

use xlb_tests::scenario::{Launch, start_xlb_launched};

use super::*;

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_restart_keeps_every_flow() {
    restart_keeps_every_flow(Offloads::Default, "auto", None);
}

/// A restart that moves the data plane from native XDP to tc (the operator changed
/// `xdp_mode`): the new daemon attaches at tc, then removes the XDP links, and no flow notices.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_restart_that_changes_the_hook_keeps_every_flow() {
    restart_keeps_every_flow(Offloads::Prepared, "native", Some("tc"));
}

fn restart_keeps_every_flow(offloads: Offloads, mode: &str, new_mode: Option<&str>) {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup_with(offloads, mode, "");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (download, udp) = std::thread::scope(|scope| {
        // A 3 MB download spread over 3 s, and a UDP flow of a datagram every 20 ms.
        let client = &lab.client;
        let download = scope.spawn(|| {
            client
                .block_on(async {
                    let download = start_download(http_vip(), 3_000_000, 3_000).await?;
                    let backend = download.backend.clone();
                    download.finish().await.map(|bytes| (backend, bytes))
                })
                .unwrap()
        });
        let stop = &stop;
        let udp = scope.spawn(move || {
            client
                .block_on(async move {
                    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
                    socket
                        .connect(SocketAddr::from((VIP, UDP_SERVICE_PORT)))
                        .await
                        .unwrap();
                    let (mut sent, mut answers) = (0usize, Vec::new());
                    let mut buffer = [0u8; 256];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        socket.send(b"still there?").await.unwrap();
                        sent += 1;
                        let answer = tokio::time::timeout(
                            Duration::from_millis(200),
                            socket.recv(&mut buffer),
                        )
                        .await;
                        if let Ok(Ok(len)) = answer {
                            answers.push(
                                String::from_utf8_lossy(&buffer[..len])
                                    .lines()
                                    .next()
                                    .unwrap()
                                    .to_owned(),
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (sent, answers)
                })
                .unwrap()
        });
        // Restart the daemon in the middle of both.
        std::thread::sleep(Duration::from_millis(700));
        let status = xlb.stop(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{}", xlb.output());
        assert!(
            xlb.output().contains("the data plane keeps forwarding"),
            "{}",
            xlb.output()
        );
        std::thread::sleep(Duration::from_millis(500));
        if let Some(new_mode) = new_mode {
            let config = std::fs::read_to_string(&xlb.config_path).unwrap();
            let config = config.replace(
                &format!("xdp_mode = \"{mode}\""),
                &format!("xdp_mode = \"{new_mode}\""),
            );
            std::fs::write(&xlb.config_path, config).unwrap();
        }
        xlb.restart(&lab.balancer, &[]).unwrap();
        assert!(
            xlb.output().contains("took over the pinned maps"),
            "{}",
            xlb.output()
        );
        if new_mode.is_some() {
            assert!(
                xlb.output()
                    .contains("removed the link of the previous hook"),
                "{}",
                xlb.output()
            );
        } else {
            assert!(
                xlb.output().contains("took over the pinned link"),
                "{}",
                xlb.output()
            );
        }
        std::thread::sleep(Duration::from_millis(2_500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (download.join().unwrap(), udp.join().unwrap())
    });
    let (backend, bytes) = download.unwrap();
    assert_eq!(
        bytes, 3_000_000,
        "the download across the restart completed byte-exact"
    );
    assert_eq!(backend, "b1");
    let (sent, answers) = udp;
    let backends = tally(&answers);
    assert_eq!(
        backends.len(),
        1,
        "every datagram of the UDP flow went to one backend: {backends:?}"
    );
    assert_eq!(
        answers.len(),
        sent,
        "no datagram was lost across the restart ({} of {sent})",
        answers.len()
    );
    // New flows after the restart are balanced as before.
    assert_eq!(connections(&lab, 3).len(), 3);
}

/// A restart onto the pins of xlb 6261ef3 or earlier, whose flow tables kept two entries per
/// flow: their flows are taken over into this version's tables (one entry per flow), and six
/// downloads across the restart complete byte-exact (a flow lost would be placed anew by hash
/// and, with three backends, most likely reset). The earlier pins are made by the test from
/// the running tables (`pin_as_earlier_version`), as that version would have left them; the
/// data plane that forwards meanwhile keeps its own tables.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_restart_onto_tables_of_two_entries_per_flow_keeps_every_connection() {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup("");
    let downloads = std::thread::scope(|scope| {
        let client = &lab.client;
        let downloads: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    client
                        .block_on(async {
                            let download = start_download(http_vip(), 1_000_000, 3_000).await?;
                            let backend = download.backend.clone();
                            // A connection the restart broke stalls: bounded.
                            let bytes =
                                tokio::time::timeout(Duration::from_secs(20), download.finish())
                                    .await
                                    .map_err(|_| anyhow::anyhow!("stalled for 20 s"))??;
                            anyhow::Ok((backend, bytes))
                        })
                        .unwrap()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        xlb.stop(Duration::from_secs(10)).unwrap();
        let flows = xlb::dataplane::pin_as_earlier_version(&xlb.pin_dir).unwrap();
        assert!(flows >= 6, "{flows} flows in the earlier layout");
        xlb.restart(&lab.balancer, &[]).unwrap();
        assert!(
            xlb.output().contains("flows of the earlier flow tables"),
            "{}",
            xlb.output()
        );
        downloads
            .into_iter()
            .map(|download| download.join().unwrap())
            .collect::<Vec<_>>()
    });
    for download in &downloads {
        let (backend, bytes) = download.as_ref().expect("the download completed");
        assert_eq!(
            *bytes, 1_000_000,
            "the download from {backend} completed byte-exact"
        );
    }
    assert!(
        !xlb.pin_dir.join("FLOWS4_TWO_ENTRIES").exists(),
        "the earlier tables' pins are removed"
    );
    // New connections are balanced as before.
    assert_eq!(connections(&lab, 3).len(), 3);
}

/// Pins left by a version of xlb whose maps had another layout are refused before the program
/// is loaded, with an error that names the map, both layouts and the way out: here an IPv4
/// flow table of 48-byte entries (this version's are 80), and the single flow table for both
/// families that versions before issue 16 pinned; the pins stay as they were, and the data
/// plane they hold keeps forwarding.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn pins_of_another_layout_are_refused_with_a_clear_error() {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup("");
    assert_eq!(connections(&lab, 3).len(), 3);
    // Stopped without --detach-on-exit: the data plane keeps forwarding on its pins.
    xlb.stop(Duration::from_secs(10)).unwrap();
    let flows = xlb.pin_dir.join("FLOWS4");
    std::fs::remove_file(&flows).unwrap();
    pin_hash_map(&flows, 16, 48).unwrap();

    let error = xlb.restart(&lab.balancer, &[]).unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!(
            "the map FLOWS4 pinned in {} holds 16-byte keys and 48-byte values, and this \
             version of xlb needs 16 and {}",
            xlb.pin_dir.display(),
            size_of::<lb_common::FlowEntry<u32>>()
        )) && error.contains("--detach-on-exit"),
        "{error}"
    );
    assert!(
        !error.contains("Verifier output"),
        "refused before loading:\n{error}"
    );
    assert!(flows.exists(), "the pins are left as they were");
    assert!(
        !xlb.socket.exists(),
        "a refused daemon leaves no socket behind"
    );

    // The earlier versions' one flow table (40-byte keys, 72-byte values), as their pins have
    // it: named, and refused before anything is loaded onto the pins.
    let retired = xlb.pin_dir.join("FLOWS");
    pin_hash_map(&retired, 40, 72).unwrap();
    let error = format!("{:#}", xlb.restart(&lab.balancer, &[]).unwrap_err());
    assert!(
        error.contains(
            "they have the map FLOWS, which this version replaced by one flow table \
             per address family"
        ) && error.contains("--detach-on-exit"),
        "{error}"
    );
    assert!(
        retired.exists() && flows.exists(),
        "the pins are left as they were"
    );
    // The old program is still attached and forwards.
    assert_eq!(connections(&lab, 3).len(), 3);
}

/// Creates a BPF hash map with `key`- and `value`-byte entries and pins it at `path` (what
/// another version of xlb would have left there).
fn pin_hash_map(path: &std::path::Path, key: u32, value: u32) -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // The first words of `union bpf_attr` for each command; the rest stays zero.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key, value, 16]);
    // SAFETY: a valid, zeroed attribute block of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            create.as_ptr(),
            size_of_val(&create),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: as above; the path outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), size_of_val(&pin)) };
    let result = if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: the descriptor was opened above; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    result
}

/// A restart during an outage: the daemon stops (the data plane forwards on with its tables),
/// every backend's server stops, and the next daemon finds them all Down at their first
/// check. The earlier daemon's table, which names them, is replaced by an empty one before the
/// program is attached: new connections find no backend (dropped and counted), and none is
/// sent to a dead backend (which would answer with a reset).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn after_a_restart_during_an_outage_no_new_flow_goes_to_a_dead_backend() {
    let Setup {
        lab,
        mut xlb,
        mut _backends,
    } = setup(
        r#"health = { check = "tcp", interval = "200ms", timeout = "100ms", rise = 2, fall = 2 }"#,
    );
    assert_eq!(connections(&lab, 3).len(), 3);
    let status = xlb.stop(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{}", xlb.output());
    for backend in &mut _backends {
        backend.stop().unwrap();
    }
    xlb.restart(&lab.balancer, &[]).unwrap();
    assert!(
        xlb.output().contains("took over the pinned maps"),
        "{}",
        xlb.output()
    );
    let attempts: Vec<String> = lab
        .client
        .block_on(async {
            let mut attempts = Vec::new();
            for _ in 0..3 {
                let attempt = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(http_vip()),
                )
                .await;
                attempts.push(match attempt {
                    Err(_) => "no answer".to_owned(),
                    Ok(Ok(_)) => "connected".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                });
            }
            attempts
        })
        .unwrap();
    let (code, stdout, stderr) = xlb.cli(&["--json", "stats"]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    let Response::Stats(stats) = serde_json::from_str(&stdout).unwrap() else {
        panic!("{stdout}")
    };
    let web = &stats.services[0];
    let to_backends: u64 = web.backends.iter().map(|b| b.counters.new_flows).sum();
    assert_eq!(
        attempts, ["no answer"; 3],
        "new connections reached a backend: {attempts:?}"
    );
    assert!(
        web.counters.no_backend >= 3 && to_backends == 3,
        "the SYNs found no backend (the 3 new flows are those before the restart): {:?}",
        web.counters
    );
}

/// Under `ip netns exec` (a private mount namespace with a /sys of its own, where xlb mounts
/// a bpffs the host never sees) the pins go with the daemon: it warns at start, and at exit
/// says that the data plane stops with it instead of claiming that it keeps forwarding; and
/// indeed nothing is left pinned where the host, or the next daemon, could find it. Started in
/// the host's mount namespace, it warns of nothing and its pins stay.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_daemon_whose_pins_go_with_its_mount_namespace_says_so() {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, Offloads::Default).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let config = balancer_config_with(&lab, "auto", "", "");
    let warning = "only this process's mount namespace has";
    let launch = Launch {
        wrapper: ["ip", "netns", "exec", lab.balancer.name()]
            .map(str::to_owned)
            .to_vec(),
        ..Launch::default()
    };
    let mut private = start_xlb_launched(&lab.balancer, &config, launch).unwrap();
    assert!(private.output().contains(warning), "{}", private.output());
    assert_eq!(
        connections(&lab, 3).values().sum::<usize>(),
        3,
        "it balances"
    );
    private.stop(Duration::from_secs(10)).unwrap();
    let output = private.output();
    assert!(
        output.contains("the data plane stops with this daemon")
            && !output.contains("keeps forwarding"),
        "{output}"
    );
    assert!(
        !private.pin_dir.exists(),
        "nothing pinned where the host sees it"
    );
    drop(private);

    let mut host = start_xlb(&lab.balancer, &config).unwrap();
    host.stop(Duration::from_secs(10)).unwrap();
    let output = host.output();
    assert!(
        !output.contains(warning) && output.contains("the data plane keeps forwarding"),
        "{output}"
    );
    assert!(host.pin_dir.exists(), "its pins stay");
}
