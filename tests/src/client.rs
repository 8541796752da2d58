//! Test clients: one new flow per call, checking that the payload comes back intact.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, header::HOST};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpStream, UdpSocket},
    time::timeout,
};

use crate::server::BACKEND_HEADER;

/// The name of the backend that sent `response` (the test servers name themselves).
fn backend_of<B>(response: &hyper::Response<B>) -> Result<String> {
    Ok(response
        .headers()
        .get(BACKEND_HEADER)
        .context("the response names no backend")?
        .to_str()?
        .to_owned())
}

/// How long one exchange may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// `len` pseudo-random bytes determined by `seed` (see [`Payload`]).
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    Payload::new(seed).take(len).collect()
}

/// The pseudo-random bytes determined by a seed (xorshift64*), so a corrupted byte is a
/// mismatch rather than an accident; an iterator, so a receiver can check a long stream as it
/// arrives.
pub struct Payload(u64);

impl Payload {
    /// The bytes of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
}

impl Iterator for Payload {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let state = &mut self.0;
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        Some((state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8)
    }
}

/// POSTs `payload` over a new TCP connection to `vip`, checks that the body comes back
/// byte for byte, and returns the name of the backend that answered.
pub async fn http_echo(vip: SocketAddr, payload: Vec<u8>) -> Result<String> {
    http_echo_from(None, vip, payload).await
}

/// A TCP connection to `vip`, from the address `source` if given.
async fn connect(source: Option<IpAddr>, vip: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(vip).await;
    };
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(vip).await
}

