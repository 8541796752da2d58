//! The Maglev scheduler's table and DSR forwarding: defaults, the documented forms, errors.

use super::{errors_of, with_service_keys};
use crate::config::{CheckVia, Config, Forwarding, MaglevConfig, Scheduler, TunnelSettings};

#[test]
fn maglev_and_dsr_as_in_the_documentation() {
    let text = with_service_keys(
        "scheduler = \"maglev\"\nmaglev = { table_size = 131071, seed = 42 }\nforwarding = \"dsr\"",
    )
    .replace("198.18.1.11:8080", "198.18.1.11:80");
    let service = &Config::parse(&text).unwrap().services[0];
    assert_eq!(
        service.scheduler,
        Scheduler::Maglev(MaglevConfig {
            table_size: 131_071,
            seed: 42,
            client_hash: false,
        })
    );
    assert_eq!(service.forwarding, Forwarding::Dsr);
    assert_eq!(service.passive, None, "DSR never sees the answers");

    let defaults = Config::parse(&with_service_keys("scheduler = \"maglev\"")).unwrap();
    assert_eq!(
        defaults.services[0].scheduler,
        Scheduler::Maglev(MaglevConfig {
            table_size: 65_537,
            seed: 0,
            client_hash: false,
        })
    );
    assert_eq!(defaults.services[0].forwarding, Forwarding::Nat);
    // Source hashing: a Maglev table whose flows hash the client's address alone.
    let source = Config::parse(&with_service_keys(
        "scheduler = \"source-hash\"\nmaglev = { seed = 7 }",
    ))
    .unwrap();
    assert_eq!(
        source.services[0].scheduler,
        Scheduler::Maglev(MaglevConfig {
            table_size: 65_537,
            seed: 7,
            client_hash: true,
        })
    );
    assert_eq!(source.services[0].scheduler.name(), "source-hash");
    let least = Config::parse(&with_service_keys("scheduler = \"least-connections\"")).unwrap();
    assert_eq!(least.services[0].scheduler, Scheduler::LeastConnections);
    assert!(defaults.services[0].passive.is_some());
}

#[test]
fn bad_maglev_tables_are_reported() {
    let errors = errors_of(&with_service_keys(
        "scheduler = \"maglev\"\nmaglev = { table_size = 65536 }",
    ));
    assert_eq!(
        errors,
        [
            "8:25: service \"web\": maglev: table_size 65536 is not a prime (every backend's permutation must visit every slot); 65537 is"
        ]
    );
    // Two backends need 200 slots.
    let two = with_service_keys("scheduler = \"maglev\"\nmaglev = { table_size = 101 }").replace(
        "backends = [ {",
        "backends = [ { address = \"198.18.1.12:8080\" }, {",
    );
    assert_eq!(
        errors_of(&two),
        [
            "8:25: service \"web\": maglev: table_size 101 is too small for 2 backends: at least 100 slots per backend (200) keep their shares even"
        ]
    );
    assert_eq!(
        errors_of(&with_service_keys(
            "scheduler = \"least-connections\"\nmaglev = { seed = 1 }"
        )),
        [
            "8:10: service \"web\": maglev: the table of the Maglev scheduler, but the service's scheduler is not \"maglev\" or \"source-hash\""
        ]
    );
    assert_eq!(
        errors_of(&with_service_keys("maglev = { seed = 1 }")),
        [
            "7:10: service \"web\": maglev: the table of the Maglev scheduler, but the service's scheduler is not \"maglev\" or \"source-hash\""
        ]
    );
    assert_eq!(
        errors_of(&with_service_keys(
            "scheduler = \"maglev\"\nmaglev = { table_size = 200000, seed = -1 }"
        )),
        [
            "8:25: service \"web\": maglev: table_size 200000 is out of range 2..=131071",
            "8:40: service \"web\": maglev: seed -1 is out of range 0..=4294967295",
        ]
    );
}

