//! Tier 2: the balancer's programs through BPF_PROG_TEST_RUN. A crafted frame goes in; the
//! verdict and the exact frame that comes out are checked against a frame built from scratch
//! (so checksums are verified by recomputation). Needs root: run with `cargo xtask test`.
//!
//! Every test runs twice, at the XDP hook and at the tc hook: the two programs share their
//! code, and must agree on every frame. A tc verdict is reported as its XDP equivalent (a
//! redirect back out of the interface the frame came in on is `XDP_TX`), so cases state one
//! expectation.
//!
//! Each run builds the namespace of `xlb_tests::packet_net` (fixed routes and neighbours).
//! Cases are written as in katran's fixtures where they can be (see [`Case`]): a description,
//! the frame in, the interface it arrives on, the verdict and the frame out. One module per
//! concern: `nat`, `ipv6`, `fragments`, `icmp`, `expiry`, `flood`, `locality`, `swap`, `trace`,
//! `passive`, `scaleout`, `share`, `tunnel`, `decap`.

mod decap;
mod expiry;
mod flood;
mod fragments;
mod icmp;
mod ipv6;
mod locality;
mod nat;
mod passive;
mod persistence;
mod reply;
mod reset;
mod scaleout;
mod share;
mod swap;
mod trace;
mod tunnel;
mod unserved;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_common::tables::table_index;
use lb_common::{
    BackendTable, FlowKey,
    consts::{events, flow_flags},
    hash::flow_hash,
};
use xlb::{
    config::{Config, FlowTimeouts},
    control::{
        Balancer, DataplaneMaps as _, DataplaneReads as _, ServiceSpec,
        table::smooth_weighted_sequence,
    },
    dataplane::{Dataplane, handshake_budget},
    sys::netif,
    wire::{addr_field, port_field},
};
use xlb_tests::{
    packet::{CLIENT_MAC, Frame, IP_MF, LB_MAC, Transport, hex_diff, tcp_flags, verify_checksums},
    packet_net::{
        self, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, XDP_REDIRECT,
        XDP_TX, verdict_name,
    },
};

use xlb_tests::packet_net::S0_MAC;

fn backend_mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, last]
}

const CONFIG: &str = r#"
interfaces = ["c0", "s0"]

[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]

[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:5353" }, { address = "198.18.1.12:5353" } ]

[[service]]
name = "local"
listen = "198.18.100.2:80"
protocol = "tcp"
backends = [ { address = "198.18.0.21:8080" } ]

[[service]]
name = "unresolved"
listen = "198.18.100.3:80"
protocol = "tcp"
backends = [ { address = "198.18.1.99:8080" } ]

[[service]]
name = "web6"
listen = "[fd00:100::1]:80"
protocol = "tcp"
backends = [ { address = "[fd00:1::11]:8080" }, { address = "[fd00:1::12]:8080" } ]

[[service]]
name = "dns6"
listen = "[fd00:100::1]:53"
protocol = "udp"
backends = [ { address = "[fd00:1::13]:5353" } ]
"#;

/// The hook a packet test runs the balancer at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

/// The program loaded with [`CONFIG`] applied, in a namespace built as the module says.
struct PacketLab {
    dataplane: Dataplane,
    balancer: Balancer,
    hook: Hook,
    c0: u32,
    s0: u32,
}

/// Builds the namespace (see `xlb_tests::packet_net`), then runs `test` inside it, once per
/// hook, each time with fresh maps: FIB lookups happen in the caller's namespace.
fn with_lab(test: impl Fn(&mut PacketLab) + Send + Sync) {
    with_lab_config(CONFIG, test);
}

/// [`with_lab`] with another config (which must name the interfaces c0 and s0).
fn with_lab_config(config: &str, test: impl Fn(&mut PacketLab) + Send + Sync) {
    for hook in [Hook::Xdp, Hook::Tc] {
        eprintln!("--- at the {hook:?} hook");
        with_lab_at(config, hook, &test);
    }
}

fn with_lab_at(config: &str, hook: Hook, test: &(impl Fn(&mut PacketLab) + Send + Sync)) {
    let ns = packet_net::build().expect("creating the namespace");
    ns.enter(|| {
        let config = Config::parse(config).expect("valid config");
        let mut dataplane = Dataplane::load(config.flow_table_size).expect("loading the program");
        let mut balancer = Balancer::new();
        balancer
            .apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)
            .expect("applying the config");
        let c0 = netif::index("c0").unwrap();
        let s0 = netif::index("s0").unwrap();
        dataplane.maps.add_egress_port(c0).unwrap();
        dataplane.maps.add_egress_port(s0).unwrap();
        dataplane.maps.set_host_ports(&config.host_ports).unwrap();
        dataplane.maps.tunnel.set(&config.tunnel).unwrap();
        let mut lab = PacketLab {
            dataplane,
            balancer,
            hook,
            c0,
            s0,
        };
        test(&mut lab);
    })
    .expect("entering the namespace");
}

