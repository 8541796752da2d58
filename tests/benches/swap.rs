//! The cost of building and publishing one backend table, for 10, 100 and 1,000 backends.
//! Needs root (BPF). Run by `cargo xtask bench`.

use std::time::Instant;

use anyhow::Result;
use xlb::{
    control::DataplaneMaps as _,
    control::table::{backend_table, smooth_weighted_sequence},
    dataplane::Dataplane,
    wire::backend_entry,
};
use xlb_tests::bench::{Table, median, percentile, print_section, quick, thread_cpu_time};

fn main() -> Result<()> {
    let quick = quick();
    let publishes = if quick { 4 } else { 40 };
    let builds = if quick { 10 } else { 200 };
    let mut dataplane = Dataplane::load(1_024)?;
    let maps = &mut dataplane.maps;
    let mut table = Table::new(&[
        "backends",
        "table slots",
        "build (µs)",
        "publish, wall (ms, median / p99)",
        "publish, CPU (µs, median)",
    ]);
    for count in [10u32, 100, 1_000] {
        eprintln!("swap: {count} backends");
        for id in 0..count {
            let address = format!("198.18.{}.{}:8080", 2 + id / 250, 1 + id % 250).parse()?;
            maps.set_backend(id, &backend_entry(address, 0, 0))?;
        }
        // Weights 1 to 4, as a mixed fleet would have.
        let weights: Vec<(u32, u32)> = (0..count).map(|id| (id, 1 + id % 4)).collect();
        let start = Instant::now();
        let mut sequence = Vec::new();
        for _ in 0..builds {
            sequence = smooth_weighted_sequence(&weights);
        }
        let build_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(builds);
        let tables = [
            backend_table(&sequence, 1),
            backend_table(&sequence.iter().rev().copied().collect::<Vec<_>>(), 2),
        ];

        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for i in 0..publishes {
            let (wall_start, cpu_start) = (Instant::now(), thread_cpu_time());
            maps.publish_table(0, &tables[i % 2])?;
            wall.push(wall_start.elapsed().as_secs_f64() * 1e3);
            cpu.push((thread_cpu_time() - cpu_start).as_secs_f64() * 1e6);
        }
        table.row(vec![
            count.to_string(),
            sequence.len().to_string(),
            format!("{build_us:.0}"),
            format!(
                "{:.1} / {:.1}",
                median(&mut wall),
                percentile(&mut wall, 99.0)
            ),
            format!("{:.0}", median(&mut cpu)),
        ]);
    }
    print_section(
        "Table swap cost",
        &format!(
            "Building a backend table (smooth weighted round robin, weights 1 to 4) and publishing it \
             (a fresh inner map, one update of `BACKEND_TABLES`), {publishes} publishes per size.\n\n{}\n\
             The wall time of a publish is dominated by the kernel: an update of an array of maps \
             returns only after an RCU grace period, so that no program still uses the old table \
             when it returns. That wait costs no CPU; the CPU column is the work done. Tables of \
             several services are independent, so publishing them from several threads overlaps \
             the waits.",
            table.markdown()
        ),
    );
    Ok(())
}
