//! Route health injection: xlb offers each VIP it can serve to the local BGP daemon, which
//! announces it to the routers; a VIP that cannot be served, or an xlb that stops or dies, is
//! withdrawn. The VIPs are the addresses of a TUN device of xlb's own (`device`), which BIRD
//! exports with `protocol direct` (contrib/bird/). The monitor says what it wants
//! ([`plan::announcements`], after every decision); a task of this module changes the device's
//! addresses to match and probes BIRD's control socket (`bird`), so that `xlb status` can say
//! whether anything exports the routes.

mod bird;
mod device;
pub(crate) mod plan;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{info, warn};

use self::device::VipDevice;
pub(crate) use self::plan::{Announcement, announcements, withdrawn};
use crate::{
    config::AnnounceConfig,
    report::{AnnounceReport, VipReport},
};

/// How often BIRD's socket is probed.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// One VIP as the announcer has it.
#[derive(Clone, Debug)]
struct VipState {
    announced: bool,
    reason: String,
    since: Instant,
    announcements: u64,
    withdrawals: u64,
}

/// What the announcer task has done, shared with the monitor's reports.
#[derive(Debug, Default)]
struct Shared {
    vips: BTreeMap<IpAddr, VipState>,
    bird: String,
    bird_reachable: bool,
    /// The generation of the wanted announcements last applied.
    applied: u64,
}

/// The announcer: a task that keeps the device's addresses as the monitor wants them.
pub struct Announcer {
    config: AnnounceConfig,
    wanted: watch::Sender<(u64, Vec<Announcement>)>,
    shared: Arc<Mutex<Shared>>,
    applied: watch::Receiver<u64>,
    task: JoinHandle<()>,
    probe: JoinHandle<()>,
}

impl Announcer {
    /// Creates the device and starts the task; nothing is announced until [`Self::want`].
    pub async fn start(config: &AnnounceConfig) -> Result<Self> {
        let device = VipDevice::create(&config.device).await?;
        info!(
            device = device.name,
            "announcement device created: BIRD exports its addresses"
        );
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (wanted, wanted_rx) = watch::channel((0, Vec::new()));
        let (applied_tx, applied) = watch::channel(0);
        let task = tokio::spawn(run(device, wanted_rx, applied_tx, Arc::clone(&shared)));
        // Apart, so that a slow BGP daemon never delays a withdrawal.
        let probe = tokio::spawn(probe_bird(config.bird_socket.clone(), Arc::clone(&shared)));
        Ok(Self {
            config: config.clone(),
            wanted,
            shared,
            applied,
            task,
            probe,
        })
    }

    /// How long to keep balancing after withdrawing everything on SIGTERM.
    pub fn drain(&self) -> Duration {
        self.config.drain
    }

    /// The settings it runs with (they change only at a restart).
    pub fn config(&self) -> &AnnounceConfig {
        &self.config
    }

    /// Makes the device hold exactly the VIPs `announcements` announce (applied by the task,
    /// soon after).
    pub fn want(&self, announcements: Vec<Announcement>) {
        self.wanted.send_modify(|(generation, wanted)| {
            *generation += 1;
            *wanted = announcements;
        });
    }

    /// Withdraws every VIP for `reason` and waits until the device holds none (at most a
    /// second: the device goes with the process anyway).
    pub async fn withdraw_all(&mut self, reason: &str) {
        let all: Vec<Announcement> = self
            .shared
            .lock()
            .expect("the announcer lock")
            .vips
            .keys()
            .map(|&vip| Announcement {
                vip,
                announce: false,
                reason: String::new(),
            })
            .collect();
        self.want(withdrawn(&all, reason));
        let generation = self.wanted.borrow().0;
        let done = self.applied.wait_for(|applied| *applied >= generation);
        if tokio::time::timeout(Duration::from_secs(1), done)
            .await
            .is_err()
        {
            warn!("withdrawing the VIPs took more than a second");
        }
    }

