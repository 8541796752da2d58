//! The HAProxy agent-check protocol: xlb connects to a backend's agent port and reads one line
//! that reports the backend's load, such as `75%`, `drain`, `up 100%` or `down # disk full`.
//! Any agent written for HAProxy works unchanged.

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncReadExt as _, net::TcpStream, time::timeout};

/// Longest agent reply read.
const MAX_REPLY: usize = 1024;

/// What one agent reply says. Words not listed here (such as `maxconn:30`) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// `N%`: the backend's weight as a percentage of its configured weight (0..=100).
    pub weight_percent: Option<u32>,
    /// `up` or `ready`: clears drain, maint and down.
    pub ready: bool,
    /// `drain`, `maint`, or `down`/`fail`/`stopped`.
    pub admin: Option<AgentAdmin>,
}

/// Administrative states an agent can set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAdmin {
    /// "drain": no new flows.
    Drain,
    /// "maint": administrative maintenance, no new flows.
    Maint,
    /// "down", "fail" or "stopped" (the word): the backend cannot serve.
    Down(String),
}

/// Parses one agent reply line. Text after `#` is a comment.
pub(crate) fn parse(line: &str) -> Result<AgentReport, String> {
    let words = line.split('#').next().unwrap_or_default();
    let mut report = AgentReport::default();
    let mut understood = false;
    for word in words
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
    {
        let word = word.to_ascii_lowercase();
        if let Some(number) = word.strip_suffix('%') {
            let percent: u32 = number
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("{word:?} is not a weight between 0% and 100%"))?;
            report.weight_percent = Some(percent);
            understood = true;
            continue;
        }
        match word.as_str() {
            "up" | "ready" => report.ready = true,
            "drain" => report.admin = Some(AgentAdmin::Drain),
            "maint" => report.admin = Some(AgentAdmin::Maint),
            "down" | "fail" | "stopped" => report.admin = Some(AgentAdmin::Down(word.clone())),
            _ => continue,
        }
        understood = true;
    }
    if !understood {
        return Err(format!(
            "no load information in the agent's reply {:?}",
            line.trim()
        ));
    }
    Ok(report)
}

/// Connects to the agent at `address` and reads its reply (one line, or what arrives before
/// the agent closes), within `limit`.
pub(crate) async fn query(address: SocketAddr, limit: Duration) -> Result<AgentReport, String> {
    let reply = timeout(limit, async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("agent {address}: {e}"))?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 256];
        while !reply.contains(&b'\n') && reply.len() < MAX_REPLY {
            let read = stream
                .read(&mut buffer)
                .await
                .map_err(|e| format!("agent {address}: {e}"))?;
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..read]);
        }
        Ok::<_, String>(reply)
    })
    .await
    .map_err(|_| {
        format!(
            "agent {address}: no answer within {}",
            humantime::format_duration(limit)
        )
    })??;
    let line = String::from_utf8_lossy(&reply);
    parse(line.lines().next().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> AgentReport {
        parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn haproxy_agent_replies() {
        assert_eq!(parsed("75%\n").weight_percent, Some(75));
        assert_eq!(parsed("drain").admin, Some(AgentAdmin::Drain));
        assert_eq!(parsed("maint").admin, Some(AgentAdmin::Maint));
        for word in ["down", "fail", "stopped"] {
            assert_eq!(parsed(word).admin, Some(AgentAdmin::Down(word.into())));
        }
        assert!(parsed("ready").ready);
        let combined = parsed("up 50%, maxconn:30 # warming up");
        assert_eq!(
            combined,
            AgentReport {
                weight_percent: Some(50),
                ready: true,
                admin: None
            }
        );
        assert_eq!(
            parsed("DOWN # disk full").admin,
            Some(AgentAdmin::Down("down".into()))
        );
    }

    #[test]
    fn replies_without_load_information_are_errors() {
        assert!(parse("").is_err());
        assert!(parse("hello").unwrap_err().contains("no load information"));
        assert!(parse("150%").unwrap_err().contains("between 0% and 100%"));
        assert!(parse("x%").is_err());
    }

    #[tokio::test]
    async fn query_reads_one_line_from_the_agent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"42% drain\nignored\n")
                .await
                .unwrap();
        });
        let report = query(address, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            report,
            AgentReport {
                weight_percent: Some(42),
                ready: false,
                admin: Some(AgentAdmin::Drain)
            }
        );
    }

    #[tokio::test]
    async fn an_agent_that_does_not_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let error = query(address, Duration::from_millis(50)).await.unwrap_err();
        assert!(error.contains("no answer within 50ms"), "{error}");
        holder.abort();
    }
}
