//! Progress reporting: one line when a step starts and one when it ends, numbered, so a log
//! shows where a run is and which step failed.
//!
//! A task declares its steps before the first one runs (its plan), so the total is counted,
//! not written down; a step that runs where the plan has another is a bug in xtask, and fails
//! as one instead of printing "[test 12/11]".

use std::time::Instant;

use anyhow::{Result, bail};

/// A numbered sequence of steps, run in the order of their plan.
pub struct Steps {
    task: &'static str,
    plan: Vec<String>,
    done: usize,
}

impl Steps {
    /// Steps of `task`, none planned yet.
    pub fn new(task: &'static str) -> Self {
        Self {
            task,
            plan: Vec::new(),
            done: 0,
        }
    }

    /// Adds steps to the plan: their labels, in the order they will run.
    pub fn then<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.plan.extend(labels.into_iter().map(Into::into));
        self
    }

    /// Runs the next step of the plan, which must be `what`, printing its outcome; an error
    /// names the step.
    pub fn run<T>(&mut self, what: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        let (n, total, task) = (self.done + 1, self.plan.len(), self.task);
        match self.plan.get(self.done) {
            Some(planned) if planned == what => {}
            Some(planned) => {
                bail!("xtask bug: {task} ran the step {what:?} where its plan has {planned:?}")
            }
            None => bail!("xtask bug: {task} ran the step {what:?}, which is not in its plan"),
        }
        self.done = n;
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

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[test]
    fn steps_run_in_the_order_of_their_plan() {
        let mut steps = Steps::new("demo").then(["build"]).then(["run".to_owned()]);
        assert_eq!(steps.run("build", || Ok(1)).unwrap(), 1);
        let error = steps
            .run("run", || Err::<(), _>(anyhow!("no network")))
            .unwrap_err();
        assert_eq!(error.to_string(), "demo step 2/2 (run) failed");
        let error = steps.run("extra", || Ok(())).unwrap_err().to_string();
        assert!(
            error.contains("\"extra\", which is not in its plan"),
            "{error}"
        );
    }

    #[test]
    fn a_step_out_of_the_plan_is_not_run() {
        let mut steps = Steps::new("test").then(["build", "lints"]);
        let mut ran = false;
        let error = steps
            .run("lints", || {
                ran = true;
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(!ran);
        assert!(
            error.contains("ran the step \"lints\" where its plan has \"build\""),
            "{error}"
        );
    }
}
