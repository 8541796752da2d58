//! The operator's settings on backends (drains, disables, weights), kept in a small JSON file
//! in the daemon's state directory so that reloads and restarts do not undo them. The file is
//! rewritten whole (a temporary file renamed over it) after every change.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::health::state::Operator;

/// Name of the file in the state directory.
const FILE: &str = "operator.json";

/// What operators set, by (service name, backend address).
pub(super) type Operators = BTreeMap<(String, SocketAddr), Operator>;

#[derive(Serialize, Deserialize)]
struct File {
    /// The format's version, for later changes.
    version: u32,
    backends: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    service: String,
    backend: SocketAddr,
    #[serde(flatten)]
    operator: Operator,
}

/// The state file of `dir`.
pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads what operators set; an absent file means nothing was set.
pub(super) fn load(path: &Path) -> Result<Operators> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Operators::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let file: File = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an operator state file; fix or remove it, or start with \
             `xlb run --reset-operator-state`",
            path.display()
        )
    })?;
    Ok(file
        .backends
        .into_iter()
        .map(|e| ((e.service, e.backend), e.operator))
        .collect())
}

/// Writes what operators set, atomically.
pub(super) fn save(path: &Path, operators: &Operators) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File {
        version: 1,
        backends: operators
            .iter()
            .map(|((service, backend), operator)| Entry {
                service: service.clone(),
                backend: *backend,
                operator: operator.clone(),
            })
            .collect(),
    };
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, serde_json::to_string_pretty(&file)? + "\n")
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::state::Admin;

    #[test]
    fn settings_survive_a_round_trip_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("xlb-persist-{}", std::process::id()));
        let path = path(&dir);
        assert!(load(&path).unwrap().is_empty());
        let mut operators = Operators::new();
        operators.insert(
            ("web".into(), "198.18.1.12:8080".parse().unwrap()),
            Operator {
                admin: Some(Admin::Drain),
                weight: Some(5),
                by: "root (uid 0)".into(),
                at: 1_700_000_000,
            },
        );
        save(&path, &operators).unwrap();
        assert_eq!(load(&path).unwrap(), operators);
        std::fs::write(&path, "{ not json").unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(error.contains("--reset-operator-state"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
