//! BIRD in the scale-out cluster (see `cluster`): the contrib configs with only their site
//! values replaced, and a BIRD daemon per namespace with a control socket of its own.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cluster::balancer_addr,
    netns::Netns,
    process::{Process, temp_file},
    scenario::STARTUP,
};

/// The contrib directory of the repository.
pub(crate) fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

/// contrib/bird/balancer.conf for balancer `index`.
pub fn balancer_bird_config(index: usize) -> Result<String> {
    bird_config_of_balancer(index, false)
}

/// contrib/bird/balancer.conf for balancer `index`; with `nat_answers`, its lines for NAT
/// behind ECMP uncommented, as its comment says to.
pub(crate) fn bird_config_of_balancer(index: usize, nat_answers: bool) -> Result<String> {
    let mut text = std::fs::read_to_string(contrib().join("bird/balancer.conf"))?;
    if nat_answers {
        if !text.contains("\n#nat ") {
            bail!("contrib/bird/balancer.conf has no lines for NAT behind ECMP");
        }
        text = text.replace("\n#nat ", "\n");
    }
    let address = balancer_addr(index).to_string();
    replace_all(
        &text,
        &[
            (
                "define BALANCER_ADDR = 198.18.1.21;",
                &format!("define BALANCER_ADDR = {address};"),
            ),
            (
                "define BALANCER_AS = 65001;",
                &format!("define BALANCER_AS = {};", 65_001 + index),
            ),
            ("router id 198.18.1.21;", &format!("router id {address};")),
        ],
    )
}

/// contrib/bird/router.conf with a session to each of `balancers` balancers.
pub fn router_bird_config(balancers: usize) -> Result<String> {
    let text = std::fs::read_to_string(contrib().join("bird/router.conf"))?;
    let sessions: String = (0..balancers)
        .map(|i| {
            format!(
                "protocol bgp lb{} from balancer {{ neighbor {} as {}; }}\n",
                i + 1,
                balancer_addr(i),
                65_001 + i
            )
        })
        .collect();
    let start = text
        .find("protocol bgp lb1")
        .context("router.conf has no session lb1")?;
    Ok(format!("{}{sessions}", &text[..start]))
}

/// `text` with each `(from, to)` replaced; every `from` must be there.
fn replace_all(text: &str, changes: &[(&str, &str)]) -> Result<String> {
    let mut text = text.to_owned();
    for (from, to) in changes {
        if !text.contains(from) {
            bail!("contrib config lacks {from:?}");
        }
        text = text.replace(from, to);
    }
    Ok(text)
}

/// A BIRD in one namespace, with its own socket; killed on drop.
pub struct Bird {
    process: Process,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Bird {
    /// Starts BIRD with `config` in `host`.
    pub fn start(host: &Netns, name: &str, config: &str) -> Result<Self> {
        let config_path = temp_file(&format!("{name}-bird.conf"), config)?;
        let socket =
            std::env::temp_dir().join(format!("{}{name}-bird.ctl", crate::netns::run_prefix()));
        let pid =
            std::env::temp_dir().join(format!("{}{name}-bird.pid", crate::netns::run_prefix()));
        let mut command = host.command_network_only("bird");
        command
            .arg("-f")
            .arg("-c")
            .arg(&config_path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(&pid);
        let process = Process::spawn(&format!("{name}-bird"), command)?;
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > STARTUP {
                bail!(
                    "BIRD in {name} did not open its socket: {}",
                    process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { process, socket })
    }

    /// `birdc show protocols` (for failure messages).
    pub fn protocols(&self) -> String {
        self.show(&["protocols"])
    }

    /// `birdc show bfd sessions`.
    pub fn bfd_sessions(&self) -> String {
        self.show(&["bfd", "sessions"])
    }

    /// `birdc show ...`; empty if birdc fails.
    fn show(&self, what: &[&str]) -> String {
        std::process::Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .arg("show")
            .args(what)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.process.stop(Duration::from_secs(2));
        let _ = std::fs::remove_file(&self.socket);
    }
}
