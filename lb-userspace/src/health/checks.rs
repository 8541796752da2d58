//! Health checks: can a backend serve at all? Each returns `Ok(())` or why it failed.

use std::{fmt, io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, header::HOST};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use super::tunnel::{CheckTunnel, Registration, TunnelHop};
use crate::config::HealthCheck;

/// The way a backend's checks take.
#[derive(Clone)]
pub(crate) enum CheckPath {
    /// To the target as any client of it would.
    Direct,
    /// Inside the tunnel of the hop, to the VIP (`health.via = "tunnel"`).
    Tunnel(CheckTunnel, TunnelHop),
}

impl CheckPath {
    /// A TCP connection to `target` along this path, and what must be held as long as it.
    async fn connect(
        &self,
        target: SocketAddr,
    ) -> Result<(TcpStream, Option<Registration>), Failure> {
        let connected = match self {
            Self::Direct => TcpStream::connect(target)
                .await
                .map(|stream| (stream, None)),
            Self::Tunnel(tunnel, hop) => tunnel
                .connect(target, *hop)
                .await
                .map(|(stream, registration)| (stream, Some(registration))),
        };
        connected.map_err(|e| connect_failure(target, self, &e))
    }

    /// A UDP socket connected to `target` along this path, and what must be held as long as
    /// it.
    async fn udp(&self, target: SocketAddr) -> Result<(UdpSocket, Option<Registration>), Failure> {
        let connected = match self {
            Self::Direct => {
                let local: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .expect("a valid address");
                async {
                    let socket = UdpSocket::bind(local).await?;
                    socket.connect(target).await?;
                    Ok((socket, None))
                }
                .await
            }
            Self::Tunnel(tunnel, hop) => tunnel
                .udp(target, *hop)
                .await
                .map(|(socket, registration)| (socket, Some(registration))),
        };
        connected.map_err(|e: io::Error| format!("UDP to {target}{}: {e}", self.shown()).into())
    }

    /// How the path is shown after a target in messages.
    fn shown(&self) -> String {
        match self {
            Self::Direct => String::new(),
            Self::Tunnel(_, hop) => format!(" inside the tunnel to {}", hop.backend),
        }
    }
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What happened, for logs and `xlb status`.
    pub message: String,
    /// The backend's host is gone: no route to it, or its neighbour does not answer (the
    /// kernel's "host unreachable"). Its established connections cannot be served either.
    pub host_gone: bool,
    /// No answer within the check's timeout: a host that is gone, or one too busy to take a
    /// new connection.
    pub timed_out: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            host_gone: false,
            timed_out: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Self::from(message.to_owned())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A check's result.
pub(crate) type CheckResult = Result<(), Failure>;

/// A failed connection to `target` along `path`: the host is gone if the kernel says it
/// cannot reach it.
fn connect_failure(target: SocketAddr, path: &CheckPath, error: &io::Error) -> Failure {
    Failure {
        message: format!("connect {target}{}: {error}", path.shown()),
        host_gone: matches!(
            error.raw_os_error(),
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH)
        ),
        timed_out: false,
    }
}

/// How long a connection attempt beside the checks may take to learn whether a host that does
/// not answer is gone: longer than the kernel takes to give up on a neighbour (3 probes a
/// second apart) or a router to report a host unreachable after its own.
pub(crate) const GONE_WAIT: Duration = Duration::from_secs(10);

/// After a check that timed out, whether `target`'s host is gone: a TCP connection attempt
/// (whatever the check; a live host answers it or resets it) that the kernel fails with "host
/// unreachable" or "network unreachable" within `wait`. Returns that failure if so.
pub(crate) async fn gone(target: SocketAddr, wait: Duration) -> Option<Failure> {
    let started = tokio::time::Instant::now();
    match timeout(wait, TcpStream::connect(target)).await {
        Ok(Err(error)) => {
            let failure = connect_failure(target, &CheckPath::Direct, &error);
            failure.host_gone.then(|| Failure {
                message: format!(
                    "{} (after {} ms: the host is gone)",
                    failure.message,
                    started.elapsed().as_millis()
                ),
                ..failure
            })
        }
        Ok(Ok(_)) | Err(_) => None,
    }
}

/// Runs `check` against `target` along `path`, failing if it takes longer than `limit`.
pub(crate) async fn run(
    check: &HealthCheck,
    target: SocketAddr,
    path: &CheckPath,
    limit: Duration,
) -> CheckResult {
    let attempt = async {
        match check {
            HealthCheck::None => Ok(()),
            HealthCheck::Tcp => path.connect(target).await.map(drop),
            HealthCheck::Http {
                path: request,
                expect,
                host,
            } => http(target, path, request, expect, host.as_deref()).await,
            HealthCheck::Udp { send, expect } => udp(target, path, send, expect.as_deref()).await,
        }
    };
    timeout(limit, attempt).await.unwrap_or_else(|_| {
        Err(Failure {
            message: format!(
                "no answer{} within {}",
                path.shown(),
                humantime::format_duration(limit)
            ),
            host_gone: false,
            timed_out: true,
        })
    })
}

