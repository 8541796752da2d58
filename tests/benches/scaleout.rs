//! Several instances behind ECMP (`xlb_tests::cluster`, `xlb_tests::scaleout`): the tier-3
//! scenario repeated (300 long-lived connections through a SIGKILL of one xlb and its
//! restart), Maglev against round robin, alternating; and direct server return against NAT
//! end to end, with one balancer in front of three backends (with DSR the replies go from the
//! backends to the router directly). Needs root. Run by `cargo xtask bench`.

use std::time::Duration;

use anyhow::Result;
use xlb_tests::{
    bench::{Table, median, print_section, quick, wrk_url},
    cluster::{Cluster, PORT},
    scaleout::{LOAD, Load, MAGLEV, ROUND_ROBIN, Report, run},
    topology::{VIP, backend_addr},
};

/// "median (min–max)" of `values`.
fn spread(values: &mut [f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!(
        "{:.digits$} ({min:.digits$}–{max:.digits$})",
        median(values)
    )
}

fn main() -> Result<()> {
    let quick = quick();
    let runs = if quick { 1 } else { 3 };
    let load = if quick {
        Load {
            connections: 60,
            duration: Duration::from_secs(3),
            event_at: Duration::from_secs(1),
            ..LOAD
        }
    } else {
        LOAD
    };
    let mut reports: Vec<(&str, Vec<Report>)> =
        vec![("Maglev", Vec::new()), ("round robin", Vec::new())];
    // Quick (the suite's check that the benchmarks run): Maglev only; the tier-3 tests play
    // both schedulers.
    if quick {
        reports.truncate(1);
    }
    for run_index in 0..runs {
        for (i, keys) in [MAGLEV, ROUND_ROBIN]
            .into_iter()
            .enumerate()
            .take(reports.len())
        {
            eprintln!(
                "scale-out run {} of {runs}: {}",
                run_index + 1,
                reports[i].0
            );
            let report = run(keys, load)?;
            reports[i].1.push(report);
        }
    }
    let mut table = Table::new(&[
        "scheduler",
        "kill: completed %",
        "restart: completed %",
        "route withdrawn after (ms)",
        "xlb ready after restart (s)",
        "route back after ready (ms)",
    ]);
    for (name, runs) in &mut reports {
        let pick = |f: &dyn Fn(&Report) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
        table.row(vec![
            (*name).to_owned(),
            spread(&mut pick(&|r| r.kill.completed_percent()), 1),
            spread(&mut pick(&|r| r.restart.completed_percent()), 1),
            spread(&mut pick(&|r| r.withdrawn_after.as_secs_f64() * 1e3), 0),
            spread(&mut pick(&|r| r.ready_after.as_secs_f64()), 2),
            spread(
                &mut pick(&|r| (r.announced_after - r.ready_after).as_secs_f64() * 1e3),
                0,
            ),
        ]);
    }
    let mut spreads = String::new();
    for (name, runs) in &reports {
        for report in runs {
            spreads.push_str(&format!(
                "- {name}: flows placed per instance before the kill {:?}; failures {:?} / {:?}\n",
                report.spread, report.kill.failed, report.restart.failed
            ));
        }
    }
    print_section(
        "Several instances behind ECMP",
        &format!(
            "Router (BIRD, ECMP over the balancers' BGP routes, L4 hash), three balancers \
             (xlb + BIRD, contrib/bird configs), three DSR backends, links at their defaults. \
             {} long-lived connections echo {} bytes every {:?} for {:?}, every byte checked; \
             {:?} in, one xlb is killed (SIGKILL), and in a second round started again. \
             Medians of {runs} runs (min–max), schedulers alternating.\n\n{}\n{spreads}",
            load.connections,
            load.bytes,
            load.every,
            load.duration,
            load.event_at,
            table.markdown()
        ),
    );

    // DSR against NAT, one balancer.
    let seconds = if quick { 1 } else { 5 };
    let mut results: Vec<(&str, Vec<[f64; 5]>)> = vec![
        ("NAT", Vec::new()),
        ("DSR", Vec::new()),
        ("routing, no balancer", Vec::new()),
    ];
    for run_index in 0..runs {
        for (i, dsr, routed) in [(0, false, false), (1, true, false), (2, true, true)] {
            eprintln!(
                "DSR against NAT and routing, run {} of {runs}: {}",
                run_index + 1,
                results[i].0
            );
            let cluster = Cluster::start_with(1, 3, MAGLEV, "0s", dsr)?;
            if routed {
                // No balancer in the path: the VIP's route goes to the first backend (which
                // holds the VIP, as DSR backends do), once xlb's announcement is gone.
                cluster.kill(0)?;
                cluster.wait_for_next_hops(0, Duration::from_secs(10))?;
                cluster
                    .router
                    .ip(&format!("route replace {VIP}/32 via {}", backend_addr(0)))?;
            }
            let url = |path: &str| format!("http://{VIP}:{PORT}{path}");
            wrk_url(&cluster.client, &url("/"), 1, false)?;
            let keep_alive = wrk_url(&cluster.client, &url("/"), seconds, false)?;
            let new = wrk_url(&cluster.client, &url("/"), seconds, true)?;
            let download = wrk_url(
                &cluster.client,
                &url("/download?bytes=102400"),
                seconds,
                false,
            )?;
            results[i].1.push([
                keep_alive.requests_per_second,
                keep_alive.p99_ms,
                new.requests_per_second,
                new.p99_ms,
                download.megabytes_per_second,
            ]);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut table = Table::new(&[
        "forwarding",
        "keep-alive requests/s",
        "p99 (ms)",
        "new connections/s",
        "p99 (ms)",
        "100 KB downloads, MB/s",
    ]);
    for (name, runs) in &results {
        let column = |k: usize| -> Vec<f64> { runs.iter().map(|r| r[k]).collect() };
        table.row(vec![
            (*name).to_owned(),
            spread(&mut column(0), 0),
            spread(&mut column(1), 2),
            spread(&mut column(2), 0),
            spread(&mut column(3), 2),
            spread(&mut column(4), 1),
        ]);
    }
    print_section(
        "Direct server return against NAT and plain routing",
        &format!(
            "One balancer (xlb, Maglev, at tc on default links) between a router and three \
             backends; wrk (2 threads, 32 connections, {seconds}s) from the client through the \
             router. With NAT the backends' replies come back through the balancer; with DSR \
             they go to the router directly. Routing: the same network with the router's route \
             for the VIP sent straight to one backend, no balancer in the path (the baseline \
             DSR should match). Medians of {runs} runs (min–max), taking turns.\n\n{}",
            table.markdown()
        ),
    );
    Ok(())
}
