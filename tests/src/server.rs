//! The backend server used by tests and the demo:
//! - HTTP/1.1 (hyper): names itself in an `x-backend` header; `GET /download?bytes=N&ms=T`
//!   streams N deterministic bytes (see [`crate::client::payload`]) spread over T milliseconds;
//!   `POST /upload?bytes=N` checks that the body is those N bytes, byte by byte as they arrive,
//!   and answers `ok N` (or where the first difference is); `GET /count` answers how many other
//!   requests it has served; any other request gets its body echoed back;
//! - UDP: answers each datagram with its name, a newline and the datagram;
//! - an HAProxy-style load agent: answers each connection with one line read from a file (so
//!   a test changes the backend's reported load by writing the file).

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::{
    Request, Response,
    body::{Body, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, UdpSocket},
    sync::mpsc,
};

use crate::client::{Payload, payload};

/// Header in which the HTTP server names itself.
pub const BACKEND_HEADER: &str = "x-backend";
/// What the agent says when its file is missing or empty.
pub const DEFAULT_AGENT_REPLY: &str = "up 100%";
/// Size of the chunks of a download.
const DOWNLOAD_CHUNK: usize = 16 * 1024;

/// A response body fed by a channel, so a download can be paced.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// The parameters of `/download?bytes=N&ms=T`.
fn download_request(request: &Request<Incoming>) -> Option<(usize, u64)> {
    if request.uri().path() != "/download" {
        return None;
    }
    let (mut bytes, mut ms) = (0usize, 0u64);
    for pair in request.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("bytes", n)) => bytes = n.parse().ok()?,
            Some(("ms", n)) => ms = n.parse().ok()?,
            _ => {}
        }
    }
    Some((bytes, ms))
}

/// The `N` of `/upload?bytes=N`.
fn upload_request(request: &Request<Incoming>) -> Option<usize> {
    if request.uri().path() != "/upload" {
        return None;
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("bytes=")?.parse().ok())
}

/// Reads an upload's body and compares it with the payload of seed `bytes` as it arrives:
/// `ok N`, or what went wrong.
async fn check_upload(mut body: Incoming, bytes: usize) -> Result<String, hyper::Error> {
    let mut expected = Payload::new(bytes as u64);
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if let Some(at) = data.iter().position(|&b| Some(b) != expected.next()) {
            return Ok(format!("mismatch at byte {}", received + at));
        }
        received += data.len();
    }
    Ok(if received == bytes {
        format!("ok {bytes}")
    } else {
        format!("received {received} of {bytes} bytes")
    })
}

/// Streams `bytes` of payload over about `ms` milliseconds into `chunks`.
async fn stream_download(bytes: usize, ms: u64, chunks: mpsc::Sender<Bytes>) {
    let data = Bytes::from(payload(bytes as u64, bytes));
    let count = bytes.div_ceil(DOWNLOAD_CHUNK).max(1) as u64;
    let pause = Duration::from_millis(ms) / count as u32;
    for start in (0..bytes).step_by(DOWNLOAD_CHUNK) {
        let end = (start + DOWNLOAD_CHUNK).min(bytes);
        if chunks.send(data.slice(start..end)).await.is_err() {
            return;
        }
        // A zero sleep still waits for the timer's next tick (about a millisecond).
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve_http(name: String, listener: TcpListener) -> Result<()> {
    let served = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let name = name.clone();
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let name = name.clone();
                let served = Arc::clone(&served);
                async move {
                    let response = Response::builder().header(BACKEND_HEADER, name);
                    if request.uri().path() == "/count" {
                        let count = Bytes::from(served.load(Ordering::Relaxed).to_string());
                        return Ok(response
                            .body(Either::Right(Full::new(count)))
                            .expect("valid"));
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                    if let Some(bytes) = upload_request(&request) {
                        let verdict = check_upload(request.into_body(), bytes).await?;
                        return Ok(response
                            .body(Either::Right(Full::new(Bytes::from(verdict))))
                            .expect("valid"));
                    }
                    if let Some((bytes, ms)) = download_request(&request) {
                        let (chunks, receiver) = mpsc::channel(4);
                        tokio::spawn(stream_download(bytes, ms, chunks));
                        let body = Either::Left(ChannelBody(receiver));
                        return Ok::<_, hyper::Error>(response.body(body).expect("valid"));
                    }
                    let echoed = request.into_body().collect().await?.to_bytes();
                    Ok(response
                        .body(Either::Right(Full::new(echoed)))
                        .expect("valid"))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers datagrams on `socket` until the task is dropped.
pub async fn serve_udp(name: String, socket: UdpSocket) -> Result<()> {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, peer) = socket.recv_from(&mut buffer).await.context("recv")?;
        let mut reply = Vec::with_capacity(name.len() + 1 + len);
        reply.extend_from_slice(name.as_bytes());
        reply.push(b'\n');
        reply.extend_from_slice(&buffer[..len]);
        socket.send_to(&reply, peer).await.context("send")?;
    }
}

/// Answers each agent connection with the first line of `reply_file`.
pub async fn serve_agent(listener: TcpListener, reply_file: PathBuf) -> Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await.context("accept")?;
        let reply = std::fs::read_to_string(&reply_file).unwrap_or_default();
        let line = reply
            .lines()
            .next()
            .filter(|l| !l.is_empty())
            .unwrap_or(DEFAULT_AGENT_REPLY);
        let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
    }
}

/// What one backend server serves.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Name returned in every answer.
    pub name: String,
    /// HTTP address.
    pub http: Option<SocketAddr>,
    /// UDP address.
    pub udp: Option<SocketAddr>,
    /// Agent address and the file holding its reply.
    pub agent: Option<(SocketAddr, PathBuf)>,
}

/// Binds every socket (so that once `ready` runs, the server answers) and serves them.
pub async fn bind_and_serve(spec: ServerSpec, ready: impl FnOnce()) -> Result<()> {
    async fn bind_tcp(address: Option<SocketAddr>) -> Result<Option<TcpListener>> {
        match address {
            Some(a) => Ok(Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding {a}"))?,
            )),
            None => Ok(None),
        }
    }
    let http = bind_tcp(spec.http).await?;
    let agent = bind_tcp(spec.agent.as_ref().map(|(a, _)| *a)).await?;
    let udp = match spec.udp {
        Some(a) => Some(
            UdpSocket::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        ),
        None => None,
    };
    ready();
    let name = spec.name;
    let http_task = async {
        match http {
            Some(listener) => serve_http(name.clone(), listener).await,
            None => std::future::pending().await,
        }
    };
    let udp_task = async {
        match udp {
            Some(socket) => serve_udp(name.clone(), socket).await,
            None => std::future::pending().await,
        }
    };
    let agent_task = async {
        match (agent, spec.agent) {
            (Some(listener), Some((_, file))) => serve_agent(listener, file).await,
            _ => std::future::pending().await,
        }
    };
    tokio::try_join!(http_task, udp_task, agent_task)?;
    Ok(())
}
