//! Tier 3: what the network's edge sends a load balancer, with real hosts in network
//! namespaces: ICMP "fragmentation needed" and "packet too big" from a router with a narrower
//! link, which must reach the backends for path-MTU discovery to work; and a flood of SYNs
//! from spoofed sources, which must leave established and new connections working. Needs
//! root: run with `cargo xtask test`.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{attach_peer_programs, event, stats};
use xlb::dataplane::handshake_budget;
use xlb_tests::{
    client::start_download,
    flood::legitimate_traffic_under_flood,
    scenario::{TCP_SERVICE_PORT, balancer_config, dual_stack_config, start_backends, start_xlb},
    topology::{Lab, NARROW_MTU, Offloads, VIP, VIP6, Wiring},
};

/// Backends send full-size segments to a client behind a link of MTU 1280; the router
/// refuses them with ICMP errors addressed to the VIP. xlb must hand those to the backend
/// that sent the segment, or the download stalls (a path-MTU black hole).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn path_mtu_discovery_works_through_xlb() {
    path_mtu_discovery(Offloads::Default, "auto");
}

/// [`path_mtu_discovery_works_through_xlb`] with native XDP, on links prepared for it.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn path_mtu_discovery_works_through_native_xdp() {
    path_mtu_discovery(Offloads::Prepared, "native");
}

fn path_mtu_discovery(offloads: Offloads, mode: &str) {
    let lab = Lab::with_offloads(Wiring::BehindRouter, 3, offloads).unwrap();
    let _peer_programs = (offloads == Offloads::Prepared).then(|| attach_peer_programs(&lab));
    let _backends = start_backends(&lab).unwrap();
    let xlb = start_xlb(&lab.balancer, &dual_stack_config(&lab, mode)).unwrap();

    for vip in [IpAddr::from(VIP), IpAddr::from(VIP6)] {
        let address = SocketAddr::new(vip, TCP_SERVICE_PORT);
        let received = lab
            .client
            .block_on(async move {
                let transfer = async {
                    let download = start_download(address, 2_000_000, 0).await?;
                    download.finish().await
                };
                tokio::time::timeout(Duration::from_secs(20), transfer).await
            })
            .unwrap();
        match received {
            Ok(Ok(bytes)) => assert_eq!(bytes, 2_000_000),
            Ok(Err(error)) => panic!("{vip}: {error:#}\n{}", xlb.output()),
            Err(_) => panic!(
                "{vip}: the download stalled behind the {NARROW_MTU}-byte link\n{}",
                xlb.output()
            ),
        }
    }
    let stats = stats(&xlb);
    assert!(
        event(&stats, "icmp_error_translated") >= 2,
        "the router's ICMP errors went through xlb: {:?}",
        stats.events
    );
}

/// Spoofed SYNs at the VIP, far more than the half-open table holds, while a download runs,
/// a keep-alive connection sits idle and new connections come one after another. The handshake
/// guard places the flood's SYNs (and the new connections') by hash, so a new connection
/// whose half-open entry the flood evicted still reaches its backend (on a loaded machine,
/// without the guard, one in a few runs got a reset).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_syn_flood_leaves_established_and_new_connections_working() {
    let lab = Lab::new(Wiring::TwoInterfaces, 3).unwrap();
    let _backends = start_backends(&lab).unwrap();
    // The backends' answers to the spoofed sources go back towards the client host, which
    // drops them.
    lab.balancer
        .ip("route add 198.19.0.0/16 via 198.18.0.2")
        .unwrap();
    // Half-open room for 16,384 flows: a few hundred milliseconds of this flood, enough for
    // a legitimate handshake; the flood overruns it many times over, and would evict the idle
    // connection if SYNs went into the flow table itself.
    let config = format!("flow_table_size = 65536\n{}", balancer_config(&lab, "auto"));
    let xlb = start_xlb(&lab.balancer, &config).unwrap();

    let outcome =
        legitimate_traffic_under_flood(&lab, 4_000_000, 2_000_000, Duration::from_secs(3)).unwrap();
    let stats = stats(&xlb);
    let syns_seen = stats.services[0].counters.new_flows;
    eprintln!(
        "flood: {} SYNs in {:?} ({:.0}/s), {syns_seen} new flows at xlb, {} SYNs placed by \
         hash, {} midstream packets placed by hash; {} connections during it",
        outcome.flood.sent,
        outcome.flood.elapsed,
        outcome.flood.rate(),
        event(&stats, "syn_hashed"),
        event(&stats, "midstream_hashed"),
        outcome.connects.len()
    );
    eprintln!("new connections took {:?}", outcome.connects);
    assert_eq!(stats.flow_table.handshake_budget, handshake_budget(65_536));
    assert!(
        outcome.flood.sent >= 20_000,
        "the flood was too small to mean anything: {} SYNs",
        outcome.flood.sent
    );
    assert!(
        syns_seen > 3 * stats.flow_table.half_open_capacity,
        "the flood overran the half-open table many times: {syns_seen} new flows, {} half-open \
         slots",
        stats.flow_table.half_open_capacity
    );
    assert!(
        event(&stats, "syn_hashed") > syns_seen / 2,
        "the handshake guard placed most of the flood by hash: {} of {syns_seen}",
        event(&stats, "syn_hashed")
    );
    outcome.assert_unaffected(4_000_000);
    // Half-open flows are not active flows: the flood does not make the backends look busy.
    assert!(
        stats.flow_table.active_ipv4 <= outcome.connects.len() as u64 + 10,
        "the flood's half-open flows counted as active: {} active flows",
        stats.flow_table.active_ipv4
    );
}