impl PacketLab {
    /// Runs the program once on `frame` as if it arrived on `ifindex`; the verdict in XDP's
    /// terms (see the module documentation).
    fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        match self.hook {
            Hook::Xdp => {
                let result = packet_net::run(self.dataplane.program(), frame, ifindex, 1).unwrap();
                (result.verdict, result.frame)
            }
            Hook::Tc => {
                let result =
                    packet_net::run_tc(self.dataplane.tc_program(), frame, ifindex, 1).unwrap();
                (
                    self.xdp_verdict(result.verdict, ifindex, &result.frame),
                    result.frame,
                )
            }
        }
    }

    /// The shortest prefix of `frame` BPF_PROG_TEST_RUN takes at this hook: an Ethernet
    /// header at XDP; at tc (Linux 6.18) also the fixed IPv4 or IPv6 header, or the kernel
    /// refuses to build the skb (EINVAL). Shorter frames are tested at XDP only.
    fn shortest_frame(&self, frame: &[u8]) -> usize {
        match self.hook {
            Hook::Xdp => 14,
            Hook::Tc if frame[12..14] == [0x86, 0xdd] => 14 + 40,
            Hook::Tc => 14 + 20,
        }
    }

    /// The XDP verdict a tc verdict stands for: a redirect whose frame leaves with the source
    /// MAC of the interface it came in on went back out of it, which XDP calls `XDP_TX`.
    fn xdp_verdict(&self, tc_verdict: u32, ingress: u32, frame: &[u8]) -> u32 {
        let ingress_mac = if ingress == self.c0 { LB_MAC } else { S0_MAC };
        match tc_verdict {
            TC_ACT_UNSPEC => XDP_PASS,
            TC_ACT_SHOT => XDP_DROP,
            TC_ACT_REDIRECT if frame.get(6..12) == Some(&ingress_mac[..]) => XDP_TX,
            TC_ACT_REDIRECT => XDP_REDIRECT,
            other => 100 + other,
        }
    }

    /// Runs `input` and asserts the exact verdict and output frame.
    fn expect(&self, case: &str, input: &Frame, ifindex: u32, verdict: u32, output: &Frame) {
        self.expect_bytes(case, &input.build(), ifindex, verdict, &output.build());
    }

    fn expect_bytes(&self, case: &str, input: &[u8], ifindex: u32, verdict: u32, expected: &[u8]) {
        let (actual_verdict, actual) = self.run(input, ifindex);
        assert_eq!(
            verdict_name(actual_verdict),
            verdict_name(verdict),
            "{case} ({:?} hook): verdict",
            self.hook
        );
        assert!(
            actual == expected,
            "{case} ({:?} hook): output frame differs\n{}",
            self.hook,
            hex_diff(expected, &actual)
        );
    }

    /// Runs `input`, expects it passed to the kernel untouched.
    fn expect_untouched(&self, case: &str, input: &[u8], ifindex: u32) {
        self.expect_bytes(case, input, ifindex, XDP_PASS, input);
    }

    fn service_new_flows(&self, name: &str) -> u64 {
        let service = self
            .balancer
            .services()
            .iter()
            .find(|s| s.name == name)
            .unwrap();
        self.dataplane
            .maps
            .service_counters(service.id)
            .unwrap()
            .new_flows
    }

    fn event(&self, event: u32) -> u64 {
        self.dataplane.maps.events().unwrap()[event as usize]
    }
}

