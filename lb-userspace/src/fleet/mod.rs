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
//! - Every `refresh` (10 s by default) an instance sends again the flows it carried since
//!   the last time ([`carried`]): the peers' copies then live as long as the flow does, and a
//!   flow whose first datagram was lost reaches them then.
//!
//! What it does not do: acknowledge or resend a datagram. A lost one's flows reach the peers
//! at the next refresh if they are still alive; a flow that changes instance before that is
//! placed there as a new instance would place it.

pub mod carried;
pub mod install;
pub mod replay;
mod transport;
pub mod wire;

pub use transport::{Counters, Fleet, Incoming};
