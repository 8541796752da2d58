//! Telling systemd where the daemon is (`Type=notify`): ready once attached, reloading around
//! a reload, stopping at exit. Without `NOTIFY_SOCKET` (not under systemd) these do nothing.

use sd_notify::NotifyState;
use tracing::debug;

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(false, states) {
        debug!("telling the service manager {states:?}: {error}");
    }
}

/// The daemon balances; `status` is shown by `systemctl status`.
pub(crate) fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (systemd 253 and later want the time with it).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The daemon is stopping.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}
