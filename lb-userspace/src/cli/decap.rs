//! `xlb decap`: the backends' side of the tunnels, until a signal (see `dataplane::decap`).

use std::{net::IpAddr, process::ExitCode, time::Duration};

use anyhow::{Result, bail};
use ipnet::IpNet;
use lb_common::tunnel::decap_counters;
use tracing::{error, info};

use crate::{
    dataplane::{DecapProgram, DecapSettings},
    sys::netif,
};

/// Attaches the program to `interface` for `vips` from `from` (GUE on `gue_port`, 0: none),
/// logs its counters every `report` seconds (0: never) while they change, and at SIGINT or
/// SIGTERM detaches and prints them.
pub(super) fn run(
    interface: &str,
    vips: Vec<IpAddr>,
    from: Vec<IpNet>,
    gue_port: u16,
    report: u64,
) -> ExitCode {
    let settings = DecapSettings {
        from,
        vips,
        gue_port,
    };
    match serve(interface, &settings, report) {
        Ok(counters) => {
            println!("{}", counters_line(&counters));
            ExitCode::SUCCESS
        }
        Err(problem) => {
            error!("{problem:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the arguments, attaches, waits for a signal; the last counters.
fn serve(
    interface: &str,
    settings: &DecapSettings,
    report: u64,
) -> Result<[u64; decap_counters::COUNT as usize]> {
    check(interface, settings)?;
    let mut program = DecapProgram::load(settings)?;
    program.attach(interface)?;
    info!(
        interface,
        vips = ?settings.vips,
        from = ?settings.from,
        gue_port = settings.gue_port,
        "decapsulating the balancers' packets to the VIPs"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let period = Duration::from_secs(report.max(1));
        let mut last = program.counters()?;
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                () = tokio::time::sleep(period), if report > 0 => {
                    let now = program.counters()?;
                    if now != last {
                        info!("{}", counters_line(&now));
                        last = now;
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    let counters = program.counters()?;
    drop(program);
    Ok(counters)
}

/// Refuses arguments that cannot work: an interface that does not exist, a prefix with host
/// bits (a typo more often than not), no VIP of a prefix's family.
fn check(interface: &str, settings: &DecapSettings) -> Result<()> {
    netif::index(interface)?;
    for prefix in &settings.from {
        if prefix.network() != prefix.addr() {
            bail!(
                "--from {prefix}: the prefix has host bits set; did you mean {}?",
                prefix.trunc()
            );
        }
        if !settings
            .vips
            .iter()
            .any(|vip| vip.is_ipv4() == prefix.addr().is_ipv4())
        {
            bail!(
                "--from {prefix}: no --vip of its family, so nothing from it would be decapsulated"
            );
        }
    }
    Ok(())
}

/// The counters as one line: `decapsulated=N malformed=N foreign=N`.
fn counters_line(counters: &[u64; decap_counters::COUNT as usize]) -> String {
    decap_counters::NAMES
        .iter()
        .zip(counters)
        .map(|(name, count)| format!("{name}={count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(from: &str, vip: &str) -> DecapSettings {
        DecapSettings {
            from: vec![from.parse().unwrap()],
            vips: vec![vip.parse().unwrap()],
            gue_port: 6080,
        }
    }

    #[test]
    fn arguments_that_cannot_work_are_refused_by_name() {
        let error = check("lo", &settings("198.18.0.1/24", "198.18.100.1")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--from 198.18.0.1/24: the prefix has host bits set; did you mean 198.18.0.0/24?"
        );
        let error = check("lo", &settings("fd00::/64", "198.18.100.1")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--from fd00::/64: no --vip of its family, so nothing from it would be decapsulated"
        );
        let error = check("no-such-if0", &settings("198.18.0.0/24", "198.18.100.1")).unwrap_err();
        assert_eq!(error.to_string(), "interface no-such-if0 does not exist");
        check("lo", &settings("198.18.0.0/24", "198.18.100.1")).unwrap();
    }

    #[test]
    fn counters_read_as_one_line() {
        assert_eq!(
            counters_line(&[3, 1, 2]),
            "decapsulated=3 malformed=1 foreign=2"
        );
    }
}
