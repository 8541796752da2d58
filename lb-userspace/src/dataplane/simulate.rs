//! `xlb simulate`: which backend would a new flow get now? A synthetic first packet runs
//! through the loaded program (BPF_PROG_TEST_RUN, as Katran's simulator does) and the answer is
//! read from the flow entry it made (so it holds for DSR too, whose packets keep the VIP). That
//! flow is then deleted, the turn of the round robin it took is given back, and the client's
//! source persistence is put back as it was, so the simulation changes nothing it observes:
//! asked twice, it answers the same.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    FlowKey,
    consts::{tcp_flags, xdp_action},
    frame::{Frame, Transport},
    passive::PersistKey,
    tables::table_owner,
};

use super::Dataplane;
use crate::{
    config::Protocol,
    wire::{addr_field, backend_address, family_of, port_field},
};

/// What the program did with a simulated new flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Simulation {
    /// The program's verdict, in words ("redirect", "drop", ...).
    pub verdict: String,
    /// The backend the packet was sent to, if any.
    pub backend: Option<SocketAddr>,
    /// Whether the client already had a flow (which the packet followed).
    pub existing_flow: bool,
}

/// Runs a new flow from `client` to the service at `listen` (whose round-robin tables are
/// `tables`) through the program, as if it arrived on interface `ifindex`.
pub(crate) fn simulate(
    dataplane: &mut Dataplane,
    listen: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
    ifindex: u32,
    tables: &[u32],
) -> Result<Simulation> {
    if client.is_ipv4() != listen.is_ipv4() {
        bail!("client {client} and service {listen} are not of the same address family");
    }
    let key = FlowKey {
        src_addr: addr_field(client.ip()),
        dst_addr: addr_field(listen.ip()),
        src_port: port_field(client.port()),
        dst_port: port_field(listen.port()),
        proto: protocol.number(),
        family: family_of(client.ip()),
        _pad: [0; 2],
    };
    let existing_flow = dataplane.maps.flow(&key).is_some();
    // Addressed to the interface it is said to arrive on: the program passes a frame for
    // another host's MAC untouched.
    let mut packet = first_packet(client, listen, protocol);
    if let Some(mac) = dataplane.maps.interface_mac(ifindex) {
        packet.eth_dst = mac;
    }
    let frame = packet.build();
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect();
    let persist_key = tables.first().map(|&index| PersistKey {
        client: addr_field(client.ip()),
        service_id: table_owner(index).0,
    });
    let persisted = persist_key.and_then(|key| dataplane.maps.persistence.get(&key));
    let cursors: Vec<(u32, u64)> = tables
        .iter()
        .map(|&index| Ok((index, dataplane.maps.rr_cursor(index)?)))
        .collect::<Result<_>>()?;
    let result = dataplane.program().test_run(TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    // "redirect", "drop", ...
    let verdict = xdp_action::name(result.return_value)
        .trim_start_matches("XDP_")
        .to_lowercase();
    // The backend is the flow entry's (whatever the packet became: with DSR it keeps the
    // VIP); the entry the simulated packet made is removed.
    let backend = dataplane
        .maps
        .flow(&key)
        .and_then(|entry| dataplane.maps.backend(entry.backend_id))
        .map(|entry| backend_address(&entry));
    if !existing_flow {
        dataplane.maps.flows.remove(&key);
        give_back_turn(dataplane, &cursors)?;
        if let Some(persist_key) = &persist_key {
            dataplane
                .maps
                .persistence
                .put_back(persist_key, persisted)?;
        }
    }
    Ok(Simulation {
        verdict,
        backend,
        existing_flow,
    })
}

/// Gives back the turn the simulated flow took: the cursor of the table that placed it (the
/// one that moved since `before`) goes back by one. A real new flow placed by that table
/// meanwhile keeps its backend; the next one then gets the backend it had.
fn give_back_turn(dataplane: &mut Dataplane, before: &[(u32, u64)]) -> Result<()> {
    for &(index, cursor) in before {
        let now = dataplane.maps.rr_cursor(index)?;
        if now > cursor {
            dataplane.maps.set_rr_cursor(index, now - 1)?;
            break;
        }
    }
    Ok(())
}

/// The first packet of a flow from `src` to `dst`: a TCP SYN or a small UDP datagram.
fn first_packet(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> Frame {
    let transport = match protocol {
        Protocol::Tcp => Transport::Tcp {
            flags: tcp_flags::SYN,
            seq: 1,
        },
        Protocol::Udp => Transport::Udp {
            zero_checksum: false,
        },
    };
    Frame::between(src, dst, transport).with(|f| f.payload = b"xlb?".to_vec())
}

#[cfg(test)]
mod tests {
    use lb_common::frame::{locate, verify_checksums};

    use super::*;

    /// The destination address and port of an Ethernet / IP / TCP or UDP frame.
    fn destination(frame: &[u8]) -> Option<SocketAddr> {
        let parsed = locate(frame)?;
        let port = frame.get(parsed.l4 + 2..parsed.l4 + 4)?;
        let ip: std::net::IpAddr = match parsed.dst.len() {
            4 => <[u8; 4]>::try_from(parsed.dst.as_slice()).ok()?.into(),
            _ => <[u8; 16]>::try_from(parsed.dst.as_slice()).ok()?.into(),
        };
        Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
    }

    #[test]
    fn first_packets_are_valid_and_their_destination_is_read_back() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            for (client, vip) in [
                ("198.18.0.2:40000", "198.18.100.1:80"),
                ("[fd00::2]:40000", "[fd00:100::1]:80"),
            ] {
                let (client, vip) = (client.parse().unwrap(), vip.parse().unwrap());
                let frame = first_packet(client, vip, protocol).build();
                verify_checksums(&frame).unwrap();
                assert_eq!(locate(&frame).unwrap().proto, protocol.number());
                assert_eq!(destination(&frame), Some(vip));
            }
        }
    }
}
