//! Progress reporting: one line when a step starts and one when it ends, numbered, so a log
//! shows where a run is and which step failed.

use std::time::Instant;

use anyhow::Result;

/// A numbered sequence of steps.
pub struct Steps {
    task: &'static str,
    total: usize,
    done: usize,
}

impl Steps {
    /// Steps of `task`, `total` of them.
    pub fn new(task: &'static str, total: usize) -> Self {
        Self {
            task,
            total,
            done: 0,
        }
    }

    /// Runs one step, printing its outcome; an error names the step.
    pub fn run<T>(&mut self, what: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        self.done += 1;
        let (n, total, task) = (self.done, self.total, self.task);
        println!("[{task} {n}/{total}] {what} ...");
        let start = Instant::now();
        match step() {
            Ok(value) => {
                println!(
                    "[{task} {n}/{total}] {what}: ok ({:.1}s)",
                    start.elapsed().as_secs_f64()
                );
                Ok(value)
            }
            Err(error) => {
                println!("[{task} {n}/{total}] {what}: FAILED");
                Err(error.context(format!("{task} step {n}/{total} ({what}) failed")))
            }
        }
    }
}

/// Prints a line of detail under the current step.
pub fn note(text: &str) {
    println!("    {text}");
}
