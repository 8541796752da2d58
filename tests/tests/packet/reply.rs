//! One entry per flow: a backend's packets find their flow through the VIPs their backend
//! serves (a backend shared by several NAT services included), and next hops follow a
//! neighbour's change within a second, for new flows and existing ones alike.

use std::{process::Command, time::Duration};

use super::*;

/// Backend 198.18.1.11:8080 (and [fd00:1::11]:8080) serves two NAT services each.
pub(super) const SHARED: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "first"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" } ]

[[service]]
name = "second"
listen = "198.18.100.4:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" } ]

[[service]]
name = "first6"
listen = "[fd00:100::1]:80"
protocol = "tcp"
backends = [ { address = "[fd00:1::11]:8080" } ]

[[service]]
name = "second6"
listen = "[fd00:100::2]:80"
protocol = "tcp"
backends = [ { address = "[fd00:1::11]:8080" } ]
"#;

/// A backend's packet to `client`, from `backend`, with `flags`.
fn from_backend(backend: &str, client: &str, flags: u8) -> Frame {
    Frame::tcp(backend, client).with(|f| {
        f.transport = Transport::Tcp { flags, seq: 500 };
        f.tcp_ack = 1_001;
        f.eth_dst = S0_MAC;
        f.eth_src = backend_mac(0x11);
    })
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_backend_shared_by_two_services_answers_each_flow_from_its_own_vip() {
    with_lab_config(SHARED, |lab| {
        let cases = [
            ("198.18.0.2:40000", "198.18.100.1:80", "198.18.1.11:8080"),
            ("198.18.0.2:40001", "198.18.100.4:80", "198.18.1.11:8080"),
            ("[fd00::2]:40000", "[fd00:100::1]:80", "[fd00:1::11]:8080"),
            ("[fd00::2]:40001", "[fd00:100::2]:80", "[fd00:1::11]:8080"),
        ];
        for (client, vip, backend) in cases {
            let syn = Frame::tcp(client, vip);
            let to_it = to_backend(&syn, backend, backend_mac(0x11), S0_MAC);
            lab.expect(&format!("SYN to {vip}"), &syn, lab.c0, XDP_REDIRECT, &to_it);
        }
        for (client, vip, backend) in cases {
            let syn_ack = from_backend(backend, client, tcp_flags::SYN | tcp_flags::ACK);
            let expected = to_client(&syn_ack, vip);
            lab.expect(
                &format!("SYN-ACK from {vip}"),
                &syn_ack,
                lab.s0,
                XDP_REDIRECT,
                &expected,
            );
            let ack = ack_of(&Frame::tcp(client, vip));
            assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT, "{client}");
            let answer = from_backend(backend, client, tcp_flags::ACK);
            let expected = to_client(&answer, vip);
            lab.expect(
                &format!("answer from {vip}"),
                &answer,
                lab.s0,
                XDP_REDIRECT,
                &expected,
            );
            // One entry, under the client's 5-tuple.
            assert!(lab.dataplane.maps.flow(&flow_key(client, vip, 6)).is_some());
            assert!(
                lab.dataplane
                    .maps
                    .flow(&flow_key(backend, client, 6))
                    .is_none()
            );
        }
        // The backend's packet to a client port no flow has is not ours.
        let stray = from_backend("198.18.1.11:8080", "198.18.0.2:40002", tcp_flags::ACK);
        lab.expect_untouched("no flow", &stray.build(), lab.s0);
        // Nor is a packet from another port of the backend's address.
        let other = from_backend("198.18.1.11:8081", "198.18.0.2:40000", tcp_flags::ACK);
        lab.expect_untouched("another port", &other.build(), lab.s0);
    });
}

