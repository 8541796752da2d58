//! The example configuration the package installs.

use super::*;

/// contrib/xlb.toml, the example the package installs, is valid and explains every key.
#[test]
fn the_example_configuration_is_valid_and_shows_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/xlb.toml");
    let config = Config::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(config.services.len(), 5);
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "interfaces",
        "xdp_mode",
        "assume_complete_checksums",
        "veth_peer_redirect",
        "flow_table_size",
        "flow_table_size_ipv6",
        "pin_path",
        "metrics",
        "tcp_idle_timeout",
        "tcp_closing_timeout",
        "udp_idle_timeout",
        "name",
        "listen",
        "protocol",
        "scheduler",
        "drain_timeout",
        "persistence",
        "peers",
        "key_file",
        "backends",
        "address",
        "weight",
        "check_port",
        "agent_port",
        "check",
        "path",
        "host",
        "expect",
        "send",
        "interval",
        "timeout",
        "rise",
        "fall",
        "slowstart",
        "overload_below",
        "max_flows",
        "refused",
        "unanswered",
        "window",
        "hold",
        "max_share",
        "rate",
        "burst",
        "ipv4_prefix",
        "ipv6_prefix",
        "client_prefixes",
        "client_prefix_file",
        "default_pool",
        "fallback",
        "maglev",
        "table_size",
        "seed",
        "forwarding",
        "announce",
        "device",
        "bird_socket",
        "drain",
        "source",
        "source_ipv6",
        "gue_port",
        "via",
    ] {
        assert!(
            text.contains(&format!("{key} =")),
            "the example lacks {key}"
        );
    }
    // Each key is explained by the comment above its first appearance.
    let lines: Vec<&str> = text.lines().collect();
    let mut explained = std::collections::HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if line.starts_with('#') || line.starts_with(' ') || !explained.insert(key) {
            continue;
        }
        let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
        assert!(
            before.is_some_and(|l| l.starts_with('#')),
            "no comment above {line:?}"
        );
    }
}
