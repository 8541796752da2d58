//! Changes to the configuration file's text that `xlb backend add` and `remove` make, so that
//! the file stays the truth: a backend added to (or removed from) a service's `backends`, or
//! a pool's, with every other line, comment and layout of the file kept as it was.

use std::net::SocketAddr;

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

/// A backend to add: where, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBackend {
    /// Its address and port.
    pub address: SocketAddr,
    /// Its weight, if not the default.
    pub weight: Option<u32>,
    /// Its pool, for a service with `[[service.pool]]`s.
    pub pool: Option<String>,
}

/// `text` with `backend` added to service `service`, or why it cannot be.
pub fn add_backend(text: &str, service: &str, backend: &NewBackend) -> Result<String, String> {
    let mut doc = parse(text)?;
    let table = service_table(&mut doc, service)?;
    if listed(table, backend.address) {
        return Err(format!(
            "service {service:?} already has backend {}",
            backend.address
        ));
    }
    let pools = pool_names(table);
    let target = match (&backend.pool, pools.is_empty()) {
        (None, true) => table,
        (Some(pool), true) => {
            return Err(format!(
                "service {service:?} has no pools (its backends are one list): leave out pool {pool:?}"
            ));
        }
        (None, false) => {
            return Err(format!(
                "service {service:?} has pools: say which with --pool ({})",
                pools.join(", ")
            ));
        }
        (Some(pool), false) => pool_table(table, pool).ok_or_else(|| {
            format!(
                "service {service:?} has no pool {pool:?} (pools: {})",
                pools.join(", ")
            )
        })?,
    };
    let mut entry = InlineTable::new();
    entry.insert("address", Value::from(backend.address.to_string()));
    if let Some(weight) = backend.weight {
        entry.insert("weight", Value::from(i64::from(weight)));
    }
    match target.get_mut("backends") {
        Some(Item::Value(Value::Array(list))) => push_like_the_last(list, entry),
        Some(Item::ArrayOfTables(list)) => list.push(entry.into_table()),
        Some(_) => return Err(format!("service {service:?}: `backends` is not a list")),
        None => {
            let mut list = Array::new();
            list.push(entry);
            target.insert("backends", Item::Value(Value::Array(list)));
        }
    }
    Ok(doc.to_string())
}

/// Appends `entry` to `list` laid out as its last element was: the space (or line break)
/// before the closing bracket stays before it.
fn push_like_the_last(list: &mut Array, entry: InlineTable) {
    let mut value = Value::InlineTable(entry);
    match list.iter_mut().last() {
        Some(last) => {
            let prefix = last.decor().prefix().cloned().unwrap_or_default();
            let suffix = last.decor().suffix().cloned().unwrap_or_default();
            last.decor_mut().set_suffix("");
            value.decor_mut().set_prefix(prefix);
            value.decor_mut().set_suffix(suffix);
        }
        None => value.decor_mut().set_prefix(" "),
    }
    list.push_formatted(value);
}

/// `text` with backend `address` taken out of service `service` (wherever it is listed), or
/// why it cannot be.
pub fn remove_backend(text: &str, service: &str, address: SocketAddr) -> Result<String, String> {
    let mut doc = parse(text)?;
    let table = service_table(&mut doc, service)?;
    let removed =
        remove_from(table)(address) || pools_mut(table).any(|pool| remove_from(pool)(address));
    if !removed {
        return Err(format!("service {service:?} has no backend {address}"));
    }
    Ok(doc.to_string())
}

fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>()
        .map_err(|error| format!("the configuration file does not parse: {error}"))
}

/// The `[[service]]` named `name`.
fn service_table<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, String> {
    let services = doc
        .get_mut("service")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("the configuration file has no [[service]]")?;
    let names: Vec<String> = services
        .iter()
        .filter_map(|s| s.get("name").and_then(Item::as_str).map(str::to_owned))
        .collect();
    services
        .iter_mut()
        .find(|s| s.get("name").and_then(Item::as_str) == Some(name))
        .ok_or_else(|| format!("no service named {name:?} (services: {})", names.join(", ")))
}

