//! Maglev's lookup table (Eisenbud et al., NSDI 2016), weighted: every backend prefers the
//! slots of its own permutation of the table, and backends take turns claiming their next
//! preferred free slot until the table is full, a backend of twice the weight taking twice
//! the turns. The table depends only on the backends (ordered by address), their weights, the
//! table's size and a seed, so every instance given the same backends computes the same
//! table, and when one backend leaves or joins only about its share of the slots changes
//! hands.

use std::{hash::Hasher as _, net::SocketAddr};

use fnv::FnvHasher;
use lb_common::{MaglevTable, consts::limits::MAX_MAGLEV_SLOTS};

use crate::config::MaglevConfig;

pub use crate::config::{DEFAULT_MAGLEV_TABLE_SIZE as DEFAULT_TABLE_SIZE, is_prime};

/// A backend's two hashes: where its permutation starts, and its step.
fn permutation(address: SocketAddr, seed: u64, size: u64) -> (u64, u64) {
    let hash = |tag: u8| {
        let mut hasher = FnvHasher::with_key(0xcbf2_9ce4_8422_2325 ^ seed);
        hasher.write_u8(tag);
        match address.ip() {
            std::net::IpAddr::V4(ip) => hasher.write(&ip.octets()),
            std::net::IpAddr::V6(ip) => hasher.write(&ip.octets()),
        }
        hasher.write_u16(address.port());
        // FNV's low bits change little with the last bytes of the input: finish with a mix
        // (the final step of MurmurHash3's 64-bit hash) before taking a remainder.
        let mut h = hasher.finish();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    };
    (hash(0) % size, hash(1) % (size - 1) + 1)
}

