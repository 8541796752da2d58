//! Running several instances: the Maglev scheduler (a new flow, and a TCP packet without SYN
//! that finds no flow, go to the backend of the slot their 5-tuple hashes to) and direct
//! server return (only the MAC changes, ICMP errors about the backend's replies included; no
//! reply entry; silence is not held against the backend).

use std::{net::SocketAddr, thread::sleep};

use lb_common::{consts::maglev_len, hash::client_hash};
use xlb::{config::MaglevConfig, control::maglev::lookup_table};

use super::*;

const SCALEOUT: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "mag"
listen = "198.18.100.4:80"
protocol = "tcp"
scheduler = "maglev"
maglev = { table_size = 1009, seed = 11 }
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "src"
listen = "198.18.100.7:80"
protocol = "tcp"
scheduler = "source-hash"
maglev = { table_size = 1009, seed = 11 }
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "dsr"
listen = "198.18.100.5:80"
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backends = [ { address = "198.18.1.11:80" }, { address = "198.18.1.12:80" }, { address = "198.18.1.13:80" } ]

[[service]]
name = "dsr-unresolved"
listen = "198.18.100.6:80"
protocol = "tcp"
forwarding = "dsr"
backends = [ { address = "198.18.1.99:80" } ]

[[service]]
name = "dsr6"
listen = "[fd00:100::5]:53"
protocol = "udp"
forwarding = "dsr"
backends = [ { address = "[fd00:1::12]:53" } ]
"#;

impl PacketLab {
    /// The backend the Maglev table of service `name` (of `config`) gives `key`, computed in
    /// userspace from the applied backends.
    fn maglev_backend(&self, name: &str, config: MaglevConfig, key: &FlowKey) -> SocketAddr {
        let service = self
            .balancer
            .services()
            .iter()
            .find(|s| s.name == name)
            .unwrap();
        let backends: Vec<(u32, SocketAddr, u32)> = service
            .backends
            .iter()
            .map(|b| (b.id, b.address, b.weight))
            .collect();
        let table = lookup_table(&backends, &config);
        let hash = if config.client_hash {
            client_hash(&key.src_addr, &key.dst_addr, key.family, config.seed)
        } else {
            flow_hash(key, config.seed)
        };
        let slot = hash % (table.len & maglev_len::SLOTS);
        let id = table.slots[slot as usize];
        service
            .backends
            .iter()
            .find(|b| b.id == id)
            .unwrap()
            .address
    }
}

/// The MAC of backend 198.18.1.N or fd00:1::N (see `packet_net`): 02:00:00:00:01:N, with
/// the decimal digits of an IPv4 N read as hex (198.18.1.11 has ..:11), the IPv6 N as it is.
fn mac_of(backend: SocketAddr) -> [u8; 6] {
    backend_mac(match backend.ip() {
        std::net::IpAddr::V4(ip) => {
            u8::from_str_radix(&ip.octets()[3].to_string(), 16).expect("a backend 1.N")
        }
        std::net::IpAddr::V6(ip) => ip.octets()[15],
    })
}