#[test]
fn dsr_needs_the_vips_port_and_no_passive_health() {
    let errors = errors_of(&with_service_keys(
        "forwarding = \"dsr\"\npassive = { refused = 1 }",
    ));
    assert_eq!(
        errors,
        [
            "7:14: service \"web\": forwarding \"dsr\" leaves the packets' addresses and ports as they are, so backend 198.18.1.11:8080 must listen on the service's port 80",
            "8:11: service \"web\": passive health observes the backends' answers, which go straight to the clients with forwarding \"dsr\"; remove `passive`",
        ]
    );
    assert_eq!(
        errors_of(&with_service_keys("forwarding = \"tunnel\"")),
        [
            "7:14: service \"web\": unknown forwarding \"tunnel\", expected \"nat\", \"dsr\", \"ipip\" or \"gue\""
        ]
    );
}

#[test]
fn announcements_take_defaults_and_need_a_service_that_announces() {
    let config = Config::parse(&with_service_keys("announce = true")).unwrap();
    assert!(config.services[0].announce);
    let announce = config.announce.unwrap();
    assert_eq!(
        (announce.device.as_str(), announce.drain),
        ("xlb-vip", std::time::Duration::from_secs(5))
    );
    assert_eq!(
        announce.bird_socket,
        std::path::Path::new("/run/bird/bird.ctl")
    );
    assert_eq!(
        Config::parse(&with_service_keys("")).unwrap().announce,
        None
    );

    let section =
        "[announce]\ndevice = \"vip0\"\nbird_socket = \"/run/bird-a.ctl\"\ndrain = \"0s\"\n";
    let text = with_service_keys("announce = true").replacen(
        "[[service]]",
        &format!("{section}[[service]]"),
        1,
    );
    let announce = Config::parse(&text).unwrap().announce.unwrap();
    assert_eq!(announce.device, "vip0");
    assert!(announce.drain.is_zero());

    let nobody = with_service_keys("").replacen(
        "[[service]]",
        "[announce]\ndevice = \"a/b\"\n[[service]]",
        1,
    );
    assert_eq!(
        errors_of(&nobody),
        [
            "2:1: announce: no service sets `announce = true`, so there is nothing to announce",
            "3:10: announce: device \"a/b\" is not an interface name (1 to 15 characters, no '/', ':' or space)",
        ]
    );

    // The only announcing service has an error: that error alone, not a claim that no
    // service announces.
    let broken = with_service_keys(
        r#"announce = true
health = { interval = "0s" }"#,
    )
    .replacen("[[service]]", "[announce]\n[[service]]", 1);
    let errors = errors_of(&broken);
    assert!(
        !errors.iter().any(|e| e.contains("no service sets")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("interval")), "{errors:?}");
}

