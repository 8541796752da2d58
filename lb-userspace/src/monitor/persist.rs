//! The operator's settings on backends (drains, disables, weights, paused checks), kept in a small JSON file
//! in the daemon's state directory so that reloads and restarts do not undo them. The file is
//! rewritten whole after every change: a temporary file, synced, renamed over it, and the
//! directory synced, so that a power loss leaves the old file or the new one. On load, the
//! file is held to what the API accepts (a weight above the maximum, or an unknown key, is an
//! error naming its line and column).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use std::io::Write as _;

use anyhow::{Context as _, Result};
use lb_common::consts::limits::MAX_WEIGHT;
use serde::{Deserialize, Serialize};

use crate::health::state::{Admin, Operator, Paused};

/// Name of the file in the state directory.
const FILE: &str = "operator.json";

/// What operators set, by (service name, backend address).
pub(super) type Operators = BTreeMap<(String, SocketAddr), Operator>;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The format's version, for later changes.
    version: u32,
    backends: Vec<Entry>,
}

/// One backend's setting, as the file has it (an [`Operator`] with the backend it is on).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    service: String,
    backend: SocketAddr,
    #[serde(default)]
    admin: Option<Admin>,
    #[serde(default, deserialize_with = "weight")]
    weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checks_paused: Option<Paused>,
    by: String,
    at: u64,
}

/// A weight, held to the range the API accepts.
fn weight<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let weight = Option::<u32>::deserialize(deserializer)?;
    match weight {
        Some(w) if w > MAX_WEIGHT => Err(serde::de::Error::custom(format!(
            "weight {w} is out of range: 0 to {MAX_WEIGHT}"
        ))),
        _ => Ok(weight),
    }
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
        .map(|e| {
            let operator = Operator {
                admin: e.admin,
                weight: e.weight,
                checks_paused: e.checks_paused,
                by: e.by,
                at: e.at,
            };
            ((e.service, e.backend), operator)
        })
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
                admin: operator.admin,
                weight: operator.weight,
                checks_paused: operator.checks_paused,
                by: operator.by.clone(),
                at: operator.at,
            })
            .collect(),
    };
    let temporary = path.with_extension("json.new");
    let mut written = std::fs::File::create(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    written
        .write_all((serde_json::to_string_pretty(&file)? + "\n").as_bytes())
        .and_then(|()| written.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
                checks_paused: Some(Paused::Down),
                by: "root (uid 0)".into(),
                at: 1_700_000_000,
            },
        );
        save(&path, &operators).unwrap();
        assert_eq!(load(&path).unwrap(), operators);
        std::fs::write(&path, "{ not json").unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(error.contains("--reset-operator-state"), "{error}");
        // What the API refuses, the file may not hold either; nor keys it does not know.
        let entry = |extra: &str| {
            format!(
                "{{\"version\":1,\"backends\":[\n{{\"service\":\"web\",\"backend\":\
                 \"198.18.1.12:8080\",\"by\":\"root\",\"at\":1{extra}}}]}}"
            )
        };
        std::fs::write(&path, entry(",\"weight\":300")).unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(
            error.contains("weight 300 is out of range: 0 to 256 at line 2"),
            "{error}"
        );
        std::fs::write(&path, entry(",\"wieght\":3")).unwrap();
        let error = format!("{:#}", load(&path).unwrap_err());
        assert!(error.contains("unknown field `wieght`"), "{error}");
        std::fs::write(&path, entry(",\"weight\":256")).unwrap();
        assert!(load(&path).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }
}
