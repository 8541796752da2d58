//! Pinning in bpffs: the pin directory, the bpffs mount it needs, and the lock that keeps two
//! daemons off the same pins.

use std::{
    ffi::CString,
    fs::{File, TryLockError},
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
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

/// Whether what is pinned in a directory outlives the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PinLife {
    /// The bpffs is one the host's mount namespace has: pins outlive the daemon, and the data
    /// plane keeps forwarding after it.
    Lasting,
    /// The bpffs is mounted only in this process's mount namespace (a private one, as
    /// `ip netns exec` makes): it goes when that namespace does, and with it the pins, the
    /// links and so the data plane.
    WithThisNamespace,
}

/// Whether the pins in `dir` (on a bpffs) outlive this process: they do if this process is
/// in the host's mount namespace (pid 1's), or if that namespace has the same bpffs mounted
/// (a bind mount of the host's `/sys/fs/bpf` into a container; pid 1's mount table is read
/// even where its namespace link is not). Lasting when it cannot tell.
pub(crate) fn pin_life(dir: &Path) -> PinLife {
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if let (Some(own), Some(host)) = (namespace("self"), namespace("1"))
        && own == host
    {
        return PinLife::Lasting;
    }
    let (Ok(metadata), Ok(mounts)) = (
        std::fs::metadata(dir),
        std::fs::read_to_string("/proc/1/mountinfo"),
    ) else {
        return PinLife::Lasting;
    };
    let device = (libc::major(metadata.dev()), libc::minor(metadata.dev()));
    if host_has_bpffs(&mounts, device) {
        PinLife::Lasting
    } else {
        PinLife::WithThisNamespace
    }
}

/// Whether `mountinfo` (proc(5)'s format) lists a bpffs whose device is `device` (major,
/// minor): every mount of one bpffs instance has its device.
fn host_has_bpffs(mountinfo: &str, device: (u32, u32)) -> bool {
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        let Some(numbers) = fields.nth(2) else {
            return false;
        };
        let fstype = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next());
        fstype == Some("bpf") && numbers == format!("{}:{}", device.0, device.1)
    })
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

    const MOUNTINFO: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 - bpf bpf rw,mode=700
40 1 0:36 / /run/cilium/bpf rw,relatime - bpf none rw
45 1 0:28 /xlb /srv/pins rw,relatime - bpf bpf rw
";

    #[test]
    fn a_bpffs_outlives_the_daemon_if_the_hosts_namespace_mounts_it() {
        assert!(host_has_bpffs(MOUNTINFO, (0, 28)), "/sys/fs/bpf");
        assert!(host_has_bpffs(MOUNTINFO, (0, 36)), "another bpffs");
        assert!(!host_has_bpffs(MOUNTINFO, (0, 21)), "sysfs is no bpffs");
        assert!(
            !host_has_bpffs(MOUNTINFO, (0, 50)),
            "mounted in a private namespace only"
        );
        assert!(!host_has_bpffs("", (0, 28)));
        assert!(!host_has_bpffs("garbage\n1 2\n", (0, 28)));
    }

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
