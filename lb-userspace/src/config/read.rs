//! Reading the file into the `raw` structs with every error serde finds, not only its first:
//! the file is parsed into a tree that keeps each key's and value's position, and serde reads
//! the structs from that tree; when it refuses a key (unknown, or a value of the wrong TOML
//! type), the error is kept with the key's place in the file, the key is taken out of the
//! tree, and serde reads again, until it accepts what is left. Validation then checks the
//! rest, and says nothing of a key only because it was taken out ([`Removed`]).

use std::ops::{DerefMut as _, Range};

use serde::Deserialize as _;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};

use super::{
    error::{ConfigError, locate},
    raw::RawConfig,
};

/// Keys taken out at most: beyond, the file is not worth reading further.
const MAX_REMOVED: usize = 64;

/// A key taken out of the file's tree because serde refused it.
#[derive(Debug)]
pub(super) struct Removed {
    /// The position of the table it was in (where validation reports a missing key).
    pub(super) table: Range<usize>,
    /// Its name.
    pub(super) key: String,
}

impl Removed {
    /// Whether validation's `error` only says this key is missing (at its table, or for the
    /// top level at no position).
    pub(super) fn explains(&self, error: &ConfigError, text: &str) -> bool {
        let at = locate(text, &self.table, String::new());
        let here = (error.line, error.column) == (at.line, at.column)
            || (self.table.start == 0 && error.line == 0);
        here && error
            .message
            .contains(&format!("missing key `{}`", self.key))
    }
}

/// What serde read of a file: the structs (of the keys it accepted), its errors, and the keys
/// they took out.
pub(super) struct Read {
    pub(super) raw: RawConfig,
    pub(super) errors: Vec<ConfigError>,
    pub(super) removed: Vec<Removed>,
}

/// Reads `text`; a syntax error stops it (the first: what the parser says after one is
/// mostly the echo of it).
pub(super) fn read(text: &str) -> Result<Read, Vec<ConfigError>> {
    let mut root = DeTable::parse(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        vec![locate(text, &span, error.message().trim_end().to_owned())]
    })?;
    let mut errors = Vec::new();
    let mut removed = Vec::new();
    loop {
        let error = match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) => {
                return Ok(Read {
                    raw,
                    errors,
                    removed,
                });
            }
            Err(error) => error,
        };
        let message = error.message().trim_end().to_owned();
        let span = error.span().unwrap_or(0..0);
        let root_span = root.span();
        let taken = (removed.len() < MAX_REMOVED)
            .then(|| take_out(root.get_mut(), &root_span, &span, &mut Vec::new()))
            .flatten();
        let Some(taken) = taken else {
            errors.push(locate(text, &span, message));
            return Err(errors);
        };
        errors.push(locate(text, &span, taken.describe(&message)));
        removed.push(Removed {
            table: taken.table,
            key: taken.key,
        });
    }
}

/// Whether `outer` holds `inner`'s start.
fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.start < outer.end.max(outer.start + 1)
}

/// Whether `value` or anything in it is at `error`. An array of tables (`[[service]]`) and its
/// tables are positioned at their headers only, so their contents are searched too.
fn reaches(value: &toml::Spanned<DeValue>, error: &Range<usize>) -> bool {
    holds(&value.span(), error)
        || match value.get_ref() {
            DeValue::Table(table) => table
                .iter()
                .any(|(key, value)| holds(&key.span(), error) || reaches(value, error)),
            DeValue::Array(items) => items.iter().any(|item| reaches(item, error)),
            _ => false,
        }
}

/// A key (or an array's element) taken out of the tree.
struct Taken {
    /// Where it was: `service "web"`, `health`...
    path: Vec<String>,
    /// Its name (an element: its array's).
    key: String,
    /// The position of its table.
    table: Range<usize>,
    /// Whether the error was about the key itself (an unknown key), not its value.
    at_key: bool,
}

