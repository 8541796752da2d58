//! The control plane against the fake maps: ids, tables, and the order of updates.

use lb_common::{ServiceEntry, tables::table_index};

use super::{fake::FakeMaps, ids::IdAllocator, *};
use crate::{
    config::{Config, Protocol},
    wire::{backend_entry, service_key},
};

/// The specs of `services` (TOML), every backend up.
pub(super) fn config(services: &str) -> Vec<ServiceSpec> {
    ServiceSpec::all_up(&Config::parse(&format!("interfaces = [\"eth0\"]\n{services}")).unwrap())
}

pub(super) const WEB: &str = r#"
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080", weight = 2 } ]
"#;

const DNS: &str = r#"
[[service]]
name = "dns"
listen = "198.18.100.1:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:53" } ]
"#;

#[test]
fn each_home_pool_gets_the_table_of_the_pool_that_serves_it() {
    let text = r#"
[[service]]
name = "video"
listen = "198.18.100.1:80"
protocol = "tcp"
client_prefixes = { "198.18.0.0/25" = "kr", "198.18.0.128/25" = "jp" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.13:8080" } ]
"#;
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    let mut specs = config(text);
    balancer.apply(&specs, &mut maps).unwrap();
    assert_eq!(maps.tables[&table_index(0, 0)], [0, 1]);
    assert_eq!(maps.tables[&table_index(0, 1)], [2]);
    assert_eq!(maps.prefixes[&0].len(), 2);
    let entry = maps.services.values().next().unwrap();
    assert_eq!((entry.pools, entry.default_pool), (2, 0));
    assert_eq!(maps.backends[&2].pool, 1, "a backend knows its pool");
    let prefixes_published = |maps: &FakeMaps| {
        maps.log
            .iter()
            .filter(|l| l.starts_with("prefixes"))
            .count()
    };
    assert_eq!(prefixes_published(&maps), 1);

    // kr has no room: its clients' table is jp's; jp's own is unchanged.
    maps.log.clear();
    specs[0].locality.serving = vec![1, 1];
    balancer.apply(&specs, &mut maps).unwrap();
    assert_eq!(maps.tables[&table_index(0, 0)], [2]);
    assert_eq!(maps.log, [format!("table {} [2]", table_index(0, 0))]);

    // Room again: home.
    specs[0].locality.serving = vec![0, 1];
    balancer.apply(&specs, &mut maps).unwrap();
    assert_eq!(maps.tables[&table_index(0, 0)], [0, 1]);
    assert_eq!(
        prefixes_published(&maps),
        0,
        "unchanged prefixes are not republished"
    );

    // A reload with other prefixes publishes them whole.
    let reloaded = config(&text.replace("198.18.0.128/25", "198.18.0.128/26"));
    balancer.apply(&reloaded, &mut maps).unwrap();
    assert_eq!(prefixes_published(&maps), 1);
    assert_eq!(maps.prefixes[&0][1].0.to_string(), "198.18.0.128/26");

    // Removing the service empties both tables and its prefixes.
    balancer.apply(&[], &mut maps).unwrap();
    assert!(maps.tables[&table_index(0, 0)].is_empty());
    assert!(maps.tables[&table_index(0, 1)].is_empty());
    assert!(maps.prefixes[&0].is_empty());
}

#[test]
fn a_vip_stays_while_a_service_uses_it() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer
        .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
        .unwrap();
    assert_eq!(maps.vips.len(), 1, "two services on one VIP: one VIP");
    balancer.apply(&config(DNS), &mut maps).unwrap();
    assert_eq!(maps.vips.len(), 1, "the VIP still serves dns");
    let other = DNS.replace("198.18.100.1:53", "198.18.100.2:53");
    balancer.apply(&config(&other), &mut maps).unwrap();
    assert_eq!(
        maps.vips.iter().copied().collect::<Vec<_>>(),
        [crate::wire::vip_key("198.18.100.2".parse().unwrap())]
    );
    // A restarted daemon knows which VIPs the maps hold and adds none twice.
    let mut restarted = Balancer::new();
    restarted.adopt(&mut maps).unwrap();
    restarted.apply(&config(&other), &mut maps).unwrap();
    assert_eq!(maps.vips.len(), 1);
}