/// Runs `ip ARGS` in the lab's namespace (the test's thread is in it, and so is its child).
fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("running ip");
    assert!(status.success(), "ip {args}");
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_neighbour_change_reaches_new_and_existing_flows_within_a_second() {
    with_lab_config(SHARED, |lab| {
        let moved: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x99];
        let client_moved: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
        let syn = Frame::tcp("198.18.0.2:41000", "198.18.100.1:80");
        let to_old = to_backend(&syn, "198.18.1.11:8080", backend_mac(0x11), S0_MAC);
        lab.expect("SYN before", &syn, lab.c0, XDP_REDIRECT, &to_old);
        let ack = ack_of(&syn);
        assert_eq!(lab.run(&ack.build(), lab.c0).0, XDP_REDIRECT);

        // The backend moves to another MAC, and so does the client (its router, say).
        ip("neigh replace 198.18.1.11 lladdr 02:00:00:00:01:99 dev s0 nud permanent");
        ip("neigh replace 198.18.0.2 lladdr 02:00:00:00:00:99 dev c0 nud permanent");
        std::thread::sleep(Duration::from_millis(1_100));

        // A new flow: the backend's next hop, cached at most a second, is asked again.
        let new = Frame::tcp("198.18.0.2:41001", "198.18.100.1:80");
        let to_new = to_backend(&new, "198.18.1.11:8080", moved, S0_MAC);
        lab.expect("a new flow after", &new, lab.c0, XDP_REDIRECT, &to_new);
        // The existing flow, both ways: its entry's second is over, each direction asks the
        // FIB on its next packet.
        let request = ack.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::ACK | tcp_flags::PSH,
                seq: 1_001,
            }
        });
        let to_moved = to_backend(&request, "198.18.1.11:8080", moved, S0_MAC);
        lab.expect(
            "the flow's request",
            &request,
            lab.c0,
            XDP_REDIRECT,
            &to_moved,
        );
        let answer = from_backend("198.18.1.11:8080", "198.18.0.2:41000", tcp_flags::ACK);
        let expected = to_client(&answer, "198.18.100.1:80").with(|f| f.eth_dst = client_moved);
        lab.expect(
            "the flow's answer",
            &answer,
            lab.s0,
            XDP_REDIRECT,
            &expected,
        );

        ip("neigh replace 198.18.1.11 lladdr 02:00:00:00:01:11 dev s0 nud permanent");
        ip("neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev c0 nud permanent");
    });
}

/// `count` NAT services on 198.18.100.11.. port 80, each with the one backend 198.18.1.12:8080.
fn shared_by(count: u8) -> String {
    let mut config = String::from("interfaces = [\"c0\", \"s0\"]\n");
    for n in 0..count {
        config += &format!(
            "\n[[service]]\nname = \"s{n}\"\nlisten = \"198.18.100.{}:80\"\nprotocol = \"tcp\"\n\
             backends = [ {{ address = \"198.18.1.12:8080\" }} ]\n",
            11 + n
        );
    }
    config
}

/// Past four NAT services on one backend address and port, each new flow also records the VIP
/// of its replies (its entry marked `LOCATED`), and the flows made before the backend was
/// shared are still found by their VIPs; the record goes with its flow.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_backend_shared_by_five_services_answers_every_flow_from_its_vip() {
    with_lab_config(&shared_by(4), |lab| {
        let backend = "198.18.1.12:8080";
        let open = |lab: &PacketLab, client: &str, vip: &str| {
            let syn = Frame::tcp(client, vip);
            let to_it = to_backend(&syn, backend, backend_mac(0x12), S0_MAC);
            lab.expect(&format!("SYN to {vip}"), &syn, lab.c0, XDP_REDIRECT, &to_it);
            assert_eq!(lab.run(&ack_of(&syn).build(), lab.c0).0, XDP_REDIRECT);
            lab.dataplane.maps.flow(&flow_key(client, vip, 6)).unwrap()
        };
        let answered = |lab: &PacketLab, client: &str, vip: &str| {
            let answer = from_backend(backend, client, tcp_flags::ACK)
                .with(|f| f.eth_src = backend_mac(0x12));
            let expected = to_client(&answer, vip);
            lab.expect(
                &format!("answer from {vip}"),
                &answer,
                lab.s0,
                XDP_REDIRECT,
                &expected,
            );
        };
        let before = open(lab, "198.18.0.2:42000", "198.18.100.14:80");
        assert_eq!(
            before.flags & flow_flags::LOCATED,
            0,
            "four services: not shared"
        );

        // A fifth service: the backend is shared from now on.
        let config = Config::parse(&shared_by(5)).unwrap();
        lab.balancer
            .apply(&ServiceSpec::all_up(&config), &mut lab.dataplane.maps)
            .unwrap();
        let fifth = open(lab, "198.18.0.2:42001", "198.18.100.15:80");
        assert_ne!(fifth.flags & flow_flags::LOCATED, 0, "its VIP is recorded");
        let first = open(lab, "198.18.0.2:42002", "198.18.100.11:80");
        assert_ne!(first.flags & flow_flags::LOCATED, 0);
        for (client, vip) in [
            ("198.18.0.2:42000", "198.18.100.14:80"),
            ("198.18.0.2:42001", "198.18.100.15:80"),
            ("198.18.0.2:42002", "198.18.100.11:80"),
        ] {
            answered(lab, client, vip);
        }
        // Without its flow's entry, the record leads nowhere: not translated.
        lab.dataplane
            .maps
            .flows
            .remove(&flow_key("198.18.0.2:42001", "198.18.100.15:80", 6));
        let stray = from_backend(backend, "198.18.0.2:42001", tcp_flags::ACK)
            .with(|f| f.eth_src = backend_mac(0x12));
        lab.expect_untouched("a flow gone", &stray.build(), lab.s0);
    });
}

