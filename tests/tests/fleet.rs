//! Tier 3: instances that share their flows (`[fleet]`) behind ECMP, with real parts: the
//! scale-out cluster (a router running BIRD with the contrib configs, BFD included, three
//! balancers each running xlb and BIRD, three backends and a fourth to be added, links at
//! their defaults). Needs root: run with `cargo xtask test`.
//!
//! 300 long-lived connections echo 1 KB every 200 ms for 5 s (the event 1 s in), every byte
//! checked, with 60 UDP sessions that must keep their backend, in each round of one cluster,
//! one event per round: an instance killed (SIGKILL; with round robin, after the sessions'
//! copies would have expired on the peers had they not been refreshed), then started
//! again (it joins with a snapshot of its peers' flows); a backend drained on every instance
//! and then an instance killed; that instance started again; a backend removed from every
//! config (it drains) and then an instance killed; an instance restarted as an operator does
//! (SIGTERM, then started); a backend added to every config, then an instance killed; an
//! instance's host hanging (its link cut); a new instance (no pins, no state) joining. The
//! router's ECMP re-hash moves flows between the
//! instances at every event: the moved ones must find their flow shared, and keep their
//! backend. Layer-3 DSR (IPIP, every backend running `xlb decap`) with Maglev, layer-2 DSR
//! with round robin (whose instances place a moved flow without a shared entry anywhere), and
//! NAT with Maglev, the backends' answers spread over the
//! instances as the clients' flows are (with a round of forged fleet datagrams).

use std::{sync::Mutex, time::Duration};

use std::net::SocketAddrV4;

use xlb_tests::{
    cluster::{CLIENT, Cluster, FLEET_PORT, Forwarding, PORT, balancer_addr},
    flood::{Flood, datagram_flood},
    scaleout::{LOAD, Load, MAGLEV, Outcome, ROUND_ROBIN, round},
    topology::{VIP, backend_addr},
};

/// Each round's load: the scale-out test's 300 connections, and 60 UDP sessions of a datagram
/// every 200 ms that must keep their backend; the event 1 s in (every connection opened
/// within 0.1 s), and 4 s of exchanges after it began, as in the scale-out test.
const FLEET_LOAD: Load = Load {
    udp_sessions: 60,
    event_at: Duration::from_secs(1),
    duration: Duration::from_secs(5),
    ..LOAD
};

/// [`FLEET_LOAD`] with the event 7 s in: past the time a UDP flow's copies on the peers
/// live unless refreshed (6 s), and 4 s after it.
const OUTLIVE_LOAD: Load = Load {
    event_at: Duration::from_secs(7),
    duration: Duration::from_secs(11),
    ..FLEET_LOAD
};

