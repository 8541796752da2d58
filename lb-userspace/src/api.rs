//! The control API. The daemon serves it on a Unix socket (owner-only, and it refuses peers
//! that are neither root nor the daemon's user); every CLI subcommand except `run` and `check`
//! speaks it. One JSON request per connection, one JSON response back, each on one line.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    time::timeout,
};
use tracing::{debug, warn};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";
/// Longest request line the daemon reads.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request, and the CLI to wait for an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services and backends with their state, weights, load and rates. (Variants without
    /// fields are written `{}` so that unknown fields are refused for them too.)
    Status {},
    /// Counters since the program was loaded.
    Stats {},
    /// An operator's change to one backend, kept until `enable` or a reload.
    Backend {
        /// Service name.
        service: String,
        /// Backend address and port.
        backend: SocketAddr,
        /// What to do.
        action: AdminAction,
    },
    /// Re-read the config file and apply the difference.
    Reload {},
    /// Which backend a new flow from `client` to `service` would get now.
    Simulate {
        /// Service name.
        service: String,
        /// Client address and port.
        client: SocketAddr,
    },
}

/// An operator's change to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// No new flows; established flows continue.
    Drain,
    /// Administratively Down: out of the table, flows purged.
    Disable,
    /// Clear a drain or disable.
    Enable,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Answer to `status`.
    Status(StatusReport),
    /// Answer to `stats`.
    Stats(StatsReport),
    /// Answer to `simulate`.
    Simulation(SimulationReport),
    /// A change was made; what it was.
    Done(String),
    /// The request failed; why.
    Error(String),
}

/// All services.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Services in config order.
    pub services: Vec<ServiceStatus>,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP and port.
    pub listen: SocketAddr,
    /// "tcp" or "udp".
    pub protocol: String,
    /// Packets per second, both directions, over the last second.
    pub packets_per_second: f64,
    /// Bits per second, both directions, over the last second.
    pub bits_per_second: f64,
    /// Backends in config order.
    pub backends: Vec<BackendStatusReport>,
    /// Locality pools (empty for a service without `[[service.pool]]`s).
    #[serde(default)]
    pub pools: Vec<PoolStatus>,
}

/// One locality pool of a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Its backends that have room for new flows (Up), and all of them.
    pub up: usize,
    /// Its backends.
    pub backends: usize,
    /// The pool that takes its clients' new flows now: itself, or a fallback.
    pub serving: String,
    /// New flows of its clients placed in other pools so far, by pool.
    pub spilled: Vec<(String, u64)>,
}

/// One backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatusReport {
    /// Address and port.
    pub address: SocketAddr,
    /// Up, Overloaded, Draining or Down.
    pub state: String,
    /// Why.
    pub reason: String,
    /// Seconds in this state.
    pub since_seconds: f64,
    /// Weight in the config.
    pub weight: u32,
    /// Weight in the published table (in hundredths of the configured weight unit).
    pub effective_weight: u32,
    /// The agent's last weight, if it has an agent.
    pub agent_weight_percent: Option<u32>,
    /// Flows with a packet in the last 10 seconds.
    pub active_flows: u64,
    /// Packets per second, both directions, over the last second.
    pub packets_per_second: f64,
    /// Bits per second, both directions, over the last second.
    pub bits_per_second: f64,
    /// An operator's drain or disable in force.
    pub admin: Option<AdminAction>,
}

/// Counters since the program was loaded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Services in config order.
    pub services: Vec<ServiceStats>,
    /// Data-plane events, by name.
    pub events: Vec<(String, u64)>,
    /// The flow tables, as of the last sweep.
    pub flow_table: FlowTableStats,
}

/// How full the flow tables are, as the last sweep found them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableStats {
    /// Established flows.
    pub established: u64,
    /// Flows `FLOWS` holds (`flow_table_size`); when full, the least recently used are evicted.
    pub capacity: u64,
    /// TCP flows whose handshake has not completed.
    pub half_open: u64,
    /// Half-open flows `HALF_OPEN` holds; when full, the least recently used are evicted.
    pub half_open_capacity: u64,
    /// Flows deleted since the daemon started because they were idle or closed.
    pub expired: u64,
    /// New TCP flows per 100 ms window above which SYNs are placed by hash, not round robin
    /// (the handshake guard; see the README). Absent from older daemons' answers.
    #[serde(default)]
    pub handshake_budget: u64,
    /// Whether the handshake guard is placing SYNs by hash now (a SYN flood).
    #[serde(default)]
    pub handshake_guard_on: bool,
}

/// Counters of one service and its backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Name.
    pub name: String,
    /// The service's counters.
    pub counters: Counters,
    /// Each backend's counters.
    pub backends: Vec<(SocketAddr, Counters)>,
}

/// Traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets client to backend.
    pub packets_to_backend: u64,
    /// Bytes client to backend.
    pub bytes_to_backend: u64,
    /// Packets backend to client.
    pub packets_to_client: u64,
    /// Bytes backend to client.
    pub bytes_to_client: u64,
    /// Flows created.
    pub new_flows: u64,
    /// New flows dropped for want of a backend.
    pub no_backend: u64,
}

impl From<lb_common::TrafficCounters> for Counters {
    fn from(c: lb_common::TrafficCounters) -> Self {
        Self {
            packets_to_backend: c.fwd_packets,
            bytes_to_backend: c.fwd_bytes,
            packets_to_client: c.rev_packets,
            bytes_to_client: c.rev_bytes,
            new_flows: c.new_flows,
            no_backend: c.no_backend,
        }
    }
}

/// What a simulated new flow got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimulationReport {
    /// Service name.
    pub service: String,
    /// Client address and port.
    pub client: SocketAddr,
    /// The program's verdict.
    pub verdict: String,
    /// The backend the packet was sent to, if any.
    pub backend: Option<SocketAddr>,
    /// Whether the client already had a flow (which the packet followed).
    pub existing_flow: bool,
    /// The client's home pool, for a service with pools.
    #[serde(default)]
    pub home_pool: Option<String>,
    /// The pool of the backend the packet went to, for a service with pools.
    #[serde(default)]
    pub backend_pool: Option<String>,
}

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// Binds the API socket: creates its directory, refuses if another daemon answers there,
/// replaces a stale socket file, and makes the socket owner-only (0600).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            bail!("another xlb is running: it answers on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API on `listener`, passing each request to `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, calls).await {
                debug!("API connection: {error:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<Call>) -> Result<()> {
    let credentials = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    let (reader, mut writer) = stream.into_split();
    let response = if credentials.uid() != 0 && credentials.uid() != own_uid {
        warn!(
            uid = credentials.uid(),
            "API request from another user refused"
        );
        Response::Error(format!(
            "permission denied: uid {} is neither root nor the daemon's user",
            credentials.uid()
        ))
    } else {
        let mut line = String::new();
        let mut limited =
            AsyncBufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST as u64));
        match timeout(IO_TIMEOUT, limited.read_line(&mut line)).await {
            Err(_) => Response::Error("no request within 30 s".into()),
            Ok(Err(error)) => Response::Error(format!("reading the request: {error}")),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                Err(error) => Response::Error(format!("malformed request: {error}")),
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if calls.send((request, reply)).await.is_err() {
                        Response::Error("the daemon is shutting down".into())
                    } else {
                        answer.await.unwrap_or_else(|_| {
                            Response::Error("the daemon is shutting down".into())
                        })
                    }
                }
            },
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Sends `request` to the daemon at `socket` and returns its answer (for the CLI).
pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    let mut stream = StdUnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the xlb daemon at {} (is `xlb run` running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(answer.trim())
        .with_context(|| format!("unreadable answer from the daemon: {answer:?}"))
}

/// The default socket path as a `PathBuf`.
pub fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        assert_eq!(
            serde_json::to_string(&Request::Status {}).unwrap(),
            r#"{"command":"status"}"#
        );
        let drain: Request = serde_json::from_str(
            r#"{"command":"backend","service":"web","backend":"198.18.1.11:8080","action":"drain"}"#,
        )
        .unwrap();
        assert_eq!(
            drain,
            Request::Backend {
                service: "web".into(),
                backend: "198.18.1.11:8080".parse().unwrap(),
                action: AdminAction::Drain
            }
        );
        for bad in [
            r#"{"command":"frobnicate"}"#,
            r#"{"command":"backend","service":"web"}"#,
            r#"{"command":"status","extra":1}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_malformed_request_gets_an_error_and_the_server_keeps_serving() {
        let dir = std::env::temp_dir().join(format!("xlb-api-test-{}", std::process::id()));
        let path = dir.join("api.sock");
        let listener = bind(&path).unwrap();
        let (calls, mut requests) = mpsc::channel::<Call>(4);
        tokio::spawn(serve(listener, calls));
        tokio::spawn(async move {
            while let Some((request, reply)) = requests.recv().await {
                let _ = reply.send(Response::Done(format!("{request:?}")));
            }
        });
        let answer = |line: &'static str| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut stream = StdUnixStream::connect(&path).unwrap();
                stream.write_all(line.as_bytes()).unwrap();
                let mut answer = String::new();
                BufReader::new(stream).read_line(&mut answer).unwrap();
                serde_json::from_str::<Response>(answer.trim()).unwrap()
            })
        };
        let Response::Error(error) = answer("{\"command\":\n").await.unwrap() else {
            panic!()
        };
        assert!(error.starts_with("malformed request"), "{error}");
        assert_eq!(
            answer("{\"command\":\"status\"}\n").await.unwrap(),
            Response::Done("Status".into())
        );
        // The socket is owner-only, and a second daemon cannot take it.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            bind(&path)
                .unwrap_err()
                .to_string()
                .contains("another xlb is running")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
