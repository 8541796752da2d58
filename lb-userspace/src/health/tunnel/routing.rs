//! The policy routing that sends the check sockets' packets to the check device: sockets
//! marked [`MARK`] look up table [`TABLE`], whose one route (per family) leads into the device.
//! Other packets are routed as before.

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    route::RouteScope,
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// The mark (`SO_MARK`) of the check sockets whose packets go inside the tunnel: "xlb" and 1.
pub(crate) const MARK: u32 = 0x786c_6201;
/// The routing table of the marked sockets.
pub(crate) const TABLE: u32 = 0x0078_6c62;
/// The rules' priority: before the main table's (32766), after the local table's (0).
const PRIORITY: u32 = 1000;

/// Routes the marked sockets' packets of both families into the device `ifindex`. Rules that
/// an xlb killed before it could remove them are replaced.
pub(super) async fn install(netlink: &Handle, ifindex: u32) -> Result<()> {
    remove(netlink).await?;
    let v4 = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .output_interface(ifindex)
        .table_id(TABLE)
        .scope(RouteScope::Link)
        .build();
    let v6 = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
        .output_interface(ifindex)
        .table_id(TABLE)
        .build();
    for route in [v4, v6] {
        netlink
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding the check device's route to table {TABLE}"))?;
    }
    let rule = || {
        netlink
            .rule()
            .add()
            .fw_mark(MARK)
            .table_id(TABLE)
            .priority(PRIORITY)
            .action(RuleAction::ToTable)
    };
    rule()
        .v4()
        .execute()
        .await
        .context("adding the check sockets' IPv4 rule")?;
    rule()
        .v6()
        .execute()
        .await
        .context("adding the check sockets' IPv6 rule")?;
    Ok(())
}

/// Removes the marked sockets' rules of both families (the routes go with the device).
pub(super) async fn remove(netlink: &Handle) -> Result<()> {
    for version in [IpVersion::V4, IpVersion::V6] {
        let ours: Vec<RuleMessage> = netlink
            .rule()
            .get(version)
            .execute()
            .try_filter(|rule| std::future::ready(is_ours(rule)))
            .try_collect()
            .await
            .context("listing the routing rules")?;
        for rule in ours {
            netlink
                .rule()
                .del(rule)
                .execute()
                .await
                .context("removing a check sockets' rule")?;
        }
    }
    Ok(())
}

/// Whether `rule` is one of the check sockets' rules.
fn is_ours(rule: &RuleMessage) -> bool {
    let attributes = &rule.attributes;
    attributes.contains(&RuleAttribute::FwMark(MARK))
        && attributes.contains(&RuleAttribute::Table(TABLE))
}