async fn http(
    target: SocketAddr,
    via: &CheckPath,
    path: &str,
    expect: &[(u16, u16)],
    host: Option<&str>,
) -> CheckResult {
    let (stream, _registration) = via.connect(target).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP to {target}: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, host.map_or_else(|| target.to_string(), str::to_owned))
        .header("user-agent", "xlb-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP GET {path}: {e}"));
    connection.abort();
    let status = response?.status().as_u16();
    if expect
        .iter()
        .any(|(low, high)| (*low..=*high).contains(&status))
    {
        Ok(())
    } else {
        Err(format!("HTTP GET {path}: status {status}").into())
    }
}

async fn udp(
    target: SocketAddr,
    path: &CheckPath,
    send: &[u8],
    expect: Option<&[u8]>,
) -> CheckResult {
    let (socket, _registration) = path.udp(target).await?;
    socket
        .send(send)
        .await
        .map_err(|e| format!("UDP send to {target}: {e}"))?;
    let mut reply = vec![0u8; 65_536];
    let len = socket
        .recv(&mut reply)
        .await
        .map_err(|e| format!("UDP reply from {target}: {e}"))?;
    match expect {
        Some(expected) if reply[..len] != *expected => {
            Err(format!("UDP reply from {target} is not the expected one ({len} bytes)").into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn tcp_checks_pass_on_a_listener_and_fail_without_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        assert_eq!(
            run(&HealthCheck::Tcp, address, &CheckPath::Direct, LIMIT).await,
            Ok(())
        );
        drop(listener);
        let error = run(&HealthCheck::Tcp, address, &CheckPath::Direct, LIMIT)
            .await
            .unwrap_err();
        assert!(error.message.contains("Connection refused"), "{error}");
        assert!(!error.host_gone, "a host that refuses is there");
    }

    /// Serves one HTTP response with `status` to every connection, recording the request.
    async fn http_server(status: u16) -> (SocketAddr, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (requests, received) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 4096];
                let len = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer)
                    .await
                    .unwrap();
                let _ = requests
                    .send(String::from_utf8_lossy(&buffer[..len]).into_owned())
                    .await;
                let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        (address, received)
    }

    #[tokio::test]
    async fn http_checks_compare_the_status_and_send_the_host_header() {
        let check = |host: Option<&str>| HealthCheck::Http {
            path: "/healthz".into(),
            expect: vec![(200, 299), (302, 302)],
            host: host.map(str::to_owned),
        };
        let (ok, mut requests) = http_server(204).await;
        assert_eq!(
            run(&check(Some("app.example")), ok, &CheckPath::Direct, LIMIT).await,
            Ok(())
        );
        let request = requests.recv().await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("host: app.example\r\n"),
            "{request}"
        );

        let (failing, _) = http_server(503).await;
        assert_eq!(
            run(&check(None), failing, &CheckPath::Direct, LIMIT).await,
            Err("HTTP GET /healthz: status 503".into())
        );
    }

    #[tokio::test]
    async fn udp_checks_need_a_reply_and_the_expected_one() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 64];
            loop {
                let (len, peer) = server.recv_from(&mut buffer).await.unwrap();
                let reply = if &buffer[..len] == b"ping" {
                    &b"pong"[..]
                } else {
                    &b"what"[..]
                };
                server.send_to(reply, peer).await.unwrap();
            }
        });
        let check = |expect: Option<&[u8]>| HealthCheck::Udp {
            send: b"ping".to_vec(),
            expect: expect.map(<[u8]>::to_vec),
        };
        assert_eq!(
            run(&check(None), address, &CheckPath::Direct, LIMIT).await,
            Ok(())
        );
        assert_eq!(
            run(&check(Some(b"pong")), address, &CheckPath::Direct, LIMIT).await,
            Ok(())
        );
        assert!(
            run(&check(Some(b"other")), address, &CheckPath::Direct, LIMIT)
                .await
                .unwrap_err()
                .message
                .contains("not the expected one")
        );
    }

    #[tokio::test]
    async fn checks_time_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let check = HealthCheck::Udp {
            send: b"ping".to_vec(),
            expect: None,
        };
        let error = run(
            &check,
            silent.local_addr().unwrap(),
            &CheckPath::Direct,
            Duration::from_millis(30),
        )
        .await
        .unwrap_err();
        assert_eq!(error.message, "no answer within 30ms");
        assert!(error.timed_out && !error.host_gone);
    }

    #[test]
    fn a_host_the_kernel_cannot_reach_is_gone() {
        let target = "198.18.1.11:80".parse().unwrap();
        for (errno, gone) in [
            (libc::EHOSTUNREACH, true),
            (libc::ENETUNREACH, true),
            (libc::ECONNREFUSED, false),
        ] {
            let failure = connect_failure(
                target,
                &CheckPath::Direct,
                &io::Error::from_raw_os_error(errno),
            );
            assert_eq!(failure.host_gone, gone, "{failure}");
        }
    }
}
