//! Route health injection as the monitor drives it: after every decision it tells the
//! announcer which VIPs can be served; on the way out it withdraws them all and keeps
//! balancing while routers move the flows away.

use tokio::time::Instant;
use tracing::info;

use crate::{
    announce::{self, Announcer},
    config::{AnnounceConfig, Config},
    control::ServiceSpec,
    report::AnnounceReport,
};

/// The announcer, if the config announces VIPs, and whether xlb is stopping.
#[derive(Default)]
pub(super) struct Announcing {
    announcer: Option<Announcer>,
    /// Stopping: every VIP is withdrawn and stays so while the last flows drain.
    draining: bool,
}

impl Announcing {
    /// Announces through `announcer` from the next decision on.
    pub(super) fn start(&mut self, announcer: Announcer) {
        self.announcer = Some(announcer);
    }

    /// The settings the announcer runs with, if there is one.
    pub(super) fn config(&self) -> Option<&AnnounceConfig> {
        self.announcer.as_ref().map(Announcer::config)
    }

    /// Announces the VIPs that `specs` (a decision for `config`) can serve, and withdraws the
    /// others; nothing once stopping.
    pub(super) fn decided(&self, config: &Config, specs: &[ServiceSpec]) {
        if let Some(announcer) = self.announcer.as_ref().filter(|_| !self.draining) {
            announcer.want(announce::announcements(config, specs));
        }
    }

    /// On the way out: withdraws every VIP; returns when to stop if a drain time is set (xlb
    /// balances on meanwhile, so that the flows routers still send arrive somewhere).
    pub(super) async fn withdraw_for_shutdown(&mut self) -> Option<Instant> {
        let announcer = self.announcer.as_mut()?;
        self.draining = true;
        announcer.withdraw_all("xlb is stopping").await;
        let drain = announcer.drain();
        if drain.is_zero() {
            return None;
        }
        info!(drain = ?drain, "VIPs withdrawn: balancing on while routers move the flows away");
        Some(Instant::now() + drain)
    }

    /// What `xlb status` and the metrics show of the announcements.
    pub(super) fn report(&self) -> Option<AnnounceReport> {
        self.announcer.as_ref().map(Announcer::report)
    }
}
