//! `xlb run`: load (or take over) the data plane, fill its maps, attach, serve the control API
//! and keep the tables true until told to stop; then leave the data plane forwarding, or detach.

use std::{path::Path, path::PathBuf};

use anyhow::{Context as _, Result};
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};
use tracing::{info, warn};

use crate::{
    announce::Announcer,
    api::server,
    cmd,
    config::Config,
    control::{Balancer, DataplaneReads as _},
    dataplane::{
        Dataplane, Plan,
        pins::{self, PinLife},
        preflight,
    },
    fleet::Fleet,
    metrics,
    monitor::{Job, Monitor},
    service_manager,
    sys::limits,
};

/// The signals `xlb run` answers: SIGTERM and SIGINT stop it, SIGHUP reloads. Installed
/// before anything else, so that none of them takes its default action (the end of the
/// process) while the daemon starts; one that comes early is answered once it runs.
pub(crate) struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers (within a tokio runtime).
    pub(crate) fn install() -> Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Self {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// How `xlb run` runs.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// The control API's socket.
    pub socket: PathBuf,
    /// On exit, detach from the interfaces and remove the pins instead of leaving the data
    /// plane forwarding.
    pub detach_on_exit: bool,
    /// Where operators' settings are kept.
    pub state_dir: PathBuf,
    /// Forget operators' settings at start.
    pub reset_operator_state: bool,
}

