//! A running `xlb run` for the tests: its own socket, pins, config and state directory, so
//! that daemons can run side by side; started directly, or through a wrapper (a sandbox like
//! systemd's) and with extra environment.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{
    netns::Netns,
    process::{Process, binary, temp_file},
    scenario::STARTUP,
};

/// What `xlb run` prints once it balances.
pub const XLB_READY: &str = "ready: xlb is balancing";

/// How to start `xlb run`.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Extra arguments for `xlb run`.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// A command that runs the rest of the command line (`unshare`, `setpriv` ...).
    pub wrapper: Vec<String>,
}

impl Launch {
    /// The command that runs `xlb run` in `host`'s network.
    fn command(
        &self,
        host: &Netns,
        socket: &Path,
        config: &Path,
        state_dir: &Path,
    ) -> Result<Command> {
        let xlb = binary("xlb")?;
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = host.command_network_only(program);
                command.args(rest).arg(xlb);
                command
            }
            None => host.command_network_only(xlb),
        };
        command
            .arg("--socket")
            .arg(socket)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(command)
    }
}

/// A running `xlb run` with its own control socket and pin directory, so that tests can run
/// side by side. Dropping it kills the daemon and removes its pins (and so the data plane it
/// left behind).
pub struct Xlb {
    process: Process,
    /// How it was started (a restart starts the same way).
    launch: Launch,
    /// The control socket.
    pub socket: PathBuf,
    /// The pin directory in bpffs.
    pub pin_dir: PathBuf,
    /// The config file.
    pub config_path: PathBuf,
    /// The state directory (operators' settings).
    pub state_dir: PathBuf,
}

impl std::ops::Deref for Xlb {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Xlb {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Xlb {
    /// Runs `xlb --socket <socket> <args>` (the CLI) and returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let output = Command::new(binary("xlb")?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Starts another `xlb run` on `host` as this one was started, with its socket, pins,
    /// config and state, plus `args` (a restart, once this one has exited).
    pub fn restart(&mut self, host: &Netns, args: &[&str]) -> Result<()> {
        let mut launch = self.launch.clone();
        launch.args.extend(args.iter().map(|a| (*a).to_owned()));
        let command = launch.command(host, &self.socket, &self.config_path, &self.state_dir)?;
        let mut process = Process::spawn("xlb", command)?;
        process.wait_for_output(XLB_READY, STARTUP)?;
        self.process = process;
        Ok(())
    }
}

impl Xlb {
    /// Removes the pins and state this daemon left when it exited: its next start is a new
    /// instance's, with nothing to take over.
    pub fn forget(&self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Xlb {
    fn drop(&mut self) {
        let _ = self.process.signal(libc::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Runs `xlb check --config` with `config` on `host`; returns (exit code, stdout, stderr).
pub fn check(host: &Netns, config: &str) -> Result<(i32, String, String)> {
    let path = temp_file("check.toml", config)?;
    let output = host
        .command_network_only(binary("xlb")?)
        .args(["check", "--config"])
        .arg(&path)
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A fresh pin directory for one daemon of this run.
fn pin_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!("/sys/fs/bpf/{}{n}", crate::netns::run_prefix()))
}

/// Removes the pin directories of this run (what crashed tests left behind).
pub fn remove_pins_with_prefix(prefix: &str) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(name);
            }
        }
    }
    removed
}

/// Starts `xlb run` with `config` on `host` and waits until it balances.
pub fn start_xlb(host: &Netns, config: &str) -> Result<Xlb> {
    start_xlb_with(host, config, &[])
}

/// [`start_xlb`] with extra arguments for `xlb run` (such as `--detach-on-exit`).
pub fn start_xlb_with(host: &Netns, config: &str, args: &[&str]) -> Result<Xlb> {
    let launch = Launch {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Launch::default()
    };
    start_xlb_launched(host, config, launch)
}

/// [`start_xlb`] started as `launch` says.
pub fn start_xlb_launched(host: &Netns, config: &str, launch: Launch) -> Result<Xlb> {
    let pin_dir = pin_dir();
    let config = format!("pin_path = \"{}\"\n{config}", pin_dir.display());
    let config_path = temp_file("xlb.toml", &config)?;
    let socket = config_path.with_extension("sock");
    let state_dir = config_path.with_extension("state");
    let command = launch.command(host, &socket, &config_path, &state_dir)?;
    let mut process = Process::spawn("xlb", command)?;
    let ready = process.wait_for_output(XLB_READY, STARTUP);
    let xlb = Xlb {
        process,
        launch,
        socket,
        pin_dir,
        config_path,
        state_dir,
    };
    ready?;
    Ok(xlb)
}
