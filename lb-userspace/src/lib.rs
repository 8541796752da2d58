//! xlb: a Layer-4 TCP/UDP load balancer whose data plane is an eBPF program at the XDP or tc
//! hook. This crate is the userspace half, in layers (ARCHITECTURE.md draws them):
//!
//! - [`config`]: the configuration file, validated.
//! - [`health`]: what xlb knows of each backend (health checks, load agents, state machines).
//! - [`control`]: what the maps should hold and the order of the writes that get them there.
//! - [`monitor`]: the owner of the daemon's state; decides ([`monitor::plan`]) and applies.
//! - [`dataplane`]: the loaded programs and their maps; where and how they attach.
//! - [`announce`]: route health injection, the VIPs offered to the local BGP daemon.
//! - [`api`] and [`metrics`]: the daemon's edges; [`daemon`] ties everything together for
//!   `xlb run`, and [`cli`] is the `xlb` command line.
//! - [`logging`] and [`service_manager`]: the daemon under systemd (journal, readiness).
//! - [`wire`]: the encoding of addresses and ports in the maps, shared by the layers.

pub mod announce;
pub mod api;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod report;
pub mod service_manager;
pub mod sys;
pub mod wire;

/// The version and commit, as `xlb --version` and `xlb status` print them: "0.1.0 (abc123)".
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("XLB_COMMIT"), ")");
