//! What the host says about the interfaces xlb attaches to: what kind of device each is, which
//! receive offloads build super-packets on it, and for a veth, whether its peer hands over
//! packets with partial checksums. Read through rtnetlink and ethtool's netlink interface; the
//! peer of a veth may live in another network namespace, which is found by its namespace id
//! and entered by a short-lived thread. The `hooks` module decides from these facts.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkInfo, LinkMessage, LinkXdp},
    nsid::{NsidAttribute, NsidMessage},
};

/// Features that make a sender hand packets over with a partial TCP/UDP checksum.
const TX_CHECKSUM_FEATURES: [&str; 3] = [
    "tx-checksum-ip-generic",
    "tx-checksum-ipv4",
    "tx-checksum-ipv6",
];
/// Receive features that merge packets into super-packets before XDP's generic hook and tc.
const RX_MERGING_FEATURES: [&str; 3] = ["rx-gro", "large-receive-offload", "rx-gro-hw"];

/// One interface, as the host describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkFacts {
    /// Interface name.
    pub name: String,
    /// What kind of device it is.
    pub kind: LinkKind,
    /// The receive offloads that merge packets (GRO, LRO, hardware GRO) which are on.
    pub merging: Vec<String>,
}

/// The kind of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// A device on a bus (a NIC, virtio-net included), with its driver's name. Its packets
    /// come from a wire (or a hypervisor that completes checksums when XDP is on).
    Physical {
        /// The driver, from sysfs.
        driver: String,
    },
    /// A bond; its packets come from its (physical) ports.
    Bond,
    /// One end of a veth pair; what its packets carry depends on the other end.
    Veth {
        /// The other end.
        peer: Peer,
    },
    /// Another virtual device (bridge, VLAN, macvlan, TUN, ...), with its kind: packets may
    /// come from local senders with partial checksums, and xlb cannot tell.
    Virtual {
        /// The rtnetlink kind ("bridge", "vlan", ...), or "unknown".
        kind: String,
    },
}

/// The other end of a veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Found and read.
    Found {
        /// Its name.
        name: String,
        /// Where it lives: "this namespace", or the namespace's name or a process using it.
        namespace: String,
        /// Whether that is another network namespace than this one.
        elsewhere: bool,
        /// The transmit checksum offloads that are on (non-empty: it sends partial checksums).
        tx_checksum: Vec<String>,
    },
    /// Not readable, with the reason.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// Reads the facts of each named interface.
pub(crate) fn inspect(interfaces: &[String]) -> Result<Vec<LinkFacts>> {
    interfaces.iter().map(|name| inspect_one(name)).collect()
}

fn inspect_one(name: &str) -> Result<LinkFacts> {
    let ifindex = crate::sys::netif::index(name)?;
    let (link, merging) = in_namespace(None, {
        let name = name.to_owned();
        move || async move {
            let link = get_link(ifindex).await?;
            let merging = active_features(&name, &RX_MERGING_FEATURES).await?;
            Ok((link, merging))
        }
    })
    .with_context(|| format!("reading interface {name}"))?;
    let kind = match link.kind.as_deref() {
        Some("veth") => LinkKind::Veth {
            peer: match link.peer_index {
                Some(peer) => read_peer(peer, link.peer_netns_id),
                None => Peer::Unknown {
                    reason: "the kernel does not name its peer".into(),
                },
            },
        },
        Some("bond") => LinkKind::Bond,
        Some(kind) => LinkKind::Virtual { kind: kind.into() },
        None => match driver(name) {
            Some(driver) => LinkKind::Physical { driver },
            None => LinkKind::Virtual {
                kind: "unknown".into(),
            },
        },
    };
    Ok(LinkFacts {
        name: name.into(),
        kind,
        merging,
    })
}

