//! xlb: a Layer-4 TCP/UDP load balancer whose data plane is an XDP (or tc) program.
//!
//! This crate is the userspace half: configuration ([`config`]), the control plane that
//! decides what the kernel's maps hold ([`control`], [`table`]), the loaded program and its
//! maps ([`dataplane`]), and the daemon ([`daemon`]) that the `xlb` binary runs.

pub mod agent;
pub mod api;
pub mod attach;
pub mod backend_state;
pub mod batch;
pub mod checks;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod flows;
pub mod hooks;
pub mod links;
pub mod locality;
pub mod metrics;
pub mod monitor;
pub mod netif;
pub mod operator;
pub mod pins;
pub mod render;
pub mod simulate;
pub mod table;
pub mod wire;