impl Taken {
    /// serde's `message` about it, with its place and, for an unknown key, a likely one.
    fn describe(&self, message: &str) -> String {
        let mut place = self.path.join(": ");
        if !place.is_empty() {
            place.push_str(": ");
        }
        if self.at_key
            && let Some(rest) = message.strip_prefix("unknown field `")
        {
            let expected = rest.split_once('`').map_or("", |(_, expected)| expected);
            return match did_you_mean(&self.key, expected) {
                Some(known) => {
                    format!("{place}unknown key `{}`: did you mean `{known}`?", self.key)
                }
                None => format!("{place}unknown key `{}`{expected}", self.key),
            };
        }
        let hint = if message.starts_with("invalid type") && is_duration(&self.key) {
            " (a duration is written in quotes with its unit, like \"5s\" or \"500ms\")"
        } else {
            ""
        };
        format!("{place}{}: {}{hint}", self.key, plain_types(message))
    }
}

/// serde's message with the types it expects said as TOML says them (`i64`: an integer,
/// `struct RawBackend`: a table, a sequence: a list).
fn plain_types(message: &str) -> String {
    let Some((said, expected)) = message.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let expected = match expected {
        "i64" | "u64" | "i32" | "u32" | "u16" | "u8" => "an integer",
        "a sequence" => "a list",
        "a boolean" => "true or false",
        other if other.starts_with("struct ") || other.starts_with("a map") => "a table",
        other => other,
    };
    format!("{said}, expected {expected}")
}

/// Whether `key` takes a duration.
fn is_duration(key: &str) -> bool {
    matches!(
        key,
        "interval" | "timeout" | "window" | "hold" | "drain" | "refresh"
    ) || key.ends_with("_timeout")
}

/// The key of `expected` (serde's list: ", expected one of `a`, `b`" or ", expected `a` or
/// `b`") that `key` most likely means, if one is close.
fn did_you_mean(key: &str, expected: &str) -> Option<String> {
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (strsim::jaro_winkler(key, known), known))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known.to_owned())
}

/// How an element of array `key` is named in messages: `service "web"`, `backend
/// "198.18.1.11:8080"`, or by its position.
fn element_name(key: &str, index: usize, value: &DeValue) -> String {
    let singular = key.strip_suffix('s').unwrap_or(key);
    if let DeValue::Table(table) = value {
        for field in ["name", "address"] {
            let found = table.iter().find(|(key, _)| key.get_ref() == field);
            if let Some((_, value)) = found
                && let DeValue::String(name) = value.get_ref()
            {
                return format!("{singular} {name:?}");
            }
        }
    }
    format!("{singular} {}", index + 1)
}

/// Takes the key (or array element) of `table` (at `table_span`) that the error at `error`
/// is about out of the tree, the deepest that holds it; `path` is where `table` is.
fn take_out(
    table: &mut DeTable,
    table_span: &Range<usize>,
    error: &Range<usize>,
    path: &mut Vec<String>,
) -> Option<Taken> {
    let key = table
        .iter()
        .find(|(key, value)| holds(&key.span(), error) || reaches(value, error))
        .map(|(key, _)| key.clone())?;
    let name = key.get_ref().to_string();
    let at_key = holds(&key.span(), error);
    let value = table.get_mut(&key)?;
    if !at_key {
        let value_span = value.span();
        match value.get_mut() {
            DeValue::Table(inner) => {
                path.push(name.clone());
                if let Some(taken) = take_out(inner, &value_span, error, path) {
                    return Some(taken);
                }
                path.pop();
            }
            DeValue::Array(items) => {
                if let Some(index) = items.iter().position(|item| reaches(item, error)) {
                    let item_span = items[index].span();
                    path.push(element_name(&name, index, items[index].get_ref()));
                    if let DeValue::Table(inner) = items.deref_mut()[index].get_mut()
                        && let Some(taken) = take_out(inner, &item_span, error, path)
                    {
                        return Some(taken);
                    }
                    path.pop();
                    // A scalar element of the wrong type: it goes, its array stays.
                    let kept = std::mem::replace(items, DeArray::new());
                    *items = kept
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, item)| (i != index).then_some(item))
                        .collect();
                    return Some(Taken {
                        path: path.clone(),
                        key: format!("{name}[{}]", index + 1),
                        table: table_span.clone(),
                        at_key: false,
                    });
                }
            }
            _ => {}
        }
    }
    table.remove(&key);
    Some(Taken {
        path: path.clone(),
        key: name,
        table: table_span.clone(),
        at_key,
    })
}