/// The names of a service's pools.
fn pool_names(service: &Table) -> Vec<String> {
    service
        .get("pool")
        .and_then(Item::as_array_of_tables)
        .map(|pools| {
            pools
                .iter()
                .filter_map(|p| p.get("name").and_then(Item::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A service's pools.
fn pools_mut(service: &mut Table) -> impl Iterator<Item = &mut Table> {
    service
        .get_mut("pool")
        .and_then(Item::as_array_of_tables_mut)
        .into_iter()
        .flat_map(|pools| pools.iter_mut())
}

/// The pool of `service` named `name`.
fn pool_table<'a>(service: &'a mut Table, name: &str) -> Option<&'a mut Table> {
    pools_mut(service).find(|p| p.get("name").and_then(Item::as_str) == Some(name))
}

/// Whether an entry's `address` is `address` (written in any form that parses to it).
fn is_address(address: Option<&Value>, wanted: SocketAddr) -> bool {
    address
        .and_then(Value::as_str)
        .and_then(|text| text.parse::<SocketAddr>().ok())
        == Some(wanted)
}

/// Whether `service` (or one of its pools) lists `address`.
fn listed(service: &mut Table, address: SocketAddr) -> bool {
    let in_list = |table: &Table| match table.get("backends") {
        Some(Item::Value(Value::Array(list))) => list.iter().any(|entry| {
            entry
                .as_inline_table()
                .is_some_and(|e| is_address(e.get("address"), address))
        }),
        Some(Item::ArrayOfTables(list)) => list
            .iter()
            .any(|e| is_address(e.get("address").and_then(Item::as_value), address)),
        _ => false,
    };
    in_list(service) || pools_mut(service).any(|pool| in_list(pool))
}

/// A function that takes `address` out of `table`'s `backends`; it says whether it did.
fn remove_from(table: &mut Table) -> impl FnOnce(SocketAddr) -> bool + '_ {
    move |address| match table.get_mut("backends") {
        Some(Item::Value(Value::Array(list))) => {
            let at = list.iter().position(|entry| {
                entry
                    .as_inline_table()
                    .is_some_and(|e| is_address(e.get("address"), address))
            });
            at.map(|at| list.remove(at)).is_some()
        }
        Some(Item::ArrayOfTables(list)) => {
            let at = list
                .iter()
                .position(|e| is_address(e.get("address").and_then(Item::as_value), address));
            at.map(|at| list.remove(at)).is_some()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"interfaces = ["eth0"]   # where it attaches

# The web service.
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:8080" }, { address = "198.18.1.12:8080", weight = 2 } ]

[[service]]
name = "video"
listen = "198.18.100.2:80"
protocol = "tcp"

[[service.pool]]
name = "kr"
backends = [ { address = "198.18.1.21:8080" } ]

[[service.pool]]
name = "jp"
backends = [ { address = "198.18.1.31:8080" } ]
"#;

    fn new(address: &str, weight: Option<u32>, pool: Option<&str>) -> NewBackend {
        NewBackend {
            address: address.parse().unwrap(),
            weight,
            pool: pool.map(str::to_owned),
        }
    }

    #[test]
    fn a_backend_is_added_where_it_belongs_and_the_rest_of_the_file_is_kept() {
        let added = add_backend(TEXT, "web", &new("198.18.1.13:8080", Some(3), None)).unwrap();
        assert!(added.contains(
            r#"{ address = "198.18.1.12:8080", weight = 2 }, { address = "198.18.1.13:8080", weight = 3 } ]"#
        ), "{added}");
        assert!(added.contains("# The web service.") && added.contains("# where it attaches"));
        let pooled =
            add_backend(TEXT, "video", &new("198.18.1.32:8080", None, Some("jp"))).unwrap();
        assert!(pooled.contains(
            r#"backends = [ { address = "198.18.1.31:8080" }, { address = "198.18.1.32:8080" } ]"#
        ), "{pooled}");
        // The file with the backend is a valid config with it.
        let config = crate::config::Config::parse(&added).unwrap();
        assert_eq!(config.services[0].backends[2].weight, 3);
    }

    #[test]
    fn a_backend_is_removed_from_wherever_it_is_listed() {
        let removed = remove_backend(TEXT, "web", "198.18.1.11:8080".parse().unwrap()).unwrap();
        assert!(
            removed.contains(r#"backends = [ { address = "198.18.1.12:8080", weight = 2 } ]"#),
            "{removed}"
        );
        let removed = remove_backend(TEXT, "video", "198.18.1.21:8080".parse().unwrap()).unwrap();
        assert!(!removed.contains("198.18.1.21"), "{removed}");
        assert_eq!(removed.lines().count(), TEXT.lines().count());
    }

    #[test]
    fn what_cannot_be_done_says_why() {
        let add = |service, backend| add_backend(TEXT, service, &backend).unwrap_err();
        assert_eq!(
            add("web", new("198.18.1.11:8080", None, None)),
            "service \"web\" already has backend 198.18.1.11:8080"
        );
        assert_eq!(
            add("nope", new("198.18.1.11:8080", None, None)),
            "no service named \"nope\" (services: web, video)"
        );
        assert_eq!(
            add("video", new("198.18.1.33:8080", None, None)),
            "service \"video\" has pools: say which with --pool (kr, jp)"
        );
        assert_eq!(
            add("video", new("198.18.1.33:8080", None, Some("eu"))),
            "service \"video\" has no pool \"eu\" (pools: kr, jp)"
        );
        assert!(add("web", new("198.18.1.33:8080", None, Some("kr"))).contains("has no pools"));
        assert_eq!(
            remove_backend(TEXT, "web", "198.18.1.99:8080".parse().unwrap()).unwrap_err(),
            "service \"web\" has no backend 198.18.1.99:8080"
        );
    }
}
