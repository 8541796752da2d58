//! What is wrong with a configuration file, and where: errors at a line and column, and the
//! place in the file's structure that a message names (`service "web": pool "kr": health`).

use std::{fmt, ops::Range, path::PathBuf};

/// One problem in a configuration file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    /// Line of the offending value (1-based; 0 when the problem has no position).
    pub line: usize,
    /// Column of the offending value (1-based).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct ConfigErrors {
    /// The file.
    #[serde(rename = "file")]
    pub path: PathBuf,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if error.line == 0 {
                write!(f, "{}: {}", self.path.display(), error.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.path.display(),
                    error.line,
                    error.column,
                    error.message
                )?;
            }
        }
        Ok(())
    }
}

/// A [`ConfigError`] at the position of byte offset `span.start` of `text`; an empty span at
/// offset 0 means the whole file (no position).
pub(super) fn locate(text: &str, span: &Range<usize>, message: String) -> ConfigError {
    if span.is_empty() && span.start == 0 {
        return ConfigError {
            line: 0,
            column: 0,
            message,
        };
    }
    let start = span.start.min(text.len());
    let line = line_of(text, start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    ConfigError {
        line,
        column: text[line_start..start].chars().count() + 1,
        message,
    }
}

/// The 1-based line of byte offset `at`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Where a value sits in the file's structure, for messages: the service, the pool, the
/// section. Displayed as `service "web": pool "kr": health`.
#[derive(Clone, Debug, Default)]
pub(super) struct Place {
    service: Option<String>,
    pool: Option<String>,
    section: Option<&'static str>,
}

impl Place {
    /// The service named `name`.
    pub(super) fn service(name: &str) -> Self {
        Self {
            service: Some(name.to_owned()),
            ..Self::default()
        }
    }

    /// Pool `name` of this service.
    pub(super) fn pool(&self, name: &str) -> Self {
        Self {
            pool: Some(name.to_owned()),
            ..self.clone()
        }
    }

    /// Section `name` (`health`, `load`) of this service.
    pub(super) fn section(&self, name: &'static str) -> Self {
        Self {
            section: Some(name),
            ..self.clone()
        }
    }

    /// Whether this is inside a pool.
    pub(super) fn in_pool(&self) -> bool {
        self.pool.is_some()
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(service) = &self.service {
            parts.push(format!("service {service:?}"));
        }
        if let Some(pool) = &self.pool {
            parts.push(format!("pool {pool:?}"));
        }
        if let Some(section) = self.section {
            parts.push(section.to_owned());
        }
        f.write_str(&parts.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_name_service_pool_and_section() {
        let web = Place::service("web");
        assert_eq!(web.to_string(), "service \"web\"");
        assert_eq!(
            web.pool("kr").section("health").to_string(),
            "service \"web\": pool \"kr\": health"
        );
        assert!(web.pool("kr").in_pool() && !web.in_pool());
    }

    #[test]
    fn positions_are_one_based_and_the_whole_file_has_none() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(locate(text, &(7..8), String::new()).line, 2);
        assert_eq!(locate(text, &(7..8), String::new()).column, 2);
        assert_eq!(locate(text, &(0..0), String::new()).line, 0);
        assert_eq!(line_of(text, 100), 3);
    }
}
