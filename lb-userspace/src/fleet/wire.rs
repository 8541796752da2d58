//! The fleet's messages on the wire: UDP datagrams between the daemons of a fleet, each
//! authenticated with the fleet's shared key.
//!
//! ```text
//! header, 32 bytes   magic "XLBF", version 1, kind, record count (u16),
//!                    sender's epoch (u64), sequence number (u64), sent at (UNIX ms, u64)
//! records, 60 each   family, protocol, event, 0; client, VIP and backend addresses
//!                    (16 bytes each, an IPv4 address in the first 4); client, VIP and
//!                    backend ports; 2 bytes of 0
//! tag, 16 bytes      HMAC-SHA256 of everything before it, truncated
//! ```
//!
//! Numbers are big-endian; addresses and ports are in network order, as in a packet. A
//! datagram carries at most [`MAX_RECORDS`] records, so that it stays under 1,400 bytes and
//! never needs fragments. Decoding checks everything before anything is used: a message that
//! fails one check is refused whole ([`Refused`]).

use hmac::{Hmac, Mac as _};
use lb_common::{
    Addr, FlowKey,
    consts::{family, proto},
    share::{FlowEvent, flow_event},
};
use sha2::Sha256;

/// The first bytes of every message.
const MAGIC: &[u8; 4] = b"XLBF";
/// The version this daemon speaks.
const VERSION: u8 = 1;
/// Bytes of the header.
const HEADER: usize = 32;
/// Bytes of a record.
const RECORD: usize = 60;
/// Bytes of the tag.
const TAG: usize = 16;
/// Records per message at most.
pub const MAX_RECORDS: usize = 22;
/// The largest message.
pub const MAX_MESSAGE: usize = HEADER + MAX_RECORDS * RECORD + TAG;

/// What a message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Flows made established or closed (its records).
    Flows = 1,
    /// "Send me your flows": a joining or restarted instance asks each peer.
    SnapshotRequest = 2,
    /// The records of a snapshot (as `Flows`, sent to the one that asked).
    Snapshot = 3,
    /// The end of a snapshot.
    SnapshotDone = 4,
}

impl Kind {
    fn of(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Flows,
            2 => Self::SnapshotRequest,
            3 => Self::Snapshot,
            4 => Self::SnapshotDone,
            _ => return None,
        })
    }
}

/// A message, decoded and authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What it says.
    pub kind: Kind,
    /// The sender's epoch: a number it picked when it started.
    pub epoch: u64,
    /// Its sequence number within the epoch, from 1.
    pub sequence: u64,
    /// When it was sent, UNIX time in milliseconds.
    pub sent_ms: u64,
    /// Its records.
    pub records: Vec<FlowEvent>,
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a message of this protocol and version, or its length does not match.
    Malformed,
    /// Its tag is not the one the fleet's key gives: forged, damaged, or another key.
    BadTag,
    /// Authentic, but a record in it is not a flow.
    BadRecord,
}

/// The fleet's shared key, ready to tag and check messages.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl Key {
    /// The key of `secret` (the key file's contents).
    pub fn new(secret: &[u8]) -> Self {
        Self(Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"))
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG] {
        let mut mac = self.0.clone();
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG];
        tag.copy_from_slice(&full[..TAG]);
        tag
    }

    fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.verify_truncated_left(tag).is_ok()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// `message` as a datagram, tagged with `key`. At most [`MAX_RECORDS`] records.
pub fn encode(message: &Message, key: &Key) -> Vec<u8> {
    assert!(message.records.len() <= MAX_RECORDS, "too many records");
    let mut out = Vec::with_capacity(HEADER + message.records.len() * RECORD + TAG);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(message.kind as u8);
    out.extend_from_slice(&(message.records.len() as u16).to_be_bytes());
    out.extend_from_slice(&message.epoch.to_be_bytes());
    out.extend_from_slice(&message.sequence.to_be_bytes());
    out.extend_from_slice(&message.sent_ms.to_be_bytes());
    for record in &message.records {
        let key = &record.key;
        out.extend_from_slice(&[key.family, key.proto, record.kind, 0]);
        for addr in [&key.src_addr, &key.dst_addr, &record.backend] {
            for word in addr {
                out.extend_from_slice(&word.to_ne_bytes());
            }
        }
        for port in [key.src_port, key.dst_port, record.backend_port] {
            out.extend_from_slice(&port.to_ne_bytes());
        }
        out.extend_from_slice(&[0, 0]);
    }
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    out
}

