//! Pinning in bpffs: the pin directory, the bpffs mount it needs, and the lock that keeps two
//! daemons off the same pins.

use std::{
    ffi::CString,
    fs::{File, TryLockError},
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapInfo;
use lb_common::PINNED_LAYOUTS;
use tracing::info;

/// `BPF_FS_MAGIC` from linux/magic.h: the filesystem type of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is conventionally mounted.
const BPF_FS_ROOT: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is a plain C struct of integers, for which all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the struct we pass and reads the NUL-terminated path.
    unsafe { libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf when `dir` is under it
/// and it is not mounted yet.
pub(crate) fn prepare(dir: &Path) -> Result<()> {
    let root = Path::new(BPF_FS_ROOT);
    if dir.starts_with(root) && !is_bpffs(root) {
        let source = CString::new("bpf")?;
        let target = CString::new(BPF_FS_ROOT)?;
        // SAFETY: valid NUL-terminated strings; no mount data.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "mounting bpffs at {BPF_FS_ROOT}: {}",
                std::io::Error::last_os_error()
            );
        }
        info!("mounted bpffs at {BPF_FS_ROOT}");
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the pin directory {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "pin_path {} is not on a bpffs; mount one there (mount -t bpf bpf DIR) or use a path under {BPF_FS_ROOT}",
            dir.display()
        );
    }
    Ok(())
}

/// An exclusive lock on a pin directory, held while the daemon runs: a `flock` on the
/// directory itself, so that whatever else differs between two daemons (their sockets, their
/// state directories) the second one is refused; nothing is ever created or unlinked for it.
pub(crate) struct PinLock {
    _directory: File,
}

impl PinLock {
    /// Takes the lock of `pin_dir` (which must exist); fails at once if another daemon holds
    /// it.
    pub(crate) fn take(pin_dir: &Path) -> Result<Self> {
        let directory = File::open(pin_dir)
            .with_context(|| format!("opening the pin directory {}", pin_dir.display()))?;
        // flock(2), exclusive, without waiting.
        match directory.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "another xlb is using the pins in {}: it holds their lock (one daemon per \
                 pin_path, whatever its --socket)",
                pin_dir.display()
            ),
            Err(TryLockError::Error(error)) => {
                bail!("locking the pin directory {}: {error}", pin_dir.display())
            }
        }
        Ok(Self {
            _directory: directory,
        })
    }
}

/// Checks that the maps pinned in `dir` have this version's layout (key and value sizes), so
/// that pins made by another version of xlb are refused with a clear error rather than by the
/// verifier. A map this version adds and `dir` lacks is fine: it is created.
pub(crate) fn check_layouts(dir: &Path) -> Result<()> {
    for (name, key, value) in PINNED_LAYOUTS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        let (pinned_key, pinned_value) = (info.key_size() as usize, info.value_size() as usize);
        if (pinned_key, pinned_value) != (key, value) {
            bail!(
                "the map {name} pinned in {} holds {pinned_key}-byte keys and {pinned_value}-byte \
                 values, and this version of xlb needs {key} and {value}: the pins were made by \
                 another version. Stop that version with --detach-on-exit (its data plane stops \
                 with it), or remove {} (dropping every flow), then start this one",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Refuses pins of a version with maps this one no longer has (see
/// `lb_common::consts::map_names::RETIRED`), before anything is loaded onto them.
pub(crate) fn check_retired(dir: &Path) -> Result<()> {
    for name in lb_common::consts::map_names::RETIRED {
        if dir.join(name).exists() {
            bail!(
                "the pins in {} were made by another version of xlb (they have the map {name}, \
                 which this version replaced by one flow table per address family). Stop that \
                 version with --detach-on-exit (its data plane stops with it), or remove {} \
                 (dropping every flow), then start this one",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_pins_is_refused() {
        let root = std::env::temp_dir().join(format!("xlb-lock-test-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let first = PinLock::take(&a).unwrap();
        let error = PinLock::take(&a).err().unwrap().to_string();
        assert!(
            error.contains(&format!("another xlb is using the pins in {}", a.display())),
            "{error}"
        );
        let _other = PinLock::take(&b).unwrap();
        drop(first);
        let _again = PinLock::take(&a).unwrap();
        assert_eq!(
            std::fs::read_dir(&a).unwrap().count(),
            0,
            "nothing created in the pin directory"
        );
        let _ = std::fs::remove_dir_all(root);
    }
}