    /// What `xlb status` shows.
    pub fn report(&self) -> AnnounceReport {
        let shared = self.shared.lock().expect("the announcer lock");
        let now = Instant::now();
        AnnounceReport {
            device: self.config.device.clone(),
            bird: if shared.bird.is_empty() {
                // The first probe has not answered yet (it runs at start).
                format!(
                    "BIRD at {} not probed yet",
                    self.config.bird_socket.display()
                )
            } else {
                shared.bird.clone()
            },
            bird_reachable: shared.bird_reachable,
            vips: shared
                .vips
                .iter()
                .map(|(vip, state)| VipReport {
                    vip: *vip,
                    announced: state.announced,
                    reason: state.reason.clone(),
                    since_seconds: now.duration_since(state.since).as_secs_f64(),
                    announcements: state.announcements,
                    withdrawals: state.withdrawals,
                })
                .collect(),
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // The task holds the device: ending it removes the device and its addresses.
        self.task.abort();
        self.probe.abort();
    }
}

/// The task: applies each wanted set of announcements.
async fn run(
    device: VipDevice,
    mut wanted: watch::Receiver<(u64, Vec<Announcement>)>,
    applied: watch::Sender<u64>,
    shared: Arc<Mutex<Shared>>,
) {
    while wanted.changed().await.is_ok() {
        let (generation, announcements) = wanted.borrow_and_update().clone();
        apply(&device, &announcements, &shared).await;
        shared.lock().expect("the announcer lock").applied = generation;
        let _ = applied.send(generation);
    }
}

/// Probes BIRD's control socket every `PROBE_EVERY`, logging when the answer changes.
async fn probe_bird(bird_socket: PathBuf, shared: Arc<Mutex<Shared>>) {
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        probe.tick().await;
        let result = bird::probe(&bird_socket).await;
        let mut shared = shared.lock().expect("the announcer lock");
        let reachable = result.is_ok();
        let text = match result {
            Ok(name) => format!("{name} at {}", bird_socket.display()),
            Err(error) => format!("no BIRD at {}: {error}", bird_socket.display()),
        };
        if reachable != shared.bird_reachable || shared.bird.is_empty() {
            if reachable {
                info!(
                    bird = text,
                    "BGP daemon found: it exports the announced VIPs"
                );
            } else {
                warn!(
                    bird = text,
                    "no BGP daemon answers: the VIPs on the device are announced to nobody"
                );
            }
        }
        shared.bird = text;
        shared.bird_reachable = reachable;
    }
}

/// Puts on the device the VIPs to announce and takes off the others (those no service
/// announces any more too), recording each change.
async fn apply(device: &VipDevice, announcements: &[Announcement], shared: &Mutex<Shared>) {
    let forgotten: Vec<Announcement> = shared
        .lock()
        .expect("the announcer lock")
        .vips
        .keys()
        .filter(|vip| !announcements.iter().any(|a| a.vip == **vip))
        .map(|&vip| Announcement {
            vip,
            announce: false,
            reason: "no service announces it".into(),
        })
        .collect();
    for announcement in announcements.iter().chain(&forgotten) {
        let vip = announcement.vip;
        let held = shared
            .lock()
            .expect("the announcer lock")
            .vips
            .get(&vip)
            .map(|s| s.announced);
        let result = match (announcement.announce, held) {
            (true, Some(true)) | (false, Some(false) | None) => None,
            (true, _) => Some(device.add(vip).await),
            (false, Some(true)) => Some(device.remove(vip).await),
        };
        let mut shared = shared.lock().expect("the announcer lock");
        let state = shared.vips.entry(vip).or_insert_with(|| VipState {
            announced: false,
            reason: String::new(),
            since: Instant::now(),
            announcements: 0,
            withdrawals: 0,
        });
        match result {
            None => state.reason.clone_from(&announcement.reason),
            Some(Ok(())) => {
                state.announced = announcement.announce;
                state.reason.clone_from(&announcement.reason);
                state.since = Instant::now();
                if announcement.announce {
                    state.announcements += 1;
                    info!(%vip, reason = announcement.reason, "VIP announced");
                } else {
                    state.withdrawals += 1;
                    info!(%vip, reason = announcement.reason, "VIP withdrawn");
                }
            }
            Some(Err(error)) => {
                warn!(%vip, "announcement change failed: {error:#}");
                state.reason = format!("{:#}", error);
            }
        }
    }
}
