//! Tier 3: UDP datagrams larger than the links' MTU, with real hosts in network namespaces.
//! Links keep the MTU of 1500 (and, unless the test prepares them for XDP, their default
//! offloads), so the client's stack sends each 4 KB datagram in three IP fragments, and the
//! backend's 4 KB answer comes back in three as well: xlb must send every fragment of a
//! datagram where its first fragment, the only one with ports, went, and translate the
//! answer's fragments back to the VIP, for the hosts to put the datagrams back together.
//! Needs root: run with `cargo xtask test`.

mod common;

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::Context as _;
use common::{event, stats};
use xlb_tests::{
    client::{payload, udp_echo, udp_socket},
    netns::Netns,
    scenario::{
        UDP_SERVICE_PORT, backend_name, dual_stack_config, start_backends, start_xlb, tally,
    },
    topology::{Lab, Offloads, VIP, VIP6, Wiring},
};

/// Bytes of each datagram's payload: with the UDP header, three fragments at MTU 1500.
const DATAGRAM: usize = 4_096;
/// Flows (client ports) per address family.
const FLOWS: usize = 30;
/// Datagrams each flow sends (and has answered).
const DATAGRAMS: usize = 2;

/// A counter of `/proc/net/snmp` (`Ip`, `Udp`, ...) or, for names starting with `Ip6` or
/// `Udp6`, of `/proc/net/snmp6`, on `host`.
fn snmp(host: &Netns, name: &str) -> u64 {
    if name.starts_with("Ip6") || name.starts_with("Udp6") {
        let table = host.exec("cat", &["/proc/net/snmp6"]).unwrap();
        return table
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map_or(0, |value| value.trim().parse().unwrap());
    }
    let (protocol, counter) = name.split_once(':').unwrap();
    let table = host.exec("cat", &["/proc/net/snmp"]).unwrap();
    let mut lines = table
        .lines()
        .filter(|line| line.starts_with(&format!("{protocol}:")));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == counter)
        .unwrap_or_else(|| panic!("no counter {name}"));
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// The datagrams `host` put back together from fragments, IPv4 and IPv6.
fn reassembled(host: &Netns) -> (u64, u64) {
    (snmp(host, "Ip:ReasmOKs"), snmp(host, "Ip6ReasmOKs"))
}

/// The UDP checksum errors `host` counted, IPv4 and IPv6.
fn checksum_errors(host: &Netns) -> u64 {
    snmp(host, "Udp:InCsumErrors") + snmp(host, "Udp6InCsumErrors")
}

/// From the client: [`FLOWS`] UDP flows to the service on `vip` (each from its own port, all
/// sockets open until the end), each sending [`DATAGRAMS`] datagrams of [`DATAGRAM`] bytes
/// and checking every answer byte for byte. Returns the backend of each flow.
fn large_datagrams(lab: &Lab, vip: SocketAddr) -> anyhow::Result<Vec<String>> {
    lab.client.block_on(async move {
        let mut sockets = Vec::with_capacity(FLOWS);
        for _ in 0..FLOWS {
            sockets.push(udp_socket(vip).await?);
        }
        let mut backends = Vec::with_capacity(FLOWS);
        for (i, socket) in sockets.iter().enumerate() {
            let body = payload(7_000 + i as u64, DATAGRAM);
            let backend = udp_echo(socket, &body, DATAGRAMS)
                .await
                .with_context(|| format!("flow {i} to {vip}"))?;
            backends.push(backend);
        }
        Ok(backends)
    })?
}

/// 4 KB datagrams from 30 flows to the IPv4 and the IPv6 VIP arrive whole at the backends,
/// 10 flows each, and their 4 KB answers arrive whole at the client: every fragment went
/// through xlb (each datagram's two later fragments followed its first), none was dropped,
/// and every host put the datagrams back together with valid checksums.
fn fragmented_datagrams_reach_the_backends(offloads: Offloads, mode: &str, hook: &str) {
    let lab = Lab::with_offloads(Wiring::TwoInterfaces, 3, offloads).unwrap();
    let _backends = start_backends(&lab).unwrap();
    let xlb = start_xlb(&lab.balancer, &dual_stack_config(&lab, mode)).unwrap();
    assert!(
        xlb.output().contains(&format!("hook={hook}")),
        "xdp_mode = {mode:?} on {offloads:?} links should run at the {hook} hook:\n{}",
        xlb.output()
    );
    let expected: BTreeMap<String, usize> = (0..3).map(|i| (backend_name(i), 10)).collect();
    for vip in [
        SocketAddr::new(VIP.into(), UDP_SERVICE_PORT),
        SocketAddr::new(VIP6.into(), UDP_SERVICE_PORT),
    ] {
        let backends = large_datagrams(&lab, vip)
            .unwrap_or_else(|e| panic!("{vip}: {e:#}\nxlb:\n{}", xlb.output()));
        assert_eq!(tally(&backends), expected, "{vip}: UDP flows per backend");
    }

    let stats = stats(&xlb);
    // Each datagram, either way, is three fragments: two follow the first.
    let later = (2 * FLOWS * DATAGRAMS * 2 * 2) as u64;
    assert_eq!(
        event(&stats, "fragment_followed"),
        later,
        "later fragments that followed their datagram's flow: {:?}",
        stats.events
    );
    assert_eq!(event(&stats, "fragment_unmatched"), 0, "{:?}", stats.events);
    let datagrams = (FLOWS * DATAGRAMS) as u64;
    let at_backends = lab
        .backends
        .iter()
        .map(reassembled)
        .fold((0, 0), |sum, one| (sum.0 + one.0, sum.1 + one.1));
    assert_eq!(
        at_backends,
        (datagrams, datagrams),
        "reassembled at the backends"
    );
    assert_eq!(
        reassembled(&lab.client),
        (datagrams, datagrams),
        "reassembled at the client"
    );
    for host in lab.backends.iter().chain([&lab.client]) {
        assert_eq!(
            checksum_errors(host),
            0,
            "UDP checksum errors at {}",
            host.name()
        );
    }
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn fragmented_datagrams_at_the_hook_auto_chooses() {
    fragmented_datagrams_reach_the_backends(Offloads::Default, "auto", "tc");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn fragmented_datagrams_at_generic_xdp() {
    fragmented_datagrams_reach_the_backends(Offloads::PreparedNoGro, "generic", "generic");
}
