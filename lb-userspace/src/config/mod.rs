//! The configuration file: TOML in, a validated [`Config`] out, or every error with its line
//! and column (`xlb check` prints them like `nginx -t`).
//!
//! Parsing happens in two steps. serde reads the file into the `raw` structs, whose leaves
//! carry their position and whose typed leaves (modes, ports, bounded numbers) are converted
//! as they are read; `read` keeps every key serde refuses (unknown, or a value of the wrong
//! TOML type) as a located error and reads on without it. Validation (`validate`) then checks
//! every value and the rules between them, and collects all the problems it finds, so an
//! operator fixes a file in one pass. Messages name their place in the file (`service "web": pool "kr": health: ...`).

mod edit;
mod error;
mod forwarding;
mod locate;
mod model;
mod prefixes;
mod raw;
mod read;
mod validate;

use std::path::Path;

pub use edit::{NewBackend, add_backend, remove_backend};
pub use error::{ConfigError, ConfigErrors};
pub use locate::{Subject, locate_subject};
pub use model::{
    AdmissionConfig, AnnounceConfig, BackendConfig, CheckVia, Config, DEFAULT_MAGLEV_SEED,
    DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_PIN_PATH, DEFAULT_POOL_NAME, FleetConfig, FlowTimeouts,
    Forwarding, HealthCheck, HealthConfig, LoadConfig, MAGLEV_SLOTS_PER_BACKEND, MaglevConfig,
    OnDown, PassiveConfig, PoolConfig, Protocol, Scheduler, Secret, ServiceConfig, TunnelSettings,
    XdpMode, is_prime,
};
pub use prefixes::{parse_prefix, parse_prefix_file};

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigErrors {
            path: path.to_owned(),
            errors: vec![ConfigError {
                line: 0,
                column: 0,
                message: format!("cannot read the file: {error}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, base).map_err(|errors| ConfigErrors {
            path: path.to_owned(),
            errors,
        })
    }

    /// Parses and validates configuration text (relative prefix-file paths are relative to the
    /// current directory).
    pub fn parse(text: &str) -> Result<Self, Vec<ConfigError>> {
        Self::parse_in(text, Path::new("."))
    }

    /// Parses and validates configuration text whose relative paths are relative to `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Self, Vec<ConfigError>> {
        let read = read::read(text)?;
        let mut errors = read.errors;
        match validate::validate(read.raw, text, base) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(found) => errors.extend(found.into_iter().filter(|error| {
                !read
                    .removed
                    .iter()
                    .any(|removed| removed.explains(error, text))
            })),
        }
        errors.sort_by_key(|error| (error.line, error.column));
        Err(errors)
    }

    /// Number of backends across all services.
    pub fn backend_count(&self) -> usize {
        self.services
            .iter()
            .map(|service| service.backends.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
