//! Tier 3: layer-3 direct server return. The backends are two routed hops from the balancer
//! (`Wiring::Tunneled`), on links left at their defaults (checksum offload and TSO on, GRO on:
//! `auto` chooses tc), each running `xlb decap` with the VIPs on its loopback; their answers
//! go to the client directly through both routers. Needs root: run with `cargo xtask test`.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xlb_tests::{
    client::{start_download, upload},
    daemon::Xlb,
    process::{Process, binary},
    scenario::{HTTP_PORT, STARTUP, UDP_PORT, backend_name, run_traffic_on, start_xlb_with, tally},
    topology::{Lab, Offloads, VIP, VIP6, Wiring, backend_addr, backend_addr6},
    tunnel::{
        BALANCER_PREFIXES, add_vips, start_backends_and_decaps, start_decap, start_servers,
        stop_decaps,
    },
};

mod common;

use common::attach_peer_programs;

/// The balancer's config: a TCP and a UDP service on each VIP over the three backends, through
/// `forwarding`, with the balancer's own address as the tunnels' source, at `xdp_mode`.
fn config(lab: &Lab, forwarding: &str, xdp_mode: &str) -> String {
    config_each(lab, xdp_mode, |_| (forwarding, String::new()))
}

/// [`config`] with each service's forwarding and further keys as `each` says of its name
/// ("web", "dns", "web6", "dns6").
fn config_each<'a>(lab: &Lab, xdp_mode: &str, each: impl Fn(&str) -> (&'a str, String)) -> String {
    let backends = |v6: bool, port: u16| {
        (0..lab.backends.len())
            .map(|i| {
                let address = if v6 {
                    SocketAddr::new(backend_addr6(i).into(), port)
                } else {
                    SocketAddr::new(backend_addr(i).into(), port)
                };
                format!("{{ address = \"{address}\" }}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"{xdp_mode}\"\n\n[tunnel]\nsource = \"198.18.5.2\"\nsource_ipv6 = \"fd00:5::2\"\n"
    );
    for (name, vip, protocol, port, v6) in [
        ("web", format!("{VIP}"), "tcp", HTTP_PORT, false),
        ("dns", format!("{VIP}"), "udp", UDP_PORT, false),
        ("web6", format!("[{VIP6}]"), "tcp", HTTP_PORT, true),
        ("dns6", format!("[{VIP6}]"), "udp", UDP_PORT, true),
    ] {
        let (forwarding, keys) = each(name);
        config.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{vip}:{port}\"\nprotocol = \"{protocol}\"\nforwarding = \"{forwarding}\"\nbackends = [ {} ]\n{keys}",
            backends(v6, port)
        ));
    }
    config
}

/// The data plane's event `name` in `xlb stats`.
fn event(xlb: &mut Xlb, name: &str) -> u64 {
    let (code, stdout, stderr) = xlb.cli(&["--json", "stats"]).unwrap();
    assert_eq!(code, 0, "xlb stats: {stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    answer["stats"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .filter_map(|pair| pair[1].as_u64())
        .sum()
}

/// 30 TCP connections and 30 UDP flows to each VIP, split 10/10/10 with every payload checked;
/// then, with every link at MTU 1500, 100 MB uploads and downloads (which do not pass the
/// balancer) through each VIP; then the uploads again with the client's segmentation offload
/// and GRO on the way off (its full-size packets draw the balancer's ICMP error, and TCP lowers
/// its segment size).
fn tunnel_end_to_end(forwarding: &str, offloads: Offloads, hook: &str) {
    let lab = Lab::with_offloads(Wiring::Tunneled, 3, offloads).unwrap();
    let prepared = offloads == Offloads::Prepared;
    let _peer_programs = prepared.then(|| attach_peer_programs(&lab));
    let (_servers, decaps) = start_backends_and_decaps(&lab).unwrap();
    let mode = if prepared { "native" } else { "auto" };
    let mut xlb = start_xlb_with(
        &lab.balancer,
        &config(&lab, forwarding, mode),
        &["--detach-on-exit"],
    )
    .unwrap();
    assert!(
        xlb.output().contains(&format!("hook={hook}")),
        "{}",
        xlb.output()
    );
    let expected: BTreeMap<String, usize> = (0..3).map(|i| (backend_name(i), 10)).collect();
    for vip in [VIP.into(), VIP6.into()] {
        let traffic = run_traffic_on(&lab, vip, (HTTP_PORT, UDP_PORT), 30, 30)
            .unwrap_or_else(|e| panic!("{forwarding} {vip}: {e:#}\nxlb:\n{}", xlb.output()));
        assert_eq!(
            tally(&traffic.tcp),
            expected,
            "{forwarding} {vip}: TCP connections"
        );
        assert_eq!(
            tally(&traffic.udp),
            expected,
            "{forwarding} {vip}: UDP flows"
        );
    }
    const BULK: usize = 100_000_000;
    for vip in [VIP.into(), VIP6.into()] {
        let vip = SocketAddr::new(vip, HTTP_PORT);
        lab.client
            .block_on(async {
                upload(vip, BULK).await.unwrap();
                let download = start_download(vip, BULK, 0).await.unwrap();
                assert_eq!(download.finish().await.unwrap(), BULK);
            })
            .unwrap_or_else(|e| panic!("{forwarding} {vip}: {e:#}"));
    }
    // At the links' defaults, most of the client's segments reach the balancer as GSO
    // packets, which the encapsulation cuts to fit; a segment sent alone is a packet of 1500
    // bytes, which draws the error (how many there are depends on timing: one run counted 0,
    // another 1). Without segmentation offload on the client, and GRO off on the way (the
    // router's and the balancer's links would merge the segments again), every full-size
    // segment is such a packet: the errors must come, and TCP lower its segment size.
    lab.client
        .exec("ethtool", &["-K", "eth0", "tso", "off", "gso", "off"])
        .unwrap();
    let router = lab.router.as_ref().unwrap();
    for (host, interface) in [(router, "eth0"), (router, "lb"), (&lab.balancer, "eth0")] {
        host.exec("ethtool", &["-K", interface, "gro", "off"])
            .unwrap();
    }
    for vip in [VIP.into(), VIP6.into()] {
        let vip = SocketAddr::new(vip, HTTP_PORT);
        lab.client
            .block_on(upload(vip, BULK))
            .unwrap()
            .unwrap_or_else(|e| panic!("{forwarding} {vip} without GSO: {e:#}"));
    }
    assert!(
        event(&mut xlb, "tunnel_too_big") > 0,
        "full-size packets should have drawn ICMP errors"
    );
    assert_eq!(event(&mut xlb, "tunnel_failed"), 0);
    let status = xlb.stop(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "xlb exited with {status}:\n{}",
        xlb.output()
    );
    for (i, counters) in stop_decaps(decaps).unwrap().iter().enumerate() {
        assert!(counters["decapsulated"] > 0, "b{}: {counters:?}", i + 1);
        assert_eq!(counters["malformed"], 0, "b{}: {counters:?}", i + 1);
        assert_eq!(counters["foreign"], 0, "b{}: {counters:?}", i + 1);
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn ipip_to_backends_two_routed_hops_away() {
    tunnel_end_to_end("ipip", Offloads::Default, "tc");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn ipip_at_native_xdp_on_links_prepared_for_it() {
    tunnel_end_to_end("ipip", Offloads::Prepared, "native");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn gue_to_backends_two_routed_hops_away() {
    tunnel_end_to_end("gue", Offloads::Default, "tc");
}

/// The states of every backend of every service, as `xlb status` shows them ("Up", "Down").
fn states(xlb: &mut Xlb) -> Vec<String> {
    let (code, stdout, stderr) = xlb.cli(&["--json", "status"]).unwrap();
    assert_eq!(code, 0, "xlb status: {stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    answer["status"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|service| service["backends"].as_array().unwrap().iter())
        .map(|backend| backend["state"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (at most 15 s) until every service's three backends are in the states `expected`
/// (one per backend), and returns the status's JSON.
fn wait_for_states(xlb: &mut Xlb, expected: [&str; 3]) -> String {
    let expected: Vec<String> = (0..4).flat_map(|_| expected.map(str::to_owned)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let states = states(xlb);
        if states == expected {
            return xlb.cli(&["--json", "status"]).unwrap().1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "states {states:?}, expected {expected:?}\n{}\n{}",
            xlb.cli(&["status"]).unwrap().1,
            xlb.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `health.via = "tunnel"`: the checks go to the VIP inside each service's tunnel (IPIP for
/// web and dns6, GUE for dns and web6; HTTP, UDP and TCP checks), so a backend that serves on
/// its own address but does not take the tunnel's packets (b2: no `xlb decap`) or does not
/// hold the VIP (b3) is Down, and takes no flows; each is Up once mended. Links at their
/// defaults.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn checks_inside_the_tunnel_find_backends_that_cannot_take_its_packets() {
    let lab = Lab::new(Wiring::Tunneled, 3).unwrap();
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    // b1 is whole; b2 has the VIPs and its servers but no decap; b3 has its decap and its
    // HTTP server but not the VIPs.
    let decap = |i: usize| {
        start_decap(
            &lab.backends[i],
            &[VIP.into(), VIP6.into()],
            &BALANCER_PREFIXES,
        )
        .unwrap()
    };
    add_vips(&lab, 0).unwrap();
    servers.extend(start_servers(&lab, 0).unwrap());
    decaps.push(decap(0));
    add_vips(&lab, 1).unwrap();
    servers.extend(start_servers(&lab, 1).unwrap());
    decaps.push(decap(2));
    let mut command = lab.backends[2].command(binary("xlb-backend").unwrap());
    command.args(["--name", "b3", "--http", &format!("[::]:{HTTP_PORT}")]);
    let mut b3_http = Process::spawn("b3", command).unwrap();
    b3_http.wait_for_output("ready", STARTUP).unwrap();
    let timing = "interval = \"300ms\", timeout = \"250ms\", rise = 1, fall = 1";
    let config = config_each(&lab, "auto", |name| match name {
        "web" => (
            "ipip",
            format!("health = {{ check = \"http\", via = \"tunnel\", {timing} }}\n"),
        ),
        "dns" => (
            "gue",
            format!(
                "health = {{ check = \"udp\", send = \"ping\", via = \"tunnel\", {timing} }}\n"
            ),
        ),
        "web6" => (
            "gue",
            format!("health = {{ check = \"tcp\", via = \"tunnel\", {timing} }}\n"),
        ),
        _ => (
            "ipip",
            format!(
                "health = {{ check = \"udp\", send = \"ping\", via = \"tunnel\", {timing} }}\n"
            ),
        ),
    });
    let mut xlb = start_xlb_with(&lab.balancer, &config, &["--detach-on-exit"]).unwrap();
    let status = wait_for_states(&mut xlb, ["Up", "Down", "Down"]);
    for backend in ["198.18.1.12", "198.18.1.13"] {
        let reason = format!("no answer inside the tunnel to {backend} within 250ms");
        assert!(status.contains(&reason), "{reason}: {status}");
    }
    // The checks' sockets are marked and routed into xlb's check device.
    let rules = lab.balancer.exec("ip", &["rule", "show"]).unwrap();
    assert!(rules.contains("fwmark 0x786c6201"), "{rules}");
    // Its TCP checks close with a RST: no TIME_WAIT for each of them on the balancer (they all
    // go from one address to one VIP and port).
    let waiting = lab
        .balancer
        .exec("ss", &["-Htan", "state", "time-wait"])
        .unwrap();
    assert!(waiting.trim().is_empty(), "{waiting}");
    // Only b1 takes flows.
    for vip in [VIP.into(), VIP6.into()] {
        let traffic = run_traffic_on(&lab, vip, (HTTP_PORT, UDP_PORT), 6, 6)
            .unwrap_or_else(|e| panic!("{vip}: {e:#}\nxlb:\n{}", xlb.output()));
        let only_b1: BTreeMap<String, usize> = [("b1".to_owned(), 6)].into();
        assert_eq!(tally(&traffic.tcp), only_b1, "{vip}: TCP connections");
        assert_eq!(tally(&traffic.udp), only_b1, "{vip}: UDP flows");
    }
    // Mended: b2 takes the tunnel's packets, b3 holds the VIPs and answers on them.
    decaps.push(decap(1));
    add_vips(&lab, 2).unwrap();
    drop(b3_http);
    servers.extend(start_servers(&lab, 2).unwrap());
    wait_for_states(&mut xlb, ["Up", "Up", "Up"]);
    let expected: BTreeMap<String, usize> = (0..3).map(|i| (backend_name(i), 10)).collect();
    for vip in [VIP.into(), VIP6.into()] {
        let traffic = run_traffic_on(&lab, vip, (HTTP_PORT, UDP_PORT), 30, 30)
            .unwrap_or_else(|e| panic!("{vip}: {e:#}\nxlb:\n{}", xlb.output()));
        assert_eq!(tally(&traffic.tcp), expected, "{vip}: TCP connections");
        assert_eq!(tally(&traffic.udp), expected, "{vip}: UDP flows");
    }
    let status = xlb.stop(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "xlb exited with {status}:\n{}",
        xlb.output()
    );
    // Its rules are gone with it (the device and its routes went with its descriptor).
    let rules = lab.balancer.exec("ip", &["rule", "show"]).unwrap();
    assert!(!rules.contains("fwmark 0x786c6201"), "{rules}");
    let links = lab.balancer.exec("ip", &["link", "show"]).unwrap();
    assert!(!links.contains("xlb-check"), "{links}");
    for (i, counters) in stop_decaps(decaps).unwrap().iter().enumerate() {
        assert_eq!(counters["malformed"], 0, "decap {i}: {counters:?}");
        assert_eq!(counters["foreign"], 0, "decap {i}: {counters:?}");
    }
}

/// `xlb check` on the balancer: a tunnel backend behind gateways is fine; one with no route,
/// or reached through an interface whose MTU leaves too little room for the outer header, is
/// an error naming the service and the backend.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn tunnel_backends_need_a_route_and_room_for_the_outer_header() {
    let lab = Lab::new(Wiring::Tunneled, 0).unwrap();
    let config = |backend: &str| {
        format!(
            "interfaces = [\"eth0\"]\n[tunnel]\nsource = \"198.18.5.2\"\n[[service]]\nname = \
             \"web\"\nlisten = \"{VIP}:8080\"\nprotocol = \"tcp\"\nforwarding = \"ipip\"\n\
             backends = [ {{ address = \"{backend}\" }} ]\n"
        )
    };
    let check = |config: &str| {
        let (code, _, stderr) = xlb_tests::daemon::check(&lab.balancer, config).unwrap();
        (code, stderr)
    };
    let (code, stderr) = check(&config("198.18.1.11:8080"));
    assert_eq!(code, 0, "two routed hops away: {stderr}");
    lab.balancer.ip("link set dev eth0 mtu 590").unwrap();
    let (code, stderr) = check(&config("198.18.1.11:8080"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "service \"web\": backend 198.18.1.11 is reached through eth0 whose MTU 590 leaves \
             570 bytes for a packet inside forwarding = \"ipip\" (20 bytes of outer headers); \
             at least 576 are needed: raise the MTU"
        ),
        "{stderr}"
    );
    lab.balancer.ip("link set dev eth0 mtu 1500").unwrap();
    lab.balancer.ip("route del default").unwrap();
    let (code, stderr) = check(&config("198.18.1.11:8080"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("service \"web\": no route to backend 198.18.1.11"),
        "{stderr}"
    );
}