/// Runs the balancer for the configuration at `config_path` until SIGTERM or SIGINT; SIGHUP
/// reloads the configuration.
pub(crate) async fn run(config_path: &Path, options: &Options, signals: Signals) -> Result<()> {
    let Signals {
        mut terminate,
        mut interrupt,
        hangup,
    } = signals;
    raise_open_files();
    let Claimed {
        config,
        plan,
        listener,
        metrics_listener,
        lock: _lock,
        pin_life,
    } = load_and_claim(config_path, options)?;
    let pin_path = config.pin_path.clone();
    let attached = fill_and_attach(config, config_path, options, &plan, metrics_listener).await;
    let (mut dataplane, mut monitor) = match attached {
        Ok(attached) => attached,
        Err(error) => {
            // Refused: the socket this daemon bound goes with it.
            let _ = std::fs::remove_file(&options.socket);
            return Err(error);
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    serve(&mut monitor, &mut dataplane, listener, hangup, shutdown).await?;
    shut_down(&mut dataplane, &monitor, options, (&pin_path, pin_life));
    Ok(())
}

/// Raises the limit on open files as far as allowed, and says so; a failure is only logged.
fn raise_open_files() {
    match limits::raise_open_files() {
        Ok((before, after)) if before != after => {
            info!(before, after, "raised the limit on open files");
        }
        Ok(_) => {}
        Err(error) => warn!("{error:#}: the limit on open files stays as it is"),
    }
}

/// What `xlb run` holds before it touches the data plane.
struct Claimed {
    /// The configuration, validated.
    config: Config,
    /// Where the program attaches on each interface.
    plan: Plan,
    /// The control API's socket.
    listener: UnixListener,
    /// The metrics endpoint's socket, if configured.
    metrics_listener: Option<TcpListener>,
    /// The pin directory's lock, held until the daemon exits.
    lock: pins::PinLock,
    /// Whether the pins outlive the daemon.
    pin_life: PinLife,
}

/// Loads the configuration, decides the hooks, and claims what one daemon alone may have: the
/// API socket, the metrics address and the pin directory. Fails before the data plane is
/// touched.
fn load_and_claim(config_path: &Path, options: &Options) -> Result<Claimed> {
    let config = Config::load(config_path)?;
    let plan = preflight(&config)?;
    for reason in &plan.reasons {
        info!("interface {reason}");
    }
    // One daemon per socket and per pin directory; the kernel refuses a second one on an
    // interface that already has an XDP program that is not ours to take over.
    let listener = server::bind(&options.socket)?;
    // From here the socket file is this daemon's: a refusal removes it.
    let claimed = claim_the_rest(config, plan, listener);
    if claimed.is_err() {
        let _ = std::fs::remove_file(&options.socket);
    }
    claimed
}

/// [`load_and_claim`] once the API socket is bound: the metrics address and the pin
/// directory.
fn claim_the_rest(config: Config, plan: Plan, listener: UnixListener) -> Result<Claimed> {
    // A metrics address that cannot be bound stops xlb here, before it touches anything.
    let metrics_listener = config.metrics.map(metrics::bind).transpose()?;
    pins::prepare(&config.pin_path)?;
    let pin_life = pins::pin_life(&config.pin_path);
    if pin_life == PinLife::WithThisNamespace {
        warn!(
            pins = %config.pin_path.display(),
            "the pins are on a bpffs that only this process's mount namespace has (a private \
             one, as `ip netns exec` makes): they go when it does, and the data plane stops \
             with this daemon, so a restart keeps no flow. Run xlb in the host's mount \
             namespace (`nsenter --net=/run/netns/NAME`) or give it the host's /sys/fs/bpf"
        );
    }
    let lock = pins::PinLock::take(&config.pin_path)?;
    Ok(Claimed {
        config,
        plan,
        listener,
        metrics_listener,
        lock,
        pin_life,
    })
}

/// Loads (or takes over) the data plane, fills its maps, attaches as `plan` says and announces
/// the VIPs: from here on xlb is balancing, and tells systemd so.
async fn fill_and_attach(
    config: Config,
    config_path: &Path,
    options: &Options,
    plan: &Plan,
    metrics_listener: Option<TcpListener>,
) -> Result<(Dataplane, Monitor)> {
    let interfaces = config.interfaces.clone();
    let announce = config.announce.clone();
    let fleet = config.fleet.clone();
    let service_count = config.services.len();
    let (mut dataplane, mut monitor) = fill(config, config_path, options, metrics_listener).await?;
    // Attach only once the maps are complete, so the first packet already finds its service.
    let hook = dataplane.attach_planned(&interfaces, plan)?;
    for interface in dataplane.set_peer_handoff(&plan.peer_handoff)? {
        info!(
            "interface {interface}: packets for it are handed to its veth peer (veth_peer_redirect)"
        );
    }
    // Announce only once attached: a router may send the VIP's flows here at once.
    // The fleet's flows before the routers send this instance any.
    if let Some(fleet) = &fleet {
        let events = dataplane
            .flow_events
            .take()
            .context("the flow events were taken already")?;
        let fleet = Fleet::start(fleet, events)?;
        dataplane.fleet_switch.share_flows(true)?;
        monitor.join_fleet(fleet, &mut dataplane.maps).await;
    }
    if let Some(announce) = &announce {
        monitor.set_announcer(Announcer::start(announce).await?);
        monitor.evaluate(&mut dataplane.maps)?;
    }
    info!(services = service_count, interfaces = interfaces.len(), %hook, socket = %options.socket.display(), "ready: xlb is balancing");
    service_manager::ready(&format!("{} at the {hook} hook", monitor.summary()));
    Ok((dataplane, monitor))
}

/// Loads the data plane (taking over pinned maps and their flows) and the monitor, and fills
/// the maps; nothing is attached yet.
async fn fill(
    config: Config,
    config_path: &Path,
    options: &Options,
    metrics_listener: Option<TcpListener>,
) -> Result<(Dataplane, Monitor)> {
    let mut dataplane = Dataplane::load_pinned(
        config.flow_table_size,
        config.flow_table_size_ipv6,
        &config.pin_path,
    )?;
    let mut monitor = Monitor::new(
        config,
        Some(config_path.to_owned()),
        Some(&options.state_dir),
        options.reset_operator_state,
    )?;
    monitor.serve_metrics(metrics_listener);
    if dataplane.adopted() {
        let (services, backends) = monitor.adopt(&mut dataplane.maps)?;
        info!(
            services,
            backends, "took over the pinned maps and their flows"
        );
    }
    // The first health checks decide each backend's initial state, so that no flow goes to a
    // backend that is down when xlb starts.
    monitor
        .start(&mut dataplane.maps)
        .await
        .context("filling the maps")?;
    Ok((dataplane, monitor))
}

/// Serves the control API and SIGHUP's reloads, and runs the monitor until `shutdown`.
async fn serve(
    monitor: &mut Monitor,
    dataplane: &mut Dataplane,
    listener: UnixListener,
    hangup: Signal,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (jobs, received) = mpsc::channel(16);
    let api_server = tokio::spawn(server::serve(listener, jobs.clone(), cmd::job));
    let hangups = tokio::spawn(reload_on_sighup(hangup, jobs));
    let outcome = monitor.run(dataplane, received, shutdown).await;
    service_manager::stopping();
    api_server.abort();
    hangups.abort();
    outcome
}

/// Removes the socket, logs the counters, and either detaches (removing the pins) or leaves
/// the data plane forwarding for the next `xlb run` (if its pins outlive the daemon: `pins`
/// is where they are and whether they do).
fn shut_down(
    dataplane: &mut Dataplane,
    monitor: &Monitor,
    options: &Options,
    (pin_path, pin_life): (&Path, PinLife),
) {
    let _ = std::fs::remove_file(&options.socket);
    info!("shutting down");
    log_counters(dataplane, monitor.core().balancer());
    if options.detach_on_exit {
        dataplane.detach_all();
        dataplane.unpin_maps();
        info!("detached; pins removed");
    } else if pin_life == PinLife::WithThisNamespace {
        warn!(pins = %pin_path.display(), "the data plane stops with this daemon: its pins go with this process's private mount namespace");
    } else {
        info!(pins = %pin_path.display(), "the data plane keeps forwarding; the next `xlb run` takes it over");
    }
}

/// Turns every SIGHUP into a reload.
async fn reload_on_sighup(mut hangups: Signal, jobs: mpsc::Sender<Job>) {
    while hangups.recv().await.is_some() {
        info!("SIGHUP: reloading");
        // The monitor logs a refused reload.
        let reload: Job = Box::new(|monitor, dataplane| drop(monitor.reload(dataplane)));
        if jobs.send(reload).await.is_err() {
            return;
        }
    }
}

fn log_counters(dataplane: &Dataplane, balancer: &Balancer) {
    for service in balancer.services() {
        if let Ok(counters) = dataplane.maps.service_counters(service.id) {
            info!(
                service = service.name,
                new_flows = counters.new_flows,
                packets = counters.fwd_packets + counters.rev_packets,
                no_backend = counters.no_backend,
                "service counters"
            );
        }
        for backend in &service.backends {
            if let Ok(counters) = dataplane.maps.backend_counters(backend.id) {
                info!(
                    service = service.name,
                    backend = %backend.address,
                    new_flows = counters.new_flows,
                    packets = counters.fwd_packets + counters.rev_packets,
                    "backend counters"
                );
            }
        }
    }
    if let Ok(events) = dataplane.maps.events() {
        for (name, count) in lb_common::consts::events::NAMES.iter().zip(events) {
            if count > 0 {
                info!(event = name, count, "data-plane events");
            }
        }
    }
}
