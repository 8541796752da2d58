//! The file as serde reads it: every key optional, every leaf with its position
//! ([`toml::Spanned`]). Unknown keys and values of the wrong TOML type are refused by serde
//! (`super::read` keeps each as an error and reads on without it). Leaves with a meaning beyond their TOML type (a mode, a
//! port, a number with bounds) are [`Checked`]: serde reads them through their [`Leaf`]
//! conversion, and a value that does not convert (an unknown mode, a weight out of range) is
//! kept as its error, so that validation reports it with every other problem at once.

use std::{collections::BTreeMap, fmt, ops::RangeInclusive};

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use toml::Spanned;

use super::model::{CheckVia, Forwarding, OnDown, Protocol, XdpMode};

/// A typed leaf: read as its TOML type, then converted, with a message saying what is wrong
/// with a value that does not convert.
pub(super) trait Leaf: Sized {
    /// The TOML type the value is written as.
    type Raw: DeserializeOwned;
    /// The value, or what is wrong with it (without the key's name, which the caller adds).
    fn from_raw(raw: Self::Raw) -> Result<Self, String>;
}

/// A leaf read through its [`Leaf`] conversion: the value, or what is wrong with it.
#[derive(Debug)]
pub(super) struct Checked<T>(pub(super) Result<T, String>);

impl<'de, T: Leaf> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = T::Raw::deserialize(deserializer)?;
        Ok(Self(T::from_raw(raw)))
    }
}

/// An optional, positioned, converted leaf.
pub(super) type Field<T> = Option<Spanned<Checked<T>>>;

/// `value` if it lies in `range`, else "`shown` is out of range `low`..=`high`" (bounds shown
/// by `bound`): the one range check of the config.
pub(super) fn within<T: PartialOrd>(
    value: T,
    range: &RangeInclusive<T>,
    shown: impl fmt::Display,
    bound: impl Fn(&T) -> String,
) -> Result<T, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{shown} is out of range {}..={}",
            bound(range.start()),
            bound(range.end())
        ))
    }
}

/// An integer within `MIN..=MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ranged<const MIN: i64, const MAX: i64>(pub(super) i64);

impl<const MIN: i64, const MAX: i64> Leaf for Ranged<MIN, MAX> {
    type Raw = i64;
    fn from_raw(raw: i64) -> Result<Self, String> {
        within(raw, &(MIN..=MAX), raw, i64::to_string).map(Self)
    }
}

/// A TCP or UDP port, 1 to 65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Port(pub(super) u16);

impl Leaf for Port {
    type Raw = i64;
    fn from_raw(raw: i64) -> Result<Self, String> {
        match u16::try_from(raw) {
            Ok(port) if port > 0 => Ok(Self(port)),
            _ => Err(format!("{raw} is not a port (1..=65535)")),
        }
    }
}

/// A percentage written like "20%".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Percent(pub(super) u32);

impl Leaf for Percent {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        raw.strip_suffix('%')
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|n| *n <= 100)
            .map(Self)
            .ok_or_else(|| format!("{raw:?} is not a percentage like \"20%\""))
    }
}

/// What a health check does, as the file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CheckKind {
    None,
    Tcp,
    Http,
    Udp,
}

impl CheckKind {
    /// The name the file uses.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
        }
    }
}

/// A leaf that is one of a few words.
fn one_of<T: Copy>(raw: &str, what: &str, words: &[(&str, T)]) -> Result<T, String> {
    words
        .iter()
        .find(|(word, _)| *word == raw)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<String> = words.iter().map(|(w, _)| format!("{w:?}")).collect();
            let expected = match names.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            format!("unknown {what} {raw:?}, expected {expected}")
        })
}

impl Leaf for CheckKind {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(
            &raw,
            "check",
            &[
                ("tcp", Self::Tcp),
                ("http", Self::Http),
                ("udp", Self::Udp),
                ("none", Self::None),
            ],
        )
    }
}

