//! The daemon's end of the control API: the socket, and one task per connection that reads
//! the request, hands it to the monitor as a [`Job`] and writes its answer back.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{mpsc, oneshot},
    time::timeout,
};
use tracing::{debug, warn};

use super::IO_TIMEOUT;
use crate::{
    cmd::{Caller, Reply, Request, Response},
    sys::accept::AcceptBackoff,
};

/// Makes the job that answers a request for a caller and sends the reply back: the daemon
/// gives [`crate::cmd::job`], tests something simpler.
pub(crate) type MakeJob<J> = fn(Request, Caller, oneshot::Sender<Reply>) -> J;

/// A user's name and uid ("root (uid 0)"), or the uid alone if it has no name.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// Longest request line the daemon reads.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the API socket: creates its directory, refuses if another daemon answers there,
/// replaces a stale socket file, and makes the socket owner-only (0600).
pub(crate) fn bind(path: &Path) -> Result<UnixListener> {
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

/// Serves the API on `listener`, passing each request that passes its command's checks to
/// `jobs`, made by `make`.
pub(crate) async fn serve<J: Send + 'static>(
    listener: UnixListener,
    jobs: mpsc::Sender<J>,
    make: MakeJob<J>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) => {
                backoff.failed("control socket", &error).await;
                continue;
            }
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, jobs, make).await {
                debug!("API connection: {error:#}");
            }
        });
    }
}

async fn answer<J>(stream: UnixStream, jobs: mpsc::Sender<J>, make: MakeJob<J>) -> Result<()> {
    let credentials = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    let (reader, mut writer) = stream.into_split();
    let mut reader = AsyncBufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST as u64));
    let reply = if credentials.uid() != 0 && credentials.uid() != own_uid {
        warn!(
            uid = credentials.uid(),
            "API request from another user refused"
        );
        Reply::Once(Response::Error(format!(
            "permission denied: uid {} is neither root nor the daemon's user",
            credentials.uid()
        )))
    } else {
        let mut line = String::new();
        match timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => Response::Error("no request within 30 s".into()).into(),
            Ok(Err(error)) => Response::Error(format!("reading the request: {error}")).into(),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                Err(error) => Response::Error(format!("malformed request: {error}")).into(),
                Ok(request) if let Err(error) = request.check() => {
                    Response::Error(format!("{error}; nothing was changed")).into()
                }
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    let caller = Caller(user_name(credentials.uid()));
                    let gone = || Response::Error("the daemon is shutting down".into()).into();
                    if jobs.send(make(request, caller, reply)).await.is_err() {
                        gone()
                    } else {
                        answer.await.unwrap_or_else(|_| gone())
                    }
                }
            },
        }
    };
    match reply {
        Reply::Once(response) => write_line(&mut writer, &response).await,
        Reply::Stream(mut responses) => {
            // Until the stream ends, or the client leaves (its end of the socket reads EOF).
            let mut rest = [0u8; 64];
            loop {
                tokio::select! {
                    response = responses.recv() => match response {
                        Some(response) => write_line(&mut writer, &response).await?,
                        None => return Ok(()),
                    },
                    read = tokio::io::AsyncReadExt::read(&mut reader, &mut rest) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Writes one response as a line of JSON.
async fn write_line(writer: &mut OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut text = serde_json::to_string(response)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};

    use super::*;

    #[tokio::test]
    async fn a_malformed_request_gets_an_error_and_the_server_keeps_serving() {
        let dir = std::env::temp_dir().join(format!("xlb-api-test-{}", std::process::id()));
        let path = dir.join("api.sock");
        let listener = bind(&path).unwrap();
        type Call = (Request, Caller, oneshot::Sender<Reply>);
        let (calls, mut requests) = mpsc::channel::<Call>(4);
        tokio::spawn(serve(listener, calls, |request, caller, reply| {
            (request, caller, reply)
        }));
        tokio::spawn(async move {
            while let Some((request, _, reply)) = requests.recv().await {
                let _ = reply.send(Response::Done(format!("{request:?}")).into());
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
            Response::Done("Status(Status { service: None, check: false })".into())
        );
        let Response::Error(error) =
            answer("{\"command\":\"trace\",\"service\":\"web\",\"seconds\":0}\n")
                .await
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            error,
            "seconds 0 is out of range: 1 to 3600; nothing was changed"
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
