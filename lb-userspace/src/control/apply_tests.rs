//! Applies that fail part way, applies at the id limits, and applies after a restart: the
//! maps end as a clean apply would leave them, and no id leaks.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{consts::limits::MAX_SERVICES, tables::table_index};

use super::{
    fake::FakeMaps,
    tests::{WEB, config},
    *,
};

/// A service on a VIP of its own (a change that removes it removes the VIP).
const DNS: &str = r#"
[[service]]
name = "dns"
listen = "198.18.100.2:53"
protocol = "udp"
backends = [ { address = "198.18.1.11:53" } ]
"#;

const VIDEO: &str = r#"
[[service]]
name = "video"
listen = "198.18.100.3:80"
protocol = "tcp"
client_prefixes = { "198.18.0.0/25" = "kr" }

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.21:8080" } ]
fallback = ["jp"]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.22:8080" } ]
"#;

/// What the maps serve, by name rather than by id: services (with their entry's shape),
/// each table as the backend addresses it names, the backends in use, the VIPs, and whether
/// each service has client prefixes.
fn served(maps: &FakeMaps) -> impl PartialEq + std::fmt::Debug {
    let address = |id: &u32| {
        let entry = maps.backends[id];
        (crate::wire::backend_address(&entry), entry.pool)
    };
    let mut services = BTreeMap::new();
    for (key, entry) in &maps.services {
        let tables: Vec<Vec<_>> = (0..u32::from(entry.pools))
            .map(|pool| {
                maps.tables[&table_index(entry.id, pool)]
                    .iter()
                    .map(address)
                    .collect()
            })
            .collect();
        let prefixes = maps.prefixes.get(&entry.id).map_or(0, Vec::len);
        services.insert(
            format!("{key:?}"),
            (entry.pools, entry.default_pool, tables, prefixes),
        );
    }
    let in_use: BTreeSet<_> = maps
        .backends
        .iter()
        .filter(|(_, e)| e.in_use == 1)
        .map(|(id, _)| address(id))
        .collect();
    (services, in_use, maps.vips.len())
}

#[test]
fn an_apply_that_fails_part_way_is_completed_by_the_next() {
    let before = config(&format!("{WEB}{DNS}"));
    // DNS leaves, VIDEO comes, WEB gains a backend and changes a weight.
    let after = config(&format!(
        "{}{VIDEO}",
        WEB.replace(
            "weight = 2 }",
            "weight = 3 }, { address = \"198.18.1.13:8080\" }"
        )
    ));
    let mut clean = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&before, &mut clean).unwrap();
    clean.log.clear();
    clean.zeroed.clear();
    balancer.apply(&after, &mut clean).unwrap();
    let writes = clean.log.len() + clean.zeroed.len();
    assert!(writes > 10, "{:?}", clean.log);
    let fresh_in = |maps: &FakeMaps| -> BTreeSet<String> {
        let starts = maps
            .log
            .iter()
            .filter(|w| w.starts_with("mark- ") || w.starts_with("cursor "));
        let zeroed = maps.zeroed.iter().map(|counted| format!("{counted:?}"));
        starts.cloned().chain(zeroed).collect()
    };
    let fresh = fresh_in(&clean);
    assert!(!fresh.is_empty());

    for failing in 0..writes {
        let mut maps = FakeMaps::default();
        let mut balancer = Balancer::new();
        balancer.apply(&before, &mut maps).unwrap();
        maps.fail_in = Some(failing);
        maps.log.clear();
        maps.zeroed.clear();
        assert!(
            balancer.apply(&after, &mut maps).is_err(),
            "write {failing} fails"
        );
        balancer.apply(&after, &mut maps).unwrap();
        assert_eq!(served(&maps), served(&clean), "write {failing} failed");
        // What the new ids and tables start from (counters, marks, cursors) was set up once,
        // whichever apply did it.
        let missing: Vec<_> = fresh.difference(&fresh_in(&maps)).cloned().collect();
        assert!(
            missing.is_empty(),
            "write {failing} failed: {missing:?} never set up"
        );
        // Every backend id the maps use is the balancer's, and no other.
        let recorded: BTreeSet<u32> = balancer
            .services()
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.id))
            .collect();
        let in_use: BTreeSet<u32> = maps
            .backends
            .iter()
            .filter(|(_, e)| e.in_use == 1)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(recorded, in_use, "write {failing} failed");
        // And the one after that changes nothing.
        maps.log.clear();
        let summary = balancer.apply(&after, &mut maps).unwrap();
        assert_eq!(summary, ApplySummary::default(), "{:?}", maps.log);
    }
}

/// `n` services of one backend each, on distinct VIPs.
fn many(n: usize, first_port: u16) -> Vec<ServiceSpec> {
    let one = config(DNS).remove(0);
    (0..n)
        .map(|i| {
            let mut spec = one.clone();
            spec.name = format!("s{i}");
            spec.listen.set_port(first_port + i as u16);
            spec.backends[0].address.set_port(first_port + i as u16);
            spec
        })
        .collect()
}

