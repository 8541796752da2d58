//! xlb's test harness, shared by the integration tests and `cargo xtask demo`: network
//! namespaces and the standard topology, the backend server and clients, process handling,
//! a packet builder for BPF_PROG_TEST_RUN, and a SYN flood.

pub mod bench;
pub mod bird;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod failover;
pub mod flood;
pub mod fuzz;
pub mod netns;
pub mod packet;
pub mod packet_net;
pub mod process;
pub mod program_time;
pub mod scaleout;
pub mod scenario;
pub mod server;
pub mod topology;
pub mod tunnel;
