//! The packet builder and checker of the packet tests: `lb_common::frame`, which `xlb
//! simulate` uses too.

pub use lb_common::consts::{ether_type, proto, tcp_flags};
pub use lb_common::frame::*;
