//! Where the data plane runs on each interface, and why: the decision behind `xdp_mode`, made
//! from the facts `links` reads. Pure, so every case is unit-tested.
//!
//! The rules (README "Where each mode is correct"):
//!
//! - **Native XDP** sees frames before the kernel builds an skb. It is correct where packets
//!   arrive with complete checksums: from a wire (NICs, virtio-net, bonds of them), or from a
//!   veth peer whose transmit checksum offload is off. A veth peer with the offload on (the
//!   default) hands over packets whose TCP/UDP checksum is partial; native XDP forwards them
//!   as if complete and the receiver drops them as corrupt.
//! - **Generic XDP** sees skbs, but not their checksum state: it needs complete checksums as
//!   native does, and no receive offload merging packets (GRO, LRO, hardware GRO) on the
//!   interface, since super-packets can neither be rewritten nor redirected there.
//! - **tc** is correct everywhere: the skb helpers update partial checksums correctly, and
//!   super-packets are forwarded whole and segmented by the kernel.
//!
//! `auto` picks native when every interface is a NIC or a bond (falling back to tc if a driver
//! refuses XDP), and tc otherwise. One hook serves all interfaces, so a packet never crosses
//! from one hook to the other. Native or generic on an interface where xlb sees (or cannot
//! rule out) partial checksums is refused, unless the operator states otherwise with
//! `assume_complete_checksums = true`.
//!
//! At tc, a packet bound for a veth whose peer lives in another network namespace (a
//! container's, or a namespace of the tests) is handed to that peer directly
//! (`bpf_redirect_peer`), unless `veth_peer_redirect = false`: it skips the veth's transmit path
//! and the peer's backlog queue (so also the veth's egress qdisc and tc egress programs, and
//! native XDP on the peer). The kernel refuses a peer in the same namespace.

use std::fmt;

use super::links::{LinkFacts, LinkKind, Peer};
use crate::config::XdpMode;

/// The hook the program runs at on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP in the driver.
    Native,
    /// XDP on skbs (the generic hook).
    Generic,
    /// tc ingress.
    Tc,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Tc => "tc",
        })
    }
}

/// Whether packets arriving on an interface carry complete checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Checksums {
    /// Complete: from a wire, or from a veth peer without transmit checksum offload.
    Complete,
    /// Partial checksums arrive (a veth peer offloads them).
    Partial(String),
    /// xlb cannot tell.
    Unknown(String),
}

/// What xlb concludes about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Assessment {
    /// Interface name.
    pub interface: String,
    /// The device, described for people ("veth, peer lb in network namespace sw").
    pub device: String,
    /// Whether its packets carry complete checksums.
    pub checksums: Checksums,
    /// Receive offloads that merge packets, if any are on.
    pub merging: Vec<String>,
    /// Whether `auto` would consider native XDP here (a NIC or a bond).
    pub native_candidate: bool,
    /// A veth whose peer lives in another network namespace: at tc, packets for it can be
    /// handed to the peer.
    pub peer_elsewhere: bool,
}

impl Assessment {
    /// Reads the facts of one interface.
    pub(crate) fn of(facts: &LinkFacts) -> Self {
        let peer_elsewhere = matches!(
            &facts.kind,
            LinkKind::Veth {
                peer: Peer::Found {
                    elsewhere: true,
                    ..
                }
            }
        );
        let (device, checksums, native_candidate) = match &facts.kind {
            LinkKind::Physical { driver } => {
                (format!("NIC, driver {driver}"), Checksums::Complete, true)
            }
            LinkKind::Bond => ("bond".to_owned(), Checksums::Complete, true),
            LinkKind::Veth { peer } => match peer {
                Peer::Found {
                    name,
                    namespace,
                    tx_checksum,
                    ..
                } => {
                    let device = format!("veth, peer {name} in {namespace}");
                    let checksums = if tx_checksum.is_empty() {
                        Checksums::Complete
                    } else {
                        Checksums::Partial(format!(
                            "its peer {name} offloads transmit checksums ({}), so packets \
                             arrive with partial checksums",
                            tx_checksum.join(", ")
                        ))
                    };
                    (device, checksums, false)
                }
                Peer::Unknown { reason } => (
                    "veth, peer unknown".to_owned(),
                    Checksums::Unknown(format!(
                        "its peer cannot be read ({reason}), so it may send partial checksums"
                    )),
                    false,
                ),
            },
            LinkKind::Virtual { kind } => (
                kind.clone(),
                Checksums::Unknown(format!(
                    "a {kind} device may carry packets from local senders with partial \
                     checksums, which xlb cannot see"
                )),
                false,
            ),
        };
        Self {
            interface: facts.name.clone(),
            device,
            checksums,
            merging: facts.merging.clone(),
            native_candidate,
            peer_elsewhere,
        }
    }

