//! Process limits.

use anyhow::{Result, bail};

/// Raises the soft limit on open files to the hard limit (systemd starts services at a soft
/// 1,024): the daemon holds a descriptor per map, per table being published, per health
/// check in flight and per metrics connection. Returns the limits before and after.
pub(crate) fn raise_open_files() -> Result<(u64, u64)> {
    let mut limit = open_files_limit()?;
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one rlimit from `limit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            bail!(
                "setrlimit(RLIMIT_NOFILE): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok((before, limit.rlim_cur))
}

/// The soft limit on open files.
pub(crate) fn open_files() -> Result<u64> {
    Ok(open_files_limit()?.rlim_cur)
}

fn open_files_limit() -> Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(limit)
}