/// The tests of this file share two CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs every round on a fresh fleet with `scheduler`, DSR or NAT; each round's name and
/// outcome.
fn rounds(scheduler: &str, forwarding: Forwarding) -> Vec<(&'static str, Outcome)> {
    let dsr = forwarding != Forwarding::Nat;
    // A fourth balancer, to join at the end, retired (never announced) until then; not with
    // DSR and Maglev, whose joining instance needs no shared flow (it places a moved flow where
    // the others did), to keep the suite's time.
    let join = !dsr || scheduler != MAGLEV;
    let cluster = Cluster::start_fleet(3 + usize::from(join), 3, scheduler, forwarding).unwrap();
    if join {
        cluster.retire(3).unwrap();
        cluster
            .wait_for_next_hops(3, Duration::from_secs(10))
            .unwrap();
    }
    let scheduler = match forwarding {
        Forwarding::Dsr => scheduler.to_owned(),
        Forwarding::Nat => format!("NAT, {scheduler}"),
        Forwarding::Ipip => format!("IPIP, {scheduler}"),
    };
    let b3 = format!("{}:{PORT}", backend_addr(2));
    let hops = |n: usize| {
        cluster
            .wait_for_next_hops(n, Duration::from_secs(10))
            .map(drop)
    };
    let mut outcomes = Vec::new();
    let mut play_with = |name: &'static str, load: Load, event: &dyn Fn() -> anyhow::Result<()>| {
        let (outcome, ()) =
            round(&cluster, load, event).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        eprintln!(
            "{scheduler}, {name}: {} of {} completed, failed {:?}; UDP sessions: {} of {} kept \
             their backend, failed {:?}",
            outcome.completed,
            outcome.total(),
            outcome.failed,
            outcome.udp_completed,
            FLEET_LOAD.udp_sessions,
            outcome.udp_failed
        );
        outcomes.push((name, outcome));
    };
    // Round robin places a moved flow without its entry anywhere else: the first kill comes
    // after the UDP sessions' copies on the peers would have expired (6 s of silence) had
    // their instance not refreshed them.
    let kill = |index: usize| cluster.kill(index).and_then(|()| hops(2));
    if scheduler == ROUND_ROBIN {
        play_with(
            "SIGKILL, 7 s in (copies kept by refreshes)",
            OUTLIVE_LOAD,
            &|| kill(1),
        );
    } else {
        play_with("SIGKILL", FLEET_LOAD, &|| kill(1));
    }
    let mut play = |name: &'static str, event: &dyn Fn() -> anyhow::Result<()>| {
        play_with(name, FLEET_LOAD, event)
    };
    play("restart (joins with a snapshot)", &|| {
        cluster.restart(1)?;
        hops(3)
    });
    play("drain b3 everywhere, then SIGKILL", &|| {
        for service in ["web", "dgram"] {
            cluster.on_every_balancer(&["backend", "drain", service, &b3])?;
        }
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill(2)?;
        hops(2)
    });
    play("restart", &|| {
        cluster.restart(2)?;
        hops(3)
    });
    for service in ["web", "dgram"] {
        cluster
            .on_every_balancer(&["backend", "enable", service, &b3])
            .unwrap();
    }
    play("remove b3 everywhere, then SIGKILL", &|| {
        let entry = format!(", {{ address = \"{b3}\" }}");
        cluster.reload_every_balancer(|text| text.replace(&entry, ""))?;
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill(0)?;
        hops(2)
    });
    play("restart", &|| {
        cluster.restart(0)?;
        hops(3)
    });
    play("rolling restart (SIGTERM, then started again)", &|| {
        cluster.stop(2)?;
        hops(2)?;
        cluster.restart(2)?;
        hops(3)
    });
    if !dsr {
        play("forged fleet datagrams (a flood)", &|| {
            forge_fleet_datagrams(&cluster).map(drop)
        });
        check_forgeries_refused(&cluster);
    }
    play("add b4 everywhere, then SIGKILL", &|| {
        let b4 = format!(
            "backends = [ {{ address = \"{}:{PORT}\" }}, ",
            backend_addr(3)
        );
        cluster.reload_every_balancer(|text| {
            assert!(text.contains("backends = [ "), "{text}");
            text.replace("backends = [ ", &b4)
        })?;
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill(1)?;
        hops(2)
    });
    play("a host hangs (its link cut)", &|| {
        cluster.cut_link(0)?;
        hops(1)
    });
    if join {
        play(
            "a new instance joins (a snapshot of its peers' flows)",
            &|| {
                cluster.restart(3)?;
                hops(2)
            },
        );
    }
    if !dsr {
        // The backends' answers crossed instances: the router spread them over every
        // balancer, and those that came before their flow's entry were adopted.
        let answers = cluster.router.ip("route show table 100").unwrap();
        let adopted = cluster.event_total("flow_adopted").unwrap();
        eprintln!("{scheduler}: the backends' route: {answers}; flows adopted: {adopted}");
        assert!(adopted > 0, "no answer came through another instance");
    }
    // The restarted instance, and the new one, took their peers' flows before they announced
    // (every peer's, but for those dead, cut off or retired when they started).
    let mut took = vec![1];
    if join {
        took.push(3);
    }
    for index in took {
        let output = cluster.xlbs[index].lock().unwrap().output();
        let line = output
            .lines()
            .find(|line| {
                line.contains("fleet: took the flows of every peer")
                    || line.contains("fleet: some peers sent no snapshot")
            })
            .unwrap_or_else(|| panic!("{output}"));
        eprintln!("{scheduler}: lb{}: {line}", index + 1);
        assert!(!line.contains("installed=0 "), "{line}");
    }
    outcomes
}