/// The program's map named `name` (the XDP and tc programs share their maps).
fn program_map(lab: &PacketLab, name: &str) -> aya::maps::MapData {
    let info = lab.dataplane.program().info().expect("the program's info");
    let ids = info.map_ids().expect("its maps").expect("map ids");
    ids.into_iter()
        .find(|id| {
            aya::maps::MapInfo::from_id(*id).is_ok_and(|map| map.name_as_str() == Some(name))
        })
        .map(|id| aya::maps::MapData::from_id(id).expect("opening the map"))
        .unwrap_or_else(|| panic!("no map {name}"))
}

/// A NAT backend that serves one VIP has that VIP as a hint in its slot (`VIP_HINTS4`), which
/// its packets try before `BACKEND_VIPS4`: with the backend's
/// `BACKEND_VIPS4` element gone, the hint alone finds the flow; with a wrong hint, the packet
/// still finds its flow through `BACKEND_VIPS4`.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_ports_one_vip_finds_the_flow_and_a_wrong_one_falls_back_on_the_backends_vips() {
    use aya::maps::{Array, HashMap, Map};
    use lb_common::{BackendVipKey, BackendVips, VipPort, reply::hint_slot};

    with_lab(|lab| {
        let (client, vip, backend) = ("198.18.0.2:44000", "198.18.100.1:80", "198.18.1.11:8080");
        let syn = Frame::tcp(client, vip);
        let to_it = to_backend(&syn, backend, backend_mac(0x11), S0_MAC);
        lab.expect("SYN", &syn, lab.c0, XDP_REDIRECT, &to_it);
        let answer = from_backend(backend, client, tcp_flags::SYN | tcp_flags::ACK);
        let answered = to_client(&answer, vip);

        let slot = hint_slot(
            &[u32::from_ne_bytes([198, 18, 1, 11]), 0, 0, 0],
            8080u16.to_be(),
        );
        let mut hints: Array<_, VipPort<u32>> =
            Array::try_from(Map::Array(program_map(lab, "VIP_HINTS4"))).unwrap();
        let hint = hints.get(&slot, 0).unwrap();
        assert_eq!(
            (hint.addr, hint.port),
            (u32::from_ne_bytes([198, 18, 100, 1]), 80u16.to_be()),
            "the hint of 198.18.1.11:8080"
        );
        let mut vips: HashMap<_, BackendVipKey<u32>, BackendVips<u32>> =
            HashMap::try_from(Map::HashMap(program_map(lab, "BACKEND_VIPS4"))).unwrap();
        let key = BackendVipKey {
            addr: u32::from_ne_bytes([198, 18, 1, 11]),
            port: 8080u16.to_be(),
            proto: 6,
            _pad: 0,
        };
        let listed = vips.get(&key, 0).unwrap();

        vips.remove(&key).unwrap();
        lab.expect(
            "by the hint alone",
            &answer,
            lab.s0,
            XDP_REDIRECT,
            &answered,
        );
        vips.insert(key, listed, 0).unwrap();
        let wrong = VipPort {
            addr: u32::from_ne_bytes([198, 18, 100, 9]),
            ..hint
        };
        hints.set(slot, wrong, 0).unwrap();
        lab.expect(
            "past a wrong hint",
            &answer,
            lab.s0,
            XDP_REDIRECT,
            &answered,
        );
        // Without either, the packet is no backend's answer to a flow: passed untouched.
        vips.remove(&key).unwrap();
        assert_eq!(lab.run(&answer.build(), lab.s0).0, XDP_PASS);
    });
}