    /// Why XDP (native or generic) would be wrong here, or `None`.
    fn xdp_problem(&self, assume_complete: bool) -> Option<String> {
        if assume_complete {
            return None;
        }
        match &self.checksums {
            Checksums::Complete => None,
            Checksums::Partial(why) | Checksums::Unknown(why) => Some(why.clone()),
        }
    }
}

/// The decision for a set of interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The hook to try first, for every interface.
    pub hook: Hook,
    /// Whether to use tc instead if attaching `hook` fails (`auto` trying native).
    pub fall_back_to_tc: bool,
    /// One line per interface saying what it is and why it gets `hook`.
    pub reasons: Vec<String>,
    /// The interfaces where, at tc, packets are handed to the veth peer (see the module
    /// documentation): veths whose peer lives in another namespace, when the program runs (or
    /// may fall back to running) at tc and `veth_peer_redirect` is on.
    pub peer_handoff: Vec<String>,
}

/// Decides where the program runs, or says for each interface why the configured mode would be
/// wrong there and what to do.
pub(crate) fn plan(
    mode: XdpMode,
    assessments: &[Assessment],
    assume_complete: bool,
    veth_peer_redirect: bool,
) -> Result<Plan, Vec<String>> {
    let mut plan = hook_plan(mode, assessments, assume_complete)?;
    if veth_peer_redirect && (plan.hook == Hook::Tc || plan.fall_back_to_tc) {
        plan.peer_handoff = assessments
            .iter()
            .filter(|a| a.peer_elsewhere)
            .map(|a| a.interface.clone())
            .collect();
    }
    Ok(plan)
}

/// [`plan`]'s hook and reasons.
fn hook_plan(
    mode: XdpMode,
    assessments: &[Assessment],
    assume_complete: bool,
) -> Result<Plan, Vec<String>> {
    match mode {
        XdpMode::Auto => Ok(auto_plan(assessments)),
        XdpMode::Tc => Ok(tc_plan(assessments)),
        XdpMode::Native | XdpMode::Generic => xdp_plan(mode, assessments, assume_complete),
    }
}

/// An interface as the reasons and errors name it: "eth0 (NIC, driver ixgbe)".
fn describe(a: &Assessment) -> String {
    format!("{} ({})", a.interface, a.device)
}

/// `auto`: native XDP (falling back to tc) when every interface is a NIC or a bond, tc
/// otherwise.
fn auto_plan(assessments: &[Assessment]) -> Plan {
    let all_nics = assessments.iter().all(|a| a.native_candidate);
    let hook = if all_nics { Hook::Native } else { Hook::Tc };
    let reasons = assessments
        .iter()
        .map(|a| {
            let why = if all_nics {
                "a NIC: native XDP, or tc if its driver refuses it".to_owned()
            } else if a.native_candidate {
                "tc, like the other interfaces (one hook serves all)".to_owned()
            } else {
                match &a.checksums {
                    Checksums::Complete => "tc (auto uses native XDP on NICs only)".to_owned(),
                    Checksums::Partial(why) | Checksums::Unknown(why) => format!("tc: {why}"),
                }
            };
            format!("{} → {why}", describe(a))
        })
        .collect();
    Plan {
        hook,
        fall_back_to_tc: all_nics,
        reasons,
        peer_handoff: Vec::new(),
    }
}

/// `tc`: tc everywhere, which is correct everywhere.
fn tc_plan(assessments: &[Assessment]) -> Plan {
    Plan {
        hook: Hook::Tc,
        fall_back_to_tc: false,
        reasons: assessments
            .iter()
            .map(|a| format!("{} → tc", describe(a)))
            .collect(),
        peer_handoff: Vec::new(),
    }
}

