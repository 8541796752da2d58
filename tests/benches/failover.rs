//! Time from a backend's death to the last new flow xlb sends to it: a client opens
//! connections back to back through the VIP; one backend's server is stopped; connections
//! that xlb still sends there fail (the host answers with a reset). The last of them started
//! this long after the stop. Then passive health against active checks alone, under a steady
//! load, for a killed server and for a host that ignores clients' SYNs
//! (`xlb_tests::failover`). Needs root (network namespaces). Run by `cargo xtask bench`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use xlb_tests::{
    bench::{Table, median, print_section, quick},
    client::{http_echo, payload},
    failover::{self, Fault, LOAD},
    scenario::{TCP_SERVICE_PORT, balancer_config_with, start_backends, start_xlb},
    topology::{Lab, VIP, Wiring},
};

/// One run: returns (last failed connection's start after the stop, failed connections,
/// connections in all).
fn run(interval_ms: u64, fall: u32) -> Result<(Duration, usize, usize)> {
    let lab = Lab::new(Wiring::TwoInterfaces, 3)?;
    let mut backends = start_backends(&lab)?;
    let keys = format!(
        r#"health = {{ check = "http", path = "/", interval = "{interval_ms}ms", timeout = "{}ms", rise = 2, fall = {fall} }}"#,
        interval_ms / 2
    );
    let _xlb = start_xlb(
        &lab.balancer,
        &balancer_config_with(&lab, "auto", &keys, ""),
    )?;
    let window = Duration::from_millis(interval_ms) * (fall + 1) + Duration::from_millis(500);
    lab.client.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
            // Warm up: every backend has served, neighbours are resolved.
            for i in 0..6 {
                http_echo(vip, payload(i, 100)).await?;
            }
            backends[1].stop()?;
            let stopped = Instant::now();
            let (mut last_failure, mut failures, mut total) = (Duration::ZERO, 0, 0);
            while stopped.elapsed() < window {
                let started = stopped.elapsed();
                total += 1;
                if http_echo(vip, payload(total, 100)).await.is_err() {
                    failures += 1;
                    last_failure = started;
                }
            }
            Ok((last_failure, failures, total as usize))
        })
    })?
}

fn main() -> Result<()> {
    let quick = quick();
    let settings: &[(u64, u32)] = if quick {
        &[(100, 2)]
    } else {
        &[(100, 3), (200, 3), (500, 2)]
    };
    let runs = if quick { 1 } else { 3 };
    let mut table = Table::new(&[
        "interval, fall",
        "bound: fall × interval + interval (ms)",
        "death to last new flow (ms, median of runs)",
        "new flows sent to the dead backend (median)",
        "connections per run",
    ]);
    for &(interval_ms, fall) in settings {
        let (mut last, mut failed, mut total) = (Vec::new(), Vec::new(), 0);
        for run_index in 0..runs {
            eprintln!(
                "failover: interval {interval_ms} ms, fall {fall}, run {}",
                run_index + 1
            );
            let (last_failure, failures, connections) = run(interval_ms, fall)?;
            last.push(last_failure.as_secs_f64() * 1e3);
            failed.push(failures as f64);
            total = connections;
        }
        table.row(vec![
            format!("{interval_ms} ms, {fall}"),
            format!("{}", interval_ms * u64::from(fall + 1)),
            format!("{:.0}", median(&mut last)),
            format!("{:.0}", median(&mut failed)),
            total.to_string(),
        ]);
    }
    let passive = passive_table(runs)?;
    print_section(
        "Backend death to the last new flow",
        &format!(
            "A client in its namespace opens HTTP connections to the VIP back to back; one of \
             three backends' server is stopped (SIGTERM) and each later connection that xlb still \
             sends there is refused by the host. The time is when the last refused connection \
             started, counted from the stop; {runs} run(s) per setting.\n\n{}\n\n\
             ### Passive health against active checks alone\n\n\
             {} new connections per second for {:?} through the VIP (each a 100-byte HTTP echo \
             on its own connection, allowed {:?}: one SYN retransmission); {:?} in, one of three \
             backends fails: its server is stopped (kill: the host answers with resets), its host \
             drops the clients' SYNs while xlb's checks, from the balancer's address, pass \
             (silence), or its host drops every SYN to the port, the checks' too (blackhole: with \
             active checks alone, the half-open flows of a Down backend are purged, so a \
             retransmitted SYN is placed again either way). Checks every 200 ms, fall 2. Failed connections and connections that \
             needed a retransmission (over 0.9 s), median and range of {runs} run(s); no \
             connection to a live backend failed in any run (checked).\n\n{}",
            table.markdown(),
            LOAD.rate,
            LOAD.duration,
            LOAD.timeout,
            LOAD.fault_at,
            passive.markdown()
        ),
    );
    Ok(())
}

/// Failed and slow connections after each fault, with and without passive health.
fn passive_table(runs: usize) -> Result<Table> {
    let mut table = Table::new(&[
        "fault",
        "setting",
        "failed connections (median, range)",
        "slow connections (median, range)",
        "connections per run",
    ]);
    let spread = |values: &mut Vec<f64>| {
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(0.0, f64::max);
        format!("{:.0} ({low:.0}–{high:.0})", median(values))
    };
    // Quick (the suite's check that the benchmarks run): one fault; the tier-3 passive tests
    // play the others.
    let faults: &[Fault] = if quick() {
        &[Fault::Kill]
    } else {
        &[Fault::Kill, Fault::Silence, Fault::Blackhole]
    };
    for &fault in faults {
        // The two settings alternate, so that a slower moment of the machine falls on both.
        let (mut failed, mut slow) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        let mut attempts = 0;
        for run_index in 0..runs {
            for (i, passive) in [false, true].into_iter().enumerate() {
                eprintln!(
                    "failover: {fault:?}, passive {passive}, run {}",
                    run_index + 1
                );
                let report = failover::run(fault, passive, LOAD)?;
                anyhow::ensure!(
                    report.live_failures == 0,
                    "{} connections to live backends failed ({fault:?}, passive {passive})",
                    report.live_failures
                );
                failed[i].push(report.outcome.failures() as f64);
                slow[i].push(report.outcome.slow as f64);
                attempts = report.outcome.attempts;
            }
        }
        for (i, setting) in ["active checks alone", "passive health (defaults)"]
            .into_iter()
            .enumerate()
        {
            table.row(vec![
                match fault {
                    Fault::Kill => "kill".to_owned(),
                    Fault::Silence => "silence (checks pass)".to_owned(),
                    Fault::Blackhole => "blackhole (checks fail too)".to_owned(),
                },
                setting.to_owned(),
                spread(&mut failed[i]),
                spread(&mut slow[i]),
                attempts.to_string(),
            ]);
        }
    }
    Ok(table)
}
