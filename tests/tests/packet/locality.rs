//! Locality: client prefixes choose the home pool; full pools spill.

use super::*;

const LOCALITY: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
default_pool = "jp"
client_prefixes = { "198.18.0.0/24" = "kr", "198.18.0.7" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
fallback = ["kr"]

[[service]]
name = "video6"
listen = "[fd00:100::1]:80"
protocol = "tcp"
client_prefixes = { "fd00::/64" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "[fd00:1::11]:8080" } ]

[[service.pool]]
name = "jp"
backends = [ { address = "[fd00:1::12]:8080" } ]
"#;

/// The backend a new TCP flow from `client` goes to (by its address in the output frame).
fn new_flow_backend(lab: &PacketLab, client: &str, vip: &str) -> String {
    let syn = Frame::tcp(client, vip);
    let (verdict, output) = lab.run(&syn.build(), lab.c0);
    assert_eq!(verdict_name(verdict), "XDP_REDIRECT", "{client}");
    if syn.is_ipv6() {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&output[38..54]).unwrap()).to_string()
    } else {
        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&output[30..34]).unwrap()).to_string()
    }
}

/// A client's longest matching prefix chooses its home pool (the default pool for the rest);
/// when userspace publishes a fallback's backends in the home pool's table, new flows go
/// there and are counted as spilled, while established flows stay.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn client_prefixes_choose_the_pool_and_full_pools_spill_to_their_fallback() {
    with_lab_config(LOCALITY, |lab| {
        let cases = [
            // (client, VIP, backend): kr is 198.18.1.11, jp .12 and .13 in turn.
            ("198.18.0.2:40000", "198.18.100.1:80", "198.18.1.11"),
            ("198.18.0.3:40000", "198.18.100.1:80", "198.18.1.11"),
            // 198.18.0.7/32 is longer than 198.18.0.0/24: jp.
            ("198.18.0.7:40000", "198.18.100.1:80", "198.18.1.12"),
            ("198.18.0.7:40001", "198.18.100.1:80", "198.18.1.13"),
            // No prefix matches: the default pool, jp.
            ("198.18.9.9:40000", "198.18.100.1:80", "198.18.1.12"),
            // IPv6: fd00::/64 is jp; the rest go to the first pool, kr.
            ("[fd00::2]:40000", "[fd00:100::1]:80", "fd00:1::12"),
            ("[fd00:5::2]:40000", "[fd00:100::1]:80", "fd00:1::11"),
        ];
        for (client, vip, backend) in cases {
            assert_eq!(new_flow_backend(lab, client, vip), backend, "from {client}");
        }

        // kr has no room: userspace publishes jp's backends in kr's table.
        let config = Config::parse(LOCALITY).unwrap();
        let mut specs = ServiceSpec::all_up(&config);
        specs[0].locality.serving = vec![1, 1];
        lab.balancer.apply(&specs, &mut lab.dataplane.maps).unwrap();
        let kr_table = table_index(lab.balancer.services()[0].id, 0);
        assert_eq!(lab.dataplane.maps.spilled(kr_table).unwrap(), 0);
        let spilled = new_flow_backend(lab, "198.18.0.4:40000", "198.18.100.1:80");
        assert!(
            spilled.starts_with("198.18.1.1") && spilled != "198.18.1.11",
            "{spilled}"
        );
        assert_eq!(lab.dataplane.maps.spilled(kr_table).unwrap(), 1);
        // The kr flow made before the spill stays on its backend.
        let established = ack_of(&Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"));
        let expected = to_backend(&established, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect(
            "established kr flow",
            &established,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );

        // Room again: home.
        specs[0].locality.serving = vec![0, 1];
        lab.balancer.apply(&specs, &mut lab.dataplane.maps).unwrap();
        assert_eq!(
            new_flow_backend(lab, "198.18.0.5:40000", "198.18.100.1:80"),
            "198.18.1.11"
        );
        assert_eq!(lab.dataplane.maps.spilled(kr_table).unwrap(), 1);
    });
}
