//! `xlb backend add` and `remove`: the configuration file changed, then applied as a reload,
//! so that the file stays the truth. The file is written only when the change leaves it valid,
//! and written back as it was when the reload is refused (a host check, an apply that
//! failed): the file and the running configuration never disagree.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};

use super::Monitor;
use crate::{
    config::{Config, ConfigErrors},
    dataplane::Dataplane,
};

impl Monitor {
    /// Changes the configuration file by `edit` (its text in, the new text or why not out)
    /// and reloads it; what the reload did, or why nothing was changed.
    pub fn edit_config(
        &mut self,
        dataplane: &mut Dataplane,
        edit: impl FnOnce(&str) -> Result<String, String>,
    ) -> Result<String> {
        let path = self
            .core
            .config_path()
            .context("this daemon has no config file to change")?
            .to_owned();
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let new = edit(&old).map_err(|why| anyhow!("{why}; nothing was changed"))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse_in(&new, base).map_err(|errors| {
            anyhow::Error::new(ConfigErrors {
                path: path.clone(),
                errors,
            })
            .context("the change would leave the file invalid; nothing was changed")
        })?;
        write_in_place(&path, &new)?;
        match self.reload(dataplane) {
            Ok(done) => Ok(format!("{} changed; {done}", path.display())),
            Err(error) => {
                write_in_place(&path, &old).with_context(|| {
                    format!(
                        "the reload was refused, and {} could not be put back",
                        path.display()
                    )
                })?;
                Err(error.context(format!("{} is as it was", path.display())))
            }
        }
    }
}

/// Replaces the file at `path` with `text` at once (a file beside it, renamed over it), with
/// the old file's permissions.
fn write_in_place(path: &Path, text: &str) -> Result<()> {
    let next = path.with_extension("xlb-next");
    std::fs::write(&next, text).with_context(|| format!("writing {}", next.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&next, meta.permissions())?;
    }
    std::fs::rename(&next, path).with_context(|| format!("replacing {}", path.display()))
}
