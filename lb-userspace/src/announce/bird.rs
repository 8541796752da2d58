//! Is a BIRD listening on its control socket? BIRD greets every client with a line like
//! "0001 BIRD 2.0.12 ready."; xlb reads it and closes the connection (it never sends BIRD a
//! command: the routes come from the device's addresses).

use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    net::UnixStream,
    time::timeout,
};

/// How long the greeting may take.
const GREETING_TIMEOUT: Duration = Duration::from_secs(2);

/// "BIRD 2.0.12" if a BIRD answers at `socket`, else what went wrong.
pub(super) async fn probe(socket: &Path) -> Result<String, String> {
    let greet = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        greeting(&line).ok_or_else(|| format!("not a BIRD greeting: {:?}", line.trim_end()))
    };
    match timeout(GREETING_TIMEOUT, greet).await {
        Ok(result) => result,
        Err(_) => Err(format!("no greeting within {GREETING_TIMEOUT:?}")),
    }
}

/// The daemon's name and version in BIRD's greeting ("0001 BIRD 2.0.12 ready.").
fn greeting(line: &str) -> Option<String> {
    let rest = line.strip_prefix("0001 ")?.trim_end();
    let name = rest.strip_suffix(" ready.")?;
    name.starts_with("BIRD").then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_birds_greeting() {
        assert_eq!(
            greeting("0001 BIRD 2.0.12 ready.\n"),
            Some("BIRD 2.0.12".into())
        );
        assert_eq!(greeting("220 smtp ready.\n"), None);
        assert_eq!(greeting("0001 FRR ready.\n"), None);
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_not_a_hang() {
        let error = probe(Path::new("/nonexistent/bird.ctl")).await.unwrap_err();
        assert!(error.contains("No such file"), "{error}");
    }
}
