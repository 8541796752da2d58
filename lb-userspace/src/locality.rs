//! Locality pools, the parts that need no kernel: which pool serves each home pool's new
//! flows, the longest-prefix match the data plane performs (for `xlb simulate` and tests), the
//! prefix files operators write, and the LPM keys of `CLIENT_POOLS`.

use std::net::IpAddr;

use ipnet::IpNet;
use lb_common::ClientPrefix;

/// The pool that serves each home pool's new flows: the home pool while it has room, else the
/// first pool of its fallback list that has room, else the home pool still (whose table then
/// holds only Overloaded backends, or none).
pub fn serving_pools(has_room: &[bool], fallback: &[Vec<usize>]) -> Vec<usize> {
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
pub fn home_pool(prefixes: &[(IpNet, usize)], default: usize, client: IpAddr) -> usize {
    prefixes
        .iter()
        .filter(|(net, _)| net.contains(&client))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(default, |(_, pool)| *pool)
}

/// The `CLIENT_POOLS` key of a prefix: its length in bits and its address bytes (IPv4 in the
/// first 4 of 16, as the data plane looks clients up).
pub fn lpm_key(net: &IpNet) -> (u32, ClientPrefix) {
    let mut data = [0u8; 16];
    match net {
        IpNet::V4(v4) => data[..4].copy_from_slice(&v4.network().octets()),
        IpNet::V6(v6) => data = v6.network().octets(),
    }
    (u32::from(net.prefix_len()), data)
}

/// Parses a prefix: `198.18.0.0/24`, `fd00::/64`, or a bare address (a host prefix). Host
/// bits must be zero.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "{text:?} is not a prefix like \"198.18.0.0/24\" or \"fd00::/64\""
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has bits set after its prefix length; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A line of a prefix file: its number, prefix and pool name.
pub type PrefixLine = (usize, IpNet, String);

/// Parses the lines of a prefix file: `prefix pool`, blank lines and `#` comments allowed.
/// Returns the entries with their line numbers, or every bad line's number and problem.
pub fn parse_prefix_file(text: &str) -> Result<Vec<PrefixLine>, Vec<(usize, String)>> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [prefix, pool] = words[..] else {
            errors.push((number, format!("{line:?}: expected `prefix pool`")));
            continue;
        };
        match parse_prefix(prefix) {
            Ok(net) => entries.push((number, net, pool.to_owned())),
            Err(error) => errors.push((number, error)),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(parse_prefix("198.18.0.0/24").unwrap().prefix_len(), 24);
        assert_eq!(parse_prefix("fd00::1").unwrap().prefix_len(), 128);
        assert!(
            parse_prefix("198.18.0.1/24")
                .unwrap_err()
                .contains("198.18.0.0/24")
        );
        assert!(
            parse_prefix("198.18.0.0/33")
                .unwrap_err()
                .contains("not a prefix")
        );
        assert!(parse_prefix("kr").unwrap_err().contains("not a prefix"));
    }

    #[test]
    fn prefix_files_have_one_prefix_and_pool_per_line() {
        let text = "# regions\n198.18.0.0/24 kr\n\n198.18.2.0/24   jp # tokyo\nfd00::/64 kr\n";
        let entries = parse_prefix_file(text).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].0, 4);
        assert_eq!(entries[1].2, "jp");
        let errors =
            parse_prefix_file("198.18.0.0/24\n198.18.0.1/24 kr\nok kr extra\n").unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [1, 2, 3]);
    }

    #[test]
    fn keys_hold_the_network_bytes() {
        let (len, data) = lpm_key(&parse_prefix("198.18.0.0/24").unwrap());
        assert_eq!(len, 24);
        assert_eq!(data[..4], [198, 18, 0, 0]);
        assert_eq!(data[4..], [0; 12]);
        let (len, data) = lpm_key(&parse_prefix("fd00:2::/32").unwrap());
        assert_eq!(len, 32);
        assert_eq!(data[..4], [0xfd, 0, 0, 2]);
    }
}
