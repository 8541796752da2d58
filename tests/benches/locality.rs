//! Locality: the per-packet cost of choosing a new flow's home pool with 100,000 client
//! prefixes, against the same new flow to a service without pools, through
//! BPF_PROG_TEST_RUN; and the time to publish the prefixes. Needs root. Run by
//! `cargo xtask bench`.

use std::{fmt::Write as _, time::Instant};

use anyhow::{Result, ensure};
use lb_common::{BackendTable, tables::table_index};
use xlb::{
    config::Config,
    control::{Balancer, DataplaneMaps as _, ServiceSpec},
    dataplane::Dataplane,
    sys::netif,
};
use xlb_tests::{
    bench::{Table, median, print_section, quick},
    packet::Frame,
    packet_net::{self, XDP_DROP, XDP_REDIRECT},
};

/// Repetitions per test run of the repeatable case.
const REPEAT: u32 = 250;

/// A config with an IPv6 service without pools ([fd00:100::2]:80) and one with two pools and
/// `prefixes` client prefixes ([fd00:100::1]:80): the client's fd00::/32, and /48s of
/// fd42::/16 (IPv6, the longest keys, and room for any number of prefixes inside fd00::/8).
fn config(prefixes: usize) -> String {
    let mut inline = String::from("\"fd00::/32\" = \"kr\"");
    for i in 0..prefixes.saturating_sub(1) {
        let _ = write!(
            inline,
            ", \"fd42:{:x}:{:x}::/48\" = \"jp\"",
            i / 65_536,
            i % 65_536
        );
    }
    format!(
        r#"interfaces = ["c0", "s0"]

[[service]]
name = "pools"
listen = "[fd00:100::1]:80"
protocol = "tcp"
client_prefixes = {{ {inline} }}

[[service.pool]]
name = "kr"
backends = [ {{ address = "[fd00:1::11]:8080" }}, {{ address = "[fd00:1::12]:8080" }} ]

[[service.pool]]
name = "jp"
backends = [ {{ address = "[fd00:1::13]:8080" }} ]

[[service]]
name = "plain"
listen = "[fd00:100::2]:80"
protocol = "tcp"
backends = [ {{ address = "[fd00:1::11]:8080" }}, {{ address = "[fd00:1::12]:8080" }} ]
"#
    )
}

fn main() -> Result<()> {
    let quick = quick();
    let prefixes = if quick { 1_000 } else { 100_000 };
    let flows = if quick { 200 } else { 20_000 };
    let ns = packet_net::build()?;
    let (publish_ms, rows) = ns.enter(|| -> Result<(f64, Vec<(String, f64)>)> {
        let config = Config::parse(&config(prefixes)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut dataplane = Dataplane::load(1 << 20)?;
        let started = Instant::now();
        let mut balancer = Balancer::new();
        balancer.apply(&ServiceSpec::all_up(&config), &mut dataplane.maps)?;
        let publish_ms = started.elapsed().as_secs_f64() * 1e3;
        let c0 = netif::index("c0")?;
        dataplane.maps.add_egress_port(c0)?;
        dataplane.maps.add_egress_port(netif::index("s0")?)?;
        let program = dataplane.program();
        let mut rows = Vec::new();
        // Alternate the two services so that both see the same machine state.
        let (mut plain, mut pooled) = (Vec::new(), Vec::new());
        for i in 0..flows {
            let client = format!("[fd00::{:x}]:{}", 2 + i / 60_000, 1_024 + i % 60_000);
            for (vip, times) in [
                ("[fd00:100::2]:80", &mut plain),
                ("[fd00:100::1]:80", &mut pooled),
            ] {
                let frame = Frame::tcp(&client, vip).build();
                let result = packet_net::run(program, &frame, c0, 1)?;
                ensure!(result.verdict == XDP_REDIRECT, "verdict {}", result.verdict);
                times.push(result.duration.as_secs_f64() * 1e9);
            }
        }
        rows.push((
            "new flow, service without pools".to_owned(),
            median(&mut plain),
        ));
        rows.push((
            format!("new flow, service with {prefixes} client prefixes"),
            median(&mut pooled),
        ));

        // A repeatable path through the lookup: both services' tables emptied, so a SYN goes
        // through the whole new-flow decision (the prefix lookup included) and is dropped for
        // want of a backend, leaving no state behind.
        for service in balancer.services() {
            for pool in 0..service.locality.pools {
                dataplane
                    .maps
                    .publish_table(table_index(service.id, pool), &BackendTable::EMPTY)?;
            }
        }
        let program = dataplane.program();
        let rounds = if quick { 5 } else { 200 };
        let per_packet = |client: &str, vip: &str| -> Result<f64> {
            let frame = Frame::tcp(client, vip).build();
            let mut times = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let result = packet_net::run(program, &frame, c0, REPEAT)?;
                ensure!(result.verdict == XDP_DROP, "verdict {}", result.verdict);
                times.push(result.duration.as_secs_f64() * 1e9);
            }
            Ok(median(&mut times))
        };
        rows.push((
            "no backend (repeated runs), service without pools".into(),
            per_packet("[fd00::2]:40000", "[fd00:100::2]:80")?,
        ));
        rows.push((
            format!("no backend (repeated runs), {prefixes} prefixes, client in a sparse part"),
            per_packet("[fd00::2]:40000", "[fd00:100::1]:80")?,
        ));
        let dense = if quick {
            "[fd42:0:1::5]:40000"
        } else {
            "[fd42:1:77::5]:40000"
        };
        rows.push((
            format!("no backend (repeated runs), {prefixes} prefixes, client among the /48s"),
            per_packet(dense, "[fd00:100::1]:80")?,
        ));
        Ok((publish_ms, rows))
    })??;

    let mut table = Table::new(&["case", "ns per packet (median)"]);
    for (case, ns) in &rows {
        table.row(vec![case.clone(), format!("{ns:.0}")]);
    }
    let difference = rows[4].1 - rows[2].1;
    print_section(
        "Locality: prefix lookup",
        &format!(
            "BPF_PROG_TEST_RUN, to a service without pools and to one whose {prefixes} client \
             prefixes live in an LPM trie. New flows cannot repeat (the first run records the \
             flow), so they are single runs ({flows} each, alternating), whose timing noise \
             hides a difference this small. The repeatable rows take the same new-flow path \
             with the services' tables emptied (median of {rounds} runs of {REPEAT}); for a \
             client deep in the trie (in one of the 100,000 /48s), the difference, \
             {difference:.0} ns, is the cost of choosing the home pool, paid once per new \
             flow, never by established packets. Publishing the prefixes (a fresh \
             trie, swapped in) took {publish_ms:.0} ms.\n\n{}",
            table.markdown(),
            rounds = if quick { 5 } else { 200 },
        ),
    );
    Ok(())
}
