//! Network namespaces made by a test and deleted when it ends, also when it fails.
//!
//! Every namespace of a run carries the run's prefix, `xlbt<run>-`, where `<run>` is
//! `XLB_TEST_RUN` (which `cargo xtask test` sets, so it can remove whatever a crashed test
//! left behind) or else this process's id. Parallel runs never share a name.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

/// Environment variable naming the test run (see the module documentation).
pub const RUN_ENV: &str = "XLB_TEST_RUN";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// The prefix of every namespace this process creates.
pub fn run_prefix() -> String {
    let run = std::env::var(RUN_ENV).unwrap_or_else(|_| std::process::id().to_string());
    format!("xlbt{run}-")
}

/// Deletes every namespace whose name starts with `prefix`; returns their names.
pub fn delete_all_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let output = run(Command::new("ip").args(["netns", "list"]))?;
    let mut deleted = Vec::new();
    for line in output.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if name.starts_with(prefix) {
            let _ = run(Command::new("ip").args(["netns", "delete", name]));
            deleted.push(name.to_owned());
        }
    }
    Ok(deleted)
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace for `role` (a short word such as "client") with `lo` up.
    pub fn new(role: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{id}-{role}", run_prefix());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip("link set dev lo up")?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`; `args` is split on whitespace.
    pub fn ip(&self, args: &str) -> Result<String> {
        run(Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// Runs `program args...` inside the namespace and returns its standard output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// A command that runs `program` in the namespace's network only, sharing the caller's
    /// mounts (`nsenter --net`). `ip netns exec` also gives the program a private mount
    /// namespace with its own /sys, where a bpffs mounted at /sys/fs/bpf, and anything pinned
    /// there, dies with the program; a daemon whose pins must outlive it runs this way.
    pub fn command_network_only(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        command
    }

    /// Sets a sysctl inside the namespace (the `net.*` ones are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens live there.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only, with a valid namespace descriptor.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!(
                            "setns into {}: {}",
                            self.name,
                            std::io::Error::last_os_error()
                        );
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Netns {
    /// Runs `future` to completion on a single-threaded runtime inside the namespace.
    pub fn block_on<F>(&self, future: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.enter(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(future))
        })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Runs a command and returns its standard output, or an error with its standard error.
pub fn run(command: &mut Command) -> Result<String> {
    let output: Output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