/// The driver of a device on a bus, from sysfs; `None` for a virtual device.
fn driver(name: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{name}/device/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// The id of the XDP program attached to interface `ifindex` (in any mode), if any.
pub(crate) fn xdp_program(ifindex: u32) -> Result<Option<u32>> {
    Ok(in_namespace(None, move || async move { get_link(ifindex).await })?.xdp_program)
}

/// What rtnetlink says of a link.
struct Link {
    name: String,
    kind: Option<String>,
    /// `IFLA_LINK`: for a veth, its peer's index (in the peer's namespace).
    peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer's namespace, as an id of this namespace; `None` if the
    /// peer is in this namespace.
    peer_netns_id: Option<i32>,
    /// The id of the XDP program attached to it, if any.
    xdp_program: Option<u32>,
}

fn read_peer(peer_index: u32, netns_id: Option<i32>) -> Peer {
    let namespace = match netns_id {
        None => Ok(None),
        Some(id) => find_namespace(id).map(Some),
    };
    let elsewhere = netns_id.is_some();
    let (fd, namespace) = match namespace {
        Ok(None) => (None, "this namespace".to_owned()),
        Ok(Some((fd, label))) => (Some(fd), format!("network namespace {label}")),
        Err(error) => {
            return Peer::Unknown {
                reason: format!(
                    "its network namespace (id {}) was not found: {error:#}",
                    netns_id.unwrap_or(-1)
                ),
            };
        }
    };
    let read = in_namespace(fd, move || async move {
        let link = get_link(peer_index).await?;
        let tx_checksum = active_features(&link.name, &TX_CHECKSUM_FEATURES).await?;
        Ok((link.name, tx_checksum))
    });
    match read {
        Ok((name, tx_checksum)) => Peer::Found {
            name,
            namespace,
            elsewhere,
            tx_checksum,
        },
        Err(error) => Peer::Unknown {
            reason: format!("reading it in {namespace}: {error:#}"),
        },
    }
}

/// Runs `work` on a thread of its own, inside the network namespace `netns` (or this one),
/// with a current-thread runtime: netlink sockets belong to the namespace they are made in,
/// and entering a namespace changes only the calling thread.
pub(super) fn in_namespace<T, W, Fut>(netns: Option<OwnedFd>, work: W) -> Result<T>
where
    T: Send + 'static,
    W: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    std::thread::spawn(move || {
        if let Some(fd) = netns {
            // SAFETY: a valid namespace descriptor; only this thread changes namespace.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "entering the network namespace: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .join()
    .map_err(|_| anyhow!("the netlink thread panicked"))?
}

async fn get_link(ifindex: u32) -> Result<Link> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let message: LinkMessage = handle
        .link()
        .get()
        .match_index(ifindex)
        .execute()
        .try_next()
        .await?
        .ok_or_else(|| anyhow!("no link with index {ifindex}"))?;
    let mut link = Link {
        name: String::new(),
        kind: None,
        peer_index: None,
        peer_netns_id: None,
        xdp_program: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Link(index) => link.peer_index = Some(index),
            LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(id),
            LinkAttribute::Xdp(xdp) => {
                link.xdp_program = xdp.into_iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if id != 0 => Some(id),
                    _ => None,
                });
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// Which of `wanted` (ethtool feature names) are active on interface `name`.
async fn active_features(name: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let (connection, mut handle, _) = ethtool::new_connection()?;
    tokio::spawn(connection);
    let mut replies = handle.feature().get(Some(name)).execute().await?;
    let mut active = Vec::new();
    while let Some(reply) = replies.try_next().await? {
        for attribute in reply.payload.nlas {
            if let ethtool::EthtoolAttr::Feature(ethtool::EthtoolFeatureAttr::Active(bits)) =
                attribute
            {
                active.extend(
                    bits.into_iter()
                        .filter(|bit| bit.value && wanted.contains(&bit.name.as_str()))
                        .map(|bit| bit.name),
                );
            }
        }
    }
    Ok(active)
}

/// The network namespace that this namespace knows by `id`: a descriptor and a label (its
/// name under /run/netns, or a process in it). Looks at the named namespaces first, then at
/// every process's.
fn find_namespace(id: i32) -> Result<(OwnedFd, String)> {
    let mut candidates: Vec<(std::path::PathBuf, String)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            candidates.push((entry.path(), name));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if pid.bytes().all(|b| b.is_ascii_digit()) {
                candidates.push((entry.path().join("ns/net"), format!("of process {pid}")));
            }
        }
    }
    let ids = in_namespace(None, move || async move {
        let (connection, mut handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let mut seen = std::collections::HashSet::new();
        for (path, label) in candidates {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if !seen.insert(std::os::unix::fs::MetadataExt::ino(&meta)) {
                continue;
            }
            if nsid_of(&mut handle, &file).await? == Some(id) {
                return Ok(Some((path, label)));
            }
        }
        Ok(None)
    })?;
    let Some((path, label)) = ids else {
        bail!("no named namespace and no process is in it");
    };
    let file =
        File::open(Path::new(&path)).with_context(|| format!("opening {}", path.display()))?;
    Ok((file.into(), label))
}

/// The id this namespace gives the namespace `file` refers to (`RTM_GETNSID`).
async fn nsid_of(handle: &mut rtnetlink::Handle, file: &File) -> Result<Option<i32>> {
    let mut message = NsidMessage::default();
    message
        .attributes
        .push(NsidAttribute::Fd(file.as_raw_fd() as u32));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(message));
    request.header.flags = NLM_F_REQUEST;
    let mut replies = handle.request(request)?;
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(answer)) => {
                for attribute in answer.attributes {
                    if let NsidAttribute::Id(id) = attribute {
                        return Ok((id >= 0).then_some(id));
                    }
                }
            }
            NetlinkPayload::Error(error) => bail!("RTM_GETNSID: {error}"),
            _ => {}
        }
    }
    Ok(None)
}
