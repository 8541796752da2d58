//! The control plane's Maglev tables against the fake maps: published before their service,
//! the same backend per slot on every instance, hardly any slot but a leaving backend's moves,
//! removed once no service reads them.

use std::{collections::HashMap, net::SocketAddr};

use lb_common::{
    consts::{forwarding, scheduler},
    tables::table_index,
};

use super::{fake::FakeMaps, tests::config as specs, *};

const MAGLEV: &str = r#"
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
scheduler = "maglev"
maglev = { seed = 7 }
forwarding = "dsr"
backends = [ { address = "198.18.1.11:80" }, { address = "198.18.1.12:80", weight = 2 },
             { address = "198.18.1.13:80" } ]
"#;

const OTHER: &str = r#"
[[service]]
name = "other"
listen = "198.18.100.2:80"
protocol = "tcp"
backends = [ { address = "198.18.1.21:8080" }, { address = "198.18.1.22:8080" } ]
"#;

/// The backend address of every slot of the Maglev table of service `name`.
fn slots_by_address(balancer: &Balancer, maps: &FakeMaps, name: &str) -> Vec<SocketAddr> {
    let service = balancer.services().iter().find(|s| s.name == name).unwrap();
    let addresses: HashMap<u32, SocketAddr> =
        service.backends.iter().map(|b| (b.id, b.address)).collect();
    let (_, slots) = &maps.maglev[&table_index(service.id, 0)];
    slots.iter().map(|id| addresses[id]).collect()
}

#[test]
fn a_maglev_table_is_published_before_its_service_and_shares_follow_weights() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&specs(MAGLEV), &mut maps).unwrap();
    let entry = maps.services.values().next().unwrap();
    assert_eq!(
        (entry.scheduler, entry.forwarding),
        (scheduler::MAGLEV, forwarding::DSR)
    );
    let (seed, slots) = &maps.maglev[&table_index(0, 0)];
    assert_eq!((*seed, slots.len()), (7, 65_537));
    let count = |id: u32| slots.iter().filter(|s| **s == id).count();
    // Weights 1:2:1 of 65,537 slots.
    assert!((count(1) as f64 / count(0) as f64 - 2.0).abs() < 0.01);
    assert!(count(0).abs_diff(count(2)) <= 1);
    let maglev_at = maps
        .log
        .iter()
        .position(|l| l.starts_with("maglev "))
        .unwrap();
    let service_at = maps
        .log
        .iter()
        .position(|l| l.starts_with("service+"))
        .unwrap();
    assert!(maglev_at < service_at, "{:?}", maps.log);
}

#[test]
fn two_instances_send_every_slot_to_the_same_backend_whatever_their_ids() {
    let (mut first, mut first_maps) = (Balancer::new(), FakeMaps::default());
    first.apply(&specs(MAGLEV), &mut first_maps).unwrap();
    // The second instance serves another service first: its backend ids differ.
    let (mut second, mut second_maps) = (Balancer::new(), FakeMaps::default());
    second
        .apply(&specs(&format!("{OTHER}{MAGLEV}")), &mut second_maps)
        .unwrap();
    let web = |b: &Balancer| {
        b.services()
            .iter()
            .find(|s| s.name == "web")
            .unwrap()
            .backends[0]
            .id
    };
    assert_ne!(web(&first), web(&second));
    assert_eq!(
        slots_by_address(&first, &first_maps, "web"),
        slots_by_address(&second, &second_maps, "web")
    );
}

#[test]
fn a_backend_that_leaves_takes_only_its_own_slots() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    let mut specs = specs(MAGLEV);
    balancer.apply(&specs, &mut maps).unwrap();
    let before = slots_by_address(&balancer, &maps, "web");
    // Down: weight 0 in both tables, as the monitor publishes it.
    specs[0].backends[2].weight = 0;
    specs[0].backends[2].maglev_weight = 0;
    balancer.apply(&specs, &mut maps).unwrap();
    let after = slots_by_address(&balancer, &maps, "web");
    let gone: SocketAddr = "198.18.1.13:80".parse().unwrap();
    let mut moved = 0;
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(*new, gone);
        if *old != gone {
            moved += usize::from(old != new);
        }
    }
    // Maglev is near-minimal, not minimal: a few slots of the staying backends change hands
    // (13 of 65,537 here), against a third of all slots for a modulo hash.
    assert!(
        moved * 1000 < before.len(),
        "{moved} slots of staying backends moved"
    );
}