fn endpoint(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// The frame `input` becomes on its way to a backend: destination rewritten, TTL decremented,
/// MACs from the FIB.
fn to_backend(input: &Frame, backend: &str, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Frame {
    input.clone().with(|f| {
        f.dst = endpoint(backend);
        f.ttl -= 1;
        f.eth_dst = dst_mac;
        f.eth_src = src_mac;
    })
}

/// The frame a backend's `input` becomes on its way to the client: source rewritten to the
/// VIP, TTL decremented, MACs from the FIB.
fn to_client(input: &Frame, vip: &str) -> Frame {
    input.clone().with(|f| {
        f.src = endpoint(vip);
        f.ttl -= 1;
        f.eth_dst = CLIENT_MAC;
        f.eth_src = LB_MAC;
    })
}

/// The client's ACK that follows `syn`.
fn ack_of(syn: &Frame) -> Frame {
    syn.clone().with(|f| {
        f.transport = Transport::Tcp {
            flags: tcp_flags::ACK,
            seq: 1_001,
        }
    })
}

impl PacketLab {
    fn backend_ids(&self, service: &str) -> Vec<u32> {
        self.balancer
            .services()
            .iter()
            .find(|s| s.name == service)
            .unwrap()
            .backends
            .iter()
            .map(|b| b.id)
            .collect()
    }
}

fn flow_key(client: &str, vip: &str, protocol: u8) -> FlowKey {
    let (client, vip) = (endpoint(client), endpoint(vip));
    FlowKey {
        src_addr: addr_field(client.ip()),
        dst_addr: addr_field(vip.ip()),
        src_port: port_field(client.port()),
        dst_port: port_field(vip.port()),
        proto: protocol,
        family: if client.is_ipv4() { 4 } else { 6 },
        _pad: [0; 2],
    }
}

/// The interface a case's frame arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// `c0`, the clients' side.
    Clients,
    /// `s0`, the servers' side.
    Servers,
}

/// One packet case, as katran's fixtures write them: what it shows, the frame that goes in and
/// where it arrives, the verdict (in XDP's terms) and the exact frame that comes out.
struct Case {
    what: String,
    input: Vec<u8>,
    port: Port,
    verdict: u32,
    output: Vec<u8>,
}

impl Case {
    /// `input` arriving on `port` leaves as `output` with `verdict`.
    fn new(
        what: impl Into<String>,
        input: &Frame,
        port: Port,
        verdict: u32,
        output: &Frame,
    ) -> Self {
        Self {
            what: what.into(),
            input: input.build(),
            port,
            verdict,
            output: output.build(),
        }
    }

    /// `input` arriving on `port` is passed to the kernel untouched.
    fn untouched(what: impl Into<String>, input: Vec<u8>, port: Port) -> Self {
        Self {
            what: what.into(),
            output: input.clone(),
            input,
            port,
            verdict: XDP_PASS,
        }
    }
}

impl PacketLab {
    /// The index of a case's interface.
    fn ifindex(&self, port: Port) -> u32 {
        match port {
            Port::Clients => self.c0,
            Port::Servers => self.s0,
        }
    }

    /// Runs `cases` in order (each may depend on the flows the ones before it left).
    fn run_cases(&self, cases: &[Case]) {
        for case in cases {
            self.expect_bytes(
                &case.what,
                &case.input,
                self.ifindex(case.port),
                case.verdict,
                &case.output,
            );
        }
    }
}
