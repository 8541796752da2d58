//! Several xlb instances behind a router, as an operator scales out: a client host, a router
//! running BIRD that spreads the VIP's flows over the balancers by ECMP (hashing ports too,
//! `fib_multipath_hash_policy = 1`), three balancers each running xlb and its own BIRD (which
//! announces the VIP while xlb holds it on its device), and backends in DSR mode (the VIP on
//! their loopback, prepared by contrib/dsr-backend.sh) that answer the client directly
//! through the router. The BIRD configs are contrib/bird/*.conf with only their site values
//! replaced. Links keep the kernel's offloads (GRO turned on after they came up), as
//! `topology` does by default. All addresses are from 198.18.0.0/15, inside namespaces only.
//!
//! ```text
//!  client 198.18.2.2 ── router 198.18.2.1 / 198.18.1.1 (BIRD, ECMP)
//!                                   │
//!                             switch (br0) ── lb1 198.18.1.21, lb2 .22, lb3 .23 (xlb + BIRD)
//!                                   │
//!                          backends 198.18.1.11, .12, .13 (VIP on lo) ──▶ replies via router
//! ```

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bird::{Bird, bird_config_of_balancer, contrib, router_bird_config},
    daemon::{Xlb, start_xlb},
    netns::Netns,
    process::{Process, binary, temp_file},
    scenario::STARTUP,
    topology::{self, Offloads, VIP, backend_addr},
    tunnel,
};

/// The router's address on the balancers' network.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// The port of the service (and of the backends: DSR keeps it).
pub const PORT: u16 = 80;
/// A prefix of the backends' addresses (198.18.1.11 and on), and none of the balancers' or the
/// router's.
const BACKENDS: &str = "198.18.1.8/29";

/// How the cluster's balancers reach the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// NAT: the backends' answers go back through the balancers.
    Nat,
    /// Layer-2 DSR: only the MAC changes; the backends answer the client directly.
    Dsr,
    /// Layer-3 DSR over IPIP (each balancer's tunnel source is its own address); every
    /// backend runs `xlb decap`, and answers the client directly.
    Ipip,
}

impl Forwarding {
    /// The config's name.
    fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Dsr => "dsr",
            Self::Ipip => "ipip",
        }
    }
}

/// The address of balancer `index` (0-based): 198.18.1.21, .22, ...
pub fn balancer_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 21 + index as u8)
}

/// A veth pair with the offloads at their defaults (see `topology::veth`).
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    topology::veth(a, a_name, b, b_name, Offloads::Default)
}

/// The built cluster. Dropping it stops every process and deletes every namespace.
pub struct Cluster {
    /// The client host.
    pub client: Netns,
    /// The router.
    pub router: Netns,
    /// The balancers, in order.
    pub balancers: Vec<Netns>,
    /// The backends, in order.
    pub backends: Vec<Netns>,
    /// Each balancer's xlb (behind a lock: the load runs on another thread meanwhile).
    pub xlbs: Vec<Mutex<Xlb>>,
    /// Each balancer's xlb config.
    configs: Vec<String>,
    /// Where the backends' UDP echo listens, if the cluster has a UDP service.
    udp: Option<Ipv4Addr>,
    // Declared after the daemons: dropped after them.
    servers: Mutex<Vec<Option<Process>>>,
    /// Each backend's `xlb decap` (IPIP only).
    _decaps: Vec<Process>,
    _birds: Vec<Bird>,
    /// The router's BIRD.
    pub router_bird: Bird,
    _switch: Netns,
}

impl Cluster {
    /// Builds the network with `balancers` balancers and `backends` backends, starts the
    /// backends' servers, every BIRD and every xlb with the service keys `service_keys` (a
    /// scheduler), and waits until the router has a next hop per balancer.
    pub fn start(balancers: usize, backends: usize, service_keys: &str) -> Result<Self> {
        Self::start_with(balancers, backends, service_keys, "0s", true)
    }

    /// [`Self::start`] with xlb's drain time on SIGTERM, and DSR (or NAT: then the backends'
    /// replies go back through the only balancer, which must be one).
    pub fn start_with(
        balancers: usize,
        backends: usize,
        service_keys: &str,
        drain: &str,
        dsr: bool,
    ) -> Result<Self> {
        anyhow::ensure!(
            dsr || balancers == 1,
            "NAT without shared flows needs the replies through its one balancer"
        );
        let forwarding = if dsr {
            Forwarding::Dsr
        } else {
            Forwarding::Nat
        };
        Self::build(balancers, backends, service_keys, drain, forwarding, false)
    }

