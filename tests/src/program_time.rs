//! The kernel's own account of the time a process's BPF programs ran (`BPF_ENABLE_STATS`):
//! how the end-to-end benchmark tells the balancer program's share of the machine's CPU from
//! everything the kernel does around it. The statistics cost two clock reads per program run
//! while they are on, so a benchmark turns them on only for runs it reports apart.

use std::{collections::BTreeSet, os::fd::OwnedFd, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};

/// How long and how often programs ran, summed over programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramTime {
    /// Runs (packets seen).
    pub runs: u64,
    /// Time spent in them.
    pub time: Duration,
}

impl ProgramTime {
    /// What ran between `earlier` and this reading.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            runs: self.runs.saturating_sub(earlier.runs),
            time: self.time.saturating_sub(earlier.time),
        }
    }
}

/// Run-time statistics switched on, for the programs one process holds. They stay on, for
/// every program of the machine, while this lives (the kernel counts per program, and turns
/// the counting off when the last holder closes its descriptor).
pub struct ProgramTimer {
    _stats: OwnedFd,
    pid: u32,
}

impl ProgramTimer {
    /// Turns the statistics on; [`ProgramTimer::read`] sums those of the programs process
    /// `pid` holds.
    pub fn start(pid: u32) -> Result<Self> {
        let stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
        Ok(Self { _stats: stats, pid })
    }

    /// The runs and run time so far of the programs the process holds (counted while
    /// statistics were on).
    pub fn read(&self) -> Result<ProgramTime> {
        let ids = held_program_ids(self.pid)?;
        let mut total = ProgramTime::default();
        for info in loaded_programs() {
            let info = info?;
            if ids.contains(&info.id()) {
                total.runs += info.run_count();
                total.time += info.run_time();
            }
        }
        Ok(total)
    }
}

/// The ids of the BPF programs process `pid` holds a descriptor of (a program's, or a link's
/// to it), from `/proc/PID/fdinfo`.
fn held_program_ids(pid: u32) -> Result<BTreeSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed since the listing has no file any more.
        if let Ok(text) = std::fs::read_to_string(entry?.path()) {
            ids.extend(program_id(&text));
        }
    }
    Ok(ids)
}

/// The `prog_id` an fdinfo text names, if any.
fn program_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("prog_id:"))
        .and_then(|id| id.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_ids_come_from_program_and_link_descriptors_only() {
        let program = "pos:\t0\nflags:\t02000002\nprog_type:\t3\nprog_jited:\t1\nprog_tag:\tab\n\
                       memlock:\t4096\nprog_id:\t812\nrun_time_ns:\t0\n";
        let link = "pos:\t0\nlink_type:\ttcx\nlink_id:\t7\nprog_tag:\tab\nprog_id:\t813\n";
        let map = "pos:\t0\nmap_type:\t1\nkey_size:\t4\nmap_id:\t90\n";
        assert_eq!(program_id(program), Some(812));
        assert_eq!(program_id(link), Some(813));
        assert_eq!(program_id(map), None);
        assert_eq!(program_id("prog_id:\tnot a number\n"), None);
    }

    #[test]
    fn a_reading_since_another_is_the_difference() {
        let earlier = ProgramTime {
            runs: 10,
            time: Duration::from_nanos(2_000),
        };
        let later = ProgramTime {
            runs: 25,
            time: Duration::from_nanos(5_000),
        };
        assert_eq!(
            later.since(earlier),
            ProgramTime {
                runs: 15,
                time: Duration::from_nanos(3_000)
            }
        );
    }
}
