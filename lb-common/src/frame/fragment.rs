//! Fragmenting a built frame as a sending host does ([`fragment`]) and putting fragments back
//! together as a receiving host does ([`reassemble`]): the fragment tests state their inputs
//! and check their outputs with them.

use std::{format, prelude::rust_2024::*};

use super::{IP_MF, locate};
use crate::csum;

/// IPv6's fragment header (RFC 8200 §4.5): its next-header number and its length.
const IPV6_FRAGMENT: u8 = 44;
const IPV6_FRAGMENT_LEN: usize = 8;

/// Splits a built frame (Ethernet / IPv4, or IPv6 without extension headers) into fragments
/// as a sending host does: each fragment carries at most `chunk` bytes of the IP payload
/// (rounded down to a multiple of 8) and the datagram's identification `id` (its low 16 bits
/// for IPv4). IPv4 fragments copy the header (options included), with the offset, "more
/// fragments" (and no "don't fragment"), the length and the header checksum of each; IPv6
/// fragments get a fragment header after the fixed header. The transport header, with its
/// checksum over the whole datagram, is in the first fragment only.
pub fn fragment(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let parsed = locate(frame).expect("a frame that parses");
    let chunk = chunk / 8 * 8;
    assert!(chunk > 0, "fragments carry at least 8 bytes");
    let ipv6 = parsed.src.len() == 16;
    let header_end = if ipv6 { parsed.l3 + 40 } else { parsed.l4 };
    let payload = &frame[header_end..parsed.end];
    let mut fragments = Vec::new();
    for (index, piece) in payload.chunks(chunk).enumerate() {
        let offset = index * chunk;
        let more = offset + piece.len() < payload.len();
        let mut out = frame[..header_end].to_vec();
        let ip = &mut out[parsed.l3..];
        if ipv6 {
            let next = ip[6];
            ip[4..6].copy_from_slice(&((IPV6_FRAGMENT_LEN + piece.len()) as u16).to_be_bytes());
            ip[6] = IPV6_FRAGMENT;
            let offset_field = offset as u16 | u16::from(more);
            out.extend_from_slice(&[next, 0]);
            out.extend_from_slice(&offset_field.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        } else {
            let header_len = ip.len();
            ip[2..4].copy_from_slice(&((header_len + piece.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            let flags = (offset / 8) as u16 | if more { IP_MF } else { 0 };
            ip[6..8].copy_from_slice(&flags.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let check = csum::checksum(ip, 0);
            ip[10..12].copy_from_slice(&check.to_ne_bytes());
        }
        out.extend_from_slice(piece);
        fragments.push(out);
    }
    fragments
}

/// Puts fragments of one datagram (in any order) back together as the receiving host does:
/// the frame of the whole datagram, with the first fragment's Ethernet and IP headers (IPv4:
/// no fragment flags, its length and header checksum computed; IPv6: the fragment header
/// removed). Errors name what does not fit: fragments of different datagrams, a gap, no last
/// fragment.
pub fn reassemble(fragments: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    // (offset, more, payload, headers up to the payload) of each fragment.
    let mut pieces = Vec::new();
    let mut datagram = None;
    for frame in fragments {
        let parsed = locate(frame).ok_or("a fragment does not parse")?;
        let ip = &frame[parsed.l3..parsed.end];
        let (id, offset, more, header_end, proto) = if parsed.src.len() == 16 {
            if ip[6] != IPV6_FRAGMENT {
                return Err("an IPv6 packet without a fragment header".into());
            }
            let header = &ip[40..40 + IPV6_FRAGMENT_LEN];
            let field = u16::from_be_bytes([header[2], header[3]]);
            let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let end = parsed.l3 + 40 + IPV6_FRAGMENT_LEN;
            (
                id,
                usize::from(field & 0xfff8),
                field & 1 != 0,
                end,
                header[0],
            )
        } else {
            let field = u16::from_be_bytes([ip[6], ip[7]]);
            let id = u32::from(u16::from_be_bytes([ip[4], ip[5]]));
            let offset = usize::from(field & 0x1fff) * 8;
            (id, offset, field & IP_MF != 0, parsed.l4, ip[9])
        };
        let this = (id, proto, parsed.src.clone(), parsed.dst.clone());
        if datagram.get_or_insert_with(|| this.clone()) != &this {
            return Err("fragments of different datagrams".into());
        }
        let headers = &frame[..header_end];
        pieces.push((offset, more, &frame[header_end..parsed.end], headers));
    }
    pieces.sort_by_key(|piece| piece.0);
    let mut payload = Vec::new();
    let mut complete = false;
    for (offset, more, data, _) in &pieces {
        if *offset != payload.len() || complete {
            return Err(format!("a gap or an overlap at byte {offset}"));
        }
        payload.extend_from_slice(data);
        complete = !more;
    }
    if !complete {
        return Err("no last fragment".into());
    }
    let first = pieces[0].3;
    let mut out;
    if datagram.is_some_and(|(_, _, src, _)| src.len() == 16) {
        out = first[..first.len() - IPV6_FRAGMENT_LEN].to_vec();
        let l3 = out.len() - 40;
        out[l3 + 4..l3 + 6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        out[l3 + 6] = first[first.len() - IPV6_FRAGMENT_LEN];
    } else {
        // (`locate` reads untagged frames: the IP header is at 14.)
        out = first.to_vec();
        let header_len = out.len() - 14;
        let ip = &mut out[14..];
        ip[2..4].copy_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&[0, 0]);
        ip[10..12].copy_from_slice(&[0, 0]);
        let check = csum::checksum(ip, 0);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
    }
    out.extend_from_slice(&payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::vec;

    use super::*;
    use crate::frame::{Frame, verify_checksums};

    #[test]
    fn fragments_put_back_together_are_the_datagram() {
        for frame in [
            Frame::udp("198.18.0.2:5000", "198.18.100.1:53"),
            Frame::udp("198.18.0.2:5000", "198.18.100.1:53").with(|f| f.ip_options = vec![1; 4]),
            Frame::tcp("198.18.0.2:40000", "198.18.100.1:80"),
            Frame::udp("[fd00::2]:5000", "[fd00:100::1]:53"),
        ] {
            let whole = frame
                .with(|f| {
                    f.ip_frag = 0;
                    f.ip_id = 0x5678;
                    f.payload = (0..3_000).map(|i| i as u8).collect();
                })
                .build();
            let fragments = fragment(&whole, 1_300, 0x1234_5678);
            assert_eq!(fragments.len(), 3);
            for piece in &fragments[..2] {
                assert!(piece.len() <= 14 + 48 + 1_296, "{}", piece.len());
            }
            let mut shuffled = fragments.clone();
            shuffled.swap(0, 2);
            assert!(
                reassemble(&shuffled) == Ok(whole.clone()),
                "reassembled in any order"
            );
            verify_checksums(&reassemble(&fragments).unwrap()).unwrap();
            assert!(reassemble(&fragments[..2]).is_err(), "no last fragment");
            assert!(reassemble(&[fragments[0].clone(), fragments[2].clone()]).is_err());
        }
        let ipv4 = Frame::udp("198.18.0.2:5000", "198.18.100.1:53")
            .with(|f| {
                f.ip_frag = 0;
                f.payload = vec![7; 2_000];
            })
            .build();
        let fragments = fragment(&ipv4, 1_480, 0xabcd);
        assert_eq!(&fragments[0][18..22], &[0xab, 0xcd, 0x20, 0x00], "id, MF");
        assert_eq!(
            &fragments[1][18..22],
            &[0xab, 0xcd, 0x00, 185],
            "id, offset 1480"
        );
        let ipv6 = Frame::udp("[fd00::2]:5000", "[fd00:100::1]:53")
            .with(|f| f.payload = vec![7; 2_000])
            .build();
        let fragments = fragment(&ipv6, 1_448, 9);
        assert_eq!(fragments[0][20], 44, "a fragment header");
        assert_eq!(&fragments[0][54..62], &[17, 0, 0, 1, 0, 0, 0, 9]);
        assert_eq!(&fragments[1][54..62], &[17, 0, 0x05, 0xa8, 0, 0, 0, 9]);
    }
}