    /// [`Self::start`] with the balancers sharing their flows (`[fleet]`, with a key of their
    /// own, each listening on its address, port [`FLEET_PORT`]) and one more backend host than
    /// the configs list (to be added), with DSR, or with NAT (`dsr`
    /// false): then the backends' answers go back through the balancers, spread by the router
    /// as the clients' flows are (the backends' gateway is the router, whose BIRD puts the
    /// balancers' default routes in the table of the backends' packets, as contrib/bird's
    /// configs say for NAT behind ECMP).
    pub fn start_fleet(
        balancers: usize,
        backends: usize,
        service_keys: &str,
        forwarding: Forwarding,
    ) -> Result<Self> {
        Self::build(balancers, backends, service_keys, "0s", forwarding, true)
    }

    fn build(
        balancers: usize,
        backends: usize,
        service_keys: &str,
        drain: &str,
        forwarding: Forwarding,
        fleet: bool,
    ) -> Result<Self> {
        let dsr = forwarding != Forwarding::Nat;
        let switch = Netns::new("sw")?;
        let client = Netns::new("client")?;
        let router = Netns::new("rt")?;
        let lbs: Vec<Netns> = (0..balancers)
            .map(|i| Netns::new(&format!("lb{}", i + 1)))
            .collect::<Result<_>>()?;
        // A fleet's cluster has a backend more, running, that the configs do not list yet.
        let listed = backends;
        let backends = backends + usize::from(fleet);
        let hosts: Vec<Netns> = (0..backends)
            .map(|i| Netns::new(&format!("b{}", i + 1)))
            .collect::<Result<_>>()?;
        switch.ip("link add name br0 type bridge")?;
        switch.ip("link set dev br0 up")?;
        veth(&client, "eth0", &router, "c0")?;
        client.ip(&format!("addr add {CLIENT}/24 dev eth0"))?;
        client.ip("route add default via 198.18.2.1")?;
        router.ip("addr add 198.18.2.1/24 dev c0")?;
        let mut port = 0;
        let mut to_switch = |host: &Netns, address: Ipv4Addr| -> Result<()> {
            port += 1;
            veth(host, "eth0", &switch, &format!("p{port}"))?;
            switch.ip(&format!("link set dev p{port} master br0"))?;
            host.ip(&format!("addr add {address}/24 dev eth0"))
                .map(drop)
        };
        to_switch(&router, ROUTER)?;
        for (i, lb) in lbs.iter().enumerate() {
            to_switch(lb, balancer_addr(i))?;
            // xlb forwards as a router does; no default route, so that a VIP packet the
            // kernel were given could not go back to the router.
            lb.sysctl("net.ipv4.conf.all.forwarding", "1")?;
            lb.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            lb.sysctl("net.ipv4.conf.eth0.send_redirects", "0")?;
            if !dsr {
                // NAT: the balancer sends the translated replies on to the client.
                lb.ip(&format!("route add 198.18.2.0/24 via {ROUTER}"))?;
            }
        }
        for (i, host) in hosts.iter().enumerate() {
            to_switch(host, backend_addr(i))?;
            host.ip(&format!("route add default via {ROUTER}"))?;
            if !dsr && !fleet {
                host.ip(&format!("route add 198.18.2.0/24 via {}", balancer_addr(0)))?;
            }
            if dsr {
                host.exec(
                    "sh",
                    &[
                        &contrib().join("dsr-backend.sh").to_string_lossy(),
                        &VIP.to_string(),
                    ],
                )?;
            }
        }
        router.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        let nat_answers = !dsr && fleet;
        if nat_answers {
            // The backends' packets take table 100 (the balancers' default routes), and
            // leave by the interface they came in on without a redirect.
            router.ip(&format!("rule add from {BACKENDS} lookup 100"))?;
            router.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
            router.sysctl("net.ipv4.conf.eth0.send_redirects", "0")?;
        }

        let servers = hosts
            .iter()
            .enumerate()
            .map(|(i, host)| start_server(host, i, udp_bind(fleet, dsr)).map(Some))
            .collect::<Result<Vec<_>>>()?;
        let decaps = match forwarding {
            Forwarding::Ipip => hosts
                .iter()
                .map(|host| tunnel::start_decap(host, &[VIP.into()], &["198.18.1.0/24"]))
                .collect::<Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        let router_bird = Bird::start(&router, "rt", &router_bird_config(balancers)?)?;
        let birds = lbs
            .iter()
            .enumerate()
            .map(|(i, lb)| {
                let config = bird_config_of_balancer(i, nat_answers)?;
                Bird::start(lb, &format!("lb{}", i + 1), &config)
            })
            .collect::<Result<Vec<_>>>()?;
        let fleet_key = if fleet { Some(fleet_key()?) } else { None };
        let configs: Vec<String> = birds
            .iter()
            .enumerate()
            .map(|(i, bird)| {
                let mut fleet = fleet_key
                    .as_ref()
                    .map(|key| fleet_section(i, balancers, key))
                    .unwrap_or_default();
                if forwarding == Forwarding::Ipip {
                    fleet.push_str(&format!(
                        "tunnel = {{ source = \"{}\" }}\n",
                        balancer_addr(i)
                    ));
                }
                let mut config =
                    xlb_config(listed, service_keys, &bird.socket, drain, forwarding.name());
                if fleet_key.is_some() {
                    config.push_str(&udp_service(&config));
                }
                // A top-level key: before the first table.
                config.replacen(
                    "interfaces = [\"eth0\"]\n",
                    &format!("interfaces = [\"eth0\"]\n{fleet}"),
                    1,
                )
            })
            .collect();
        let mut cluster = Self {
            client,
            router,
            balancers: lbs,
            backends: hosts,
            xlbs: Vec::new(),
            configs,
            udp: udp_bind(fleet, dsr),
            servers: Mutex::new(servers),
            _decaps: decaps,
            _birds: birds,
            router_bird,
            _switch: switch,
        };
        for i in 0..balancers {
            let xlb = start_xlb(&cluster.balancers[i], &cluster.configs[i])?;
            cluster.xlbs.push(Mutex::new(xlb));
        }
        cluster
            .wait_for_next_hops(balancers, Duration::from_secs(30))
            .with_context(|| {
                let xlbs: Vec<String> = cluster
                    .xlbs
                    .iter()
                    .map(|xlb| xlb.lock().expect("the xlb lock").output())
                    .collect();
                format!(
                    "BGP did not converge:\n{}\nxlb:\n{}",
                    cluster.router_bird.protocols(),
                    xlbs.join("\n")
                )
            })?;
        Ok(cluster)
    }

    /// Stops backend `index`'s server: its checks fail.
    pub fn stop_server(&self, index: usize) -> Result<()> {
        if let Some(mut server) = self.servers.lock().expect("the servers lock")[index].take() {
            server.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Starts backend `index`'s server again.
    pub fn start_server(&self, index: usize) -> Result<()> {
        let server = start_server(&self.backends[index], index, self.udp)?;
        self.servers.lock().expect("the servers lock")[index] = Some(server);
        Ok(())
    }

    /// `xlb --json status` of balancer `index`, as JSON.
    pub fn status(&self, index: usize) -> Result<serde_json::Value> {
        let xlb = self.xlbs[index].lock().expect("the xlb lock");
        let (code, stdout, stderr) = xlb.cli(&["--json", "status"])?;
        anyhow::ensure!(code == 0, "xlb status: {stderr}");
        Ok(serde_json::from_str(&stdout)?)
    }

    /// The router's next hops for the VIP, in its kernel's table.
    pub fn next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let routes = self.router.ip(&format!("route show {VIP}"))?;
        Ok(routes
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// Waits until the router has `count` next hops for the VIP; returns how long it took.
    pub fn wait_for_next_hops(&self, count: usize, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if self.next_hops()?.len() == count {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!(
                    "the router has next hops {:?}, not {count}, after {limit:?}",
                    self.next_hops()?
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills balancer `index`'s xlb with SIGKILL (its data plane stays pinned, its device
    /// goes: its BIRD withdraws the VIP).
    pub fn kill(&self, index: usize) -> Result<()> {
        let mut xlb = self.xlbs[index].lock().expect("the xlb lock");
        xlb.signal(libc::SIGKILL)?;
        // Reaped; its pins stay for the restart.
        xlb.stop(Duration::from_secs(5))?;
        Ok(())
    }

    /// `xlb ARGS` on every balancer whose xlb runs; each must succeed.
    pub fn on_every_balancer(&self, args: &[&str]) -> Result<()> {
        for (i, xlb) in self.xlbs.iter().enumerate() {
            let mut xlb = xlb.lock().expect("the xlb lock");
            if xlb.exited()? {
                continue;
            }
            let (code, stdout, stderr) = xlb.cli(args)?;
            anyhow::ensure!(code == 0, "lb{}: xlb {args:?}: {stderr}{stdout}", i + 1);
        }
        Ok(())
    }

    /// Rewrites every balancer's config file with `change` and reloads the running ones.
    pub fn reload_every_balancer(&self, change: impl Fn(&str) -> String) -> Result<()> {
        for xlb in &self.xlbs {
            let path = xlb.lock().expect("the xlb lock").config_path.clone();
            let text = std::fs::read_to_string(&path)?;
            std::fs::write(&path, change(&text))?;
        }
        self.on_every_balancer(&["reload"])
    }

    /// Balancer `index` loses its link (as a host that hangs stops answering): nothing is
    /// withdrawn, the router has to notice.
    pub fn cut_link(&self, index: usize) -> Result<()> {
        self.balancers[index].ip("link set dev eth0 down").map(drop)
    }

    /// Stops balancer `index`'s xlb as an operator does (SIGTERM: it withdraws its VIPs,
    /// balances on for its drain time, then exits; its pins stay).
    pub fn stop(&self, index: usize) -> Result<()> {
        let mut xlb = self.xlbs[index].lock().expect("the xlb lock");
        xlb.stop(Duration::from_secs(10))?;
        Ok(())
    }

    /// Takes balancer `index` out of the fleet as if it had never run: its xlb stopped as an
    /// operator does (SIGTERM), its pins and state removed. [`Self::restart`] then starts it as
    /// a new instance, which joins with its peers' flows.
    pub fn retire(&self, index: usize) -> Result<()> {
        let mut xlb = self.xlbs[index].lock().expect("the xlb lock");
        xlb.stop(Duration::from_secs(10))?;
        xlb.forget();
        Ok(())
    }

    /// Starts balancer `index`'s xlb again, on its pins, as it was started.
    pub fn restart(&self, index: usize) -> Result<()> {
        let mut xlb = self.xlbs[index].lock().expect("the xlb lock");
        xlb.restart(&self.balancers[index], &[])
    }

    /// The data-plane event `name` (`xlb --json stats`), summed over the balancers whose xlb
    /// runs, since each loaded its program.
    pub fn event_total(&self, name: &str) -> Result<u64> {
        let mut total = 0;
        for xlb in &self.xlbs {
            let mut xlb = xlb.lock().expect("the xlb lock");
            if xlb.exited()? {
                continue;
            }
            let (code, stdout, stderr) = xlb.cli(&["--json", "stats"])?;
            anyhow::ensure!(code == 0, "xlb stats: {stderr}");
            let answer: serde_json::Value = serde_json::from_str(&stdout)?;
            let events = answer["stats"]["events"].as_array().context("events")?;
            total += events
                .iter()
                .filter(|pair| pair[0] == name)
                .filter_map(|pair| pair[1].as_u64())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// The value of metric `series` (its name and labels, as exposed) of balancer `index`'s
    /// xlb; 0 if it does not expose it.
    pub fn metric(&self, index: usize, series: &str) -> Result<f64> {
        let endpoint = METRICS.parse()?;
        let body = self.balancers[index].block_on(async move {
            tokio::time::timeout(
                Duration::from_secs(5),
                crate::client::http_get_body(endpoint, "/metrics"),
            )
            .await
        })???;
        Ok(body
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Flows of the service each balancer's xlb placed (new, or arriving without a flow) and
    /// the packets it forwarded, as `xlb --json stats` counts them.
    pub fn placed_and_forwarded(&self) -> Result<Vec<(u64, u64)>> {
        self.xlbs
            .iter()
            .map(|xlb| {
                let xlb = xlb.lock().expect("the xlb lock");
                let (code, stdout, stderr) = xlb.cli(&["--json", "stats"])?;
                anyhow::ensure!(code == 0, "xlb stats: {stderr}");
                let answer: serde_json::Value = serde_json::from_str(&stdout)?;
                let counters = &answer["stats"]["services"][0]["counters"];
                let number = |name: &str| counters[name].as_u64().context("a counter");
                Ok((number("new_flows")?, number("packets_to_backend")?))
            })
            .collect()
    }
}

/// Where a backend's UDP echo listens: a fleet's cluster has a UDP service too, on the same
/// port; its DSR backends answer from the VIP, so they listen on it.
fn udp_bind(fleet: bool, dsr: bool) -> Option<Ipv4Addr> {
    match (fleet, dsr) {
        (false, _) => None,
        (true, true) => Some(VIP),
        (true, false) => Some(Ipv4Addr::UNSPECIFIED),
    }
}

/// Starts backend `index`'s HTTP server on `host`, on the service's port, and its UDP echo on
/// `udp`, that port, if given.
fn start_server(host: &Netns, index: usize, udp: Option<Ipv4Addr>) -> Result<Process> {
    let mut command = host.command(binary("xlb-backend")?);
    let name = format!("b{}", index + 1);
    command.args(["--name", &name, "--http", &format!("0.0.0.0:{PORT}")]);
    if let Some(address) = udp {
        command.args(["--udp", &format!("{address}:{PORT}")]);
    }
    let mut process = Process::spawn(&name, command)?;
    process.wait_for_output("ready", STARTUP)?;
    Ok(process)
}

/// The port of the fleet's messages.
pub const FLEET_PORT: u16 = 7470;
/// Where each balancer's xlb serves its metrics, in its namespace.
const METRICS: &str = "127.0.0.1:9814";

/// A fleet key in a file readable by its owner only.
fn fleet_key() -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = temp_file(
        "fleet.key",
        "a key the test fleet shares, 32 bytes or more\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// The `fleet` of balancer `index` of `balancers`: every other balancer is a peer. UDP flows
/// expire after 6 s of silence and the peers' copies are refreshed every 2 s, so that a
/// round can outlast a copy that is not refreshed.
fn fleet_section(index: usize, balancers: usize, key: &Path) -> String {
    let peers: Vec<String> = (0..balancers)
        .filter(|&i| i != index)
        .map(|i| format!("\"{}:{FLEET_PORT}\"", balancer_addr(i)))
        .collect();
    format!(
        "udp_idle_timeout = \"6s\"\nfleet = {{ listen = \"{}:{FLEET_PORT}\", peers = [{}], key_file = \"{}\", refresh = \"2s\" }}\n",
        balancer_addr(index),
        peers.join(", "),
        key.display()
    )
}

/// A UDP service beside the TCP service of `config` (the same VIP, port, backends and keys),
/// as a fleet's cluster has.
fn udp_service(config: &str) -> String {
    let start = config.find("[[service]]").expect("a service");
    format!(
        "\n{}",
        config[start..]
            .replacen("name = \"web\"", "name = \"dgram\"", 1)
            .replacen("protocol = \"tcp\"", "protocol = \"udp\"", 1)
    )
}

/// The xlb config of a balancer: one service on the VIP over every backend, announced
/// through the BIRD at `bird_socket`, with `drain` on SIGTERM.
fn xlb_config(
    backends: usize,
    service_keys: &str,
    bird_socket: &Path,
    drain: &str,
    forwarding: &str,
) -> String {
    let list = (0..backends)
        .map(|i| format!("{{ address = \"{}:{PORT}\" }}", backend_addr(i)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"interfaces = ["eth0"]
metrics = "{METRICS}"

[announce]
bird_socket = "{}"
drain = "{drain}"

[[service]]
name = "web"
listen = "{VIP}:{PORT}"
protocol = "tcp"
forwarding = "{forwarding}"
announce = true
{service_keys}
health = {{ check = "tcp", interval = "200ms", timeout = "100ms", rise = 2, fall = 2 }}
backends = [ {list} ]
"#,
        bird_socket.display()
    )
}