#[test]
fn tunnels_need_this_instances_source_and_a_gue_port_of_their_own() {
    let services = r#"
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
forwarding = "ipip"
backends = [ { address = "198.18.1.11:80" } ]
[[service]]
name = "dns"
listen = "[fd00::100]:53"
protocol = "udp"
forwarding = "gue"
backends = [ { address = "[fd00::11]:53" } ]
"#;
    let text = format!(
        "interfaces = [\"eth0\"]\n[tunnel]\nsource = \"198.18.0.2\"\nsource_ipv6 = \"fd00::2\"\ngue_port = 7000\n{services}"
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(
        config.tunnel,
        TunnelSettings {
            source: Some("198.18.0.2".parse().unwrap()),
            source_ipv6: Some("fd00::2".parse().unwrap()),
            gue_port: 7000,
        }
    );
    let forwardings: Vec<_> = config.services.iter().map(|s| s.forwarding).collect();
    assert_eq!(forwardings, [Forwarding::Ipip, Forwarding::Gue]);
    // Without [tunnel]: no source for either family, and GUE's default port.
    let config = Config::parse(&with_service_keys("")).unwrap();
    assert_eq!(config.tunnel, TunnelSettings::default());
    assert_eq!(config.tunnel.gue_port, 6080);
    assert_eq!(
        errors_of(&format!("interfaces = [\"eth0\"]\n{services}")),
        [
            "0:0: service \"web\": forwarding \"ipip\" needs `source` in [tunnel]: this instance's own address, the source of the outer header (like source = \"198.18.0.2\")",
            "0:0: service \"dns\": forwarding \"gue\" needs `source_ipv6` in [tunnel]: this instance's own address, the source of the outer header (like source_ipv6 = \"fd00::2\")",
        ]
    );
    let wrong = format!(
        "interfaces = [\"eth0\"]\n[tunnel]\nsource = \"fd00::2\"\nsource_ipv6 = \"::1\"\ngue_port = 0\n{services}"
    );
    assert_eq!(
        errors_of(&wrong),
        [
            "2:1: service \"web\": forwarding \"ipip\" needs `source` in [tunnel]: this instance's own address, the source of the outer header (like source = \"198.18.0.2\")",
            "2:1: service \"dns\": forwarding \"gue\" needs `source_ipv6` in [tunnel]: this instance's own address, the source of the outer header (like source_ipv6 = \"fd00::2\")",
            "3:10: tunnel: source: \"fd00::2\" is not an IPv4 address (like \"198.18.0.2\")",
            "4:15: tunnel: source_ipv6: ::1 is not a unicast address of this host (the outer header's source, like \"fd00::2\")",
            "5:12: tunnel: gue_port: 0 is out of range 1..=65535",
        ]
    );
    let collides = format!(
        "interfaces = [\"eth0\"]\n[tunnel]\nsource_ipv6 = \"fd00::2\"\ngue_port = 53\n{services}"
    )
    .replace("forwarding = \"ipip\"\n", "");
    assert_eq!(
        errors_of(&collides),
        [
            "2:1: service \"dns\": it listens on UDP port 53, which is [tunnel] gue_port, where backends take GUE packets; choose another gue_port"
        ]
    );
}

#[test]
fn health_checks_go_inside_the_tunnel_only_where_the_packets_do() {
    let service = |forwarding: &str, health: &str| {
        format!(
            "interfaces = [\"eth0\"]\n[tunnel]\nsource = \"198.18.0.2\"\n[[service]]\nname = \"web\"\nlisten = \"198.18.100.1:80\"\nprotocol = \"tcp\"\nforwarding = \"{forwarding}\"\nbackends = [ {{ address = \"198.18.1.11:80\" }} ]\nhealth = {{ {health} }}\n"
        )
    };
    for forwarding in ["ipip", "gue"] {
        let config =
            Config::parse(&service(forwarding, "check = \"http\", via = \"tunnel\"")).unwrap();
        assert_eq!(
            config.services[0].health.via,
            CheckVia::Tunnel,
            "{forwarding}"
        );
    }
    let config = Config::parse(&service("ipip", "check = \"tcp\"")).unwrap();
    assert_eq!(config.services[0].health.via, CheckVia::Direct);
    let config = Config::parse(&with_service_keys("")).unwrap();
    assert_eq!(config.services[0].health.via, CheckVia::Direct);
    assert_eq!(
        errors_of(&service("dsr", "check = \"tcp\", via = \"tunnel\"")),
        [
            "10:33: service \"web\": health: via = \"tunnel\" sends the checks inside the tunnel to the backends, which only forwarding \"ipip\" or \"gue\" has; this service's forwarding is \"dsr\""
        ]
    );
    assert_eq!(
        errors_of(&service("ipip", "check = \"none\", via = \"tunnel\"")),
        [
            "10:34: service \"web\": health: via = \"tunnel\" has no check to send (check = \"none\")"
        ]
    );
    let announced = service("ipip", "check = \"tcp\", via = \"tunnel\"")
        .replace("forwarding = ", "announce = true\nforwarding = ");
    assert_eq!(
        errors_of(&announced),
        [
            "8:12: service \"web\": announce = true cannot go with health via = \"tunnel\": announcing makes the VIP an address of this host, and the host's packets to its own addresses never leave it; check via = \"direct\""
        ]
    );
    assert_eq!(
        errors_of(&service("ipip", "check = \"tcp\", via = \"router\"")),
        [
            "10:33: service \"web\": health: via: unknown via \"router\", expected \"direct\" or \"tunnel\""
        ]
    );
}
