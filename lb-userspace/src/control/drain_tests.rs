//! Backends removed from the config: they leave the tables at once and keep their ids and
//! flows until released, come back with both, and go at once with their service or when ids
//! run out.

use lb_common::consts::limits::MAX_BACKENDS;

use super::{
    fake::FakeMaps,
    tests::{WEB, config},
    *,
};

/// `WEB` without its second backend (id 1), which drains by default.
fn web_without_b2() -> String {
    WEB.replace(", { address = \"198.18.1.12:8080\", weight = 2 }", "")
}

/// `WEB` applied, then without b2, which is leaving.
fn b2_leaving() -> (FakeMaps, Balancer) {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&config(WEB), &mut maps).unwrap();
    balancer
        .apply(&config(&web_without_b2()), &mut maps)
        .unwrap();
    (maps, balancer)
}

fn leaving(balancer: &Balancer) -> Vec<(usize, u32)> {
    balancer.leaving().map(|(s, b)| (s, b.id)).collect()
}

#[test]
fn a_removed_backend_leaves_the_table_and_keeps_its_flows_until_released() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&config(WEB), &mut maps).unwrap();
    maps.flows_by_backend.insert(1, 5);
    maps.log.clear();
    let summary = balancer
        .apply(&config(&web_without_b2()), &mut maps)
        .unwrap();
    assert_eq!(
        maps.log,
        ["policy 0", "table 0 [0]"],
        "no purge, no release"
    );
    assert_eq!(
        (
            summary.backends_removed,
            summary.backends_draining,
            summary.flows_purged
        ),
        (1, 1, 0)
    );
    assert_eq!(leaving(&balancer), [(0, 1)]);
    assert_eq!(maps.backends[&1].port, 8080u16.to_be(), "its entry stays");
    // The same config again changes nothing, and it is still leaving.
    maps.log.clear();
    balancer
        .apply(&config(&web_without_b2()), &mut maps)
        .unwrap();
    assert!(maps.log.is_empty(), "{:?}", maps.log);
    assert_eq!(leaving(&balancer), [(0, 1)]);

    // Released: flows purged, entry cleared, id free; a second release does nothing.
    assert_eq!(balancer.release(&[1, 7], &mut maps).unwrap(), 5);
    assert_eq!(maps.log, ["purge [1]", "release 1"]);
    assert!(leaving(&balancer).is_empty());
    maps.log.clear();
    assert_eq!(balancer.release(&[1], &mut maps).unwrap(), 0);
    assert!(maps.log.is_empty());
}

#[test]
fn a_backend_back_while_it_drains_takes_its_id_and_flows_back() {
    let (mut maps, mut balancer) = b2_leaving();
    maps.log.clear();
    let summary = balancer.apply(&config(WEB), &mut maps).unwrap();
    assert_eq!(maps.log, ["policy 0", "table 0 [1, 0, 1]"]);
    assert_eq!(summary.backends_added, 0);
    assert!(leaving(&balancer).is_empty());
    let ids: Vec<u32> = balancer.services()[0]
        .backends
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [0, 1]);
}

#[test]
fn a_release_that_fails_is_finished_by_the_next() {
    let (mut maps, mut balancer) = b2_leaving();
    maps.fail_in = Some(0);
    assert!(balancer.release(&[1], &mut maps).is_err());
    assert_eq!(leaving(&balancer), [(0, 1)], "still leaving");
    maps.log.clear();
    balancer.release(&[1], &mut maps).unwrap();
    assert_eq!(maps.log, ["purge [1]", "release 1"]);
}

#[test]
fn a_service_that_leaves_takes_its_leaving_backends_with_it() {
    let (mut maps, mut balancer) = b2_leaving();
    maps.log.clear();
    let summary = balancer.apply(&[], &mut maps).unwrap();
    assert_eq!(
        maps.log,
        [
            "service- 0",
            "table 0 []",
            "purge [0, 1]",
            "release 0",
            "release 1",
            "vip-"
        ]
    );
    assert_eq!(summary.backends_removed, 1, "the one still in the config");
    assert!(leaving(&balancer).is_empty());
}

#[test]
fn a_drain_timeout_of_zero_releases_those_leaving_too() {
    let (mut maps, mut balancer) = b2_leaving();
    maps.log.clear();
    let at_once = web_without_b2() + "drain_timeout = \"0s\"\n";
    balancer.apply(&config(&at_once), &mut maps).unwrap();
    assert_eq!(maps.log, ["purge [1]", "release 1"]);
    assert!(leaving(&balancer).is_empty());
}

#[test]
fn when_ids_run_out_backends_that_leave_are_released_at_once() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    // Every backend id in use: 64 services of 1,024 backends (built directly, not a config).
    let one = config(&web_without_b2()).remove(0);
    let per_service = MAX_BACKENDS / 64;
    let full: Vec<ServiceSpec> = (0..64u32)
        .map(|s| {
            let mut spec = one.clone();
            spec.name = format!("s{s}");
            spec.listen.set_port(1000 + s as u16);
            spec.backends = (0..per_service)
                .map(|b| BackendSpec {
                    address: std::net::SocketAddr::from((
                        [198, 18, s as u8, (b >> 8) as u8],
                        8080 + (b & 255) as u16,
                    )),
                    ..one.backends[0]
                })
                .collect();
            spec
        })
        .collect();
    balancer.apply(&full, &mut maps).unwrap();
    // One leaves (it would drain) while another arrives: the new one needs its id now.
    let mut next = full.clone();
    next[0].backends[0].address.set_port(9090);
    let summary = balancer.apply(&next, &mut maps).unwrap();
    assert_eq!((summary.backends_added, summary.backends_removed), (1, 1));
    assert_eq!(summary.backends_draining, 0);
    assert!(leaving(&balancer).is_empty());
    assert!(
        maps.log.contains(&"release 0".to_owned()),
        "{:?}",
        &maps.log[maps.log.len() - 3..]
    );
}

#[test]
fn after_a_restart_a_backend_no_longer_in_the_config_drains_too() {
    let mut maps = FakeMaps::default();
    Balancer::new().apply(&config(WEB), &mut maps).unwrap();
    maps.flows_by_backend.insert(1, 3);
    let mut restarted = Balancer::new();
    restarted.adopt(&mut maps).unwrap();
    maps.log.clear();
    let summary = restarted
        .apply(&config(&web_without_b2()), &mut maps)
        .unwrap();
    assert_eq!(summary.backends_draining, 1);
    assert!(
        !maps.log.iter().any(|l| l.starts_with("purge")),
        "{:?}",
        maps.log
    );
    assert_eq!(leaving(&restarted), [(0, 1)]);
}
