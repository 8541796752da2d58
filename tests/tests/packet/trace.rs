//! `xlb trace` in the data plane: a trace config in, exactly the events of the matching
//! packets out (what was decided, for which client, with which backend and slot); nothing for
//! packets outside the filter, after the deadline, or between samples.

use lb_common::trace::{ANY_SERVICE, NO_BACKEND_ID, TraceConfig, TraceEvent, decision};
use xlb::dataplane::monotonic_ns;

use super::*;

impl PacketLab {
    fn service_id(&self, name: &str) -> u32 {
        self.balancer
            .services()
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .id
    }

    /// Starts a trace of `service` (or all) for clients in `prefix` (or all), for a minute.
    fn trace(&mut self, service: Option<&str>, prefix: Option<&str>, sample_every: u32) {
        let service_id = service.map_or(ANY_SERVICE, |s| self.service_id(s));
        let (client, prefix_len, family) = match prefix {
            Some(prefix) => {
                let net = xlb::config::parse_prefix(prefix).unwrap();
                let family = if net.addr().is_ipv4() { 4 } else { 6 };
                (addr_field(net.addr()), net.prefix_len(), family)
            }
            None => ([0; 4], 0, 0),
        };
        let config = TraceConfig {
            until_ns: monotonic_ns().unwrap() + 60_000_000_000,
            client,
            service_id,
            sample_every,
            family,
            prefix_len,
            ..TraceConfig::default()
        };
        self.dataplane
            .tracer
            .as_mut()
            .unwrap()
            .begin(config)
            .unwrap();
    }

    /// Ends the trace; its events and how many packets matched.
    fn trace_end(&mut self) -> (Vec<TraceEvent>, u64) {
        let tracer = self.dataplane.tracer.as_mut().unwrap();
        let counters = tracer.end().unwrap();
        let mut events = Vec::new();
        while let Some(event) = tracer.next_event() {
            events.push(event);
        }
        (events, counters.matched)
    }
}

/// The parts of an event a case states (time left out).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    decision: u8,
    client: SocketAddr,
    backend_id: u32,
    slot: u32,
    direction: u8,
    half_open: u8,
    tcp_flags: u8,
}

