//! Where a part of a valid config is written in its file, for the problems found after
//! validation (the host's checks, `xlb check`): an interface of `interfaces`, a service's
//! backend, a top-level key.

use std::net::{IpAddr, SocketAddr};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::error::{ConfigError, locate};

/// What a problem found outside the file is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// An interface of `interfaces`.
    Interface(String),
    /// A backend (by address) of a service (by name).
    Backend {
        /// The service's name.
        service: String,
        /// The backend's address.
        address: IpAddr,
    },
    /// A top-level key, like `xdp_mode`.
    Key(&'static str),
    /// The host as a whole: no place in the file.
    Host,
}

/// `message` at the place `text` writes `subject` (no position if it is not found).
pub fn locate_subject(text: &str, subject: &Subject, message: String) -> ConfigError {
    let (root, _) = DeTable::parse_recoverable(text);
    let span = find(root.get_ref(), subject).unwrap_or(0..0);
    locate(text, &span, message)
}

/// The value of `key` in `table`.
fn get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, value)| value)
}

/// The items of an array value.
fn items<'a, 'i>(value: Option<&'a Spanned<DeValue<'i>>>) -> &'a [Spanned<DeValue<'i>>] {
    match value.map(Spanned::get_ref) {
        Some(DeValue::Array(items)) => items,
        _ => &[],
    }
}

/// Whether `value` is the string `text`.
fn is_string(value: &DeValue, text: impl Fn(&str) -> bool) -> bool {
    matches!(value, DeValue::String(s) if text(s))
}

/// Where `subject` is written in `root`.
fn find(root: &DeTable, subject: &Subject) -> Option<std::ops::Range<usize>> {
    match subject {
        Subject::Interface(name) => items(get(root, "interfaces"))
            .iter()
            .find(|item| is_string(item.get_ref(), |s| s == name))
            .map(Spanned::span),
        Subject::Key(key) => get(root, key).map(Spanned::span),
        Subject::Backend { service, address } => {
            let service =
                items(get(root, "service"))
                    .iter()
                    .find_map(|item| match item.get_ref() {
                        DeValue::Table(table)
                            if get(table, "name")
                                .is_some_and(|n| is_string(n.get_ref(), |s| s == service)) =>
                        {
                            Some(table)
                        }
                        _ => None,
                    })?;
            let pools =
                items(get(service, "pool"))
                    .iter()
                    .filter_map(|pool| match pool.get_ref() {
                        DeValue::Table(pool) => Some(pool),
                        _ => None,
                    });
            std::iter::once(service)
                .chain(pools)
                .flat_map(|table| items(get(table, "backends")))
                .find_map(|backend| match backend.get_ref() {
                    DeValue::Table(backend) => get(backend, "address").filter(|a| {
                        is_string(a.get_ref(), |s| {
                            s.parse::<SocketAddr>().is_ok_and(|s| s.ip() == *address)
                        })
                    }),
                    _ => None,
                })
                .map(Spanned::span)
        }
        Subject::Host => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"interfaces = ["eth0", "eth2"]
xdp_mode = "native"

[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" } ]

[[service]]
name = "video"
listen = "198.18.100.2:80"
protocol = "tcp"

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.12:8080" }, { address = "198.18.1.11:8080" } ]
"#;

    fn at(subject: Subject) -> (usize, usize) {
        let error = locate_subject(TEXT, &subject, String::new());
        (error.line, error.column)
    }

    #[test]
    fn interfaces_backends_and_keys_are_found_where_the_file_writes_them() {
        assert_eq!(at(Subject::Interface("eth2".into())), (1, 23));
        assert_eq!(at(Subject::Key("xdp_mode")), (2, 12));
        let backend = |service: &str| Subject::Backend {
            service: service.into(),
            address: "198.18.1.11".parse().unwrap(),
        };
        assert_eq!(at(backend("web")), (8, 26));
        // In a pool, and not the other service's backend of that address.
        assert_eq!(at(backend("video")), (17, 60));
        assert_eq!(at(Subject::Interface("eth9".into())), (0, 0));
        assert_eq!(at(Subject::Host), (0, 0));
    }
}
