//! A service's health checks (can a backend serve at all?) and load checks (how busy is it?).

use std::{ops::Range, time::Duration};

use toml::Spanned;

use super::{MAX_INTERVAL, MIN_INTERVAL, Place, Validator};
use crate::config::{
    model::{CheckVia, Forwarding, HealthCheck, HealthConfig, LoadConfig, Protocol},
    raw::{CheckKind, Field, RawHealth, RawLoad},
};

/// Defaults of the health checks (HAProxy's: inter 2s, rise 2, fall 3).
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
/// Default agent (load check) interval.
const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Parses HTTP status ranges like "200-399" or "200,204,301-302".
fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let status = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|code| (100..=599).contains(code))
            .ok_or_else(|| format!("{s:?} is not an HTTP status (100..=599)"))
    };
    text.split(',')
        .map(|part| match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (status(low)?, status(high)?);
                if low > high {
                    return Err(format!("range {low}-{high} is empty"));
                }
                Ok((low, high))
            }
            None => status(part).map(|code| (code, code)),
        })
        .collect()
}

impl Validator<'_> {
    /// A service's `health`: its own settings, or the defaults of the protocol. Checks go
    /// `via = "tunnel"` only where the packets do (`forwarding` "ipip" or "gue"), and only if
    /// there is a check to send.
    pub(super) fn health(
        &mut self,
        raw: Option<Spanned<RawHealth>>,
        protocol: Protocol,
        forwarding: Forwarding,
        place: &Place,
    ) -> HealthConfig {
        let Some(raw) = raw else {
            // TCP services are checked by connecting; a UDP service has no universal check.
            return HealthConfig {
                check: match protocol {
                    Protocol::Tcp => HealthCheck::Tcp,
                    Protocol::Udp => HealthCheck::None,
                },
                interval: DEFAULT_CHECK_INTERVAL,
                timeout: DEFAULT_CHECK_TIMEOUT,
                rise: DEFAULT_RISE,
                fall: DEFAULT_FALL,
                slowstart: None,
                via: CheckVia::Direct,
            };
        };
        let span = raw.span();
        let mut raw = raw.into_inner();
        let what = place.section("health");
        let kind = self.check_kind(raw.check.take(), &span, &what);
        if let Some(kind) = kind {
            self.keys_of_kind(&raw, kind, &what);
        }
        let check = match kind {
            None | Some(CheckKind::None) => HealthCheck::None,
            Some(CheckKind::Tcp) => HealthCheck::Tcp,
            Some(CheckKind::Http) => self.http_check(&raw, &what),
            Some(CheckKind::Udp) => self.udp_check(&raw, &span, &what),
        };
        let (interval, timeout) = self.interval_and_timeout(
            &raw.interval,
            &raw.timeout,
            DEFAULT_CHECK_INTERVAL,
            &what,
            |timeout, interval| {
                format!(
                    "{what}: timeout {} is longer than the interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                )
            },
        );
        let rise = self
            .optional_leaf(raw.rise, || format!("{what}: rise:"))
            .map_or(DEFAULT_RISE, |n| n.0 as u32);
        let fall = self
            .optional_leaf(raw.fall, || format!("{what}: fall:"))
            .map_or(DEFAULT_FALL, |n| n.0 as u32);
        let slowstart = raw.slowstart.as_ref().and_then(|value| {
            self.duration(
                value,
                &format!("{what}: slowstart"),
                Duration::from_millis(1)..=MAX_INTERVAL,
            )
        });
        let via = self.check_via(raw.via, &check, forwarding, &what);
        HealthConfig {
            check,
            interval,
            timeout,
            rise,
            fall,
            slowstart,
            via,
        }
    }

    /// A `health` section's `via`: "direct" unless it says "tunnel", which needs a tunnel to
    /// send the checks in and a check to send.
    fn check_via(
        &mut self,
        field: Field<CheckVia>,
        check: &HealthCheck,
        forwarding: Forwarding,
        what: &Place,
    ) -> CheckVia {
        let span = field.as_ref().map(Spanned::span);
        let via = self.leaf(field, || format!("{what}: via:"), CheckVia::Direct);
        if let (Some(span), CheckVia::Tunnel) = (span, via) {
            if !forwarding.tunnel() {
                self.error(&span, format!("{what}: via = \"tunnel\" sends the checks inside the tunnel to the backends, which only forwarding \"ipip\" or \"gue\" has; this service's forwarding is {:?}", forwarding.name()));
            } else if *check == HealthCheck::None {
                self.error(
                    &span,
                    format!("{what}: via = \"tunnel\" has no check to send (check = \"none\")"),
                );
            }
        }
        via
    }

    /// A `health` section's `check`: required; `None` if it names no kind of check.
    fn check_kind(
        &mut self,
        field: Field<CheckKind>,
        span: &Range<usize>,
        what: &Place,
    ) -> Option<CheckKind> {
        if field.is_none() {
            self.error(
                span,
                format!("{what}: missing key `check` (\"tcp\", \"http\", \"udp\" or \"none\")"),
            );
            return Some(CheckKind::None);
        }
        self.optional_leaf(field, || format!("{what}:"))
    }

    /// That the keys only some kinds of check take (`path`, `host`, `send`, `expect`) are set
    /// only for those.
    fn keys_of_kind(&mut self, raw: &RawHealth, kind: CheckKind, what: &Place) {
        let mut only_for = |key: &Option<Spanned<String>>, name: &str, kinds: &[CheckKind]| {
            if let Some(value) = key
                && !kinds.contains(&kind)
            {
                self.error(
                    &value.span(),
                    format!(
                        "{what}: `{name}` does not apply to check = {:?}",
                        kind.name()
                    ),
                );
            }
        };
        only_for(&raw.path, "path", &[CheckKind::Http]);
        only_for(&raw.host, "host", &[CheckKind::Http]);
        only_for(&raw.send, "send", &[CheckKind::Udp]);
        only_for(&raw.expect, "expect", &[CheckKind::Http, CheckKind::Udp]);
    }

    /// An http check: its `path` (from '/', no spaces), the statuses it `expect`s, and the
    /// `host` header it sends.
    fn http_check(&mut self, raw: &RawHealth, what: &Place) -> HealthCheck {
        let path = match &raw.path {
            None => "/".to_owned(),
            Some(path)
                if !path.get_ref().starts_with('/')
                    || path.get_ref().chars().any(char::is_whitespace) =>
            {
                self.error(
                    &path.span(),
                    format!(
                        "{what}: path {:?} must start with '/' and contain no spaces",
                        path.get_ref()
                    ),
                );
                "/".to_owned()
            }
            Some(path) => path.get_ref().clone(),
        };
        let expect = match &raw.expect {
            None => vec![(200, 399)],
            Some(expect) => parse_status_ranges(expect.get_ref()).unwrap_or_else(|problem| {
                self.error(
                    &expect.span(),
                    format!("{what}: expect {:?}: {problem}", expect.get_ref()),
                );
                vec![(200, 399)]
            }),
        };
        let host = raw.host.as_ref().map(|host| {
            let value = host.get_ref();
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    &host.span(),
                    format!("{what}: host {value:?} is not a valid Host header"),
                );
            }
            value.clone()
        });
        HealthCheck::Http { path, expect, host }
    }

    /// A udp check: the datagram it `send`s (required, not empty) and the answer it may
    /// `expect`.
    fn udp_check(&mut self, raw: &RawHealth, span: &Range<usize>, what: &Place) -> HealthCheck {
        let send = match &raw.send {
            None => {
                self.error(
                    span,
                    format!("{what}: a udp check needs `send`, the payload of the probe datagram"),
                );
                Vec::new()
            }
            Some(send) if send.get_ref().is_empty() => {
                self.error(&send.span(), format!("{what}: `send` is empty"));
                Vec::new()
            }
            Some(send) => send.get_ref().as_bytes().to_vec(),
        };
        let expect = raw
            .expect
            .as_ref()
            .map(|expect| expect.get_ref().as_bytes().to_vec());
        HealthCheck::Udp { send, expect }
    }

    /// A service's `load`.
    pub(super) fn load(&mut self, raw: Spanned<RawLoad>, place: &Place) -> LoadConfig {
        let raw = raw.into_inner();
        let what = place.section("load");
        let agent_port = self
            .optional_leaf(raw.agent_port, || format!("{what}: agent_port:"))
            .map(|p| p.0);
        let (interval, timeout) = self.interval_and_timeout(
            &raw.interval,
            &raw.timeout,
            DEFAULT_LOAD_INTERVAL,
            &what,
            |_, _| format!("{what}: timeout is longer than the interval"),
        );
        let overload_below = self
            .optional_leaf(raw.overload_below, || format!("{what}: overload_below"))
            .map(|p| p.0);
        let max_flows = self
            .optional_leaf(raw.max_flows, || format!("{what}: max_flows"))
            .map(|n| n.0 as u64);
        LoadConfig {
            agent_port,
            interval,
            timeout,
            overload_below,
            max_flows,
        }
    }

    /// The `interval` of a health or load check (`MIN_INTERVAL` to `MAX_INTERVAL`;
    /// `default_interval` if absent) and its `timeout` (1ms to `MAX_INTERVAL`; if absent,
    /// [`DEFAULT_CHECK_TIMEOUT`] or the interval if shorter). A timeout longer than the
    /// interval is reported in the words of `longer(timeout, interval)` and cut to the
    /// interval.
    fn interval_and_timeout(
        &mut self,
        interval: &Option<Spanned<String>>,
        timeout: &Option<Spanned<String>>,
        default_interval: Duration,
        what: &Place,
        longer: impl FnOnce(Duration, Duration) -> String,
    ) -> (Duration, Duration) {
        let interval = self.duration_or(
            interval,
            &format!("{what}: interval"),
            default_interval,
            MIN_INTERVAL..=MAX_INTERVAL,
        );
        let raw_timeout = timeout;
        let timeout = self.duration_or(
            raw_timeout,
            &format!("{what}: timeout"),
            DEFAULT_CHECK_TIMEOUT.min(interval),
            Duration::from_millis(1)..=MAX_INTERVAL,
        );
        if let Some(raw_timeout) = raw_timeout
            && timeout > interval
        {
            self.error(&raw_timeout.span(), longer(timeout, interval));
        }
        (interval, timeout.min(interval))
    }
}
