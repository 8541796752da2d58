//! What xlb knows of each backend: its health checks ([`checks`]), what its load agent says
//! ([`agent`]), and the state machines that turn both into a state and a weight ([`state`]).
//! Checks of services with `health.via = "tunnel"` go inside the tunnel ([`tunnel`]).

pub(crate) mod agent;
pub(crate) mod checks;
pub(crate) mod state;
pub(crate) mod tunnel;