/// Sends 30,000 datagrams of random bytes from the client host (within 3 s): to each
/// balancer's fleet port, from the client and from the other balancers' addresses (spoofed),
/// and to the VIP's port of that number.
fn forge_fleet_datagrams(cluster: &Cluster) -> anyhow::Result<Flood> {
    let balancers: Vec<SocketAddrV4> = (0..3)
        .map(|i| SocketAddrV4::new(balancer_addr(i), FLEET_PORT))
        .collect();
    let mut pairs = vec![(
        SocketAddrV4::new(CLIENT, 40_000),
        SocketAddrV4::new(VIP, FLEET_PORT),
    )];
    for to in &balancers {
        pairs.push((SocketAddrV4::new(CLIENT, 40_001), *to));
        pairs.extend(
            balancers
                .iter()
                .filter(|from| *from != to)
                .map(|from| (*from, *to)),
        );
    }
    let flood = cluster
        .client
        .enter(move || datagram_flood(&pairs, 30_000, Duration::from_secs(3), 0x66_6c65_6574))??;
    eprintln!(
        "forged fleet datagrams: {} sent in {:?}",
        flood.sent, flood.elapsed
    );
    Ok(flood)
}

/// Every balancer refused forged datagrams, from strangers and with a peer's address, and the
/// data plane dropped those to the VIP.
fn check_forgeries_refused(cluster: &Cluster) {
    for i in 0..3 {
        let refused = |result: &str| {
            cluster
                .metric(
                    i,
                    &format!("xlb_fleet_messages_total{{result=\"{result}\"}}"),
                )
                .unwrap()
        };
        let (stranger, forged) = (
            refused("refused_not_a_peer"),
            refused("refused_malformed") + refused("refused_bad_tag"),
        );
        eprintln!(
            "lb{}: refused {stranger} from strangers, {forged} forged",
            i + 1
        );
        assert!(stranger > 0.0 && forged > 0.0, "lb{}", i + 1);
    }
    assert!(cluster.event_total("vip_unserved").unwrap() > 0);
}

fn check(scheduler: &str, forwarding: Forwarding) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let outcomes = rounds(scheduler, forwarding);
    let lost: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| {
            o.completed != o.total()
                || o.total() != FLEET_LOAD.connections
                || o.udp_completed != FLEET_LOAD.udp_sessions
        })
        .map(|(name, o)| {
            format!(
                "{name}: {} of {} ({:?}); UDP {} of {} ({:?})",
                o.completed,
                o.total(),
                o.failed,
                o.udp_completed,
                FLEET_LOAD.udp_sessions,
                o.udp_failed
            )
        })
        .collect();
    assert!(lost.is_empty(), "{scheduler}: {lost:#?}");
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn maglev_instances_that_share_flows_keep_every_connection() {
    check(MAGLEV, Forwarding::Ipip);
}

/// NAT behind ECMP: the backends' answers come back through any balancer (the router spreads
/// them as it spreads the clients' flows), which translates them with the shared entry, or
/// adopts the flow when its answer comes before the entry.
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn nat_instances_that_share_flows_keep_every_connection() {
    check(MAGLEV, Forwarding::Nat);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn round_robin_instances_that_share_flows_keep_every_connection() {
    check(ROUND_ROBIN, Forwarding::Dsr);
}

/// The same cluster without `[fleet]`: when a drained backend's connections change instance,
/// Maglev alone sends them elsewhere (the scenario the fleet's rounds would miss if sharing
/// did nothing).
#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn without_shared_flows_a_drained_backends_moved_connections_are_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(3, 3, MAGLEV).unwrap();
    let b3 = format!("{}:{PORT}", backend_addr(2));
    let (outcome, ()) = round(&cluster, LOAD, || {
        cluster.on_every_balancer(&["backend", "drain", "web", &b3])?;
        std::thread::sleep(Duration::from_millis(300));
        cluster.kill(2)?;
        cluster
            .wait_for_next_hops(2, Duration::from_secs(10))
            .map(drop)
    })
    .unwrap();
    eprintln!(
        "without [fleet], drain b3 everywhere, then SIGKILL: {} of {} completed, failed {:?}",
        outcome.completed,
        outcome.total(),
        outcome.failed
    );
    assert_eq!(outcome.total(), LOAD.connections);
    assert!(outcome.completed < LOAD.connections, "{outcome:?}");
}
