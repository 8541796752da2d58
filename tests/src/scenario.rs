//! The standard scenario shared by the end-to-end tests and `cargo xtask demo`: backend
//! servers on every backend host, xlb on the balancer host, and traffic from the client.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    client::{http_echo, payload, udp_echo},
    netns::Netns,
    process::{Process, binary, temp_file},
    topology::{Lab, VIP},
};

/// Port of the backends' HTTP servers.
pub const HTTP_PORT: u16 = 8080;
/// Port of the backends' UDP servers.
pub const UDP_PORT: u16 = 5353;
/// Port of the TCP (HTTP) service on the VIP.
pub const TCP_SERVICE_PORT: u16 = 80;
/// Port of the UDP service on the VIP.
pub const UDP_SERVICE_PORT: u16 = 53;
/// How long a process may take to say it is ready.
pub const STARTUP: Duration = Duration::from_secs(20);
/// What `xlb run` prints once it balances.
pub const XLB_READY: &str = "ready: xlb is balancing";

/// Name of backend `index` (0-based): b1, b2, ...
pub fn backend_name(index: usize) -> String {
    format!("b{}", index + 1)
}

/// Starts `xlb-backend` (HTTP and UDP) on every backend host and waits until each is ready.
pub fn start_backends(lab: &Lab) -> Result<Vec<Process>> {
    let program = binary("xlb-backend")?;
    (0..lab.backends.len())
        .map(|i| start_backend(lab, i, &program))
        .collect()
}

/// Starts `xlb-backend` on backend host `index` and waits until it is ready.
pub fn start_backend(lab: &Lab, index: usize, program: &Path) -> Result<Process> {
    let name = backend_name(index);
    let mut command = lab.backends[index].command(program);
    command.args([
        "--name",
        &name,
        "--http",
        &lab.backend_endpoint(index, HTTP_PORT).to_string(),
        "--udp",
        &lab.backend_endpoint(index, UDP_PORT).to_string(),
    ]);
    let mut process = Process::spawn(&name, command)?;
    process.wait_for_output("ready", STARTUP)?;
    Ok(process)
}

/// A config that balances TCP port 80 and UDP port 53 of the VIP over every backend.
pub fn balancer_config(lab: &Lab, xdp_mode: &str) -> String {
    let backends = |port: u16| {
        (0..lab.backends.len())
            .map(|i| format!("{{ address = \"{}\" }}", lab.backend_endpoint(i, port)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let interfaces = lab
        .balancer_interfaces
        .iter()
        .map(|name| format!("\"{name}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"interfaces = [{interfaces}]
xdp_mode = "{xdp_mode}"

[[service]]
name = "web"
listen = "{VIP}:{TCP_SERVICE_PORT}"
protocol = "tcp"
backends = [ {http} ]

[[service]]
name = "dns"
listen = "{VIP}:{UDP_SERVICE_PORT}"
protocol = "udp"
backends = [ {udp} ]
"#,
        http = backends(HTTP_PORT),
        udp = backends(UDP_PORT),
    )
}

/// Starts `xlb run` with `config` on `host` and waits until it balances.
pub fn start_xlb(host: &Netns, config: &str) -> Result<Process> {
    let path = temp_file("xlb.toml", config)?;
    let mut command = host.command(binary("xlb")?);
    command.arg("run").arg("--config").arg(&path);
    let mut xlb = Process::spawn("xlb", command)?;
    xlb.wait_for_output(XLB_READY, STARTUP)?;
    Ok(xlb)
}

/// Which backend served each of the client's TCP connections and UDP flows.
pub struct Traffic {
    /// Backend name per TCP connection, in order.
    pub tcp: Vec<String>,
    /// Backend name per UDP flow, in order.
    pub udp: Vec<String>,
}

/// From the client host: `connections` concurrent HTTP connections to the VIP (20 kB to
/// 50 kB each way, echoed back byte for byte), then `flows` UDP flows of three datagrams each.
pub fn run_traffic(lab: &Lab, connections: usize, flows: usize) -> Result<Traffic> {
    lab.client.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let http_vip = SocketAddr::from((VIP, TCP_SERVICE_PORT));
            let tasks: Vec<_> = (0..connections)
                .map(|i| {
                    let body = payload(i as u64, 20_000 + 1_000 * (i % 31));
                    tokio::task::spawn_local(http_echo(http_vip, body))
                })
                .collect();
            let mut tcp = Vec::with_capacity(connections);
            for (i, task) in tasks.into_iter().enumerate() {
                tcp.push(task.await?.with_context(|| format!("TCP connection {i}"))?);
            }
            let udp_vip = SocketAddr::from((VIP, UDP_SERVICE_PORT));
            let mut udp = Vec::with_capacity(flows);
            for i in 0..flows {
                let body = payload(1_000 + i as u64, 1_200);
                udp.push(
                    udp_echo(udp_vip, &body, 3)
                        .await
                        .with_context(|| format!("UDP flow {i}"))?,
                );
            }
            Ok(Traffic { tcp, udp })
        })
    })?
}

/// How many times each name occurs.
pub fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.clone()).or_default() += 1;
    }
    counts
}
