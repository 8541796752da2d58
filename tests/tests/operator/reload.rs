//! Reloading the configuration: the difference applied, an invalid file changing nothing.

use super::*;

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn reload_applies_the_difference_and_an_invalid_file_changes_nothing() {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup("");
    let original = std::fs::read_to_string(&xlb.config_path).unwrap();
    let client = &lab.client;
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (backend, bytes) = std::thread::scope(|scope| {
        // An established download (1 MB over 1.5 s) must survive both reloads. It lives on
        // its own thread: its connection belongs to that thread's runtime.
        let download = scope.spawn(move || {
            client
                .block_on(async move {
                    let download = start_download(http_vip(), 1_000_000, 1_500).await?;
                    started_tx.send(download.backend.clone()).unwrap();
                    let backend = download.backend.clone();
                    download.finish().await.map(|bytes| (backend, bytes))
                })
                .unwrap()
        });
        let first = started_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the download started");
        assert_eq!(first, "b1");

        // Remove b3 from the web service.
        let b3 = format!("{{ address = \"{}\" }}", web_backend(2));
        let without_b3 = original.replacen(&format!(", {b3}"), "", 1);
        assert_ne!(without_b3, original);
        std::fs::write(&xlb.config_path, &without_b3).unwrap();
        let done = ok(&xlb, &["reload"]);
        assert!(done.contains("1 removed (1 draining)"), "{done}");
        // It has no connection: released at the daemon's next look, within seconds.
        let start = Instant::now();
        while ok(&xlb, &["status"]).contains(&web_backend(2)) {
            assert!(start.elapsed() < Duration::from_secs(5), "b3 still listed");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(connections(&lab, 4).get("b3"), None);

        // An invalid file: the error says where, nothing changes.
        let before = backends_of(&xlb);
        std::fs::write(
            &xlb.config_path,
            without_b3.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
        )
        .unwrap();
        let error = fails(&xlb, &["reload"]);
        assert!(
            error.contains(&format!("{}:", xlb.config_path.display())),
            "{error}"
        );
        assert!(error.contains("unknown protocol \"sctp\""), "{error}");
        assert!(error.contains("nothing was changed"), "{error}");
        assert_eq!(backends_of(&xlb), before);
        // As JSON, every error located, as `xlb check --json` gives them.
        let (code, stdout, _) = xlb.cli(&["--json", "reload"]).unwrap();
        assert_eq!(code, 1, "{stdout}");
        let Ok(Response::Invalid(invalid)) = serde_json::from_str(&stdout) else {
            panic!("{stdout}")
        };
        assert!(
            invalid
                .errors
                .iter()
                .any(|e| e.line > 0 && e.message.contains("unknown protocol \"sctp\"")),
            "{stdout}"
        );

        // A valid file that needs another hook (native XDP, which would corrupt packets on
        // these links anyway): refused, nothing changes.
        std::fs::write(
            &xlb.config_path,
            without_b3.replace("xdp_mode = \"auto\"", "xdp_mode = \"native\""),
        )
        .unwrap();
        let error = fails(&xlb, &["reload"]);
        assert!(error.contains("would corrupt packets"), "{error}");
        assert!(error.contains("nothing was changed"), "{error}");
        std::fs::write(
            &xlb.config_path,
            without_b3.replace("xdp_mode = \"auto\"", "xdp_mode = \"tc\""),
        )
        .unwrap();
        ok(&xlb, &["reload"]);
        assert_eq!(
            backends_of(&xlb),
            before,
            "xdp_mode tc = what auto chose: no change"
        );

        // SIGHUP reloads too: b3 comes back.
        std::fs::write(&xlb.config_path, &original).unwrap();
        xlb.signal(libc::SIGHUP).unwrap();
        xlb.wait_for_output("reloaded", Duration::from_secs(5))
            .unwrap();
        let start = Instant::now();
        while !ok(&xlb, &["status"]).contains(&web_backend(2)) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "b3 did not come back"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        download.join().unwrap().unwrap()
    });
    assert_eq!(backend, "b1");
    assert_eq!(
        bytes, 1_000_000,
        "the download across two reloads completed byte-exact"
    );
}
