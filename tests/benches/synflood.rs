//! A SYN flood from spoofed sources against the VIP, with legitimate traffic alongside: how
//! fast the flood came, how much of it reached xlb, and what the legitimate traffic saw (an
//! idle keep-alive connection, a long download, a new connection every 100 ms). Needs
//! root (network namespaces). Run by `cargo xtask bench`.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, bail};
use xlb::cmd::Response;
use xlb_tests::{
    bench::{Table, percentile, print_section, quick},
    client::{http_echo, payload},
    flood::legitimate_traffic_under_flood,
    scenario::{TCP_SERVICE_PORT, balancer_config, start_backends, start_xlb},
    topology::{Lab, VIP, Wiring},
};

/// Flows the flow table holds in this run; the half-open table holds a quarter.
const FLOW_TABLE_SIZE: u64 = 65_536;

fn main() -> Result<()> {
    let quick = quick();
    let (count, limit) = if quick {
        (50_000, Duration::from_secs(1))
    } else {
        (5_000_000, Duration::from_secs(8))
    };
    let lab = Lab::new(Wiring::TwoInterfaces, 3)?;
    let _backends = start_backends(&lab)?;
    lab.balancer.ip("route add 198.19.0.0/16 via 198.18.0.2")?;
    let config = format!(
        "flow_table_size = {FLOW_TABLE_SIZE}\n{}",
        balancer_config(&lab, "auto")
    );
    let xlb = start_xlb(&lab.balancer, &config)?;

    // Connection times without a flood, for comparison.
    let vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
    let mut calm: Vec<f64> = lab.client.block_on(async move {
        let mut times = Vec::new();
        for i in 0..40 {
            let begun = std::time::Instant::now();
            http_echo(vip, payload(i, 100)).await?;
            times.push(begun.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::Ok(times)
    })??;

    let outcome = legitimate_traffic_under_flood(&lab, 8_000_000, count, limit)?;
    let (code, stdout, stderr) = xlb.cli(&["--json", "stats"])?;
    if code != 0 {
        bail!("xlb stats: {stderr}");
    }
    let Response::Stats(stats) = serde_json::from_str(&stdout)? else {
        bail!("xlb stats answered {stdout}");
    };
    let reached = stats.services[0].counters.new_flows;
    let event = |name: &str| {
        stats
            .events
            .iter()
            .find(|(event, _)| event == name)
            .map_or(0, |(_, count)| *count)
    };
    let mut flooded: Vec<f64> = outcome
        .connects
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();

    let mut table = Table::new(&["what", "value"]);
    let mut row = |what: &str, value: String| table.row(vec![what.to_owned(), value]);
    row(
        "spoofed SYNs sent",
        format!(
            "{} in {:.1} s ({:.0}/s)",
            outcome.flood.sent,
            outcome.flood.elapsed.as_secs_f64(),
            outcome.flood.rate()
        ),
    );
    row(
        "new flows xlb recorded (SYNs that reached it)",
        format!("{reached}"),
    );
    row(
        "SYNs placed by hash (handshake guard on)",
        format!("{}", event("syn_hashed")),
    );
    row(
        "client packets without a flow, placed by hash (handshakes whose entry was evicted)",
        format!("{}", event("midstream_hashed")),
    );
    row(
        "half-open table / flow table",
        format!(
            "{} / {} flows",
            stats.flow_table.half_open_capacity, stats.flow_table.capacity
        ),
    );
    row(
        "idle keep-alive connection after the flood",
        match &outcome.session_after {
            Ok(after) if *after == outcome.session_before => "same backend, answered".into(),
            Ok(after) => format!("moved to {after} (its flow was lost)"),
            Err(error) => format!("failed: {error}"),
        },
    );
    row(
        "8 MB download through the flood",
        match &outcome.download {
            Ok(bytes) => format!("{bytes} bytes, intact"),
            Err(error) => format!("failed: {error}"),
        },
    );
    row(
        "new connections during the flood",
        format!(
            "{} succeeded, {} failed{}",
            outcome.connects.len(),
            outcome.connect_errors.len(),
            failure_kinds(&outcome.connect_errors)
        ),
    );
    row(
        "connection + 100-byte echo, no flood (p50 / p99)",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&mut calm, 50.0),
            percentile(&mut calm, 99.0)
        ),
    );
    row(
        "connection + 100-byte echo, during the flood (p50 / p99)",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&mut flooded, 50.0),
            percentile(&mut flooded, 99.0)
        ),
    );
    print_section(
        "SYN flood",
        &format!(
            "A raw socket on the client host sends SYNs from random sources of 198.19.0.0/16 to \
             the VIP (bounded: {count} packets or {} s) while the client keeps an idle \
             keep-alive connection, downloads 8 MB and, from 200 ms into the flood, starts a new \
             connection every 100 ms (each on its own, allowed 5 s). The \
             flood and the client share the machine's two cores with xlb and the backends, so \
             the rate is what one sending thread reaches here, not a limit of xlb.\n\n{}",
            limit.as_secs(),
            table.markdown()
        ),
    );
    Ok(())
}

/// The distinct reasons of failed connections with their counts, as " (reason ×n, ...)";
/// empty if none failed.
fn failure_kinds(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for error in errors {
        *kinds.entry(error.as_str()).or_default() += 1;
    }
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(kind, n)| format!("{kind} ×{n}"))
        .collect();
    format!(" ({})", kinds.join(", "))
}
