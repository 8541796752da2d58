//! Client prefixes as operators write them, inline and in prefix files (`prefix pool` per line).

use std::net::IpAddr;

use ipnet::IpNet;

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
pub(super) type PrefixLine = (usize, IpNet, String);

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
}
