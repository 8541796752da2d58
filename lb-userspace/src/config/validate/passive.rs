//! A service's passive health (what the data plane learns from the answers to new flows) and
//! its admission limit (new flows per client prefix).

use std::time::Duration;

use toml::Spanned;

use super::{Place, Validator};
use crate::config::{
    model::{AdmissionConfig, PassiveConfig, Protocol},
    raw::{RawAdmission, RawPassive},
};

/// Defaults of passive health: one refused handshake, or two unanswered ones, within a
/// second make a backend suspect for two seconds; at most half the backends at once.
pub(super) const DEFAULT_PASSIVE: PassiveConfig = PassiveConfig {
    refused: 1,
    unanswered: 2,
    window: Duration::from_secs(1),
    hold: Duration::from_secs(2),
    max_share: 50,
};
/// Default prefix lengths that group clients for admission.
const DEFAULT_IPV4_PREFIX: u8 = 24;
const DEFAULT_IPV6_PREFIX: u8 = 64;

impl Validator<'_> {
    /// A service's `passive`: on by default for TCP, refused for UDP (which has no handshake
    /// to observe).
    pub(super) fn passive(
        &mut self,
        raw: Option<Spanned<RawPassive>>,
        protocol: Protocol,
        place: &Place,
    ) -> Option<PassiveConfig> {
        let Some(raw) = raw else {
            return (protocol == Protocol::Tcp).then_some(DEFAULT_PASSIVE);
        };
        let what = place.section("passive");
        if protocol == Protocol::Udp {
            self.error(
                &raw.span(),
                format!("{what}: passive health observes TCP handshakes; a UDP service has none"),
            );
            return None;
        }
        let raw = raw.into_inner();
        let d = DEFAULT_PASSIVE;
        let refused = self
            .optional_leaf(raw.refused, || format!("{what}: refused"))
            .map_or(d.refused, |n| n.0 as u32);
        let unanswered = self
            .optional_leaf(raw.unanswered, || format!("{what}: unanswered"))
            .map_or(d.unanswered, |n| n.0 as u32);
        let window = self.duration_or(
            &raw.window,
            &format!("{what}: window"),
            d.window,
            Duration::from_millis(10)..=Duration::from_secs(600),
        );
        let hold = self.duration_or(
            &raw.hold,
            &format!("{what}: hold"),
            d.hold,
            Duration::from_millis(100)..=Duration::from_secs(3600),
        );
        let max_share = self
            .optional_leaf(raw.max_share, || format!("{what}: max_share"))
            .map_or(d.max_share, |p| p.0);
        Some(PassiveConfig {
            refused,
            unanswered,
            window,
            hold,
            max_share,
        })
    }

    /// A service's `admission`.
    pub(super) fn admission(
        &mut self,
        raw: Spanned<RawAdmission>,
        place: &Place,
    ) -> AdmissionConfig {
        let span = raw.span();
        let raw = raw.into_inner();
        let what = place.section("admission");
        let rate = match raw.rate {
            None => {
                self.error(
                    &span,
                    format!("{what}: missing key `rate` (new flows per second per client prefix)"),
                );
                1
            }
            some => self
                .optional_leaf(some, || format!("{what}: rate"))
                .map_or(1, |n| n.0 as u64),
        };
        let burst = self
            .optional_leaf(raw.burst, || format!("{what}: burst"))
            .map_or(rate, |n| n.0 as u64);
        let ipv4_prefix = self
            .optional_leaf(raw.ipv4_prefix, || format!("{what}: ipv4_prefix"))
            .map_or(DEFAULT_IPV4_PREFIX, |n| n.0 as u8);
        let ipv6_prefix = self
            .optional_leaf(raw.ipv6_prefix, || format!("{what}: ipv6_prefix"))
            .map_or(DEFAULT_IPV6_PREFIX, |n| n.0 as u8);
        AdmissionConfig {
            rate,
            burst,
            ipv4_prefix,
            ipv6_prefix,
        }
    }
}
