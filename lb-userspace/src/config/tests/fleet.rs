//! `[fleet]`: this instance's address, its peers and the shared key, and every mistake in
//! them reported with its position.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use super::{errors_of, with_service_keys};
use crate::config::Config;

/// A key file with `contents` and `mode`, unique to this test run.
fn key_file(name: &str, contents: &str, mode: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlb-fleet-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The test config with `fleet` (an inline table's contents) as its fleet.
fn with_fleet(fleet: &str) -> String {
    with_service_keys("").replacen(
        "interfaces = [\"eth0\"]\n",
        &format!("interfaces = [\"eth0\"]\nfleet = {{ {fleet} }}\n"),
        1,
    )
}

const KEY: &str = "0123456789abcdef0123456789abcdef\n";

#[test]
fn a_fleet_names_this_instance_its_peers_and_a_key() {
    let key = key_file("good.key", KEY, 0o600);
    let text = with_fleet(&format!(
        "listen = \"198.18.1.21:7470\", peers = [\"198.18.1.22:7470\", \"198.18.1.23:7470\"], key_file = \"{}\"",
        key.display()
    ));
    let fleet = Config::parse(&text).unwrap().fleet.unwrap();
    assert_eq!(fleet.listen, "198.18.1.21:7470".parse().unwrap());
    assert_eq!(fleet.peers.len(), 2);
    assert_eq!(
        fleet.key.0,
        KEY.trim().as_bytes(),
        "surrounding whitespace removed"
    );
    assert!(
        !format!("{fleet:?}").contains("0123"),
        "the key is never printed"
    );
    assert!(
        Config::parse(&with_service_keys(""))
            .unwrap()
            .fleet
            .is_none()
    );
    let _ = std::fs::remove_file(key);
}

#[test]
fn every_fleet_mistake_is_located_and_named() {
    let good = key_file("ok.key", KEY, 0o600);
    let open = key_file("open.key", KEY, 0o644);
    let short = key_file("short.key", "too short\n", 0o600);
    let key = |path: &PathBuf| format!("key_file = \"{}\"", path.display());
    let peers = "peers = [\"198.18.1.22:7470\"]";
    for (fleet, problem) in [
        (
            format!("{peers}, {}", key(&good)),
            "fleet: missing key `listen`".to_owned(),
        ),
        (
            format!("listen = \"198.18.1.21:7470\", {}", key(&good)),
            "fleet: missing key `peers`".to_owned(),
        ),
        (
            format!("listen = \"198.18.1.21:7470\", {peers}"),
            "fleet: missing key `key_file`".to_owned(),
        ),
        (
            format!("listen = \"198.18.1.21\", {peers}, {}", key(&good)),
            "fleet: listen: \"198.18.1.21\" has no port".to_owned(),
        ),
        (
            format!("listen = \"198.18.100.1:7470\", {peers}, {}", key(&good)),
            "fleet: listen 198.18.100.1:7470 is on the VIP of service \"web\"".to_owned(),
        ),
        (
            format!(
                "listen = \"198.18.1.21:7470\", peers = [\"198.18.1.22:7470\", \"198.18.1.22:7470\"], {}",
                key(&good)
            ),
            "fleet: peers: 198.18.1.22:7470 is listed twice".to_owned(),
        ),
        (
            format!(
                "listen = \"198.18.1.21:7470\", peers = [\"198.18.1.21:7470\"], {}",
                key(&good)
            ),
            "is this instance's own `listen`".to_owned(),
        ),
        (
            format!(
                "listen = \"198.18.1.21:7470\", peers = [\"[fd00::22]:7470\"], {}",
                key(&good)
            ),
            "is not of the family of `listen`".to_owned(),
        ),
        (
            format!("listen = \"198.18.1.21:7470\", {peers}, {}", key(&open)),
            "can be read by others than its owner (mode 644): chmod 600 it".to_owned(),
        ),
        (
            format!("listen = \"198.18.1.21:7470\", {peers}, {}", key(&short)),
            "holds 9 bytes: a key needs at least 32".to_owned(),
        ),
        (
            format!(
                "listen = \"198.18.1.21:7470\", {peers}, key_file = \"/nonexistent/fleet.key\""
            ),
            "fleet: key_file /nonexistent/fleet.key: No such file".to_owned(),
        ),
        (
            format!(
                "listen = \"198.18.1.21:7470\", {peers}, {}, port = 1",
                key(&good)
            ),
            "unknown key `port`".to_owned(),
        ),
    ] {
        let errors = errors_of(&with_fleet(&fleet));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("2:") && e.contains(&problem)),
            "{fleet}: expected {problem:?} on line 2 in {errors:#?}"
        );
    }
    for path in [good, open, short] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn peers_copies_are_refreshed_at_most_every_third_of_the_shortest_idle_timeout() {
    let key = key_file("refresh.key", KEY, 0o600);
    let fleet = |extra: &str| {
        format!(
            "listen = \"198.18.1.21:7470\", peers = [\"198.18.1.22:7470\"], key_file = \"{}\"{extra}",
            key.display()
        )
    };
    let refresh = |text: &str| {
        Config::parse(text)
            .unwrap()
            .fleet
            .unwrap()
            .refresh
            .as_secs()
    };
    assert_eq!(refresh(&with_fleet(&fleet(""))), 10, "the default");
    assert_eq!(refresh(&with_fleet(&fleet(", refresh = \"3s\""))), 3);
    let with_udp_idle = |idle: &str, extra: &str| {
        with_fleet(&fleet(extra)).replacen(
            "interfaces = [\"eth0\"]\n",
            &format!("interfaces = [\"eth0\"]\nudp_idle_timeout = \"{idle}\"\n"),
            1,
        )
    };
    assert_eq!(
        refresh(&with_udp_idle("15s", "")),
        5,
        "a third of the UDP timeout"
    );
    for (text, line, problem) in [
        (
            with_fleet(&fleet(", refresh = \"1s\"")),
            2,
            "fleet: refresh: \"1s\" is out of range 2s..=1h",
        ),
        (
            with_fleet(&fleet(", refresh = \"30s\"")),
            2,
            "fleet: refresh \"30s\" is more than a third of udp_idle_timeout (1m): peers' copies of an idle flow could expire between two refreshes; use at most 20s",
        ),
        (
            with_udp_idle("5s", ""),
            3,
            "fleet: udp_idle_timeout 5s is too short for a fleet",
        ),
    ] {
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{line}:")) && e.contains(problem)),
            "expected {problem:?} on line {line} in {errors:#?}"
        );
    }
    let _ = std::fs::remove_file(key);
}