impl Leaf for XdpMode {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(
            &raw,
            "mode",
            &[
                ("auto", Self::Auto),
                ("native", Self::Native),
                ("generic", Self::Generic),
                ("tc", Self::Tc),
            ],
        )
    }
}

impl Leaf for Protocol {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(&raw, "protocol", &[("tcp", Self::Tcp), ("udp", Self::Udp)])
    }
}

/// A scheduler's name (its settings are in their own table, like `maglev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SchedulerName {
    RoundRobin,
    Maglev,
    SourceHash,
    LeastConnections,
}

impl Leaf for SchedulerName {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(
            &raw,
            "scheduler",
            &[
                ("round-robin", Self::RoundRobin),
                ("maglev", Self::Maglev),
                ("source-hash", Self::SourceHash),
                ("least-connections", Self::LeastConnections),
            ],
        )
    }
}

impl Leaf for OnDown {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(
            &raw,
            "on_down",
            &[("keep", Self::Keep), ("reset", Self::Reset)],
        )
    }
}

impl Leaf for CheckVia {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(
            &raw,
            "via",
            &[("direct", Self::Direct), ("tunnel", Self::Tunnel)],
        )
    }
}

impl Leaf for Forwarding {
    type Raw = String;
    fn from_raw(raw: String) -> Result<Self, String> {
        one_of(
            &raw,
            "forwarding",
            &[
                ("nat", Self::Nat),
                ("dsr", Self::Dsr),
                ("ipip", Self::Ipip),
                ("gue", Self::Gue),
            ],
        )
    }
}

/// Bounds of `flow_table_size`: below 1,024 the LRU evicts live flows under trivial load;
/// above 2^26 each direction's entries cost gigabytes of kernel memory.
pub(super) type FlowTableSize = Ranged<1_024, { 1 << 26 }>;
/// Bounds of a backend's weight.
pub(super) type Weight = Ranged<0, { lb_common::consts::limits::MAX_WEIGHT as i64 }>;
/// Bounds of `rise` and `fall`.
pub(super) type Count = Ranged<1, 100>;
/// Bounds of `max_flows`.
pub(super) type MaxFlows = Ranged<1, { u32::MAX as i64 }>;
/// Bounds of the passive thresholds (0: that kind is not counted).
pub(super) type Threshold = Ranged<0, 100>;
/// Bounds of an admission `rate` (new flows per second per prefix).
pub(super) type Rate = Ranged<1, 10_000_000>;
/// Bounds of an admission `burst`.
pub(super) type Burst = Ranged<1, 10_000_000>;
/// Bounds of an IPv4 prefix length.
pub(super) type Ipv4PrefixLen = Ranged<1, 32>;
/// Bounds of an IPv6 prefix length.
pub(super) type Ipv6PrefixLen = Ranged<1, 128>;
/// Bounds of a Maglev table size (whether it is a prime is checked with the backends).
pub(super) type MaglevTableSize = Ranged<2, { lb_common::consts::limits::MAX_MAGLEV_SLOTS as i64 }>;
/// Bounds of a Maglev seed.
pub(super) type MaglevSeed = Ranged<0, { u32::MAX as i64 }>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) xdp_mode: Field<XdpMode>,
    pub(super) assume_complete_checksums: Option<bool>,
    pub(super) veth_peer_redirect: Option<bool>,
    pub(super) flow_table_size: Field<FlowTableSize>,
    pub(super) flow_table_size_ipv6: Field<FlowTableSize>,
    pub(super) pin_path: Option<Spanned<String>>,
    pub(super) metrics: Option<Spanned<String>>,
    pub(super) host_ports: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) tcp_idle_timeout: Option<Spanned<String>>,
    pub(super) tcp_closing_timeout: Option<Spanned<String>>,
    pub(super) udp_idle_timeout: Option<Spanned<String>>,
    pub(super) announce: Option<Spanned<RawAnnounce>>,
    pub(super) fleet: Option<Spanned<RawFleet>>,
    pub(super) tunnel: Option<Spanned<RawTunnel>>,
    #[serde(default)]
    pub(super) service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) protocol: Field<Protocol>,
    pub(super) scheduler: Field<SchedulerName>,
    pub(super) maglev: Option<Spanned<RawMaglev>>,
    pub(super) forwarding: Field<Forwarding>,
    pub(super) on_down: Field<OnDown>,
    pub(super) drain_timeout: Option<Spanned<String>>,
    pub(super) persistence: Option<Spanned<String>>,
    pub(super) announce: Option<Spanned<bool>>,
    pub(super) backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub(super) pool: Option<Spanned<Vec<Spanned<RawPool>>>>,
    pub(super) client_prefixes: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(super) client_prefix_file: Option<Spanned<String>>,
    pub(super) default_pool: Option<Spanned<String>>,
    pub(super) health: Option<Spanned<RawHealth>>,
    pub(super) load: Option<Spanned<RawLoad>>,
    pub(super) passive: Option<Spanned<RawPassive>>,
    pub(super) admission: Option<Spanned<RawAdmission>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    pub(super) device: Option<Spanned<String>>,
    pub(super) bird_socket: Option<Spanned<String>>,
    pub(super) drain: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) peers: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) key_file: Option<Spanned<String>>,
    pub(super) refresh: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTunnel {
    pub(super) source: Option<Spanned<String>>,
    pub(super) source_ipv6: Option<Spanned<String>>,
    pub(super) gue_port: Field<GuePort>,
}

