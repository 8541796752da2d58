//! The CLI's end of the control API.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::IO_TIMEOUT;
use crate::cmd::{Request, Response};

/// Sends `request` to the daemon at `socket` and returns its answer (for the CLI).
pub(crate) fn call(socket: &Path, request: &Request) -> Result<Response> {
    let mut answers = send(socket, request, IO_TIMEOUT)?;
    read_answer(&mut answers)
}

/// Sends `request` and passes every answer but the last to `each` until the daemon ends the
/// stream (`trace_end`) or answers an error; returns that last answer. `silence` is how long
/// the daemon may say nothing.
pub(crate) fn stream(
    socket: &Path,
    request: &Request,
    silence: Duration,
    mut each: impl FnMut(&Response),
) -> Result<Response> {
    let mut answers = send(socket, request, silence)?;
    loop {
        let answer = read_answer(&mut answers)?;
        if matches!(answer, Response::TraceEnd(_) | Response::Error(_)) {
            return Ok(answer);
        }
        each(&answer);
    }
}

fn send(socket: &Path, request: &Request, silence: Duration) -> Result<BufReader<UnixStream>> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the xlb daemon at {} (is `xlb run` running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(silence))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    Ok(BufReader::new(stream))
}

fn read_answer(answers: &mut BufReader<UnixStream>) -> Result<Response> {
    let mut answer = String::new();
    if answers.read_line(&mut answer)? == 0 {
        bail!("the daemon closed the connection without an answer");
    }
    serde_json::from_str(answer.trim())
        .with_context(|| format!("unreadable answer from the daemon: {answer:?}"))
}
