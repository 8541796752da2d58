//! The hash of a flow's 5-tuple that places a TCP flow when round robin cannot be used (see
//! `HANDSHAKE_GUARD` in `lb-ebpf/src/maps.rs`). The XDP program and userspace (tests, the
//! simulator) must compute the same value, so it is defined here once.
//!
//! It is MurmurHash3's 32-bit block mix and finaliser over the key's ten 32-bit words: small
//! enough for the verifier (no loop over bytes, no lookup table), and every input bit reaches
//! every output bit, so `hash % slots` spreads flows evenly over a table. Written out rather
//! than taken from a crate because hashing crates work on byte streams through `Hasher`,
//! which the XDP program cannot afford. IPv4 and IPv6 flows hash the same family-neutral
//! words (an IPv4 address is one word and three zeros), so the value does not depend on how
//! a table stores the key, and instances of different versions agree.

use crate::{Addr, FlowKey};

/// Hash of `key` under `seed` (a random value chosen when the maps are created, so that
/// sources cannot aim at one backend).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    tuple_hash(
        &key.src_addr,
        &key.dst_addr,
        u32::from(key.src_port) | u32::from(key.dst_port) << 16,
        u32::from(key.proto) | u32::from(key.family) << 8,
        seed,
    )
}

/// The hash of a client's address and the VIP alone (ports and protocol left out), under
/// `seed`: every connection of the client to the VIP hashes the same (source hashing).
#[inline(always)]
pub fn client_hash(client: &Addr, vip: &Addr, family: u8, seed: u32) -> u32 {
    tuple_hash(client, vip, 0, u32::from(family) << 8, seed)
}

/// [`flow_hash`] of a 5-tuple given by its parts: the addresses (family-neutral), the ports
/// (`src_port | dst_port << 16`, each in network order) and `proto | family << 8`.
#[inline(always)]
pub fn tuple_hash(src: &Addr, dst: &Addr, ports: u32, proto_family: u32, seed: u32) -> u32 {
    let words = [
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
        ports,
        proto_family,
    ];
    let mut hash = seed;
    for word in words {
        let mixed = word
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        hash = (hash ^ mixed)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    hash ^= 40;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: u32, port: u16) -> FlowKey {
        FlowKey {
            src_addr: [client, 0, 0, 0],
            dst_addr: [0x0164_12c6, 0, 0, 0],
            src_port: port,
            dst_port: 80u16.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn the_same_flow_hashes_the_same_and_the_seed_changes_it() {
        let flow = key(0x0200_12c6, 40_000);
        assert_eq!(flow_hash(&flow, 7), flow_hash(&flow, 7));
        assert_ne!(flow_hash(&flow, 7), flow_hash(&flow, 8));
        assert_ne!(flow_hash(&flow, 7), flow_hash(&key(0x0200_12c6, 40_001), 7));
    }

    /// Consecutive source ports of one client (what a client's connections look like) spread
    /// over three slots within 3% of a third each.
    #[test]
    fn consecutive_ports_spread_evenly_over_slots() {
        let mut slots = [0u32; 3];
        for port in 10_000..40_000u16 {
            slots[(flow_hash(&key(0x0200_12c6, port), 0x5eed) % 3) as usize] += 1;
        }
        for count in slots {
            assert!((9_700..=10_300).contains(&count), "{slots:?}");
        }
    }
}
