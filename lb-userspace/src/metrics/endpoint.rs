//! The metrics endpoint: `GET /metrics` over HTTP/1.1, served so that no number of clients
//! can use up the daemon's file descriptors. At most [`MAX_CONNECTIONS`] connections are
//! kept; when one more arrives, the one idle the longest is closed for it (a scraper sends its
//! request at once, so only clients that hold connections without asking lose them), and a
//! connection idle for [`IDLE`], or open for [`LIFETIME`], is closed anyway.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, task::AbortHandle, time::Instant};
use tracing::{info, warn};

use super::{Format, Shared, registry, render};
use crate::sys::accept::AcceptBackoff;

/// Connections kept at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's headers, and may sit idle between
/// requests (Prometheus scrapes every 15 s by default, keeping its connection).
const IDLE: Duration = Duration::from_secs(30);
/// How long one connection is served at most (a client that stops reading its answer is
/// dropped then); the next scrape opens another.
const LIFETIME: Duration = Duration::from_secs(300);

/// Binds the endpoint's address (an error names it: a failed bind stops xlb at start).
pub(crate) fn bind(address: SocketAddr) -> Result<TcpListener> {
    let listener = std::net::TcpListener::bind(address).with_context(|| {
        format!("binding the metrics endpoint {address} (the `metrics` key of the config)")
    })?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// One open connection: since when it is idle (none while it answers), and its task.
struct Open {
    idle_since: Option<Instant>,
    task: AbortHandle,
}

/// The open connections, by number.
#[derive(Default)]
struct Connections {
    open: HashMap<u64, Open>,
    next: u64,
}

impl Connections {
    /// Makes room for one more connection: closes the one idle the longest if all
    /// [`MAX_CONNECTIONS`] are open. Returns false if none is idle (all are answering).
    fn make_room(&mut self) -> bool {
        if self.open.len() < MAX_CONNECTIONS {
            return true;
        }
        let oldest = self
            .open
            .iter()
            .filter_map(|(id, open)| Some((open.idle_since?, *id)))
            .min();
        match oldest {
            Some((_, id)) => {
                if let Some(open) = self.open.remove(&id) {
                    open.task.abort();
                }
                true
            }
            None => false,
        }
    }

    /// Marks connection `id` answering (`busy`) or idle from now.
    fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some(open) = self.open.get_mut(&id) {
            open.idle_since = (!busy).then(Instant::now);
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, shared: Shared) {
    if let Ok(address) = listener.local_addr() {
        info!(%address, "metrics endpoint listening");
    }
    let registry = Arc::new(registry(shared));
    let connections = Arc::new(Mutex::new(Connections::default()));
    let mut backoff = AcceptBackoff::default();
    let mut crowded = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) => {
                backoff.failed("metrics endpoint", &error).await;
                continue;
            }
        };
        let mut table = connections.lock().expect("the connections lock");
        if !table.make_room() {
            // Every connection is answering: this one waits for none.
            continue;
        }
        if table.open.len() + 1 == MAX_CONNECTIONS && !crowded {
            warn!(
                "metrics endpoint: {MAX_CONNECTIONS} connections open; from now on the one idle the longest is closed for each new one"
            );
        }
        crowded = table.open.len() + 1 >= MAX_CONNECTIONS;
        let id = table.next;
        table.next += 1;
        let task = tokio::spawn(connection(
            stream,
            id,
            Arc::clone(&registry),
            Arc::clone(&connections),
        ));
        table.open.insert(
            id,
            Open {
                idle_since: Some(Instant::now()),
                task: task.abort_handle(),
            },
        );
    }
}

/// Serves one connection, at most for [`LIFETIME`].
async fn connection(
    stream: tokio::net::TcpStream,
    id: u64,
    registry: Arc<Registry>,
    connections: Arc<Mutex<Connections>>,
) {
    let table = Arc::clone(&connections);
    let service = service_fn(move |request: Request<Incoming>| {
        let registry = Arc::clone(&registry);
        let table = Arc::clone(&table);
        async move {
            table
                .lock()
                .expect("the connections lock")
                .set_busy(id, true);
            let response = answer(&request, &registry);
            table
                .lock()
                .expect("the connections lock")
                .set_busy(id, false);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(LIFETIME, serving).await;
    connections
        .lock()
        .expect("the connections lock")
        .open
        .remove(&id);
}

/// The answer to one HTTP request.
fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let response = if request.uri().path() != "/metrics" {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from("try /metrics\n")))
    } else {
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let format = Format::from_accept(accept);
        match render(registry, format) {
            Ok(text) => Response::builder()
                .header(header::CONTENT_TYPE, format.content_type())
                .body(Full::new(Bytes::from(text))),
            Err(error) => {
                warn!("encoding metrics: {error:#}");
                Response::builder()
                    .status(StatusCode::INTERNAL_SERVER_ERROR)
                    .body(Full::new(Bytes::new()))
            }
        }
    };
    response.expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_takes_the_place_of_the_one_idle_the_longest() {
        let mut table = Connections::default();
        let mut tasks = Vec::new();
        for id in 0..MAX_CONNECTIONS as u64 {
            let task = tokio::spawn(std::future::pending::<()>());
            tasks.push(task.abort_handle());
            table.open.insert(
                id,
                Open {
                    idle_since: Some(Instant::now()),
                    task: task.abort_handle(),
                },
            );
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        // The first is answering, so the second is the one idle the longest.
        table.set_busy(0, true);
        assert!(table.make_room());
        assert!(table.open.contains_key(&0) && !table.open.contains_key(&1));
        tokio::task::yield_now().await;
        assert!(tasks[1].is_finished(), "its task was aborted");
        // With every connection answering, there is no room.
        for id in 2..MAX_CONNECTIONS as u64 {
            table.set_busy(id, true);
        }
        table.open.insert(
            1,
            Open {
                idle_since: None,
                task: tokio::spawn(std::future::pending::<()>()).abort_handle(),
            },
        );
        assert!(!table.make_room());
    }
}