/// With `announce`, every VIP is an address of the balancer: a listener of the balancer's
/// own on the wildcard address (sshd, BIRD) must not answer on a VIP, unless the operator
/// lists its port in `host_ports`.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_hosts_own_listeners_do_not_answer_on_an_announced_vip() {
    let lab = Lab::new(Wiring::TwoInterfaces, 1).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let config = xlb_tests::scenario::balancer_config_with(&lab, "auto", "announce = true", "")
        .replacen(
            "[[service]]",
            "[announce]\nbird_socket = \"/nonexistent/bird.ctl\"\n\n[[service]]",
            1,
        );
    let xlb = start_xlb(&lab.balancer, &config).unwrap();
    let addresses = lab.balancer.ip("-4 addr show dev xlb-vip").unwrap();
    assert!(addresses.contains(&format!("{VIP}/32")), "{addresses}");
    let _listener = lab
        .balancer
        .enter(|| std::net::TcpListener::bind("0.0.0.0:2222"))
        .unwrap()
        .unwrap();
    let vip = SocketAddr::from((VIP, 2222));
    let connect = || {
        lab.client
            .enter(|| std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(1)))
            .unwrap()
    };
    assert!(
        connect().is_err(),
        "the balancer's own listener answered on the VIP"
    );
    assert!(event(&stats(&xlb), "vip_unserved") >= 1);
    // Listed in host_ports, the port is the host's.
    std::fs::write(
        &xlb.config_path,
        format!(
            "host_ports = [\"tcp/2222\"]\n{}",
            std::fs::read_to_string(&xlb.config_path).unwrap()
        ),
    )
    .unwrap();
    let (code, _, stderr) = xlb.cli(&["reload"]).unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(connect().is_ok(), "host_ports lets the host answer");
}

/// A balancer with a default route towards the router that sends it the VIP's traffic: a
/// datagram to a port of the VIP that no service takes must not go back to the router (and
/// round again until its TTL runs out). It crosses the router once.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn a_datagram_to_an_unserved_port_of_a_vip_crosses_the_router_once() {
    let lab = Lab::new(Wiring::BehindRouter, 1).unwrap();
    let _backends = start_backends(&lab).unwrap();
    lab.balancer.ip("route add default via 198.18.0.2").unwrap();
    let router = lab.router.as_ref().unwrap();
    let rules = format!(
        "table inet xlbcount {{\n chain forward {{\n  type filter hook forward priority 0; \
         policy accept;\n  ip daddr {VIP} udp dport 9999 counter\n }}\n}}\n"
    );
    let path = xlb_tests::process::temp_file("count.nft", &rules).unwrap();
    router
        .exec("nft", &["-f", &path.to_string_lossy()])
        .unwrap();
    let _xlb = start_xlb(&lab.balancer, &balancer_config(&lab, "auto")).unwrap();
    lab.client
        .enter(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.send_to(b"anyone?", (VIP, 9999)).unwrap();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let listed = router
        .exec("nft", &["list", "table", "inet", "xlbcount"])
        .unwrap();
    let packets: u64 = listed
        .split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {listed}"));
    assert_eq!(packets, 1, "{listed}");
}