#[test]
fn first_apply_writes_backends_then_table_then_service() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    let summary = balancer.apply(&config(WEB), &mut maps).unwrap();
    assert_eq!(
        maps.log,
        [
            "policy 0",
            "cursor 0",
            "mark- 0",
            "backend 0",
            "mark- 1",
            "backend 1",
            "table 0 [1, 0, 1]",
            "service+ 0",
            "vip+"
        ]
    );
    assert_eq!(summary.services_added, 1);
    assert_eq!(summary.backends_added, 2);
    let key = service_key("198.18.100.1:80".parse().unwrap(), Protocol::Tcp);
    assert_eq!(
        maps.services[&key],
        ServiceEntry {
            id: 0,
            pools: 1,
            default_pool: 0,
            scheduler: 0,
            forwarding: 0,
        }
    );
    assert_eq!(maps.backends[&1].port, 8080u16.to_be());
}

#[test]
fn applying_the_same_config_again_changes_nothing() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&config(WEB), &mut maps).unwrap();
    maps.log.clear();
    let summary = balancer.apply(&config(WEB), &mut maps).unwrap();
    assert!(maps.log.is_empty(), "{:?}", maps.log);
    assert_eq!(summary, ApplySummary::default());
}

#[test]
fn a_weight_change_republishes_only_the_table() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer
        .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
        .unwrap();
    maps.log.clear();
    balancer
        .apply(
            &config(&format!("{}{DNS}", WEB.replace("weight = 2", "weight = 1"))),
            &mut maps,
        )
        .unwrap();
    assert_eq!(maps.log, ["table 0 [0, 1]"]);
    assert_eq!(balancer.services()[0].generation, 2);
}

#[test]
fn removed_backends_leave_the_table_before_their_flows_are_purged() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&config(WEB), &mut maps).unwrap();
    maps.flows_by_backend.insert(1, 5);
    maps.log.clear();
    let one_backend = WEB.replace(", { address = \"198.18.1.12:8080\", weight = 2 }", "")
        + "drain_timeout = \"0s\"\n";
    let summary = balancer.apply(&config(&one_backend), &mut maps).unwrap();
    // The service's share of suspects shrinks with its backends: its policy is written again.
    assert_eq!(
        maps.log,
        ["policy 0", "table 0 [0]", "purge [1]", "release 1"]
    );
    assert_eq!(summary.flows_purged, 5);
    assert_eq!(summary.backends_removed, 1);
}

#[test]
fn removed_services_disappear_before_their_table_is_emptied() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer
        .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
        .unwrap();
    maps.log.clear();
    let summary = balancer.apply(&config(DNS), &mut maps).unwrap();
    assert_eq!(
        maps.log,
        [
            "service- 0",
            "table 0 []",
            "purge [0, 1]",
            "release 0",
            "release 1"
        ]
    );
    assert_eq!(summary.services_removed, 1);
    assert_eq!(balancer.services().len(), 1);
    assert_eq!(
        balancer.services()[0].id,
        1,
        "the remaining service keeps its id"
    );
}