/// The message in `datagram`, if it is one, authentic under `key`, and all its records are
/// flows.
pub fn decode(datagram: &[u8], key: &Key) -> Result<Message, Refused> {
    if datagram.len() < HEADER + TAG || &datagram[..4] != MAGIC || datagram[4] != VERSION {
        return Err(Refused::Malformed);
    }
    let kind = Kind::of(datagram[5]).ok_or(Refused::Malformed)?;
    let count = usize::from(u16::from_be_bytes([datagram[6], datagram[7]]));
    if count > MAX_RECORDS || datagram.len() != HEADER + count * RECORD + TAG {
        return Err(Refused::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG);
    if !key.verify(body, tag) {
        return Err(Refused::BadTag);
    }
    let number = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let records = body[HEADER..]
        .chunks_exact(RECORD)
        .map(record)
        .collect::<Option<Vec<_>>>()
        .ok_or(Refused::BadRecord)?;
    Ok(Message {
        kind,
        epoch: number(8),
        sequence: number(16),
        sent_ms: number(24),
        records,
    })
}

/// One record, if it is a flow: a known family, protocol and event, an IPv4 address that
/// fills only its first word, ports that are not 0.
fn record(bytes: &[u8]) -> Option<FlowEvent> {
    let (family_of, protocol, event) = (bytes[0], bytes[1], bytes[2]);
    let known = matches!(family_of, family::IPV4 | family::IPV6)
        && matches!(protocol, proto::TCP | proto::UDP)
        && matches!(event, flow_event::OPENED | flow_event::CLOSING)
        && bytes[3] == 0
        && bytes[58..60] == [0, 0];
    if !known {
        return None;
    }
    let addr = |at: usize| -> Addr {
        core::array::from_fn(|i| {
            let start = at + 4 * i;
            u32::from_ne_bytes(bytes[start..start + 4].try_into().expect("4 bytes"))
        })
    };
    let port = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let (client, vip, backend) = (addr(4), addr(20), addr(36));
    if family_of == family::IPV4 && [client, vip, backend].iter().any(|a| a[1..] != [0, 0, 0]) {
        return None;
    }
    let (client_port, vip_port, backend_port) = (port(52), port(54), port(56));
    if client_port == 0 || vip_port == 0 || backend_port == 0 {
        return None;
    }
    Some(FlowEvent {
        key: FlowKey {
            src_addr: client,
            dst_addr: vip,
            src_port: client_port,
            dst_port: vip_port,
            proto: protocol,
            family: family_of,
            _pad: [0; 2],
        },
        backend,
        backend_port,
        kind: event,
        _pad: [0; 5],
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn flow(client_port: u16, event: u8) -> FlowEvent {
        FlowEvent {
            key: FlowKey {
                src_addr: [u32::from_ne_bytes([198, 18, 2, 2]), 0, 0, 0],
                dst_addr: [u32::from_ne_bytes([198, 18, 100, 1]), 0, 0, 0],
                src_port: client_port.to_be(),
                dst_port: 80u16.to_be(),
                proto: proto::TCP,
                family: family::IPV4,
                _pad: [0; 2],
            },
            backend: [u32::from_ne_bytes([198, 18, 1, 11]), 0, 0, 0],
            backend_port: 8080u16.to_be(),
            kind: event,
            _pad: [0; 5],
        }
    }

    fn message(records: Vec<FlowEvent>) -> Message {
        Message {
            kind: Kind::Flows,
            epoch: 0x0102_0304_0506_0708,
            sequence: 9,
            sent_ms: 1_765_000_000_000,
            records,
        }
    }

    #[test]
    fn a_message_survives_the_wire_and_reads_as_a_packet_would() {
        let key = Key::new(b"a fleet key of at least 32 bytes!");
        let mut six = flow(40_001, flow_event::CLOSING);
        six.key.family = family::IPV6;
        six.key.src_addr = [1, 2, 3, 4];
        let sent = message(vec![flow(40_000, flow_event::OPENED), six]);
        let datagram = encode(&sent, &key);
        assert_eq!(datagram.len(), 32 + 2 * 60 + 16);
        // Addresses and ports in network order, as on a packet.
        assert_eq!(&datagram[32 + 4..32 + 8], &[198, 18, 2, 2]);
        assert_eq!(&datagram[32 + 52..32 + 54], &40_000u16.to_be_bytes());
        assert_eq!(decode(&datagram, &key), Ok(sent.clone()));
        let full = message(vec![flow(1, flow_event::OPENED); MAX_RECORDS]);
        assert!(encode(&full, &key).len() <= 1_400);
        assert_eq!(decode(&encode(&full, &key), &key), Ok(full));
    }

    #[test]
    fn forged_damaged_and_malformed_messages_are_refused() {
        let key = Key::new(b"a fleet key of at least 32 bytes!");
        let datagram = encode(&message(vec![flow(40_000, flow_event::OPENED)]), &key);
        let other = Key::new(b"another key, also of 32 bytes!!!");
        assert_eq!(decode(&datagram, &other), Err(Refused::BadTag));
        let mut flipped = datagram.clone();
        flipped[40] ^= 1;
        assert_eq!(decode(&flipped, &key), Err(Refused::BadTag));
        assert_eq!(
            decode(&datagram[..datagram.len() - 1], &key),
            Err(Refused::Malformed)
        );
        assert_eq!(decode(&datagram[..20], &key), Err(Refused::Malformed));
        let mut version = datagram.clone();
        version[4] = 2;
        assert_eq!(decode(&version, &key), Err(Refused::Malformed));
        // Authentic, but not a flow: refused whole.
        let mut bad = flow(40_000, flow_event::OPENED);
        bad.key.proto = 1;
        let datagram = encode(&message(vec![flow(1, flow_event::OPENED), bad]), &key);
        assert_eq!(decode(&datagram, &key), Err(Refused::BadRecord));
        let mut port0 = flow(0, flow_event::OPENED);
        port0.key.src_port = 0;
        assert_eq!(
            decode(&encode(&message(vec![port0]), &key), &key),
            Err(Refused::BadRecord)
        );
    }

    /// The decoder on random bytes, and on valid messages with random bytes changed: it never
    /// panics, and accepts nothing the key did not tag.
    #[test]
    fn the_decoder_survives_random_and_mutated_input() {
        let key = Key::new(b"a fleet key of at least 32 bytes!");
        let valid = encode(&message(vec![flow(7, flow_event::OPENED); 3]), &key);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let datagram: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 1_500) as usize;
                let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if bytes.len() >= 8 && round % 4 == 0 {
                    bytes[..4].copy_from_slice(MAGIC);
                    bytes[4] = VERSION;
                    bytes[5] = 1;
                }
                bytes
            } else {
                let mut bytes = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= 1 << (next() % 8);
                }
                bytes
            };
            if let Ok(message) = decode(&datagram, &key) {
                assert_eq!(datagram, valid, "accepted a changed message: {message:?}");
            }
        }
    }
}
