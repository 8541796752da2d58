//! What xlb asks of the host outside the data plane: its network interfaces, TUN devices
//! of its own and the wall clock. The lowest layer: it knows nothing of xlb's other modules.

pub(crate) mod accept;
pub(crate) mod limits;
pub mod netif;
pub(crate) mod time;
pub(crate) mod tun;
