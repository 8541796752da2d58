//! xlb: a Layer-4 TCP/UDP load balancer whose data plane is an eBPF program at the XDP or tc
//! hook. This crate is the userspace half, in layers (ARCHITECTURE.md draws them, and a test
//! holds the code to them), lowest first:
//!
//! - `sys` and [`config`]: the host; the configuration file, validated.
//! - [`wire`], `health` and [`report`]: the maps' encoding of addresses and ports; what xlb
//!   knows of each backend (health checks, load agents, state machines); the answers' data.
//! - [`control`], `announce`, `metrics`, `logging`, `service_manager`: what the maps should
//!   hold and the order of the writes; route health injection; the Prometheus endpoint; the
//!   daemon under systemd.
//! - [`dataplane`]: the loaded programs and their maps; where and how they attach.
//! - `monitor`: the owner of the daemon's state; decides and applies.
//! - [`cmd`], `api`, `daemon` and [`cli`]: the operators' commands, the control socket,
//!   `xlb run`, and the `xlb` command line.
//!
//! Only what the binary, the tests and the benchmarks use is public.

#![warn(unreachable_pub)]

mod announce;
mod api;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod control;
mod daemon;
pub mod dataplane;
pub mod fleet;
mod health;
mod logging;
mod metrics;
mod monitor;
pub mod report;
mod service_manager;
pub mod sys;
pub mod wire;

/// The version and commit, as `xlb --version` and `xlb status` print them: "0.1.0 (abc123)".
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("XLB_COMMIT"), ")");
