//! Attaching the loaded programs to interfaces at the hook `hooks` chose, through links that
//! are pinned so they outlive the daemon, and taking over the links an earlier daemon pinned.
//!
//! Pins are named by hook: `xdp-native-IF`, `xdp-generic-IF`, `tc-IF` (and `link-IF`, the XDP
//! links of xlb before the tc hook existed, whose mode is not recorded). A new daemon takes
//! over a pin of the hook it plans (replacing the program in the link, atomically, so
//! forwarding never stops); if the interface has a pin of another hook, it attaches at the
//! planned hook first and then removes the old link, so the interface is never without a
//! program (XDP runs before tc, so while both are attached the XDP program decides).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
    util::KernelVersion,
};
use lb_common::consts::program_names;
use tracing::{info, warn};

pub(crate) mod hooks;
pub(crate) mod links;
pub(crate) mod onlink;
pub mod preflight;

use self::hooks::Hook;
use crate::sys::netif;

/// An interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// Interface index.
    pub ifindex: u32,
    /// The hook the program runs at there; `None` for an adopted XDP link pinned by an older
    /// xlb, whose mode was not recorded.
    pub hook: Option<Hook>,
    /// Where the link is pinned, if it is.
    pub pin: Option<PathBuf>,
    link: LinkId,
}

#[derive(Debug)]
enum LinkId {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
    /// A tc filter attached through netlink on a kernel without tcx (before 6.6).
    TcNetlink(SchedClassifierLinkId),
}

/// The links of one daemon.
#[derive(Debug, Default)]
pub(crate) struct Attachments {
    list: Vec<Attachment>,
    pin_dir: Option<PathBuf>,
}

/// The pin name of a link at `hook` on `interface`.
fn pin_name(hook: Hook, interface: &str) -> String {
    match hook {
        Hook::Native => format!("xdp-native-{interface}"),
        Hook::Generic => format!("xdp-generic-{interface}"),
        Hook::Tc => format!("tc-{interface}"),
    }
}

/// The pin name older versions gave their (XDP) links.
fn legacy_pin_name(interface: &str) -> String {
    format!("link-{interface}")
}

fn xdp(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(program_names::BALANCER)
        .and_then(|program| program.try_into().ok())
        .expect("the XDP program was checked at load")
}

fn tc(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(program_names::BALANCER_TC)
        .and_then(|program| program.try_into().ok())
        .expect("the tc program was checked at load")
}

impl Attachments {
    /// No attachments; links are pinned in `pin_dir` if there is one.
    pub(crate) fn new(pin_dir: Option<PathBuf>) -> Self {
        Self {
            list: Vec::new(),
            pin_dir,
        }
    }

    /// The interfaces the program is attached to.
    pub(crate) fn list(&self) -> &[Attachment] {
        &self.list
    }