/// [`http_echo`] from the client address `source` (the host must have it).
pub async fn http_echo_from(
    source: Option<IpAddr>,
    vip: SocketAddr,
    payload: Vec<u8>,
) -> Result<String> {
    timeout(EXCHANGE_TIMEOUT, async {
        let stream = connect(source, vip)
            .await
            .with_context(|| format!("connecting to {vip}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let sent = Bytes::from(payload);
        let request = Request::post("/echo")
            .header(HOST, vip.to_string())
            .body(Full::new(sent.clone()))?;
        let response = sender.send_request(request).await.context("HTTP request")?;
        ensure!(
            response.status().is_success(),
            "HTTP status {}",
            response.status()
        );
        let backend = backend_of(&response)?;
        let received = response.into_body().collect().await?.to_bytes();
        check_echo(&sent, &received)?;
        Ok(backend)
    })
    .await
    .with_context(|| format!("HTTP exchange with {vip} timed out"))?
}

/// A UDP socket on an ephemeral port, connected to `vip`: one flow. While it is open, no other
/// socket gets its port, so flows opened one after another stay distinct (a closed socket's
/// port may come back, and with it a flow xlb still has).
pub async fn udp_socket(vip: SocketAddr) -> Result<UdpSocket> {
    let any: SocketAddr = if vip.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(vip).await?;
    Ok(socket)
}

/// Sends `datagrams` datagrams of `payload` from `socket` (one flow, see [`udp_socket`]) and
/// checks every reply; returns the backend's name, which must be the same for all of them.
pub async fn udp_echo(socket: &UdpSocket, payload: &[u8], datagrams: usize) -> Result<String> {
    let vip = socket.peer_addr()?;
    let mut backend: Option<String> = None;
    let mut buffer = vec![0u8; 65_536];
    for n in 0..datagrams {
        socket.send(payload).await?;
        let len = timeout(EXCHANGE_TIMEOUT, socket.recv(&mut buffer))
            .await
            .with_context(|| format!("no UDP reply from {vip} to datagram {n}"))??;
        let reply = &buffer[..len];
        let split = reply
            .iter()
            .position(|&b| b == b'\n')
            .context("reply without a name")?;
        let name = String::from_utf8_lossy(&reply[..split]).into_owned();
        check_echo(payload, &reply[split + 1..])?;
        match &backend {
            None => backend = Some(name),
            Some(first) if *first != name => {
                bail!("one UDP flow was answered by {first} and then {name}")
            }
            Some(_) => {}
        }
    }
    backend.context("no datagram sent")
}

fn check_echo(sent: &[u8], received: &[u8]) -> Result<()> {
    if sent != received {
        let first_difference = sent.iter().zip(received).position(|(a, b)| a != b);
        bail!(
            "payload corrupted: sent {} bytes, received {} (first difference at {first_difference:?})",
            sent.len(),
            received.len()
        );
    }
    Ok(())
}

/// A download in progress: the backend is known once the headers arrived; [`Self::finish`]
/// reads the rest and checks every byte.
pub struct Download {
    /// The backend that serves it.
    pub backend: String,
    bytes: usize,
    body: Incoming,
}

/// Starts `GET /download` of `bytes` bytes that the backend spreads over `ms` milliseconds,
/// over a new TCP connection to `vip`.
pub async fn start_download(vip: SocketAddr, bytes: usize, ms: u64) -> Result<Download> {
    start_download_from(None, vip, bytes, ms).await
}

/// [`start_download`] from the client address `source`.
pub async fn start_download_from(
    source: Option<IpAddr>,
    vip: SocketAddr,
    bytes: usize,
    ms: u64,
) -> Result<Download> {
    let response = get(
        source,
        vip,
        &format!("/download?bytes={bytes}&ms={ms}"),
        None,
    )
    .await?;
    let backend = backend_of(&response)?;
    Ok(Download {
        backend,
        bytes,
        body: response.into_body(),
    })
}

impl Download {
    /// Reads the rest of the download and checks it byte for byte; returns its length.
    pub async fn finish(self) -> Result<usize> {
        let received = self
            .body
            .collect()
            .await
            .context("download interrupted")?
            .to_bytes();
        check_echo(&payload(self.bytes as u64, self.bytes), &received)?;
        Ok(received.len())
    }
}

/// POSTs `bytes` bytes of [`payload`] (seed `bytes`) to `/upload` over a new TCP connection
/// to `vip`; the backend checks every byte as it arrives. Returns the backend's name.
pub async fn upload(vip: SocketAddr, bytes: usize) -> Result<String> {
    let stream = TcpStream::connect(vip)
        .await
        .with_context(|| format!("connecting to {vip}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::post(format!("/upload?bytes={bytes}"))
        .header(HOST, vip.to_string())
        .body(Full::new(Bytes::from(payload(bytes as u64, bytes))))?;
    let response = sender.send_request(request).await.context("HTTP request")?;
    let backend = backend_of(&response)?;
    let status = response.status();
    let verdict = response.into_body().collect().await?.to_bytes();
    let verdict = String::from_utf8_lossy(&verdict);
    ensure!(
        status.is_success() && verdict == format!("ok {bytes}"),
        "upload to {backend}: HTTP {status}: {verdict}"
    );
    Ok(backend)
}

/// How a TCP connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    /// Established.
    Connected,
    /// Refused: a host answered with a reset.
    Refused,
    /// No answer within the limit.
    TimedOut,
}

/// Tries to connect to `vip` within `limit`.
pub async fn try_connect(vip: SocketAddr, limit: Duration) -> Result<Connect> {
    match timeout(limit, TcpStream::connect(vip)).await {
        Err(_) => Ok(Connect::TimedOut),
        Ok(Ok(_)) => Ok(Connect::Connected),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Connect::Refused),
        Ok(Err(e)) => Err(e).with_context(|| format!("connecting to {vip}")),
    }
}

/// `GET path` over a new connection to `address` from `source` (or any address): the
/// response, whose body is still to be read, if its status is a success.
async fn get(
    source: Option<IpAddr>,
    address: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Result<hyper::Response<Incoming>> {
    let stream = timeout(EXCHANGE_TIMEOUT, connect(source, address))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {address}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(path).header(HOST, address.to_string());
    if let Some(accept) = accept {
        request = request.header(hyper::header::ACCEPT, accept);
    }
    let request = request.body(http_body_util::Empty::<Bytes>::new())?;
    let response = timeout(EXCHANGE_TIMEOUT, sender.send_request(request))
        .await
        .context("no response")??;
    ensure!(
        response.status().is_success(),
        "HTTP status {}",
        response.status()
    );
    Ok(response)
}

/// `GET path` over a new connection to `address`; returns the body.
pub async fn http_get_body(address: SocketAddr, path: &str) -> Result<String> {
    Ok(http_get_accepting(address, path, None).await?.1)
}

/// [`http_get_body`] with an `Accept` header; returns the answer's content type and body.
pub async fn http_get_accepting(
    address: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Result<(String, String)> {
    let response = get(None, address, path, accept).await?;
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((content_type, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP/1.1 connection kept open between requests: an established flow that may sit idle.
pub struct Session {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    vip: SocketAddr,
}

impl Session {
    /// Opens a connection to `vip`.
    pub async fn open(vip: SocketAddr) -> Result<Self> {
        let stream = timeout(EXCHANGE_TIMEOUT, TcpStream::connect(vip))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {vip}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender, vip })
    }

    /// Echoes `body` on this connection and returns the backend that answered.
    pub async fn echo(&mut self, body: Vec<u8>) -> Result<String> {
        let request = Request::post("/echo")
            .header(HOST, self.vip.to_string())
            .body(Full::new(Bytes::from(body.clone())))?;
        let response = timeout(EXCHANGE_TIMEOUT, self.sender.send_request(request))
            .await
            .context("no response")??;
        let backend = backend_of(&response)?;
        let received = timeout(EXCHANGE_TIMEOUT, response.into_body().collect())
            .await
            .context("body timed out")??
            .to_bytes();
        check_echo(&body, &received)?;
        Ok(backend)
    }
}
