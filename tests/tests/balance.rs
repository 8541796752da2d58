//! Tier 3: xlb between real clients and real servers, each host in its own network namespace
//! (see `xlb_tests::topology`). Needs root: run with `cargo xtask test`.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xlb::dataplane::NoopProgram;
use xlb_tests::{
    client::{http_echo, payload, udp_echo},
    netns::Netns,
    process::{Process, binary, temp_file},
    topology::{Lab, VIP, Wiring},
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
const STARTUP: Duration = Duration::from_secs(20);

/// Starts `xlb-backend` on every backend host, serving HTTP and UDP.
fn start_backends(lab: &Lab) -> Vec<Process> {
    let program = binary("xlb-backend").unwrap();
    lab.backends
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = format!("b{}", i + 1);
            let mut command = host.command(&program);
            command.args([
                "--name",
                &name,
                "--http",
                &lab.backend_endpoint(i, HTTP_PORT).to_string(),
                "--udp",
                &lab.backend_endpoint(i, UDP_PORT).to_string(),
            ]);
            let mut process = Process::spawn(&name, command).unwrap();
            process.wait_for_output("ready", STARTUP).unwrap();
            process
        })
        .collect()
}

/// Attaches the reference XDP program to the far end of each of the balancer's links (see
/// `Lab::balancer_peers`); they stay attached while the returned programs live.
fn attach_peer_programs(lab: &Lab) -> Vec<NoopProgram> {
    lab.balancer_peers()
        .into_iter()
        .map(|(host, interface)| {
            host.enter(|| {
                let mut program = NoopProgram::load()?;
                program.attach(interface)?;
                anyhow::Ok(program)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{interface}: {e:#}"))
        })
        .collect()
}

/// A config balancing TCP port 80 and UDP port 53 of the VIP over every backend.
fn config(lab: &Lab) -> String {
    let backends = |port: u16| {
        (0..lab.backends.len())
            .map(|i| format!("{{ address = \"{}\" }}", lab.backend_endpoint(i, port)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
interfaces = [{interfaces}]
xdp_mode = "native"

[[service]]
name = "web"
listen = "{VIP}:80"
protocol = "tcp"
backends = [ {http} ]

[[service]]
name = "dns"
listen = "{VIP}:53"
protocol = "udp"
backends = [ {udp} ]
"#,
        interfaces = lab
            .balancer_interfaces
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", "),
        http = backends(HTTP_PORT),
        udp = backends(UDP_PORT),
    )
}

/// Starts `xlb run` on the balancer host and waits until it is ready.
fn start_xlb(host: &Netns, config: &str) -> Process {
    let path = temp_file("xlb.toml", config).unwrap();
    let mut command = host.command(binary("xlb").unwrap());
    command.arg("run").arg("--config").arg(&path);
    let mut xlb = Process::spawn("xlb", command).unwrap();
    xlb.wait_for_output("ready: xlb is balancing", STARTUP)
        .unwrap();
    xlb
}

/// Counts how many times each backend name occurs.
fn tally(names: Vec<String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    counts
}

/// 30 concurrent TCP connections and 30 UDP flows through the VIP: each backend must get
/// exactly 10 of each, and every payload must come back intact.
fn round_robin_end_to_end(wiring: Wiring) {
    let lab = Lab::new(wiring, 3).unwrap();
    let _peer_programs = attach_peer_programs(&lab);
    let _backends = start_backends(&lab);
    let mut xlb = start_xlb(&lab.balancer, &config(&lab));

    let (tcp, udp) = lab
        .client
        .enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let http_vip = SocketAddr::from((VIP, 80));
                let connections = (0..30u64).map(|i| {
                    // 20 kB to 50 kB each way: many segments in both directions.
                    http_echo(http_vip, payload(i, 20_000 + 1_000 * i as usize))
                });
                let tcp: Vec<String> = futures_join_all(connections).await;

                let udp_vip = SocketAddr::from((VIP, 53));
                let mut udp = Vec::new();
                for i in 0..30u64 {
                    // Three datagrams per flow: all must reach the same backend.
                    let name = udp_echo(udp_vip, &payload(1_000 + i, 1_200), 3).await;
                    udp.push(name.unwrap_or_else(|e| panic!("UDP flow {i}: {e:#}")));
                }
                (tcp, udp)
            })
        })
        .unwrap();

    let expected: BTreeMap<String, usize> = (1..=3).map(|i| (format!("b{i}"), 10)).collect();
    assert_eq!(tally(tcp), expected, "TCP connections per backend");
    assert_eq!(tally(udp), expected, "UDP flows per backend");

    let status = xlb.stop(Duration::from_secs(10)).unwrap();
    assert!(
        status.success(),
        "xlb exited with {status}:\n{}",
        xlb.output()
    );
    for interface in &lab.balancer_interfaces {
        let link = lab
            .balancer
            .ip(&format!("link show dev {interface}"))
            .unwrap();
        assert!(
            !link.contains("xdp"),
            "XDP still attached to {interface} after shutdown:\n{link}"
        );
    }
    let log = xlb.output();
    assert!(
        log.contains("new_flows=30"),
        "the service counters count 30 flows each:\n{log}"
    );
}

/// Runs the futures concurrently and returns their results in order, panicking on the first
/// error with its index.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<String>
where
    F: std::future::Future<Output = anyhow::Result<String>> + 'static,
{
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let handles: Vec<_> = futures.map(tokio::task::spawn_local).collect();
            let mut results = Vec::new();
            for (i, handle) in handles.into_iter().enumerate() {
                let result = handle.await.expect("task panicked");
                results.push(result.unwrap_or_else(|e| panic!("TCP connection {i}: {e:#}")));
            }
            results
        })
        .await
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_and_backends_behind_two_interfaces() {
    round_robin_end_to_end(Wiring::TwoInterfaces);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn clients_and_backends_behind_one_interface() {
    round_robin_end_to_end(Wiring::OneInterface);
}