#[test]
fn leaving_maglev_removes_its_tables_after_the_service_changed() {
    let mut maps = FakeMaps::default();
    let mut balancer = Balancer::new();
    balancer.apply(&specs(MAGLEV), &mut maps).unwrap();
    maps.log.clear();
    let round_robin = MAGLEV
        .replace("scheduler = \"maglev\"\nmaglev = { seed = 7 }\n", "")
        .replace("forwarding = \"dsr\"\n", "");
    balancer.apply(&specs(&round_robin), &mut maps).unwrap();
    assert_eq!(
        maps.log,
        [
            "policy 0".to_string(),
            "service+ 0".to_string(),
            format!("maglev- {}", table_index(0, 0))
        ]
    );
    let entry = maps.services.values().next().unwrap();
    assert_eq!((entry.scheduler, entry.forwarding), (0, 0));

    // Back to Maglev, then the service goes: its table goes after it.
    balancer.apply(&specs(MAGLEV), &mut maps).unwrap();
    maps.log.clear();
    balancer.apply(&specs(OTHER), &mut maps).unwrap();
    let removed = maps.log.iter().position(|l| l == "service- 0").unwrap();
    let table_gone = maps
        .log
        .iter()
        .position(|l| l.starts_with("maglev- "))
        .unwrap();
    assert!(removed < table_gone, "{:?}", maps.log);
    assert!(maps.maglev.is_empty());
}

#[test]
fn a_restarted_daemon_rebuilds_or_removes_the_maglev_tables_it_adopts() {
    let mut maps = FakeMaps::default();
    Balancer::new().apply(&specs(MAGLEV), &mut maps).unwrap();
    let round_robin = MAGLEV
        .replace("scheduler = \"maglev\"\nmaglev = { seed = 7 }\n", "")
        .replace("forwarding = \"dsr\"\n", "");

    // Taken over by a daemon whose config says round robin: the service entry changes, then
    // the adopted table goes (its shape was unknown, but it was there).
    let mut restarted = Balancer::new();
    restarted.adopt(&mut maps).unwrap();
    maps.log.clear();
    restarted.apply(&specs(&round_robin), &mut maps).unwrap();
    let entry = maps.services.values().next().unwrap();
    assert_eq!(entry.scheduler, scheduler::ROUND_ROBIN);
    assert!(maps.maglev.is_empty(), "{:?}", maps.log);

    // Taken over by one whose config still says Maglev: the table is built again.
    restarted.apply(&specs(MAGLEV), &mut maps).unwrap();
    let mut restarted = Balancer::new();
    restarted.adopt(&mut maps).unwrap();
    maps.log.clear();
    restarted.apply(&specs(MAGLEV), &mut maps).unwrap();
    assert!(
        maps.log.iter().any(|l| l.starts_with("maglev ")),
        "{:?}",
        maps.log
    );
}

#[test]
fn instances_in_other_slow_start_or_load_states_build_the_same_table() {
    // One instance sees b2 ramping up (table weight 5 of 200) and b3 at an agent's 40%; the
    // other sees them at full weight. Their round-robin tables differ; their Maglev tables
    // must not, or a flow that ECMP moves between them changes backend.
    let full = specs(MAGLEV);
    let mut ramping = full.clone();
    ramping[0].backends[1].weight = 5;
    ramping[0].backends[2].weight = 40;
    let (mut first_maps, mut second_maps) = (FakeMaps::default(), FakeMaps::default());
    let (mut first, mut second) = (Balancer::new(), Balancer::new());
    first.apply(&full, &mut first_maps).unwrap();
    second.apply(&ramping, &mut second_maps).unwrap();
    assert_eq!(
        slots_by_address(&first, &first_maps, "web"),
        slots_by_address(&second, &second_maps, "web")
    );
    // Changing only table weights publishes no Maglev table.
    second_maps.log.clear();
    second.apply(&full, &mut second_maps).unwrap();
    assert!(
        !second_maps.log.iter().any(|l| l.starts_with("maglev")),
        "{:?}",
        second_maps.log
    );
}
