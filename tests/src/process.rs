//! Processes a test starts (the daemon, backend servers): their output is collected, they can
//! be waited for, and they are killed by PID when the test ends.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Directory holding the workspace's binaries: `XLB_BIN_DIR`, or the directory of the running
/// test executable's parent (`target/<profile>/deps/..`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XLB_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("executable without a directory")?
        .to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of the workspace binary `name`, which must have been built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --bins`; `cargo xtask test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Lines of output shared between the reader threads and the test.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A child process, killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    output: Arc<Lines>,
}

impl Process {
    /// Starts `command`, collecting its stdout and stderr; `name` labels it in errors.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let output = Arc::new(Lines::default());
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        collect(stdout, Arc::clone(&output));
        collect(stderr, Arc::clone(&output));
        Ok(Self {
            name: name.to_owned(),
            child,
            output,
        })
    }

    /// Waits until a line of output contains `needle`. Fails if the process exits first or
    /// `timeout` passes, showing its output.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.output.lines.lock().unwrap();
        loop {
            if lines.iter().any(|line| line.contains(needle)) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                drop(lines);
                // Let the readers drain what is left.
                thread::sleep(Duration::from_millis(50));
                bail!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            lines = self.output.changed.wait_timeout(lines, wait).unwrap().0;
        }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lines.lock().unwrap().join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on the PID of a child we own and have not reaped.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            bail!(
                "kill {}: {}",
                self.child.id(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and is reaped).
    pub fn exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Asks the process to stop (SIGTERM) and waits up to `timeout` for it.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(anyhow!(
            "{} did not stop within {timeout:?} after SIGTERM:\n{}",
            self.name,
            self.output()
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Lines>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            output.lines.lock().unwrap().push(line);
            output.changed.notify_all();
        }
    });
}

/// Writes `contents` to a fresh temporary file named after `label` and returns its path.
pub fn temp_file(label: &str, contents: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}files", crate::netns::run_prefix()));
    std::fs::create_dir_all(&dir)?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{n}-{label}"));
    std::fs::write(&path, contents)?;
    Ok(path)
}

/// Removes `path` if it exists.
pub fn remove_file(path: &Path) {
    let _ = std::fs::remove_file(path);
}
