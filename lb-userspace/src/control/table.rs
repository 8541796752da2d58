//! Building backend tables: the round-robin sequence the data plane walks for new flows.
//!
//! Weights are spread with nginx's smooth weighted round robin, so a backend of weight 3
//! among weight-1 peers gets every other slot rather than three slots in a row. Weights are
//! first divided by their greatest common divisor (weights 2:2:2 give the same 3-slot table as
//! 1:1:1), and scaled down proportionally if the sum exceeds the table's capacity.

use lb_common::{BackendTable, consts::limits::MAX_TABLE_SLOTS};

/// The slot sequence for backends given as `(backend id, weight)`. Backends of weight 0 get no
/// slot; the result is empty when no backend has a weight.
pub fn smooth_weighted_sequence(backends: &[(u32, u32)]) -> Vec<u32> {
    let weighted: Vec<(u32, u64)> = backends
        .iter()
        .filter(|(_, weight)| *weight > 0)
        .map(|&(id, weight)| (id, u64::from(weight)))
        .collect();
    if weighted.is_empty() {
        return Vec::new();
    }
    let divisor = weighted
        .iter()
        .fold(0, |acc, &(_, weight)| gcd(acc, weight));
    let mut weights: Vec<u64> = weighted
        .iter()
        .map(|&(_, weight)| weight / divisor)
        .collect();
    if weights.iter().sum::<u64>() > MAX_TABLE_SLOTS as u64 {
        weights = scale_to(&weights, MAX_TABLE_SLOTS as u64);
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;

    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (current, weight) in current.iter_mut().zip(&weights) {
            *current += *weight as i64;
        }
        let (chosen, _) = current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
            .expect("at least one weighted backend");
        current[chosen] -= total;
        sequence.push(weighted[chosen].0);
    }
    sequence
}

/// A [`BackendTable`] holding `sequence`.
pub fn backend_table(sequence: &[u32], generation: u32) -> BackendTable {
    assert!(
        sequence.len() <= MAX_TABLE_SLOTS,
        "a table holds at most {MAX_TABLE_SLOTS} slots"
    );
    let mut table = BackendTable::EMPTY;
    table.len = sequence.len() as u32;
    table.generation = generation;
    table.slots[..sequence.len()].copy_from_slice(sequence);
    table
}

/// Scales `weights` so they sum to at most `capacity` (which must be at least their number):
/// every positive weight keeps one slot, and the rest of the capacity is shared in proportion
/// to the weights, rounding by largest remainder so the shares stay as close as possible.
fn scale_to(weights: &[u64], capacity: u64) -> Vec<u64> {
    let count = weights.len() as u64;
    assert!(count <= capacity, "more backends than table slots");
    let total: u64 = weights.iter().sum();
    let spare = capacity - count;
    let mut scaled: Vec<u64> = weights.iter().map(|w| 1 + w * spare / total).collect();
    let mut by_remainder: Vec<(u64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (w * spare % total, i))
        .collect();
    by_remainder.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let used: u64 = scaled.iter().sum();
    for (_, i) in by_remainder.into_iter().take((capacity - used) as usize) {
        scaled[i] += 1;
    }
    scaled
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn shares(sequence: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for id in sequence {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_take_turns() {
        assert_eq!(
            smooth_weighted_sequence(&[(7, 1), (8, 1), (9, 1)]),
            [7, 8, 9]
        );
        assert_eq!(
            smooth_weighted_sequence(&[(7, 5), (8, 5), (9, 5)]),
            [7, 8, 9]
        );
    }

    #[test]
    fn weights_are_spread_not_bunched() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(
            smooth_weighted_sequence(&[(1, 5), (2, 1), (3, 1)]),
            [1, 1, 2, 1, 3, 1, 1]
        );
        let sequence = smooth_weighted_sequence(&[(1, 3), (2, 3), (3, 1)]);
        assert_eq!(shares(&sequence), HashMap::from([(1, 3), (2, 3), (3, 1)]));
        // No backend of weight 3 takes more than two slots in a row.
        assert!(
            sequence.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
            "{sequence:?}"
        );
    }

    #[test]
    fn zero_weight_backends_get_no_slot() {
        assert_eq!(smooth_weighted_sequence(&[(1, 0), (2, 2), (3, 0)]), [2]);
        assert!(smooth_weighted_sequence(&[(1, 0), (2, 0)]).is_empty());
        assert!(smooth_weighted_sequence(&[]).is_empty());
    }

    #[test]
    fn large_tables_are_scaled_to_capacity_keeping_every_backend() {
        // 1000 backends of weights 1..=256: far more weight than slots, so shares can only be
        // approximated (about two slots per backend), but never inverted.
        let backends: Vec<(u32, u32)> = (0..1000).map(|i| (i, 1 + i % 256)).collect();
        let sequence = smooth_weighted_sequence(&backends);
        assert_eq!(sequence.len(), MAX_TABLE_SLOTS);
        let counts = shares(&sequence);
        assert_eq!(counts.len(), 1000, "every backend keeps a slot");
        for (lighter, heavier) in backends.iter().zip(&backends[1..]) {
            if heavier.1 > lighter.1 {
                assert!(
                    counts[&heavier.0] >= counts[&lighter.0],
                    "{lighter:?} vs {heavier:?}"
                );
            }
        }
        assert!(
            counts[&255] > counts[&0],
            "{} vs {}",
            counts[&255],
            counts[&0]
        );
    }

    #[test]
    fn scaling_keeps_proportions() {
        let scaled = scale_to(&[3000, 1000], 2048);
        assert_eq!(scaled.iter().sum::<u64>(), 2048);
        assert_eq!(scaled, [1536, 512]);
    }

    #[test]
    fn the_table_holds_the_sequence() {
        let table = backend_table(&[4, 5, 4], 9);
        assert_eq!(table.len, 3);
        assert_eq!(table.generation, 9);
        assert_eq!(&table.slots[..4], &[4, 5, 4, 0]);
    }
}
