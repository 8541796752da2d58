//! `xlb simulate`: which backend would a new flow get now? A synthetic first packet runs
//! through the loaded program (BPF_PROG_TEST_RUN, as Katran's simulator does) and the answer is
//! read from the rewritten packet. The flow the packet created is then deleted, so the
//! simulation leaves no flow behind; it does take a turn of the round robin, as a real flow
//! would.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{FlowKey, csum};

use crate::{
    api::SimulationReport,
    config::Protocol,
    dataplane::Dataplane,
    wire::{addr_field, family_of, port_field},
};

const XDP_VERDICTS: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Runs a new flow from `client` to the service at `listen` through the program, as if it
/// arrived on interface `ifindex`.
pub fn simulate(
    dataplane: &mut Dataplane,
    service: &str,
    listen: SocketAddr,
    protocol: Protocol,
    client: SocketAddr,
    ifindex: u32,
) -> Result<SimulationReport> {
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
    let frame = first_packet(client, listen, protocol);
    let mut out = vec![0u8; frame.len() + 256];
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect();
    let result = dataplane.program().test_run(TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    let verdict = XDP_VERDICTS
        .get(result.return_value as usize)
        .copied()
        .unwrap_or("unknown");
    // Where the rewritten packet goes: its destination, unless the program left it alone.
    let backend = destination(&out, listen.is_ipv4()).filter(|d| *d != listen);
    if !existing_flow && let Some(backend) = backend {
        dataplane.maps.flows.remove(&key, backend);
    }
    Ok(SimulationReport {
        service: service.to_owned(),
        client,
        verdict: verdict.to_owned(),
        backend,
        existing_flow,
        home_pool: None,
        backend_pool: None,
    })
}

/// The destination address and port of an Ethernet/IP/TCP|UDP frame without options.
fn destination(frame: &[u8], ipv4: bool) -> Option<SocketAddr> {
    if ipv4 {
        let ip: [u8; 4] = frame.get(30..34)?.try_into().ok()?;
        let port = frame.get(36..38)?;
        Some(SocketAddr::new(
            ip.into(),
            u16::from_be_bytes([port[0], port[1]]),
        ))
    } else {
        let ip: [u8; 16] = frame.get(38..54)?.try_into().ok()?;
        let port = frame.get(56..58)?;
        Some(SocketAddr::new(
            ip.into(),
            u16::from_be_bytes([port[0], port[1]]),
        ))
    }
}

/// The first packet of a flow from `src` to `dst`: a TCP SYN or a small UDP datagram, over
/// IPv4 or IPv6, checksums computed.
fn first_packet(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    let check_at = match protocol {
        Protocol::Tcp => {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // sequence and acknowledgement
            l4.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // SYN, window
            16
        }
        Protocol::Udp => {
            l4.extend_from_slice(&[0, 12, 0, 0]); // length 12, checksum
            l4.extend_from_slice(b"xlb?");
            6
        }
    };
    let ip_bytes = |address: SocketAddr| -> Vec<u8> {
        match address.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        }
    };
    let (src_ip, dst_ip) = (ip_bytes(src), ip_bytes(dst));
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src_ip);
    pseudo.extend_from_slice(&dst_ip);
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, protocol.number()]);
    let check = csum::checksum(&l4, csum::sum(&pseudo, 0));
    l4[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());

    let mut frame = vec![0u8; 12];
    if src.is_ipv4() {
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol.number(), 0, 0]);
        ip.extend_from_slice(&src_ip);
        ip.extend_from_slice(&dst_ip);
        let check = csum::checksum(&ip, 0);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
    } else {
        frame.extend_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[protocol.number(), 64]);
        frame.extend_from_slice(&src_ip);
        frame.extend_from_slice(&dst_ip);
    }
    frame.extend_from_slice(&l4);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_packets_have_valid_checksums() {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let client: SocketAddr = "198.18.0.2:40000".parse().unwrap();
            let vip: SocketAddr = "198.18.100.1:80".parse().unwrap();
            let frame = first_packet(client, vip, protocol);
            assert_eq!(csum::checksum(&frame[14..34], 0), 0, "IPv4 header");
            let mut pseudo = frame[26..34].to_vec();
            pseudo.extend_from_slice(&[0, protocol.number()]);
            pseudo.extend_from_slice(&((frame.len() - 34) as u16).to_be_bytes());
            assert_eq!(
                csum::checksum(&frame[34..], csum::sum(&pseudo, 0)),
                0,
                "{protocol}"
            );
            assert_eq!(frame[23], protocol.number());
            assert_eq!(destination(&frame, true), Some(vip));

            let client: SocketAddr = "[fd00::2]:40000".parse().unwrap();
            let vip: SocketAddr = "[fd00:100::1]:80".parse().unwrap();
            let frame = first_packet(client, vip, protocol);
            assert_eq!(&frame[12..14], &[0x86, 0xdd]);
            let l4 = &frame[54..];
            let mut pseudo = frame[22..54].to_vec();
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol.number()]);
            assert_eq!(
                csum::checksum(l4, csum::sum(&pseudo, 0)),
                0,
                "{protocol} v6"
            );
            assert_eq!(frame[20], protocol.number());
            assert_eq!(destination(&frame, false), Some(vip));
        }
    }
}
