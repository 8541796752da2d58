//! Least connections, as round-robin table weights: the data plane walks a round-robin table
//! as for `round-robin` (the same per-packet cost), and the daemon sets the table's weights
//! from each backend's open connections, counted again every second.
//!
//! A backend of weight `w` with `c` connections gets a share of new flows in proportion to
//! `w / (1 + c / w)`: its weight, divided by one plus its connections per unit of weight
//! (IPVS's `wlc` ratio). With no connections anywhere this is weighted round robin; a backend
//! with more connections per unit of weight than the others gets fewer of the new flows, in
//! proportion, rather than none (every new flow of the next second to the one backend that
//! had the fewest would overshoot: the counts are a second old). At equilibrium, with
//! connections that last alike, connections settle in proportion to the weights.

/// The table weights of a service's backends, given their weights in force (`weights`, in
/// hundredths: 100 is weight 1; 0 takes no new flows) and their open connections
/// (`connections`; `None` before the first count, taken as none). The result keeps the sum
/// of `weights` (but for rounding), so that a weight reads as the backend's share in the same
/// unit, and every backend with a weight keeps at least 1.
pub fn weights(weights: &[u32], connections: &[Option<u64>]) -> Vec<u32> {
    let shares: Vec<f64> = weights
        .iter()
        .zip(connections.iter().chain(std::iter::repeat(&None)))
        .map(|(&weight, connections)| {
            let weight = f64::from(weight);
            let per_weight = connections.unwrap_or(0) as f64 * 100.0 / weight.max(1.0);
            weight / (1.0 + per_weight)
        })
        .collect();
    let total: f64 = shares.iter().sum();
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    weights
        .iter()
        .zip(&shares)
        .map(|(&weight, share)| match weight {
            0 => 0,
            _ => ((share / total * sum as f64).round() as u32).max(1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_connections_the_weights_stay_and_a_loaded_backend_gets_less() {
        assert_eq!(
            weights(&[100, 300, 0], &[None, Some(0), None]),
            [100, 300, 0]
        );
        // Weight 1 each; 10, 0 and 0 connections: the first gets 1/11 of the others' share.
        assert_eq!(
            weights(&[100, 100, 100], &[Some(10), Some(0), Some(0)]),
            [13, 143, 143]
        );
        // A backend with a weight always keeps a slot; the sum stays.
        let many = weights(&[100, 100], &[Some(1_000_000), Some(0)]);
        assert_eq!(many, [1, 200]);
        // Equal connections per unit of weight: the weights.
        assert_eq!(weights(&[100, 300], &[Some(50), Some(150)]), [100, 300]);
    }

    /// New flows placed by the weights of the last count, lasting `life` counts each: the
    /// backends' connections converge to their weights' proportion, from any start.
    #[test]
    fn connections_settle_in_proportion_to_the_weights() {
        let configured = [100, 200, 100];
        // Backend 0 starts with 500 long connections, which end one by one.
        let mut old = 500u64;
        let mut live: Vec<Vec<u64>> = vec![Vec::new(); 3];
        let (rate, life) = (300u64, 10);
        let mut counts = [Some(old), Some(0), Some(0)];
        for tick in 0..60 {
            let table = weights(&configured, &counts);
            let total: u32 = table.iter().sum();
            for (b, &w) in table.iter().enumerate() {
                live[b].push(rate * u64::from(w) / u64::from(total));
            }
            for l in &mut live {
                if l.len() > life {
                    l.remove(0);
                }
            }
            old = old.saturating_sub(25);
            let sums: Vec<u64> = live.iter().map(|l| l.iter().sum()).collect();
            counts = [Some(sums[0] + old), Some(sums[1]), Some(sums[2])];
            if tick == 0 {
                assert!(table[0] < 10, "the loaded backend is spared: {table:?}");
            }
        }
        let [a, b, c] = counts.map(Option::unwrap);
        let per_weight = [a as f64, b as f64 / 2.0, c as f64];
        let (min, max) = (
            per_weight.iter().copied().fold(f64::MAX, f64::min),
            per_weight.iter().copied().fold(0.0, f64::max),
        );
        assert!(max / min < 1.05, "{counts:?}");
    }
}