/// `native` or `generic`: that hook everywhere, or every interface's reasons why not.
fn xdp_plan(
    mode: XdpMode,
    assessments: &[Assessment],
    assume_complete: bool,
) -> Result<Plan, Vec<String>> {
    let hook = if mode == XdpMode::Native {
        Hook::Native
    } else {
        Hook::Generic
    };
    let errors: Vec<String> = assessments
        .iter()
        .flat_map(|a| xdp_refusals(mode, hook, a, assume_complete))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plan {
        hook,
        fall_back_to_tc: false,
        reasons: assessments
            .iter()
            .map(|a| {
                let note = match (&a.checksums, assume_complete) {
                    (Checksums::Complete, _) => "complete checksums".to_owned(),
                    (_, _) => "complete checksums as the config assumes".to_owned(),
                };
                format!("{} → {hook} ({note})", describe(a))
            })
            .collect(),
        peer_handoff: Vec::new(),
    })
}

/// Why XDP at `hook` (configured as `mode`) would be wrong on one interface, and what to do:
/// partial checksums, and for generic XDP merged packets.
fn xdp_refusals(mode: XdpMode, hook: Hook, a: &Assessment, assume_complete: bool) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(why) = a.xdp_problem(assume_complete) {
        errors.push(format!(
            "interface {}: xdp_mode = \"{mode}\" would corrupt packets: {why}; \
             XDP forwards a partial checksum as if it were complete, and receivers \
             drop the packet. Use xdp_mode = \"tc\" (or \"auto\"); or turn transmit \
             checksum offload off where the packets come from (`ethtool -K PEER tx \
             off`) and, if xlb cannot see that, set assume_complete_checksums = true",
            describe(a)
        ));
    }
    if hook == Hook::Generic && !a.merging.is_empty() {
        errors.push(format!(
            "interface {}: xdp_mode = \"generic\" cannot handle merged packets, and \
             {} is on: generic XDP would pass every merged packet of a flow to the \
             kernel untranslated. Use xdp_mode = \"tc\", or turn it off (`ethtool -K \
             {} {}`)",
            describe(a),
            a.merging.join(", "),
            a.interface,
            a.merging
                .iter()
                .map(|f| format!("{} off", ethtool_short(f)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    errors
}

/// The `ethtool -K` name of a feature.
fn ethtool_short(feature: &str) -> &str {
    match feature {
        "rx-gro" => "gro",
        "large-receive-offload" => "lro",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            kind: LinkKind::Physical {
                driver: "ixgbe".into(),
            },
            merging: vec!["rx-gro".into()],
        }
    }

    fn veth(name: &str, tx_checksum: &[&str]) -> LinkFacts {
        LinkFacts {
            name: name.into(),
            kind: LinkKind::Veth {
                peer: Peer::Found {
                    name: "peer0".into(),
                    namespace: "network namespace sw".into(),
                    elsewhere: true,
                    tx_checksum: tx_checksum.iter().map(|s| s.to_string()).collect(),
                },
            },
            merging: Vec::new(),
        }
    }

    fn assess(facts: &[LinkFacts]) -> Vec<Assessment> {
        facts.iter().map(Assessment::of).collect()
    }

    #[test]
    fn auto_is_native_on_nics_and_tc_as_soon_as_one_interface_is_not_a_nic() {
        let nics = assess(&[nic("eth0"), nic("eth1")]);
        let decided = plan(XdpMode::Auto, &nics, false, true).unwrap();
        assert_eq!(
            (decided.hook, decided.fall_back_to_tc),
            (Hook::Native, true)
        );

        let mixed = assess(&[nic("eth0"), veth("veth0", &[])]);
        let decided = plan(XdpMode::Auto, &mixed, false, true).unwrap();
        assert_eq!((decided.hook, decided.fall_back_to_tc), (Hook::Tc, false));
        assert!(
            decided.reasons[0].contains("one hook serves all"),
            "{:?}",
            decided.reasons
        );
        assert!(
            decided.reasons[1].contains("NICs only"),
            "{:?}",
            decided.reasons
        );

        let bridge = LinkFacts {
            name: "br0".into(),
            kind: LinkKind::Virtual {
                kind: "bridge".into(),
            },
            merging: Vec::new(),
        };
        let decided = plan(XdpMode::Auto, &assess(&[bridge]), false, true).unwrap();
        assert_eq!(decided.hook, Hook::Tc);
        assert!(
            decided.reasons[0].contains("partial checksums"),
            "{:?}",
            decided.reasons
        );
    }

    #[test]
    fn native_is_refused_where_a_veth_peer_offloads_checksums_with_cause_and_fix() {
        let links = assess(&[veth("eth0", &["tx-checksum-ip-generic"])]);
        let errors = plan(XdpMode::Native, &links, false, true).unwrap_err();
        assert_eq!(errors.len(), 1);
        let error = &errors[0];
        for part in [
            "interface eth0 (veth, peer peer0 in network namespace sw)",
            "tx-checksum-ip-generic",
            "xdp_mode = \"tc\"",
            "ethtool -K PEER tx off",
            "assume_complete_checksums = true",
        ] {
            assert!(error.contains(part), "{part:?} missing from {error}");
        }
        // Stated by the operator: allowed.
        let decided = plan(XdpMode::Native, &links, true, true).unwrap();
        assert_eq!(decided.hook, Hook::Native);
        assert!(decided.reasons[0].contains("as the config assumes"));
    }

    #[test]
    fn native_is_allowed_on_a_veth_whose_peer_sends_complete_checksums_and_on_nics() {
        let links = assess(&[veth("eth0", &[]), nic("eth1")]);
        let decided = plan(XdpMode::Native, &links, false, true).unwrap();
        assert_eq!(
            (decided.hook, decided.fall_back_to_tc),
            (Hook::Native, false)
        );
    }

    #[test]
    fn an_unreadable_peer_counts_as_partial() {
        let unknown = LinkFacts {
            name: "eth0".into(),
            kind: LinkKind::Veth {
                peer: Peer::Unknown {
                    reason: "no process is in its namespace".into(),
                },
            },
            merging: Vec::new(),
        };
        let errors = plan(XdpMode::Native, &assess(&[unknown]), false, true).unwrap_err();
        assert!(
            errors[0].contains("no process is in its namespace"),
            "{errors:?}"
        );
    }

    #[test]
    fn generic_also_needs_merging_offloads_off_and_every_problem_is_reported() {
        let links = assess(&[nic("eth0"), veth("eth1", &["tx-checksum-ipv4"])]);
        let errors = plan(XdpMode::Generic, &links, false, true).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("interface eth0") && errors[0].contains("ethtool -K eth0 gro off")
        );
        assert!(errors[1].contains("interface eth1") && errors[1].contains("partial checksums"));
        // The assumption covers checksums, not merging, which xlb sees.
        let errors = plan(XdpMode::Generic, &links, true, true).unwrap_err();
        assert_eq!(errors.len(), 1);
        let quiet = LinkFacts {
            merging: Vec::new(),
            ..nic("eth0")
        };
        assert_eq!(
            plan(XdpMode::Generic, &assess(&[quiet]), false, true)
                .unwrap()
                .hook,
            Hook::Generic
        );
    }

    #[test]
    fn tc_is_correct_everywhere() {
        let links = assess(&[veth("eth0", &["tx-checksum-ip-generic"]), nic("eth1")]);
        let decided = plan(XdpMode::Tc, &links, false, true).unwrap();
        assert_eq!(decided.hook, Hook::Tc);
        assert_eq!(decided.reasons.len(), 2);
    }

    #[test]
    fn tc_hands_packets_to_veth_peers_in_other_namespaces_unless_turned_off() {
        let same_namespace = LinkFacts {
            kind: LinkKind::Veth {
                peer: Peer::Found {
                    name: "peer1".into(),
                    namespace: "this namespace".into(),
                    elsewhere: false,
                    tx_checksum: Vec::new(),
                },
            },
            ..veth("veth1", &[])
        };
        let links = assess(&[
            veth("eth0", &["tx-checksum-ip-generic"]),
            same_namespace,
            nic("eth2"),
        ]);
        for mode in [XdpMode::Auto, XdpMode::Tc] {
            let decided = plan(mode, &links, false, true).unwrap();
            assert_eq!(decided.hook, Hook::Tc);
            assert_eq!(decided.peer_handoff, ["eth0"], "{mode}");
            assert!(
                plan(mode, &links, false, false)
                    .unwrap()
                    .peer_handoff
                    .is_empty()
            );
        }
        // At an XDP hook nothing is handed over (the XDP program transmits on its own).
        let veths = assess(&[veth("eth0", &[])]);
        let decided = plan(XdpMode::Native, &veths, false, true).unwrap();
        assert!(decided.peer_handoff.is_empty());
        // Auto on NICs may fall back to tc, where a NIC has no peer.
        let decided = plan(XdpMode::Auto, &assess(&[nic("eth0")]), false, true).unwrap();
        assert!(decided.fall_back_to_tc && decided.peer_handoff.is_empty());
    }
}