fn seen(event: &TraceEvent) -> Seen {
    let ip = xlb::wire::ip_from_field(&event.client, event.family);
    Seen {
        decision: event.decision,
        client: SocketAddr::new(ip, u16::from_be(event.client_port)),
        backend_id: event.backend_id,
        slot: event.slot,
        direction: event.direction,
        half_open: event.half_open,
        tcp_flags: event.tcp_flags,
    }
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_trace_records_the_decisions_for_matching_packets_only() {
    with_lab(|lab| {
        let web = lab.backend_ids("web");
        lab.trace(Some("web"), Some("198.18.0.0/24"), 1);
        let syn = Frame::tcp("198.18.0.2:40000", "198.18.100.1:80");
        lab.run(&syn.build(), lab.c0);
        // Outside the prefix, and another service: not traced.
        lab.run(
            &Frame::tcp("198.18.9.9:40000", "198.18.100.1:80").build(),
            lab.c0,
        );
        lab.run(
            &Frame::udp("198.18.0.2:40000", "198.18.100.1:53").build(),
            lab.c0,
        );
        let syn_ack = Frame::tcp("198.18.1.11:8080", "198.18.0.2:40000").with(|f| {
            f.eth_dst = S0_MAC;
            f.transport = Transport::Tcp {
                flags: tcp_flags::SYN | tcp_flags::ACK,
                seq: 5_000,
            }
        });
        lab.run(&syn_ack.build(), lab.s0);
        lab.run(&ack_of(&syn).build(), lab.c0);
        // A client ACK without a flow is placed by hash.
        let stray = ack_of(&Frame::tcp("198.18.0.3:40000", "198.18.100.1:80"));
        lab.run(&stray.build(), lab.c0);
        let (events, matched) = lab.trace_end();
        let client = endpoint("198.18.0.2:40000");
        let expected = [
            Seen {
                decision: decision::NEW_ROUND_ROBIN,
                client,
                backend_id: web[0],
                slot: 0,
                direction: direction_to_backend(),
                half_open: 1,
                tcp_flags: tcp_flags::SYN,
            },
            Seen {
                decision: decision::ESTABLISHED,
                client,
                backend_id: web[0],
                slot: 0,
                direction: 1,
                half_open: 1,
                tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
            },
            Seen {
                decision: decision::ESTABLISHED,
                client,
                backend_id: web[0],
                slot: 0,
                direction: direction_to_backend(),
                half_open: 0,
                tcp_flags: tcp_flags::ACK,
            },
        ];
        let seen_events: Vec<Seen> = events.iter().map(seen).collect();
        assert_eq!(seen_events[..3], expected, "{:?} hook", lab.hook);
        assert_eq!(seen_events.len(), 4, "{seen_events:?}");
        let hashed = &seen_events[3];
        assert_eq!(hashed.decision, decision::NEW_HASHED);
        assert_eq!(hashed.client, endpoint("198.18.0.3:40000"));
        assert!(web.contains(&hashed.backend_id));
        assert_eq!(matched, 4);
        assert!(events.iter().all(|e| e.service_id == lab.service_id("web")));

        // No trace: nothing is recorded, nothing counted (the counters stay as the trace left
        // them).
        lab.run(
            &Frame::tcp("198.18.0.2:40001", "198.18.100.1:80").build(),
            lab.c0,
        );
        assert_eq!(lab.trace_end(), (Vec::new(), 4));
    });
}

fn direction_to_backend() -> u8 {
    lb_common::direction::TO_BACKEND
}

#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn a_trace_samples_and_reports_drops_and_icmp() {
    with_lab(|lab| {
        // One in two matching packets, any service, any client.
        lab.trace(None, None, 2);
        for port in 0..4 {
            let syn = Frame::tcp(&format!("198.18.0.2:{}", 41_000 + port), "198.18.100.1:80");
            lab.run(&syn.build(), lab.c0);
        }
        let (events, matched) = lab.trace_end();
        assert_eq!((events.len(), matched), (2, 4));

        // A service whose table is empty drops new flows; the trace says so.
        let config = Config::parse(CONFIG).unwrap();
        let mut specs = ServiceSpec::all_up(&config);
        let local = specs.iter().position(|s| s.name == "local").unwrap();
        for backend in &mut specs[local].backends {
            backend.weight = 0;
        }
        lab.balancer.apply(&specs, &mut lab.dataplane.maps).unwrap();
        lab.trace(Some("local"), Some("198.18.0.2"), 1);
        lab.run(
            &Frame::tcp("198.18.0.2:42000", "198.18.100.2:80").build(),
            lab.c0,
        );
        let (events, _) = lab.trace_end();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].decision, decision::NO_BACKEND);
        assert_eq!(events[0].backend_id, NO_BACKEND_ID);

        // An ICMP error from the backend side about a flow, translated for its client.
        let syn = Frame::tcp("198.18.0.5:43000", "198.18.100.1:80");
        let (_, forwarded) = lab.run(&syn.build(), lab.c0);
        let backend = format!(
            "{}:8080",
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&forwarded[30..34]).unwrap())
        );
        lab.trace(Some("web"), Some("198.18.0.5/32"), 1);
        let quoted = Frame::tcp("198.18.0.5:43000", &backend);
        let error = Frame::icmp("198.18.1.1", "198.18.0.5", 3, quoted.ip_packet()).with(|f| {
            f.eth_dst = S0_MAC;
            f.transport = Transport::Icmp {
                kind: 3,
                code: 1,
                rest: [0; 4],
            }
        });
        lab.run(&error.build(), lab.s0);
        let (events, _) = lab.trace_end();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].decision, decision::ICMP_TRANSLATED);
        assert_eq!(
            seen(&events[0]).client,
            endpoint("198.18.0.5:43000"),
            "the flow's client"
        );
    });
}
