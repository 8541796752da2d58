//! The backend server used by tests and the demo: a real HTTP/1.1 server (hyper) that echoes
//! each request's body and names itself in an `x-backend` header, and a UDP server that answers
//! each datagram with its name, a newline and the datagram.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UdpSocket};

/// Header in which the HTTP server names itself.
pub const BACKEND_HEADER: &str = "x-backend";

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve_http(name: String, listener: TcpListener) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await.context("accept")?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let name = name.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header(BACKEND_HEADER, name)
                            .body(Full::new(body))
                            .expect("a valid response"),
                    )
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

/// Binds the listeners (so that once this returns, the server accepts) and serves them.
pub async fn bind_and_serve(
    name: String,
    http: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    ready: impl FnOnce(),
) -> Result<()> {
    let http = match http {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        ),
        None => None,
    };
    let udp = match udp {
        Some(address) => Some(
            UdpSocket::bind(address)
                .await
                .with_context(|| format!("binding {address}"))?,
        ),
        None => None,
    };
    ready();
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
    tokio::try_join!(http_task, udp_task)?;
    Ok(())
}
