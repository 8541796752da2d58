//! Locality pools, the parts that need no kernel: which pool serves each home pool's new
//! flows, and the longest-prefix match the data plane performs (for `xlb simulate`).

use std::net::IpAddr;

use ipnet::IpNet;

/// The pool that serves each home pool's new flows: the home pool while it has room, else the
/// first pool of its fallback list that has room, else the home pool still (whose table then
/// holds only Overloaded backends, or none).
pub(crate) fn serving_pools(has_room: &[bool], fallback: &[Vec<usize>]) -> Vec<usize> {
    (0..has_room.len())
        .map(|home| {
            if has_room[home] {
                return home;
            }
            fallback[home]
                .iter()
                .copied()
                .find(|&pool| has_room.get(pool).copied().unwrap_or(false))
                .unwrap_or(home)
        })
        .collect()
}

/// The home pool of a client: the pool of the longest prefix containing it, or `default`.
pub(crate) fn home_pool(prefixes: &[(IpNet, usize)], default: usize, client: IpAddr) -> usize {
    prefixes
        .iter()
        .filter(|(net, _)| net.contains(&client))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(default, |(_, pool)| *pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_prefix;

    #[test]
    fn a_pool_without_room_spills_to_its_first_fallback_with_room() {
        // kr (0) falls back to jp (1) then us (2); jp to kr; us to nobody.
        let fallback = vec![vec![1, 2], vec![0], vec![]];
        assert_eq!(serving_pools(&[true, true, true], &fallback), [0, 1, 2]);
        assert_eq!(serving_pools(&[false, true, true], &fallback), [1, 1, 2]);
        assert_eq!(serving_pools(&[false, false, true], &fallback), [2, 1, 2]);
        // Nobody to spill to: the home pool keeps its own (Overloaded or empty) table.
        assert_eq!(serving_pools(&[false, false, false], &fallback), [0, 1, 2]);
        assert_eq!(serving_pools(&[true, false, false], &fallback), [0, 0, 2]);
    }

    #[test]
    fn the_longest_prefix_wins_and_the_rest_go_to_the_default() {
        let prefixes = vec![
            (parse_prefix("198.18.0.0/16").unwrap(), 1),
            (parse_prefix("198.18.0.0/24").unwrap(), 2),
            (parse_prefix("198.18.0.7").unwrap(), 3),
            (parse_prefix("fd00::/8").unwrap(), 4),
        ];
        let home = |ip: &str| home_pool(&prefixes, 0, ip.parse().unwrap());
        assert_eq!(home("198.18.0.7"), 3);
        assert_eq!(home("198.18.0.8"), 2);
        assert_eq!(home("198.18.9.1"), 1);
        assert_eq!(home("198.19.0.1"), 0);
        assert_eq!(home("fd00::1"), 4);
        assert_eq!(home("fe80::1"), 0);
    }
}
