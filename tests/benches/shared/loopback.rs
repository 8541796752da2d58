//! Services whose backend is their own VIP, for benchmarks that repeat a packet: the rewrite
//! does all its work and leaves the frame as it was, so one test run can repeat it.

use anyhow::Result;
use xlb::config::Config;

/// Parses `config`, whose services named `loopback...` are then given their own VIP as their
/// backend. A config may not say so itself (`xlb check` refuses a backend on a VIP, which a
/// real client could never reach), so such a service is written with any backend.
pub fn parse_with_loopbacks(config: &str) -> Result<Config> {
    let mut config = Config::parse(config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for service in &mut config.services {
        if service.name.starts_with("loopback") {
            for backend in &mut service.backends {
                backend.address = service.listen;
            }
        }
    }
    Ok(config)
}