/// Bounds of `gue_port`.
pub(super) type GuePort = Ranged<1, 65535>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaglev {
    pub(super) table_size: Field<MaglevTableSize>,
    pub(super) seed: Field<MaglevSeed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Option<Spanned<String>>,
    pub(super) backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub(super) fallback: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Option<Spanned<String>>,
    pub(super) weight: Field<Weight>,
    pub(super) check_port: Field<Port>,
    pub(super) agent_port: Field<Port>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) check: Field<CheckKind>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<String>>,
    pub(super) send: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Field<Count>,
    pub(super) fall: Field<Count>,
    pub(super) slowstart: Option<Spanned<String>>,
    pub(super) via: Field<CheckVia>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoad {
    pub(super) agent_port: Field<Port>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) overload_below: Field<Percent>,
    pub(super) max_flows: Field<MaxFlows>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPassive {
    pub(super) refused: Field<Threshold>,
    pub(super) unanswered: Field<Threshold>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) hold: Option<Spanned<String>>,
    pub(super) max_share: Field<Percent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmission {
    pub(super) rate: Field<Rate>,
    pub(super) burst: Field<Burst>,
    pub(super) ipv4_prefix: Field<Ipv4PrefixLen>,
    pub(super) ipv6_prefix: Field<Ipv6PrefixLen>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_convert_or_say_what_is_wrong() {
        assert_eq!(Weight::from_raw(256), Ok(Ranged(256)));
        assert_eq!(
            Weight::from_raw(999),
            Err("999 is out of range 0..=256".into())
        );
        assert_eq!(Port::from_raw(0), Err("0 is not a port (1..=65535)".into()));
        assert_eq!(Percent::from_raw("20%".into()), Ok(Percent(20)));
        assert!(Percent::from_raw("120%".into()).is_err());
        assert_eq!(
            XdpMode::from_raw("turbo".into()),
            Err(
                "unknown mode \"turbo\", expected \"auto\", \"native\", \"generic\" or \"tc\""
                    .into()
            )
        );
        assert_eq!(
            Protocol::from_raw("sctp".into()),
            Err("unknown protocol \"sctp\", expected \"tcp\" or \"udp\"".into())
        );
        assert_eq!(
            SchedulerName::from_raw("x".into()),
            Err(
                "unknown scheduler \"x\", expected \"round-robin\", \"maglev\", \"source-hash\" or \"least-connections\""
                    .into()
            )
        );
        assert_eq!(
            Forwarding::from_raw("tunnel".into()),
            Err(
                "unknown forwarding \"tunnel\", expected \"nat\", \"dsr\", \"ipip\" or \"gue\""
                    .into()
            )
        );
    }
}
