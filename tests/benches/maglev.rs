//! Building Maglev tables: the time to build a 65,537-slot table for 10, 100 and 1,000
//! backends (what a daemon spends on every change of a Maglev service's backends), and how
//! many slots change hands when one backend leaves, against the ideal 1/N. No root needed.
//! Run by `cargo xtask bench`.

use std::{net::SocketAddr, time::Instant};

use anyhow::Result;
use xlb::{
    config::MaglevConfig,
    control::maglev::{DEFAULT_TABLE_SIZE, lookup_table, table},
};
use xlb_tests::bench::{Table, median, print_section, quick};

/// `n` backends of weight 1, 198.18.1.1:80 and on.
fn backends(n: usize) -> Vec<(SocketAddr, u32)> {
    (0..n)
        .map(|i| {
            let address = format!("198.18.{}.{}:80", 1 + i / 250, 1 + i % 250);
            (address.parse().expect("an address"), 1)
        })
        .collect()
}

fn main() -> Result<()> {
    let runs = if quick() { 3 } else { 21 };
    let mut table_rows = Table::new(&[
        "backends",
        "slots",
        "build, median (ms)",
        "min–max (ms)",
        "slots per backend, min–max",
        "slots moved when one leaves",
        "ideal (1/N)",
    ]);
    // 1,000 backends need 100 slots each: the config asks for 131,071 then.
    for (n, size) in [
        (10, DEFAULT_TABLE_SIZE),
        (100, DEFAULT_TABLE_SIZE),
        (1_000, DEFAULT_TABLE_SIZE),
        (1_000, 131_071),
    ] {
        let list = backends(n);
        let with_ids: Vec<(u32, SocketAddr, u32)> = list
            .iter()
            .enumerate()
            .map(|(i, (address, weight))| (i as u32, *address, *weight))
            .collect();
        let config = MaglevConfig {
            table_size: size,
            seed: 0,
            client_hash: false,
        };
        // What the daemon runs: the table, and the ids written into the map's value.
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                let built = lookup_table(&with_ids, &config);
                let took = started.elapsed();
                assert_eq!(built.len, size);
                took.as_secs_f64() * 1e3
            })
            .collect();
        let (min, max) = (
            times.iter().copied().fold(f64::INFINITY, f64::min),
            times.iter().copied().fold(0.0, f64::max),
        );
        let slots = table(&list, size, 0);
        let mut counts = vec![0u32; n];
        for &slot in &slots {
            counts[slot as usize] += 1;
        }
        let fewer = &list[1..];
        let after = table(fewer, size, 0);
        // Indexes of the smaller list are one less for the same backend.
        let moved = slots
            .iter()
            .zip(&after)
            .filter(|(before, now)| **before != **now + 1)
            .count();
        table_rows.row(vec![
            n.to_string(),
            size.to_string(),
            format!("{:.1}", median(&mut times)),
            format!("{min:.1}–{max:.1}"),
            format!(
                "{}–{}",
                counts.iter().min().unwrap_or(&0),
                counts.iter().max().unwrap_or(&0)
            ),
            format!("{:.2}%", 100.0 * moved as f64 / f64::from(size)),
            format!("{:.2}%", 100.0 / n as f64),
        ]);
    }
    print_section(
        "Maglev tables",
        &format!(
            "A weighted Maglev table of {DEFAULT_TABLE_SIZE} slots (and of 131,071, which the \
             config requires for 1,000 backends) built for N backends of equal weight, as the daemon builds it on every change of a Maglev service's \
             backends or weights ({runs} builds each, release build, one core); the spread of \
             slots over the backends; and the share of all slots that change backend when the \
             first backend leaves (the slots it held are the ideal share, 1/N; Maglev moves a \
             few more).\n\n{}",
            table_rows.markdown()
        ),
    );
    Ok(())
}
