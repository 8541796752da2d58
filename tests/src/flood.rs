//! A bounded flood of TCP SYNs from spoofed sources, sent through a raw socket from the
//! calling thread's network namespace. Sources are random addresses of 198.19.0.0/16 (inside
//! the benchmarking range; the test network routes them back to the client host, which drops
//! the answers) with random ports.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::csum;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    client::{Session, http_echo, payload, start_download},
    packet::{Frame, Transport, tcp_flags},
    scenario::TCP_SERVICE_PORT,
    topology::{Lab, VIP},
};

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// SYNs sent.
    pub sent: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl Flood {
    /// SYNs per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends SYNs to `target` until `count` are sent or `limit` has passed, from sources chosen by
/// a generator seeded with `seed`. Stops early, too, once `stop` returns true (checked every
/// thousand packets).
pub fn syn_flood(
    target: SocketAddrV4,
    count: u64,
    limit: Duration,
    seed: u64,
    stop: impl Fn() -> bool,
) -> Result<Flood> {
    let socket = raw_socket()?;
    let destination = SockAddr::from(SocketAddr::V4(target));
    let mut packet = Frame::tcp("198.19.0.1:1024", &target.to_string())
        .with(|f| {
            f.transport = Transport::Tcp {
                flags: tcp_flags::SYN,
                seq: 7,
            };
            f.payload = Vec::new();
        })
        .ip_packet();
    let mut state = seed | 1;
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        if sent % 1_000 == 0 && (started.elapsed() >= limit || stop()) {
            break;
        }
        let [a, b, c, d, ..] = xorshift(&mut state).to_le_bytes();
        let source = Ipv4Addr::new(198, 19, a, b);
        let port = 1024 + u16::from_le_bytes([c, d]) % 64_000;
        packet[12..16].copy_from_slice(&source.octets());
        packet[20..22].copy_from_slice(&port.to_be_bytes());
        rewrite_checksums(&mut packet);
        // A full socket buffer is back-pressure, not failure: skip the packet.
        if socket.send_to(&packet, &destination).is_ok() {
            sent += 1;
        }
    }
    Ok(Flood {
        sent,
        elapsed: started.elapsed(),
    })
}

/// Sends `count` UDP datagrams of random bytes (16 to 271 of them), each from and to one of
/// `pairs` in turn (source and destination: a source may be spoofed, as the raw socket writes
/// the IP header), until `count` are sent or `limit` has passed; the payloads come from a
/// generator seeded with `seed`.
pub fn datagram_flood(
    pairs: &[(SocketAddrV4, SocketAddrV4)],
    count: u64,
    limit: Duration,
    seed: u64,
) -> Result<Flood> {
    let socket = raw_socket()?;
    let mut state = seed | 1;
    let started = Instant::now();
    let mut sent = 0;
    while sent < count && !pairs.is_empty() {
        if sent % 1_000 == 0 && started.elapsed() >= limit {
            break;
        }
        let (from, to) = pairs[sent as usize % pairs.len()];
        let mut payload = Vec::with_capacity(272);
        let length = 16 + (xorshift(&mut state) % 256) as usize;
        while payload.len() < length {
            payload.extend_from_slice(&xorshift(&mut state).to_le_bytes());
        }
        payload.truncate(length);
        let packet = Frame::udp(&from.to_string(), &to.to_string())
            .with(|f| f.payload = payload)
            .ip_packet();
        let destination = SockAddr::from(SocketAddr::V4(to));
        // A full socket buffer is back-pressure, not failure: skip the datagram.
        if socket.send_to(&packet, &destination).is_ok() {
            sent += 1;
        }
    }
    Ok(Flood {
        sent,
        elapsed: started.elapsed(),
    })
}

/// A raw IPv4 socket: IPPROTO_RAW, we write the IP header ourselves (the kernel fills in its
/// checksum).
fn raw_socket() -> Result<Socket> {
    Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("opening a raw socket")
}