    /// Attaches to every interface at `hook`, or to none: if one attach fails, the ones made
    /// by this call are undone and the error names the interface.
    pub(crate) fn attach_all(
        &mut self,
        ebpf: &mut Ebpf,
        interfaces: &[String],
        hook: Hook,
    ) -> Result<()> {
        let before = self.list.len();
        for interface in interfaces {
            if let Err(error) = self.attach(ebpf, interface, hook) {
                for attachment in self.list.split_off(before) {
                    release(ebpf, attachment);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Attaches to `interface` at `hook`, taking over a pinned link of that hook, and
    /// removing a pinned link of another hook (see the module documentation).
    pub(crate) fn attach(&mut self, ebpf: &mut Ebpf, interface: &str, hook: Hook) -> Result<()> {
        let ifindex = netif::index(interface)?;
        let pin_of = |name: String| self.pin_dir.as_ref().map(|dir| dir.join(name));
        let pin = pin_of(pin_name(hook, interface));
        // What an earlier daemon left: a link to take over, and links of other hooks.
        let mut adoptable = pin.clone().filter(|p| p.exists()).map(|p| (p, Some(hook)));
        let legacy = pin_of(legacy_pin_name(interface)).filter(|p| p.exists());
        if adoptable.is_none() && hook != Hook::Tc {
            // An older xlb's XDP link: keep its mode, replace its program.
            adoptable = legacy.clone().map(|p| (p, None));
        }
        let stale: Vec<(PathBuf, bool)> = [Hook::Native, Hook::Generic, Hook::Tc]
            .into_iter()
            .filter(|other| *other != hook)
            .filter_map(|other| pin_of(pin_name(other, interface)).map(|p| (p, other != Hook::Tc)))
            .chain(legacy.map(|p| (p, true)))
            .filter(|(p, _)| p.exists() && adoptable.as_ref().is_none_or(|(a, _)| a != p))
            .collect();
        // Native and generic XDP cannot be attached at once: an XDP link of the other mode
        // goes first (the interface is without xlb until the new link is in place).
        let (xdp_stale, tc_stale): (Vec<_>, Vec<_>) =
            stale.into_iter().partition(|(_, is_xdp)| *is_xdp);
        if hook != Hook::Tc {
            remove_pinned(interface, xdp_stale.iter().map(|(p, _)| p));
        }
        let attached = match &adoptable {
            Some((old, old_hook)) => adopt(ebpf, old, old_hook.unwrap_or(Hook::Native))
                .map(|link| (link, *old_hook, Some(old.clone()), true)),
            None => refuse_foreign(interface, ifindex, !xdp_stale.is_empty()).and_then(|()| {
                attach_new(ebpf, ifindex, interface, hook, pin.as_deref())
                    .map(|(link, pinned)| (link, Some(hook), pinned, false))
            }),
        };
        let (link, hook_now, pin, adopted) =
            attached.with_context(|| format!("attaching to interface {interface} ({hook})"))?;
        if adopted {
            let hook_now = hook_now.map_or("xdp (adopted)".to_owned(), |h| h.to_string());
            info!(interface, ifindex, hook = %hook_now, "took over the pinned link (program replaced)");
        } else {
            info!(interface, ifindex, %hook, "attached");
        }
        remove_pinned(interface, tc_stale.iter().map(|(p, _)| p));
        if hook == Hook::Tc {
            remove_pinned(interface, xdp_stale.iter().map(|(p, _)| p));
        }
        self.list.push(Attachment {
            interface: interface.to_owned(),
            ifindex,
            hook: hook_now,
            pin,
            link,
        });
        Ok(())
    }

    /// Detaches from `interface` and removes its pinned link.
    pub(crate) fn detach(&mut self, ebpf: &mut Ebpf, interface: &str) -> Option<u32> {
        let i = self.list.iter().position(|a| a.interface == interface)?;
        let attachment = self.list.remove(i);
        let ifindex = attachment.ifindex;
        release(ebpf, attachment);
        Some(ifindex)
    }

    /// Detaches from every interface and removes the pinned links; returns their indexes.
    pub(crate) fn detach_all(&mut self, ebpf: &mut Ebpf) -> Vec<u32> {
        std::mem::take(&mut self.list)
            .into_iter()
            .map(|attachment| {
                let ifindex = attachment.ifindex;
                release(ebpf, attachment);
                ifindex
            })
            .collect()
    }
}

/// Refuses to attach to an interface where an xlb program is attached that this daemon's pins
/// do not hold: another daemon (with other pins) runs there. The kernel refuses a second XDP
/// program by itself, but tcx takes several programs per interface, and an XDP program sees
/// every packet before tc. `own_xdp`: this daemon's pins hold an XDP link there (from a
/// previous hook, about to be removed).
fn refuse_foreign(interface: &str, ifindex: u32, own_xdp: bool) -> Result<()> {
    let name_of = |id: u32| {
        aya::programs::loaded_programs()
            .flatten()
            .find(|program| program.id() == id)
            .and_then(|program| program.name_as_str().map(str::to_owned))
    };
    let mut foreign = Vec::new();
    if let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress) {
        for program in programs {
            if program.name_as_str() == Some(program_names::BALANCER_TC) {
                foreign.push(format!("tc program {}", program.id()));
            }
        }
    }
    if !own_xdp
        && let Some(id) = links::xdp_program(ifindex)?
        && name_of(id).as_deref() == Some(program_names::BALANCER)
    {
        foreign.push(format!("XDP program {id}"));
    }
    if !foreign.is_empty() {
        bail!(
            "another xlb is attached to {interface} ({}): stop it first (its pins are not in this \
             daemon's pin_path)",
            foreign.join(", ")
        );
    }
    Ok(())
}

/// Removes links pinned by an earlier daemon at another hook.
fn remove_pinned<'a>(interface: &str, pins: impl Iterator<Item = &'a PathBuf>) {
    for pin in pins {
        // Unpinning and dropping the last descriptor destroys the link, which detaches it.
        match PinnedLink::from_pin(pin)
            .map_err(anyhow::Error::from)
            .and_then(|p| Ok(p.unpin()?))
        {
            Ok(link) => {
                drop(link);
                info!(interface, pin = %pin.display(), "removed the link of the previous hook");
            }
            Err(error) => warn!(
                interface,
                pin = %pin.display(),
                "could not remove the link of the previous hook: {error:#}"
            ),
        }
    }
}

/// Takes over the link pinned at `pin` (made at `hook`) by swapping our program in.
fn adopt(ebpf: &mut Ebpf, pin: &Path, hook: Hook) -> Result<LinkId> {
    let pinned = PinnedLink::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let link = FdLink::from(pinned);
    Ok(match hook {
        Hook::Native | Hook::Generic => {
            LinkId::Xdp(xdp(ebpf).attach_to_link(XdpLink::try_from(link)?)?)
        }
        Hook::Tc => LinkId::Tc(tc(ebpf).attach_to_link(SchedClassifierLink::try_from(link)?)?),
    })
}

/// Makes a new link at `hook` and pins it (if `pin`); returns it and where it is pinned.
fn attach_new(
    ebpf: &mut Ebpf,
    ifindex: u32,
    interface: &str,
    hook: Hook,
    pin: Option<&Path>,
) -> Result<(LinkId, Option<PathBuf>)> {
    match hook {
        Hook::Native | Hook::Generic => {
            let mode = if hook == Hook::Native {
                AyaXdpMode::Driver
            } else {
                AyaXdpMode::Skb
            };
            let program = xdp(ebpf);
            let link = program.attach_to_if_index(ifindex, mode)?;
            let Some(pin) = pin else {
                return Ok((LinkId::Xdp(link), None));
            };
            // Pin the link so it outlives the process, then hand it back to the program.
            let pinned = FdLink::try_from(program.take_link(link)?)?
                .pin(pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
            let link = program.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?;
            Ok((LinkId::Xdp(link), Some(pin.to_owned())))
        }
        Hook::Tc => {
            let program = tc(ebpf);
            let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
            if !tcx {
                // No tcx: a clsact filter through netlink, which cannot be pinned; a restart
                // re-attaches it (the maps and flows survive in their pins).
                let _ = aya::programs::tc::qdisc_add_clsact(interface);
                let link = program.attach(interface, TcAttachType::Ingress)?;
                return Ok((LinkId::TcNetlink(link), None));
            }
            let link = program.attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?;
            let Some(pin) = pin else {
                return Ok((LinkId::Tc(link), None));
            };
            let pinned = FdLink::try_from(program.take_link(link)?)?
                .pin(pin)
                .with_context(|| format!("pinning {}", pin.display()))?;
            let link =
                program.attach_to_link(SchedClassifierLink::try_from(FdLink::from(pinned))?)?;
            Ok((LinkId::Tc(link), Some(pin.to_owned())))
        }
    }
}

/// Detaches one attachment and removes its pin.
fn release(ebpf: &mut Ebpf, attachment: Attachment) {
    if let Some(pin) = &attachment.pin {
        let _ = std::fs::remove_file(pin);
    }
    let result = match attachment.link {
        LinkId::Xdp(link) => xdp(ebpf).detach(link).map_err(|e| anyhow!(e)),
        LinkId::Tc(link) | LinkId::TcNetlink(link) => tc(ebpf).detach(link).map_err(|e| anyhow!(e)),
    };
    match result {
        Ok(()) => info!(interface = attachment.interface, "detached"),
        Err(error) => warn!(interface = attachment.interface, "detach failed: {error}"),
    }
}
