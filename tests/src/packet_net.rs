//! The network of the packet tests and benchmarks, which run the balancer's programs (XDP and
//! tc) through BPF_PROG_TEST_RUN: one namespace with two veth interfaces and permanent neighbour entries,
//! so that the program's FIB lookups have fixed answers.
//!
//! ```text
//!   c0  198.18.0.1/24  fd00::1/64    02:00:00:00:00:01
//!         client 198.18.0.2 and fd00::2 (…:00:02), local backend 198.18.0.21 (…:00:21)
//!   s0  198.18.1.1/24  fd00:1::1/64  02:00:00:00:01:01
//!         backends 198.18.1.11-13 and fd00:1::11-13 (02:00:00:00:01:11-13)
//!         198.18.1.99 has no neighbour entry
//!         198.18.100.0/24 and the rest of 198.18.0.0/15, and fd00::/8, routed via
//!         198.18.1.2 / fd00:1::2 (…:01:02)
//! ```

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{
    TestRunResult,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};

use lb_common::consts::xdp_action;

use crate::netns::Netns;

// The verdicts BPF_PROG_TEST_RUN returns: XDP's `enum xdp_action` and tc's `TC_ACT_*`.

/// XDP: the program failed (or chose to); the frame is dropped and a trace event raised.
pub const XDP_ABORTED: u32 = xdp_action::ABORTED;
/// XDP: the frame is dropped.
pub const XDP_DROP: u32 = xdp_action::DROP;
/// XDP: the frame goes on to the kernel's stack.
pub const XDP_PASS: u32 = xdp_action::PASS;
/// XDP: the frame goes back out of the interface it came in on.
pub const XDP_TX: u32 = xdp_action::TX;
/// XDP: the frame goes out of another interface (`bpf_redirect`).
pub const XDP_REDIRECT: u32 = xdp_action::REDIRECT;
/// tc: the packet goes on as if no program ran.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// tc: the packet is dropped.
pub const TC_ACT_SHOT: u32 = 2;
/// tc: the packet goes out of another interface (`bpf_redirect`).
pub const TC_ACT_REDIRECT: u32 = 7;

/// An XDP verdict's name as `enum xdp_action` spells it ("XDP_REDIRECT"), or "unknown
/// verdict", for messages that say what the program did.
pub fn verdict_name(verdict: u32) -> &'static str {
    xdp_action::name(verdict)
}

/// The MAC address of `s0`, the servers' side (`c0`'s is the frame builder's `LB_MAC`).
pub const S0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];

/// Builds the namespace.
pub fn build() -> Result<Netns> {
    let ns = Netns::new("pkt")?;
    let mac = |mac: [u8; 6]| mac.map(|byte| format!("{byte:02x}")).join(":");
    let c0 = format!(
        "link add name c0 address {} type veth peer name c1",
        mac(lb_common::frame::LB_MAC)
    );
    let s0 = format!(
        "link add name s0 address {} type veth peer name s1",
        mac(S0_MAC)
    );
    for command in [
        c0.as_str(),
        s0.as_str(),
        "link set dev c0 up",
        "link set dev c1 up",
        "link set dev s0 up",
        "link set dev s1 up",
        "addr add 198.18.0.1/24 dev c0",
        "addr add 198.18.1.1/24 dev s0",
        "neigh add 198.18.0.2 lladdr 02:00:00:00:00:02 dev c0 nud permanent",
        "neigh add 198.18.0.21 lladdr 02:00:00:00:00:21 dev c0 nud permanent",
        "neigh add 198.18.1.11 lladdr 02:00:00:00:01:11 dev s0 nud permanent",
        "neigh add 198.18.1.12 lladdr 02:00:00:00:01:12 dev s0 nud permanent",
        "neigh add 198.18.1.13 lladdr 02:00:00:00:01:13 dev s0 nud permanent",
        "neigh add 198.18.1.2 lladdr 02:00:00:00:01:02 dev s0 nud permanent",
        "route add 198.18.100.0/24 via 198.18.1.2 dev s0",
        "route add 198.18.0.0/15 via 198.18.1.2 dev s0",
        "-6 addr add fd00::1/64 dev c0 nodad",
        "-6 addr add fd00:1::1/64 dev s0 nodad",
        "-6 neigh add fd00::2 lladdr 02:00:00:00:00:02 dev c0 nud permanent",
        "-6 neigh add fd00:1::11 lladdr 02:00:00:00:01:11 dev s0 nud permanent",
        "-6 neigh add fd00:1::12 lladdr 02:00:00:00:01:12 dev s0 nud permanent",
        "-6 neigh add fd00:1::13 lladdr 02:00:00:00:01:13 dev s0 nud permanent",
        "-6 neigh add fd00:1::2 lladdr 02:00:00:00:01:02 dev s0 nud permanent",
        "-6 route add fd00::/8 via fd00:1::2 dev s0",
    ] {
        ns.ip(command).with_context(|| format!("ip {command}"))?;
    }
    ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    Ok(ns)
}

