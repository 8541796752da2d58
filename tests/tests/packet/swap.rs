//! Atomic table swaps under concurrent traffic.

use super::*;

/// Publisher threads swap the table thousands of times while this thread runs new flows
/// through the program (each swap returns only after an RCU grace period, about 15 ms here, so
/// four threads publish at once to get through a thousand swaps in a few seconds). Table A is one slot of backend .12; table B is 2,048 slots of backend .13.
/// A packet that saw a mix (B's length with A's slots, whose unused slots are zero) would be
/// sent to backend id 0, .11, which is in neither table; one that saw a length of zero would
/// be dropped. Neither may happen.
#[test]
#[ignore = "needs root and BPF: run with `cargo xtask test`"]
fn table_swaps_are_atomic_under_concurrent_traffic() {
    with_lab(|lab| {
        let web = lab
            .balancer
            .services()
            .iter()
            .find(|s| s.name == "web")
            .unwrap();
        let id_of = |address: &str| {
            web.backends
                .iter()
                .find(|b| b.address.to_string() == address)
                .unwrap()
                .id
        };
        let (b11, b12, b13) = (
            id_of("198.18.1.11:8080"),
            id_of("198.18.1.12:8080"),
            id_of("198.18.1.13:8080"),
        );
        assert_eq!(b11, 0, "the outsider must be the id that empty slots hold");
        let index = table_index(web.id, 0);
        let table_a = xlb::control::table::backend_table(&[b12], 1);
        let table_b = xlb::control::table::backend_table(
            &[b13; lb_common::consts::limits::MAX_TABLE_SLOTS],
            2,
        );
        let mut publisher = lab.dataplane.maps.table_publisher().unwrap();
        publisher.publish(index, &table_a).unwrap();

        const PUBLISHERS: usize = 4;
        const SWAPS_EACH: usize = 300;
        let mut publishers: Vec<_> = (0..PUBLISHERS)
            .map(|_| lab.dataplane.maps.table_publisher().unwrap())
            .collect();
        let running = std::sync::atomic::AtomicUsize::new(PUBLISHERS);
        let (mut seen_12, mut seen_13, mut packets) = (0usize, 0usize, 0usize);
        std::thread::scope(|scope| {
            for publisher in &mut publishers {
                let (table_a, table_b, running) = (&table_a, &table_b, &running);
                scope.spawn(move || {
                    for swap in 0..SWAPS_EACH {
                        let table = if swap % 2 == 0 { table_b } else { table_a };
                        publisher.publish(index, table).unwrap();
                    }
                    running.fetch_sub(1, std::sync::atomic::Ordering::Release);
                });
            }
            let mut port = 1024u16;
            while running.load(std::sync::atomic::Ordering::Acquire) > 0 {
                port = port.wrapping_add(1).max(1024);
                let client = 2 + (packets / 60_000) % 200;
                let input = Frame::tcp(&format!("198.18.0.{client}:{port}"), "198.18.100.1:80");
                let (verdict, output) = lab.run(&input.build(), lab.c0);
                assert_eq!(
                    verdict_name(verdict),
                    verdict_name(XDP_REDIRECT),
                    "packet {packets}"
                );
                match &output[30..34] {
                    [198, 18, 1, 12] => seen_12 += 1,
                    [198, 18, 1, 13] => seen_13 += 1,
                    other => panic!("packet {packets} went to {other:?}, in neither table"),
                }
                packets += 1;
            }
        });
        assert!(
            packets >= 1_000,
            "only {packets} packets ran during the swaps"
        );
        assert!(
            seen_12 > 0 && seen_13 > 0,
            "both tables were seen: {seen_12} / {seen_13}"
        );
        assert_eq!(lab.event(events::NO_BACKEND), 0);
        let swaps = PUBLISHERS * SWAPS_EACH;
        eprintln!(
            "{packets} new flows during {swaps} swaps: {seen_12} to table A, {seen_13} to table B"
        );
    });
}
