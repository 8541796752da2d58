//! What a service needs to run on several instances at once: its scheduler (Maglev's table
//! shape), how its packets reach the backends (NAT or direct server return), and the
//! announcement of its VIP to the local BGP daemon.

use std::{ops::Range, path::PathBuf, time::Duration};

use toml::Spanned;

use super::MAX_INTERFACE_NAME;
use super::{Place, Validator};
use crate::config::{
    model::{
        AnnounceConfig, BackendConfig, DEFAULT_ANNOUNCE_DEVICE, DEFAULT_BIRD_SOCKET, DEFAULT_DRAIN,
        DEFAULT_MAGLEV_SEED, DEFAULT_MAGLEV_TABLE_SIZE, Forwarding, MAGLEV_SLOTS_PER_BACKEND,
        MaglevConfig, Scheduler, ServiceConfig, is_prime,
    },
    raw::{Field, RawAnnounce, RawMaglev, SchedulerName},
};

impl Validator<'_> {
    /// A service's `scheduler` and its `maglev` table: the size a prime with at least
    /// `MAGLEV_SLOTS_PER_BACKEND` slots per backend; `maglev` only with the Maglev scheduler.
    pub(super) fn scheduler(
        &mut self,
        name: Field<SchedulerName>,
        maglev: Option<Spanned<RawMaglev>>,
        backends: usize,
        place: &Place,
    ) -> Scheduler {
        let name = self.leaf(name, || format!("{place}:"), SchedulerName::RoundRobin);
        let what = place.section("maglev");
        let Some(maglev) = maglev else {
            return match name {
                SchedulerName::RoundRobin => Scheduler::RoundRobin,
                SchedulerName::LeastConnections => Scheduler::LeastConnections,
                SchedulerName::Maglev | SchedulerName::SourceHash => {
                    let config = MaglevConfig {
                        table_size: DEFAULT_MAGLEV_TABLE_SIZE,
                        seed: DEFAULT_MAGLEV_SEED,
                        client_hash: name == SchedulerName::SourceHash,
                    };
                    self.maglev_fits(&config, backends, &what, &(0..0));
                    Scheduler::Maglev(config)
                }
            };
        };
        let span = maglev.span();
        if let SchedulerName::RoundRobin | SchedulerName::LeastConnections = name {
            self.error(
                &span,
                format!("{what}: the table of the Maglev scheduler, but the service's scheduler is not \"maglev\" or \"source-hash\""),
            );
            return Scheduler::RoundRobin;
        }
        let maglev = maglev.into_inner();
        let size_span = maglev.table_size.as_ref().map(Spanned::span);
        let table_size = self
            .optional_leaf(maglev.table_size, || format!("{what}: table_size"))
            .map_or(DEFAULT_MAGLEV_TABLE_SIZE, |n| n.0 as u32);
        let seed = self
            .optional_leaf(maglev.seed, || format!("{what}: seed"))
            .map_or(DEFAULT_MAGLEV_SEED, |n| n.0 as u32);
        let config = MaglevConfig {
            table_size,
            seed,
            client_hash: name == SchedulerName::SourceHash,
        };
        self.maglev_fits(&config, backends, &what, &size_span.unwrap_or(span));
        Scheduler::Maglev(config)
    }

    /// Whether a Maglev table of `config`'s size is a prime with room for `backends`.
    fn maglev_fits(
        &mut self,
        config: &MaglevConfig,
        backends: usize,
        what: &Place,
        span: &Range<usize>,
    ) {
        let size = config.table_size;
        if !is_prime(size) {
            self.error(span, format!("{what}: table_size {size} is not a prime (every backend's permutation must visit every slot); 65537 is"));
        }
        let needed = backends as u64 * u64::from(MAGLEV_SLOTS_PER_BACKEND);
        if u64::from(size) < needed {
            self.error(span, format!("{what}: table_size {size} is too small for {backends} backends: at least {MAGLEV_SLOTS_PER_BACKEND} slots per backend ({needed}) keep their shares even"));
        }
    }

    /// A service's `forwarding`. With DSR, at layer 2 or 3, the backends keep the VIP's port
    /// (only the MAC changes, or an outer header is added), and passive health cannot be set
    /// (xlb never sees the backends' answers).
    pub(super) fn forwarding(
        &mut self,
        field: Field<Forwarding>,
        backends: &[BackendConfig],
        port: Option<u16>,
        passive: Option<&Range<usize>>,
        place: &Place,
    ) -> Forwarding {
        let span = field.as_ref().map(Spanned::span);
        let forwarding = self.leaf(field, || format!("{place}:"), Forwarding::Nat);
        let Some(span) = span.filter(|_| forwarding.direct()) else {
            return forwarding;
        };
        let name = forwarding.name();
        if let Some(port) = port {
            for backend in backends.iter().filter(|b| b.address.port() != port) {
                self.error(&span, format!("{place}: forwarding \"{name}\" leaves the packets' addresses and ports as they are, so backend {} must listen on the service's port {port}", backend.address));
            }
        }
        if let Some(passive) = passive {
            self.error(passive, format!("{place}: passive health observes the backends' answers, which go straight to the clients with forwarding \"{name}\"; remove `passive`"));
        }
        forwarding
    }
}

impl Validator<'_> {
    /// The `[announce]` section: its defaults when a service announces its VIP and the
    /// section is absent; `None` when no service announces. `declared`: a service of the
    /// file says `announce = true`, valid or not (an invalid one has its own errors).
    pub(super) fn announce(
        &mut self,
        raw: Option<Spanned<RawAnnounce>>,
        services: &[ServiceConfig],
        declared: bool,
    ) -> Option<AnnounceConfig> {
        let announces = services.iter().any(|s| s.announce);
        let Some(raw) = raw else {
            return announces.then(|| AnnounceConfig {
                device: DEFAULT_ANNOUNCE_DEVICE.into(),
                bird_socket: DEFAULT_BIRD_SOCKET.into(),
                drain: DEFAULT_DRAIN,
            });
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let device = match raw.device {
            None => DEFAULT_ANNOUNCE_DEVICE.to_owned(),
            Some(name) => {
                let value = name.get_ref();
                let valid = !value.is_empty()
                    && value.len() <= MAX_INTERFACE_NAME
                    && !value.contains(['/', ' ', ':']);
                if !valid {
                    self.error(&name.span(), format!("announce: device {value:?} is not an interface name (1 to {MAX_INTERFACE_NAME} characters, no '/', ':' or space)"));
                }
                value.clone()
            }
        };
        let bird_socket = raw
            .bird_socket
            .map_or(PathBuf::from(DEFAULT_BIRD_SOCKET), |path| {
                self.base.join(path.into_inner())
            });
        let drain = self.duration_or(
            &raw.drain,
            "announce: drain",
            DEFAULT_DRAIN,
            Duration::ZERO..=Duration::from_secs(3600),
        );
        if !declared {
            self.error(
                &span,
                "announce: no service sets `announce = true`, so there is nothing to announce"
                    .into(),
            );
        }
        Some(AnnounceConfig {
            device,
            bird_socket,
            drain,
        })
    }
}