/// The frame `input` becomes with DSR to `backend`: the same packet, TTL decremented, MACs
/// from the FIB.
fn dsr_frame(input: &Frame, backend: SocketAddr) -> Frame {
    input.clone().with(|f| {
        f.ttl -= 1;
        f.eth_dst = mac_of(backend);
        f.eth_src = S0_MAC;
    })
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn maglev_places_by_the_slot_the_5_tuple_hashes_to_also_without_syn() {
    with_lab_config(SCALEOUT, |lab| {
        let config = MaglevConfig {
            table_size: 1009,
            seed: 11,
            client_hash: false,
        };
        let mut cases = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..24u16 {
            let client = format!("198.18.0.2:{}", 41_000 + i);
            let mut input = Frame::tcp(&client, "198.18.100.4:80");
            let what = if i % 2 == 0 {
                format!("SYN {i}")
            } else {
                // A packet of a connection another instance placed: no flow here.
                input = ack_of(&input);
                format!("ACK without a flow {i}")
            };
            let backend =
                lab.maglev_backend("mag", config, &flow_key(&client, "198.18.100.4:80", 6));
            seen.insert(backend);
            cases.push(Case::new(
                what,
                &input,
                Port::Clients,
                XDP_REDIRECT,
                &to_backend(&input, &backend.to_string(), mac_of(backend), S0_MAC),
            ));
        }
        lab.run_cases(&cases);
        assert_eq!(seen.len(), 3, "24 flows reach every backend");
        assert_eq!(lab.service_new_flows("mag"), 24);
        assert_eq!(lab.event(events::MIDSTREAM_HASHED), 12);
        // The round-robin cursor is not used by Maglev.
        assert_eq!(lab.event(events::SYN_HASHED), 0);
    });
}

/// Source hashing: every connection of a client goes to one backend (the slot its address
/// hashes to), whatever its port; clients spread over the backends.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn source_hashing_sends_every_connection_of_a_client_to_one_backend() {
    with_lab_config(SCALEOUT, |lab| {
        let config = MaglevConfig {
            table_size: 1009,
            seed: 11,
            client_hash: true,
        };
        let mut cases = Vec::new();
        let mut per_client = std::collections::BTreeMap::new();
        for client in 2..10u16 {
            for port in 0..3u16 {
                let from = format!("198.18.0.{client}:{}", 42_000 + port * 1_111);
                let input = Frame::tcp(&from, "198.18.100.7:80");
                let backend =
                    lab.maglev_backend("src", config, &flow_key(&from, "198.18.100.7:80", 6));
                per_client
                    .entry(client)
                    .or_insert_with(std::collections::BTreeSet::new)
                    .insert(backend);
                cases.push(Case::new(
                    format!("SYN from {from}"),
                    &input,
                    Port::Clients,
                    XDP_REDIRECT,
                    &to_backend(&input, &backend.to_string(), mac_of(backend), S0_MAC),
                ));
            }
        }
        lab.run_cases(&cases);
        assert!(
            per_client.values().all(|backends| backends.len() == 1),
            "{per_client:?}"
        );
        let backends: std::collections::BTreeSet<_> = per_client.values().flatten().collect();
        assert!(
            backends.len() > 1,
            "8 clients reach more than one backend: {per_client:?}"
        );
        assert_eq!(lab.service_new_flows("src"), 24);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn dsr_changes_only_the_mac_and_keeps_no_reply_entry() {
    with_lab_config(SCALEOUT, |lab| {
        let config = MaglevConfig {
            table_size: 65_537,
            seed: 0,
            client_hash: false,
        };
        let client = "198.18.0.2:42000";
        let syn = Frame::tcp(client, "198.18.100.5:80");
        let backend = lab.maglev_backend("dsr", config, &flow_key(client, "198.18.100.5:80", 6));
        let only_mac = |input: &Frame| dsr_frame(input, backend);
        let data = ack_of(&syn).with(|f| f.payload = vec![7; 300]);
        let fin = data.clone().with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::FIN | tcp_flags::ACK,
                seq: 1_301,
            };
            f.payload.clear();
        });
        lab.run_cases(&[
            Case::new("SYN", &syn, Port::Clients, XDP_REDIRECT, &only_mac(&syn)),
            Case::new("data", &data, Port::Clients, XDP_REDIRECT, &only_mac(&data)),
        ]);
        let flows = lab.dataplane.maps.flows.all().unwrap();
        assert_eq!(flows.len(), 1, "one entry: no reply direction");
        let (_, entry, half_open) = &flows[0];
        assert!(!half_open, "the client's ACK completed the handshake");
        assert_eq!(entry.flags & flow_flags::DSR, flow_flags::DSR);
        // If the backend's answer passes here after all (it should go straight to the
        // client), it is not ours: untouched.
        let answer = Frame::tcp("198.18.100.5:80", client).with(|f| {
            f.eth_dst = S0_MAC;
            f.eth_src = mac_of(backend);
        });
        lab.expect_untouched("the backend's answer", &answer.build(), lab.s0);
        // "Fragmentation needed" about a reply the backend sent from the VIP: the backend
        // gets it as it is (its path MTU discovery), only the MACs change.
        let reply_sent = Frame::tcp("198.18.100.5:80", client).with(|f| f.payload = vec![1; 200]);
        let error = icmp::icmp_error("198.18.0.254", "198.18.100.5", 3, 4, &reply_sent, None);
        lab.expect(
            "frag needed, to the DSR backend",
            &error,
            lab.c0,
            XDP_REDIRECT,
            &only_mac(&error),
        );
        lab.expect("FIN", &fin, lab.c0, XDP_REDIRECT, &only_mac(&fin));
        let flows = lab.dataplane.maps.flows.all().unwrap();
        assert_eq!(flows[0].1.flags & flow_flags::CLOSING, flow_flags::CLOSING);

        // A retransmitted SYN of an unanswered DSR handshake stays: xlb never sees answers.
        let other = "198.18.0.2:42001";
        let syn = Frame::tcp(other, "198.18.100.5:80");
        let backend = lab.maglev_backend("dsr", config, &flow_key(other, "198.18.100.5:80", 6));
        let only_mac = |input: &Frame| dsr_frame(input, backend);
        lab.expect("SYN", &syn, lab.c0, XDP_REDIRECT, &only_mac(&syn));
        sleep(Duration::from_millis(300));
        lab.expect(
            "retransmitted SYN",
            &syn,
            lab.c0,
            XDP_REDIRECT,
            &only_mac(&syn),
        );
        assert_eq!(lab.event(events::SYN_REPLACED), 0);
    });
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn dsr_over_ipv6_and_udp() {
    with_lab_config(SCALEOUT, |lab| {
        let datagram =
            Frame::udp("[fd00::2]:5000", "[fd00:100::5]:53").with(|f| f.payload = vec![1; 40]);
        let expected = dsr_frame(&datagram, endpoint("[fd00:1::12]:53"));
        lab.expect("datagram", &datagram, lab.c0, XDP_REDIRECT, &expected);
        lab.expect(
            "second datagram",
            &datagram,
            lab.c0,
            XDP_REDIRECT,
            &expected,
        );
        assert_eq!(lab.dataplane.maps.flows.all().unwrap().len(), 1);
        assert_eq!(lab.service_new_flows("dsr6"), 1);
    });
}