/// The table for `backends` given as (address, weight): for each slot, the index of its
/// backend in `backends` sorted by address. `size` must be a prime larger than the number of
/// backends with a weight; backends of weight 0 get no slot; empty when none has a weight.
pub fn table(backends: &[(SocketAddr, u32)], size: u32, seed: u64) -> Vec<u32> {
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i].0);
    let weighted: Vec<usize> = order.into_iter().filter(|&i| backends[i].1 > 0).collect();
    if weighted.is_empty() || size == 0 {
        return Vec::new();
    }
    let size = u64::from(size);
    let max_weight = weighted.iter().map(|&i| backends[i].1).max().unwrap_or(1);
    let mut next: Vec<u64> = vec![0; weighted.len()];
    let steps: Vec<(u64, u64)> = weighted
        .iter()
        .map(|&i| permutation(backends[i].0, seed, size))
        .collect();
    let mut credit: Vec<u64> = vec![0; weighted.len()];
    let mut slots: Vec<u32> = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    // Each pass, every backend earns its weight in credit and claims a slot for each
    // `max_weight` of it: the heaviest claim one slot per pass.
    while filled < size {
        for (k, &i) in weighted.iter().enumerate() {
            credit[k] += u64::from(backends[i].1);
            while credit[k] >= u64::from(max_weight) && filled < size {
                credit[k] -= u64::from(max_weight);
                let (offset, skip) = steps[k];
                loop {
                    let slot = ((offset + next[k] * skip) % size) as usize;
                    next[k] += 1;
                    if slots[slot] == u32::MAX {
                        slots[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    slots
}

/// The [`MaglevTable`] the data plane reads, for backends given as (id, address, weight):
/// each slot holds the id of the backend [`table`] gives it. Boxed: 512 KiB.
pub fn lookup_table(
    backends: &[(u32, SocketAddr, u32)],
    config: &MaglevConfig,
) -> Box<MaglevTable> {
    assert!(
        config.table_size as usize <= MAX_MAGLEV_SLOTS,
        "a Maglev table holds at most {MAX_MAGLEV_SLOTS} slots"
    );
    let weighted: Vec<(SocketAddr, u32)> = backends.iter().map(|&(_, a, w)| (a, w)).collect();
    let slots = table(&weighted, config.table_size, u64::from(config.seed));
    // SAFETY: a `MaglevTable` is integers only: all zeroes is a valid value (an empty table).
    let mut lookup: Box<MaglevTable> = unsafe { Box::new_zeroed().assume_init() };
    lookup.len = slots.len() as u32;
    if config.client_hash {
        lookup.len |= lb_common::consts::maglev_len::CLIENT_HASH;
    }
    lookup.seed = config.seed;
    for (slot, &index) in lookup.slots.iter_mut().zip(&slots) {
        *slot = backends[index as usize].0;
    }
    lookup
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| {
                let address = format!("198.18.{}.{}:8080", 1 + i / 250, 1 + i % 250);
                (address.parse().unwrap(), 1)
            })
            .collect()
    }

    fn shares(slots: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &slot in slots {
            counts[slot as usize] += 1;
        }
        counts
    }

    #[test]
    fn primes_are_recognised() {
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(251) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && !is_prime(65_535));
    }

    #[test]
    fn every_instance_computes_the_same_table_whatever_the_order_of_its_backends() {
        let list = backends(10);
        let first = table(&list, DEFAULT_TABLE_SIZE, 7);
        let mut reversed = list.clone();
        reversed.reverse();
        // Indexes refer to the list as given: compare the addresses each slot names.
        let named = |list: &[(SocketAddr, u32)], slots: &[u32]| -> Vec<SocketAddr> {
            slots.iter().map(|&i| list[i as usize].0).collect()
        };
        assert_eq!(
            named(&list, &first),
            named(&reversed, &table(&reversed, DEFAULT_TABLE_SIZE, 7))
        );
        assert_eq!(first, table(&list, DEFAULT_TABLE_SIZE, 7), "deterministic");
        assert_ne!(
            first,
            table(&list, DEFAULT_TABLE_SIZE, 8),
            "the seed matters"
        );
        assert!(
            first.iter().all(|&i| (i as usize) < list.len()),
            "every slot filled"
        );
    }

    #[test]
    fn equal_weights_get_nearly_equal_shares() {
        for n in [3, 10, 100, 1000] {
            let slots = table(&backends(n), DEFAULT_TABLE_SIZE, 1);
            let counts = shares(&slots, n);
            let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
            // Turns alternate, so shares differ by at most one slot (the last pass is cut
            // short when the table fills).
            assert!(max - min <= 1, "{n} backends: {min}..{max} slots");
        }
    }

    #[test]
    fn weights_share_the_slots_in_proportion() {
        let mut list = backends(3);
        list[0].1 = 3;
        let counts = shares(&table(&list, DEFAULT_TABLE_SIZE, 1), 3);
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((2.95..=3.05).contains(&ratio), "{counts:?}");
        list[2].1 = 0;
        let counts = shares(&table(&list, DEFAULT_TABLE_SIZE, 1), 3);
        assert_eq!(counts[2], 0, "weight 0: no slot");
        assert!(table(&[(list[0].0, 0)], DEFAULT_TABLE_SIZE, 1).is_empty());
    }

    /// When one of N backends leaves, the slots that change hands are its own (1/N of the
    /// table) plus a few others that the new turns take: Maglev's minimal disruption, measured
    /// against the 1/N ideal.
    #[test]
    fn one_backend_leaving_or_joining_moves_little_more_than_its_share() {
        for n in [10, 100] {
            let all = backends(n);
            let before = table(&all, DEFAULT_TABLE_SIZE, 3);
            let mut fewer = all.clone();
            fewer.remove(n / 2);
            let after = table(&fewer, DEFAULT_TABLE_SIZE, 3);
            let name = |list: &[(SocketAddr, u32)], i: u32| list[i as usize].0;
            let moved = before
                .iter()
                .zip(&after)
                .filter(|&(&b, &a)| name(&all, b) != name(&fewer, a))
                .count();
            let fraction = moved as f64 / f64::from(DEFAULT_TABLE_SIZE);
            let ideal = 1.0 / n as f64;
            eprintln!(
                "{n} backends, one leaves: {fraction:.4} of the slots moved (ideal {ideal:.4})"
            );
            assert!(fraction >= ideal * 0.99, "its own slots must move");
            assert!(fraction <= ideal * 2.0, "{fraction} moved, ideal {ideal}");
            // And back: the backend joins the N - 1 again.
            let rejoined = table(&all, DEFAULT_TABLE_SIZE, 3);
            assert_eq!(rejoined, before, "the same backends give the same table");
            let gained = after
                .iter()
                .zip(&rejoined)
                .filter(|&(&a, &r)| name(&fewer, a) != name(&all, r))
                .count();
            assert_eq!(gained, moved, "joining moves what leaving moved");
        }
    }
}
