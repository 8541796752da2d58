//! Flows shared by the instances of a fleet (`[fleet]`): behind ECMP, a router moves flows
//! between instances whenever one joins, leaves or dies, and an instance that receives a
//! flow it did not place must send it where it was placed. So each instance tells the others
//! of every flow it makes established and of every one that closes, and installs theirs
//! (IPVS's sync daemon and conntrackd do the same for their tables).
//!
//! - The program writes each event to a ring buffer (`lb_common::share`); a sender task here
//!   batches them, [`wire::MAX_RECORDS`] to a datagram or after [`transport::FLUSH_AFTER`],
//!   tags each with the fleet's key and sends it to every peer, by UDP.
//! - A receiver task takes only datagrams from a configured peer, authentic under the key and
//!   not replayed ([`replay`]); the monitor installs their flows (see [`install`]) without
//!   replacing one of its own.
//! - A joining or restarted instance asks every peer for its flows before it is announced
//!   (a snapshot); a peer answers with every established flow of its tables.
//!
//! What it does not do: it sends each flow once (no acknowledgements, no resend: a lost
//! datagram loses its flows on the peers, which then place them as a new instance would);
//! and a peer's copy of a flow it never sees a packet of expires after the flow's timeout
//! there, even if the flow is alive elsewhere.

pub mod install;
pub mod replay;
mod transport;
pub mod wire;

pub use transport::{Counters, Fleet, Incoming};
