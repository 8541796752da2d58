//! Backends of layer-3 direct server return (`forwarding = "ipip"` or `"gue"`): the VIPs on
//! their loopback, their servers, and `xlb decap` on their link.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::Netns,
    process::{Process, binary},
    scenario::{HTTP_PORT, STARTUP, UDP_PORT, backend_name},
    topology::{Lab, VIP, VIP6},
};

/// The balancers' prefixes on `Wiring::Tunneled`, from which the decaps take packets.
pub const BALANCER_PREFIXES: [&str; 2] = ["198.18.5.0/24", "fd00:5::/64"];

/// Puts both VIPs on backend `i`'s loopback.
pub fn add_vips(lab: &Lab, i: usize) -> Result<()> {
    let backend = &lab.backends[i];
    backend.ip(&format!("addr add {VIP}/32 dev lo"))?;
    backend.ip(&format!("-6 addr add {VIP6}/128 dev lo nodad"))?;
    Ok(())
}

/// Starts backend `i`'s servers: HTTP on every address, and UDP echoes on the VIPs (which a
/// DSR backend answers from; they need the VIPs on its loopback).
pub fn start_servers(lab: &Lab, i: usize) -> Result<Vec<Process>> {
    let name = backend_name(i);
    [
        ["--http".to_owned(), format!("[::]:{HTTP_PORT}")],
        ["--udp".to_owned(), format!("{VIP}:{UDP_PORT}")],
        ["--udp".to_owned(), format!("[{VIP6}]:{UDP_PORT}")],
    ]
    .into_iter()
    .map(|listen| {
        let mut command = lab.backends[i].command(binary("xlb-backend")?);
        command.args(["--name", &name, &listen[0], &listen[1]]);
        let mut server = Process::spawn(&name, command)?;
        server.wait_for_output("ready", STARTUP)?;
        Ok(server)
    })
    .collect()
}

/// Starts `xlb decap` on `host`'s eth0, taking the packets from `from` (prefixes) to `vips`.
pub fn start_decap(host: &Netns, vips: &[IpAddr], from: &[&str]) -> Result<Process> {
    let mut command = host.command(binary("xlb")?);
    command.args(["decap", "--interface", "eth0"]);
    for vip in vips {
        command.args(["--vip", &vip.to_string()]);
    }
    for prefix in from {
        command.args(["--from", prefix]);
    }
    let mut process = Process::spawn("decap", command)?;
    if let Err(error) = process.wait_for_output("decapsulating", STARTUP) {
        bail!("{error:#}\n{}", process.output());
    }
    Ok(process)
}

/// Puts the VIPs on every backend of `Wiring::Tunneled`, starts its servers and its decap
/// (from the balancers' prefixes): the servers, and the decaps in the backends' order.
pub fn start_backends_and_decaps(lab: &Lab) -> Result<(Vec<Process>, Vec<Process>)> {
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for (i, backend) in lab.backends.iter().enumerate() {
        add_vips(lab, i)?;
        servers.extend(start_servers(lab, i)?);
        decaps.push(start_decap(
            backend,
            &[VIP.into(), VIP6.into()],
            &BALANCER_PREFIXES,
        )?);
    }
    Ok((servers, decaps))
}

/// Stops every `xlb decap` (SIGTERM) and returns the counters each printed at exit.
pub fn stop_decaps(decaps: Vec<Process>) -> Result<Vec<BTreeMap<String, u64>>> {
    decaps
        .into_iter()
        .map(|mut process| {
            let status = process.stop(Duration::from_secs(5))?;
            let output = process.output();
            if !status.success() {
                bail!("xlb decap exited with {status}:\n{output}");
            }
            let line = output
                .lines()
                .rev()
                .find(|line| line.starts_with("decapsulated="))
                .with_context(|| format!("no counters:\n{output}"))?;
            line.split(' ')
                .filter_map(|pair| pair.split_once('='))
                .map(|(name, count)| Ok((name.to_owned(), count.parse()?)))
                .collect()
        })
        .collect()
}