#[test]
fn at_the_service_limit_a_service_can_still_be_replaced() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    let full = many(MAX_SERVICES as usize, 1000);
    balancer.apply(&full, &mut maps).unwrap();
    // One service moves to another port: a removal and an addition, with no id free.
    let mut moved = full.clone();
    moved[0].listen.set_port(60000);
    let summary = balancer.apply(&moved, &mut maps).unwrap();
    assert_eq!((summary.services_added, summary.services_removed), (1, 1));
    assert_eq!(maps.services.len(), MAX_SERVICES as usize);
    let key = crate::wire::service_key(moved[0].listen, moved[0].protocol);
    let id = maps.services[&key].id;
    assert_eq!(maps.tables[&table_index(id, 0)].len(), 1);
    // And back.
    balancer.apply(&full, &mut maps).unwrap();
    assert_eq!(maps.services.len(), MAX_SERVICES as usize);
    // One more than the limit is refused, and changes nothing.
    let mut over = full.clone();
    over.extend(many(1, 50000));
    let error = balancer.apply(&over, &mut maps).unwrap_err();
    assert!(error.to_string().contains("no free service id"), "{error}");
    assert_eq!(maps.services.len(), MAX_SERVICES as usize);
}

#[test]
fn after_a_restart_every_table_and_prefix_is_published_whole() {
    let specs = config(&format!("{WEB}{VIDEO}"));
    let mut maps = FakeMaps::default();
    Balancer::new().apply(&specs, &mut maps).unwrap();
    // A restart during an outage: every backend of WEB is Down at the first check, and
    // VIDEO's config no longer has client prefixes.
    let mut restarted = specs.clone();
    for backend in &mut restarted[0].backends {
        backend.weight = 0;
    }
    restarted[1].locality.prefixes = std::sync::Arc::new(Vec::new());
    let mut second = Balancer::new();
    second.adopt(&mut maps).unwrap();
    second.apply(&restarted, &mut maps).unwrap();
    let web = second.services()[0].id;
    assert!(
        maps.tables[&table_index(web, 0)].is_empty(),
        "the earlier daemon's table named Down backends"
    );
    let video = second.services()[1].id;
    assert!(
        maps.prefixes[&video].is_empty(),
        "the earlier daemon's prefixes are gone"
    );
}

#[test]
fn a_new_id_starts_its_counters_from_zero() {
    let mut maps = FakeMaps::default();
    // What an earlier owner of ids 0 and 1 counted.
    maps.service_counters.insert(
        0,
        lb_common::TrafficCounters {
            new_flows: 7,
            ..Default::default()
        },
    );
    maps.backend_counters.insert(
        1,
        lb_common::TrafficCounters {
            new_flows: 3,
            ..Default::default()
        },
    );
    maps.spilled.insert(table_index(0, 0), 5);
    let mut balancer = Balancer::new();
    balancer.apply(&config(WEB), &mut maps).unwrap();
    assert_eq!(
        maps.zeroed,
        [
            Counted::Service(0),
            Counted::Spills(table_index(0, 0)),
            Counted::Backend(0),
            Counted::Backend(1)
        ]
    );
    assert!(maps.service_counters.is_empty() && maps.backend_counters.is_empty());
    assert!(maps.spilled.is_empty());
    // Ids that stay keep what they counted.
    maps.zeroed.clear();
    let heavier = config(&WEB.replace("weight = 2", "weight = 3"));
    balancer.apply(&heavier, &mut maps).unwrap();
    assert!(maps.zeroed.is_empty(), "{:?}", maps.zeroed);
}

#[test]
fn a_pool_that_leaves_is_emptied_after_its_clients_are_sent_elsewhere() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&config(VIDEO), &mut maps).unwrap();
    // jp leaves: kr's clients keep kr, and the prefixes no longer name jp.
    let one_pool = VIDEO.replace("fallback = [\"jp\"]\n", "").replace(
        "\n[[service.pool]]\nname = \"jp\"\nbackends = [ { address = \"198.18.1.22:8080\" } ]\n",
        "",
    );
    maps.log.clear();
    balancer.apply(&config(&one_pool), &mut maps).unwrap();
    let position = |prefix: &str| {
        maps.log
            .iter()
            .position(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", maps.log))
    };
    let emptied = position(&format!("table {} []", table_index(0, 1)));
    assert!(position("service+ 0") < emptied, "{:?}", maps.log);
}

#[test]
fn a_pool_and_a_maglev_table_that_leave_in_a_failed_apply_go_in_the_next() {
    let one_pool = VIDEO.replace("fallback = [\"jp\"]\n", "").replace(
        "\n[[service.pool]]\nname = \"jp\"\nbackends = [ { address = \"198.18.1.22:8080\" } ]\n",
        "",
    );
    let maglev = VIDEO.replace("client_prefixes", "scheduler = \"maglev\"\nclient_prefixes");
    for (before, after) in [(VIDEO.to_string(), one_pool), (maglev, VIDEO.to_string())] {
        let (before, after) = (config(&before), config(&after));
        let mut clean = FakeMaps::default();
        Balancer::new().apply(&after, &mut clean).unwrap();
        for failing in 0..6 {
            let mut maps = FakeMaps::default();
            let mut balancer = Balancer::new();
            balancer.apply(&before, &mut maps).unwrap();
            maps.fail_in = Some(failing);
            if balancer.apply(&after, &mut maps).is_ok() {
                continue;
            }
            balancer.apply(&after, &mut maps).unwrap();
            let left = |maps: &FakeMaps| {
                let tables = maps.tables.iter().filter(|(_, t)| !t.is_empty());
                (tables.count(), maps.maglev.len())
            };
            assert_eq!(
                left(&maps),
                left(&clean),
                "write {failing} failed: {:?}",
                maps.log
            );
        }
    }
}