#[test]
fn a_new_balancer_adopts_what_the_maps_hold_and_keeps_the_ids() {
    let mut maps = FakeMaps::default();
    let mut first = Balancer::new();
    first
        .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
        .unwrap();
    let ids = |balancer: &Balancer| -> Vec<(u32, Vec<u32>)> {
        balancer
            .services()
            .iter()
            .map(|s| (s.id, s.backends.iter().map(|b| b.id).collect()))
            .collect()
    };
    let before = ids(&first);

    // A restarted daemon: same maps, a fresh balancer.
    let mut second = Balancer::new();
    assert_eq!(second.adopt(&mut maps).unwrap(), (2, 3));
    maps.log.clear();
    let summary = second
        .apply(&config(&format!("{WEB}{DNS}")), &mut maps)
        .unwrap();
    let mut after = ids(&second);
    after.sort();
    let mut expected = before.clone();
    expected.sort();
    assert_eq!(after, expected, "every service and backend keeps its id");
    assert_eq!((summary.services_added, summary.backends_added), (0, 0));
    assert!(
        maps.log
            .iter()
            .all(|line| line.starts_with("table") || line.starts_with("policy")),
        "{:?}",
        maps.log
    );
    // New ids do not collide with adopted ones.
    let mut third = config(&format!("{WEB}{DNS}"));
    third[0].backends.push(BackendSpec {
        address: "198.18.1.20:8080".parse().unwrap(),
        weight: 1,
        pool: 0,
        maglev_weight: 1,
    });
    second.apply(&third, &mut maps).unwrap();
    let new_id = second.services()[0].backends[2].id;
    assert!(!before.iter().any(|(_, b)| b.contains(&new_id)));
}

#[test]
fn orphaned_backends_are_released_on_adoption() {
    let mut maps = FakeMaps::default();
    maps.backends
        .insert(9, backend_entry("198.18.1.99:80".parse().unwrap(), 42, 0));
    maps.flows_by_backend.insert(9, 2);
    assert_eq!(Balancer::new().adopt(&mut maps).unwrap(), (0, 0));
    assert_eq!(maps.log, ["purge [9]", "release 9"]);
}

#[test]
fn ids_are_not_reused_right_away() {
    let mut ids = IdAllocator::new(3);
    assert_eq!(ids.allocate(), Some(0));
    assert_eq!(ids.allocate(), Some(1));
    ids.release(0);
    assert_eq!(
        ids.allocate(),
        Some(2),
        "next-fit skips the just-released id"
    );
    assert_eq!(ids.allocate(), Some(0), "then wraps around to it");
    assert_eq!(ids.allocate(), None);
}

#[test]
fn a_services_policy_carries_its_passive_health_and_admission() {
    use crate::{config::Config, control::spec};
    let text = format!(
        "{}admission = {{ rate = 100, burst = 5, ipv4_prefix = 24 }}\n",
        WEB_WITH_THREE
    );
    let config = Config::parse(&text).unwrap();
    let policy = spec::policy(&config.services[0]);
    assert_eq!((policy.refused, policy.unanswered), (1, 2));
    assert_eq!(policy.max_suspects, 1, "half of three, rounded down");
    assert_eq!(
        (policy.window_ns, policy.hold_ns),
        (1_000_000_000, 2_000_000_000)
    );
    assert_eq!(
        (policy.admit_interval_ns, policy.admit_tolerance_ns),
        (10_000_000, 40_000_000)
    );
    let mask = spec::prefix_mask(24);
    assert_eq!(mask[0].to_ne_bytes(), [255, 255, 255, 0]);
    assert_eq!(&mask[1..], &[0, 0, 0]);
    let mask6 = spec::prefix_mask(56);
    assert_eq!(mask6[1].to_ne_bytes(), [255, 255, 255, 0]);
    assert_eq!(spec::prefix_mask(0), [0; 4]);
    assert_eq!(spec::prefix_mask(128), [u32::MAX; 4]);
    let off = text.replace(
        "admission = { rate = 100, burst = 5, ipv4_prefix = 24 }",
        "passive = { refused = 0, unanswered = 0 }",
    );
    let config = Config::parse(&off).unwrap();
    let policy = spec::policy(&config.services[0]);
    assert_eq!(policy, lb_common::passive::ServicePolicy::default());
}

const WEB_WITH_THREE: &str = r#"
interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080" }, { address = "198.18.1.13:8080" } ]
"#;
