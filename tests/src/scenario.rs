//! The standard scenario shared by the end-to-end tests and `cargo xtask demo`: backend
//! servers on every backend host, xlb on the balancer host, and traffic from the client.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    client::{http_echo, payload, udp_echo, udp_socket},
    process::{Process, binary, temp_file},
    topology::{Lab, VIP, VIP6},
};

/// Port of the backends' HTTP servers.
pub const HTTP_PORT: u16 = 8080;
/// Port of the backends' UDP servers.
pub const UDP_PORT: u16 = 5353;
/// Port of the backends' load agents.
pub const AGENT_PORT: u16 = 9777;
/// Port of the TCP (HTTP) service on the VIP.
pub const TCP_SERVICE_PORT: u16 = 80;
/// Port of the UDP service on the VIP.
pub const UDP_SERVICE_PORT: u16 = 53;
/// How long a process may take to say it is ready.
pub const STARTUP: Duration = Duration::from_secs(20);

pub use crate::daemon::{
    Launch, XLB_READY, Xlb, remove_pins_with_prefix, start_xlb, start_xlb_launched, start_xlb_with,
};

/// Name of backend `index` (0-based): b1, b2, ...
pub fn backend_name(index: usize) -> String {
    format!("b{}", index + 1)
}

/// A backend server process and the file its load agent answers from.
pub struct Backend {
    /// Name (b1, b2, ...).
    pub name: String,
    index: usize,
    process: Option<Process>,
    agent_file: PathBuf,
}

impl Backend {
    /// Makes the agent answer `reply` from now on (HAProxy agent words, e.g. "drain", "10%").
    pub fn set_agent_reply(&self, reply: &str) -> Result<()> {
        std::fs::write(&self.agent_file, reply)
            .with_context(|| format!("agent file of {}", self.name))
    }

    /// Stops the server (SIGTERM): its host stays up, its ports close.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Starts the server again.
    pub fn start(&mut self, lab: &Lab) -> Result<()> {
        self.stop()?;
        let program = binary("xlb-backend")?;
        let mut command = lab.backends[self.index].command(program);
        // Every port on the unspecified IPv6 address: the servers answer IPv4 and IPv6.
        let any = |port: u16| SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).to_string();
        command.args([
            "--name",
            &self.name,
            "--http",
            &any(HTTP_PORT),
            "--udp",
            &any(UDP_PORT),
            "--agent",
            &any(AGENT_PORT),
            "--agent-file",
        ]);
        command.arg(&self.agent_file);
        let mut process = Process::spawn(&self.name, command)?;
        process.wait_for_output("ready", STARTUP)?;
        self.process = Some(process);
        Ok(())
    }
}

/// Starts `xlb-backend` (HTTP, UDP and a load agent answering "up 100%") on every backend host
/// and waits until each is ready.
pub fn start_backends(lab: &Lab) -> Result<Vec<Backend>> {
    (0..lab.backends.len())
        .map(|index| {
            let name = backend_name(index);
            let agent_file = temp_file(&format!("{name}-agent"), "up 100%")?;
            let mut backend = Backend {
                name,
                index,
                process: None,
                agent_file,
            };
            backend.start(lab)?;
            Ok(backend)
        })
        .collect()
}

/// A config that balances TCP port 80 and UDP port 53 of the VIP over every backend.
pub fn balancer_config(lab: &Lab, xdp_mode: &str) -> String {
    balancer_config_with(lab, xdp_mode, "", "")
}

/// [`balancer_config`] with extra keys (such as `health = {...}`) for the TCP and the UDP service.
pub fn balancer_config_with(lab: &Lab, xdp_mode: &str, tcp_keys: &str, udp_keys: &str) -> String {
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
{tcp_keys}

[[service]]
name = "dns"
listen = "{VIP}:{UDP_SERVICE_PORT}"
protocol = "udp"
backends = [ {udp} ]
{udp_keys}
"#,
        http = backends(HTTP_PORT),
        udp = backends(UDP_PORT),
    )
}

/// [`balancer_config`] plus the same two services on the IPv6 VIP ("web6", "dns6"), balanced
/// over the backends' IPv6 addresses.
pub fn dual_stack_config(lab: &Lab, xdp_mode: &str) -> String {
    let backends = |port: u16| {
        (0..lab.backends.len())
            .map(|i| format!("{{ address = \"{}\" }}", lab.backend_endpoint6(i, port)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"{}
[[service]]
name = "web6"
listen = "[{VIP6}]:{TCP_SERVICE_PORT}"
protocol = "tcp"
backends = [ {http} ]

[[service]]
name = "dns6"
listen = "[{VIP6}]:{UDP_SERVICE_PORT}"
protocol = "udp"
backends = [ {udp} ]
"#,
        balancer_config(lab, xdp_mode),
        http = backends(HTTP_PORT),
        udp = backends(UDP_PORT),
    )
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
    run_traffic_to(lab, VIP.into(), connections, flows)
}

/// [`run_traffic`] to the services on `vip` (the IPv4 or the IPv6 VIP).
pub fn run_traffic_to(lab: &Lab, vip: IpAddr, connections: usize, flows: usize) -> Result<Traffic> {
    run_traffic_on(
        lab,
        vip,
        (TCP_SERVICE_PORT, UDP_SERVICE_PORT),
        connections,
        flows,
    )
}

/// [`run_traffic_to`] with the services on `ports` (TCP, UDP): direct server return keeps the
/// backends' ports, [`HTTP_PORT`] and [`UDP_PORT`].
pub fn run_traffic_on(
    lab: &Lab,
    vip: IpAddr,
    ports: (u16, u16),
    connections: usize,
    flows: usize,
) -> Result<Traffic> {
    let (tcp_port, udp_port) = ports;
    lab.client.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let http_vip = SocketAddr::new(vip, tcp_port);
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
            let udp_vip = SocketAddr::new(vip, udp_port);
            // Every flow's socket stays open until all are done, so that no two flows share a
            // source port (a reused port would be an old flow, not a new one: seen once as
            // 11/10/9 instead of 10/10/10).
            let mut sockets = Vec::with_capacity(flows);
            for _ in 0..flows {
                sockets.push(udp_socket(udp_vip).await?);
            }
            let mut udp = Vec::with_capacity(flows);
            for (i, socket) in sockets.iter().enumerate() {
                let body = payload(1_000 + i as u64, 1_200);
                udp.push(
                    udp_echo(socket, &body, 3)
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