/// The next value of an xorshift64 generator (fast, and good enough to spread sources and
/// bytes).
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Recomputes the header and TCP checksums of an IPv4 packet without options. (The kernel
/// recomputes the header's anyway; this keeps the packet valid on its own.)
fn rewrite_checksums(packet: &mut [u8]) {
    packet[10..12].copy_from_slice(&[0, 0]);
    let check = csum::checksum(&packet[..20], 0);
    packet[10..12].copy_from_slice(&check.to_ne_bytes());
    let segment_len = packet.len() - 20;
    packet[36..38].copy_from_slice(&[0, 0]);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&packet[12..20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(segment_len as u16).to_be_bytes());
    let check = csum::checksum(&packet[20..], csum::sum(&pseudo, 0));
    packet[36..38].copy_from_slice(&check.to_ne_bytes());
}

/// What legitimate traffic went through while a flood ran.
pub struct UnderFlood {
    /// The flood.
    pub flood: Flood,
    /// The backend of a keep-alive connection opened before the flood...
    pub session_before: String,
    /// ...and of its next request, made after the flood (it sat idle meanwhile).
    pub session_after: Result<String, String>,
    /// Bytes of a download that ran through the flood, or what went wrong.
    pub download: Result<usize, String>,
    /// How long each new connection (with its small exchange) begun during the flood took.
    pub connects: Vec<Duration>,
    /// The new connections that failed, and why.
    pub connect_errors: Vec<String>,
}

impl UnderFlood {
    /// Asserts that the legitimate client did not notice the flood: its idle connection kept
    /// its backend, its download of `download_bytes` completed, and every one of its new
    /// connections (at least five) succeeded.
    pub fn assert_unaffected(&self, download_bytes: usize) {
        assert_eq!(
            self.session_after.as_ref(),
            Ok(&self.session_before),
            "the idle connection kept its flow"
        );
        assert_eq!(self.download, Ok(download_bytes), "the download completed");
        assert!(
            self.connect_errors.is_empty(),
            "new connections failed during the flood: {:?}",
            self.connect_errors
        );
        assert!(
            self.connects.len() >= 5,
            "only {} connections were tried during the flood",
            self.connects.len()
        );
    }
}

/// How long after the flood starts the new connections begin: two handshake-guard windows.
const FLOOD_UNDER_WAY: Duration = Duration::from_millis(200);
/// How often a new connection starts during the flood.
const CONNECT_EVERY: Duration = Duration::from_millis(100);
/// How long each new connection may take, its exchange included: long enough for two SYN
/// retransmissions (at 1 and 3 s), which a flood that overloads the client's own link makes
/// necessary.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// From the client host: opens a keep-alive connection and starts a `download_bytes` download
/// through the VIP's TCP service, then floods the VIP with up to `count` spoofed SYNs for at
/// most `limit` while opening new connections, one every `CONNECT_EVERY` from
/// `FLOOD_UNDER_WAY` into it; after the flood, uses the
/// idle connection again and finishes the download.
pub fn legitimate_traffic_under_flood(
    lab: &Lab,
    download_bytes: usize,
    count: u64,
    limit: Duration,
) -> Result<UnderFlood> {
    let vip = SocketAddrV4::new(VIP, TCP_SERVICE_PORT);
    let flooding = AtomicBool::new(true);
    let (go, started) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let flooding_flag = &flooding;
        let flooder = scope.spawn(move || {
            let flood = lab.client.enter(move || {
                started
                    .recv_timeout(Duration::from_secs(30))
                    .context("the traffic never started")?;
                syn_flood(vip, count, limit, 0x5eed, || false)
            });
            flooding_flag.store(false, Ordering::Release);
            flood
        });
        let flooding = &flooding;
        let traffic = lab.client.block_on(async move {
            let vip = SocketAddr::V4(vip);
            let mut session = Session::open(vip).await?;
            let session_before = session.echo(payload(1, 100)).await?;
            let stream_ms = limit.as_millis() as u64 + 1_000;
            let download = start_download(vip, download_bytes, stream_ms).await?;
            go.send(()).ok();
            // New connections start once the flood is under way: a SYN sent in the flood's
            // first 100 ms, before xlb's handshake guard has seen a window over budget, is
            // placed by round robin, and the flood can evict its entry before a slow
            // handshake completes (README, "The handshake guard").
            tokio::time::sleep(FLOOD_UNDER_WAY).await;
            // One new connection every CONNECT_EVERY while the flood lasts, each on its own
            // (so a slow handshake, retransmitted after a lost SYN, delays no other), each
            // allowed CONNECT_TIMEOUT.
            let mut attempts = tokio::task::JoinSet::new();
            let mut started = 0u64;
            while flooding.load(Ordering::Acquire) {
                let request = payload(started, 100);
                attempts.spawn(async move {
                    let begun = Instant::now();
                    match tokio::time::timeout(CONNECT_TIMEOUT, http_echo(vip, request)).await {
                        Ok(Ok(_)) => Ok(begun.elapsed()),
                        Ok(Err(error)) => Err(format!("{error:#}")),
                        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
                    }
                });
                started += 1;
                tokio::time::sleep(CONNECT_EVERY).await;
            }
            let (mut connects, mut connect_errors) = (Vec::new(), Vec::new());
            while let Some(attempt) = attempts.join_next().await {
                match attempt? {
                    Ok(took) => connects.push(took),
                    Err(error) => connect_errors.push(error),
                }
            }
            let session_after = session
                .echo(payload(2, 100))
                .await
                .map_err(|e| format!("{e:#}"));
            let download =
                match tokio::time::timeout(Duration::from_secs(30), download.finish()).await {
                    Ok(result) => result.map_err(|e| format!("{e:#}")),
                    Err(_) => Err("the download stalled".into()),
                };
            anyhow::Ok((
                session_before,
                session_after,
                download,
                connects,
                connect_errors,
            ))
        });
        let flood = flooder
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))???;
        let (session_before, session_after, download, connects, connect_errors) = traffic??;
        Ok(UnderFlood {
            flood,
            session_before,
            session_after,
            download,
            connects,
            connect_errors,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::verify_checksums;

    #[test]
    fn rewritten_syns_have_valid_checksums() {
        let mut packet = Frame::tcp("198.19.0.1:1024", "198.18.100.1:80")
            .with(|f| f.payload = Vec::new())
            .ip_packet();
        packet[12..16].copy_from_slice(&[198, 19, 77, 3]);
        packet[20..22].copy_from_slice(&4242u16.to_be_bytes());
        rewrite_checksums(&mut packet);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&packet);
        verify_checksums(&frame).unwrap();
    }
}
