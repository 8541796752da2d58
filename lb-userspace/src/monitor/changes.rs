//! What a decision changed, in the log: backends' state changes (an outage at WARN, the rest
//! at INFO), load reasons (DEBUG) and spills between locality pools.

use tracing::{debug, info, warn};

use super::plan;
use crate::{config::Config, health::state::State};

/// Logs a plan's state changes, reason changes and spills.
pub(super) fn log_plan(config: &Config, plan: &plan::Plan) {
    for t in &plan.transitions {
        let service = &config.services[t.service];
        let address = service.backends[t.backend].address;
        // An outage is news for whoever watches warnings; the rest is routine.
        let down = t.to == State::Down;
        match t.from {
            None if down => {
                warn!(service = service.name, backend = %address, state = %t.to, reason = t.reason, "backend state");
            }
            None => {
                info!(service = service.name, backend = %address, state = %t.to, reason = t.reason, "backend state");
            }
            Some(from) if down => {
                warn!(service = service.name, backend = %address, from = %from, state = %t.to, reason = t.reason, "backend state changed");
            }
            Some(from) => {
                info!(service = service.name, backend = %address, from = %from, state = %t.to, reason = t.reason, "backend state changed");
            }
        }
    }
    for (s, b, reason) in &plan.reasons {
        let service = &config.services[*s];
        debug!(service = service.name, backend = %service.backends[*b].address, reason, "backend load");
    }
    for spill in &plan.spills {
        let service = &config.services[spill.service];
        let pool = &service.pools[spill.home].name;
        if spill.serving == spill.home {
            info!(
                service = service.name,
                pool, "pool has room again: its clients' new flows stay home"
            );
        } else {
            info!(
                service = service.name,
                pool,
                to = service.pools[spill.serving].name,
                "pool has no room: its clients' new flows spill over"
            );
        }
    }
}