/// Makes the namespace fit benchmarks that repeat one frame through BPF_PROG_TEST_RUN, which
/// does not restore the frame between repetitions: the VIPs' next hop (out of s0) gets c0's
/// address and the client (out of c0) gets s0's, so that a frame forwarded one way is, at the
/// next repetition, still addressed to the interface it arrives on (the program balances only
/// frames addressed to it).
pub fn repeatable(ns: &Netns) -> Result<()> {
    let mac = |mac: [u8; 6]| mac.map(|byte| format!("{byte:02x}")).join(":");
    let (c0, s0) = (mac(lb_common::frame::LB_MAC), mac(S0_MAC));
    for command in [
        format!("neigh replace 198.18.1.2 lladdr {c0} dev s0 nud permanent"),
        format!("neigh replace 198.18.0.2 lladdr {s0} dev c0 nud permanent"),
        format!("-6 neigh replace fd00:1::2 lladdr {c0} dev s0 nud permanent"),
        format!("-6 neigh replace fd00::2 lladdr {s0} dev c0 nud permanent"),
    ] {
        ns.ip(&command).with_context(|| format!("ip {command}"))?;
    }
    Ok(())
}

/// What one BPF_PROG_TEST_RUN returned.
pub struct RunResult {
    /// The program's verdict.
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Average time of one run, measured by the kernel.
    pub duration: Duration,
}

/// Runs `program` `repeat` times on `frame` as if it arrived on interface `ifindex`. The
/// kernel does not restore the frame between repetitions: a program that rewrites it sees its
/// own output the next time.
pub fn run(program: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<RunResult> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|field: &u32| field.to_ne_bytes())
        .collect();
    test_run(program, frame, &ctx, repeat).context("BPF_PROG_TEST_RUN (XDP)")
}

/// Offsets of the fields of `struct __sk_buff` that BPF_PROG_TEST_RUN takes from a tc
/// program's context: the interface the packet arrived on (`ingress_ifindex`, `ifindex`).
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_IFINDEX: usize = 40;
/// Offsets of the GSO fields of `struct __sk_buff` (segments, segment size).
const SKB_GSO_SEGS: usize = 164;
const SKB_GSO_SIZE: usize = 176;
/// Size of `struct __sk_buff`.
const SKB_CTX_SIZE: usize = 192;

/// Runs the tc `program` on `frame` as if it arrived on interface `ifindex`, like [`run`].
/// The kernel builds an skb around the frame (its checksums are plain, never partial: a test
/// run cannot set an skb's checksum state). The verdict is the tc action.
pub fn run_tc(
    program: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<RunResult> {
    run_tc_gso(program, frame, ifindex, repeat, None)
}

/// [`run_tc`], with the skb marked as a GSO super-packet of `(segments, segment size)`, as GRO
/// or a sender with segmentation offload makes them.
pub fn run_tc_gso(
    program: &SchedClassifier,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    gso: Option<(u32, u32)>,
) -> Result<RunResult> {
    let mut ctx = vec![0u8; SKB_CTX_SIZE];
    let mut put = |offset: usize, value: u32| {
        ctx[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    };
    put(SKB_INGRESS_IFINDEX, ifindex);
    put(SKB_IFINDEX, ifindex);
    if let Some((segments, size)) = gso {
        put(SKB_GSO_SEGS, segments);
        put(SKB_GSO_SIZE, size);
    }
    test_run(program, frame, &ctx, repeat).with_context(|| {
        format!(
            "BPF_PROG_TEST_RUN (tc) of a {}-byte frame {:02x?}",
            frame.len(),
            &frame[..frame.len().min(64)]
        )
    })
}

/// One BPF_PROG_TEST_RUN of `program` with context `ctx`.
fn test_run<P>(program: &P, frame: &[u8], ctx: &[u8], repeat: u32) -> Result<RunResult>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 512];
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        repeat,
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(RunResult {
        verdict: result.return_value,
        frame: out,
        duration: result.duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_named_as_the_kernel_names_them() {
        assert_eq!(verdict_name(XDP_ABORTED), "XDP_ABORTED");
        assert_eq!(verdict_name(XDP_REDIRECT), "XDP_REDIRECT");
        assert_eq!(verdict_name(5), "unknown verdict");
        assert_eq!(verdict_name(TC_ACT_UNSPEC), "unknown verdict");
    }
}
