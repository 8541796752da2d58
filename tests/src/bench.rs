//! Helpers for the benchmark programs in `tests/benches` (run by `cargo xtask bench`): timing,
//! statistics, and the markdown section each program prints for BENCHMARKS.md.
//!
//! A program prints its section between [`BEGIN`] and [`END`] lines on standard output; xtask
//! collects the sections of all programs into BENCHMARKS.md. Progress goes to standard error.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{client::http_get_body, netns::Netns, scenario::HTTP_PORT, topology::Lab};

/// Line that starts a benchmark's markdown section.
pub const BEGIN: &str = "<!-- xlb-bench-section -->";
/// Line that ends it.
pub const END: &str = "<!-- /xlb-bench-section -->";

/// Whether the program runs in quick mode (`-- --quick`): every part briefly, to check that
/// the benchmark still works, with numbers that mean little.
pub fn quick() -> bool {
    std::env::args().any(|arg| arg == "--quick")
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`-th percentile of `values` (nearest rank; sorts them).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time process `pid` has used, all its threads, user and system (`/proc/PID/stat`).
pub fn process_cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's name, in parentheses: fields 3 onwards; utime and stime are 14, 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<u64> {
        Ok(fields.get(i - 3).context("short /proc/PID/stat")?.parse()?)
    };
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(
        (ticks(14)? + ticks(15)?) * 1_000_000_000 / per_second,
    ))
}

/// A markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table in markdown.
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        out.push_str(&line(&vec!["---".to_owned(); self.header.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Prints a section of BENCHMARKS.md: a title, markdown text, between the markers.
pub fn print_section(title: &str, body: &str) {
    println!("{BEGIN}");
    println!("## {title}\n");
    println!("{}", body.trim_end());
    println!("{END}");
}

/// TCP throughput from `client` to `target` in Gbit/s (iperf3, one stream, `seconds`).
pub fn iperf(client: &Netns, target: SocketAddr, seconds: u32) -> Result<f64> {
    let out = client.exec(
        "iperf3",
        &[
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )?;
    let answer: serde_json::Value = serde_json::from_str(&out).context("iperf3's JSON")?;
    answer["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 1e9)
        .context("iperf3 printed no sum_received")
}

/// Round robin's fairness between two readings of [`served`]: the most requests a backend
/// served in between over the fewest (infinite if one served none).
pub fn fairness(before: &[u64], after: &[u64]) -> f64 {
    let counts: Vec<f64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| (a - b) as f64)
        .collect();
    let max = counts.iter().copied().fold(f64::MIN, f64::max);
    let min = counts.iter().copied().fold(f64::MAX, f64::min);
    if min > 0.0 { max / min } else { f64::INFINITY }
}

/// Requests each backend's HTTP server has served so far (its `/count`), asked from the
/// balancer's namespace.
pub fn served(lab: &Lab) -> Result<Vec<u64>> {
    lab.balancer.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut counts = Vec::new();
            for i in 0..lab.backends.len() {
                let body = http_get_body(lab.backend_endpoint(i, HTTP_PORT), "/count").await?;
                counts.push(body.trim().parse()?);
            }
            Ok(counts)
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(percentile(&mut [1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
        assert_eq!(percentile(&mut [5.0; 10], 50.0), 5.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn tables_render_as_markdown() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        assert_eq!(table.markdown(), "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}

/// HTTP load with wrk (2 threads, 32 connections, `seconds`): requests per second and p99
/// latency in ms. With `close`, every request opens a new connection.
pub fn wrk(client: &Netns, target: SocketAddr, seconds: u32, close: bool) -> Result<(f64, f64)> {
    let load = wrk_url(client, &format!("http://{target}/"), seconds, close)?;
    Ok((load.requests_per_second, load.p99_ms))
}

/// What one wrk run measured.
#[derive(Clone, Copy, Debug)]
pub struct WrkLoad {
    /// Requests per second.
    pub requests_per_second: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Bytes read per second (responses, headers included), in MB/s.
    pub megabytes_per_second: f64,
}

/// wrk (2 threads, 32 connections, `seconds`) against `url`; with `close`, a new connection
/// per request.
pub fn wrk_url(client: &Netns, url: &str, seconds: u32, close: bool) -> Result<WrkLoad> {
    let duration = format!("{seconds}s");
    let mut args = vec!["-t2", "-c32", "-d", &duration, "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = client.exec("wrk", &args)?;
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("wrk printed no Requests/sec")?;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .context("wrk printed no 99% latency")??;
    let transfer = out
        .lines()
        .find_map(|l| l.strip_prefix("Transfer/sec:"))
        .map(|v| parse_size(v.trim()))
        .context("wrk printed no Transfer/sec")??;
    Ok(WrkLoad {
        requests_per_second: rps,
        p99_ms: p99,
        megabytes_per_second: transfer / 1e6,
    })
}

/// wrk's sizes ("512.00B", "10.50KB", "1.20MB", "1.01GB") in bytes (wrk's units are 1024s).
fn parse_size(text: &str) -> Result<f64> {
    for (unit, factor) in [
        ("GB", 1024f64.powi(3)),
        ("MB", 1024f64.powi(2)),
        ("KB", 1024.0),
        ("B", 1.0),
    ] {
        if let Some(number) = text.strip_suffix(unit) {
            return Ok(number.parse::<f64>()? * factor);
        }
    }
    bail!("unknown size {text:?}")
}

/// wrk's latency ("1.23ms", "850.00us", "1.10s") in milliseconds.
pub fn parse_latency(text: &str) -> Result<f64> {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1e3)
    } else {
        bail!("unknown latency {text:?}")
    };
    Ok(number.parse::<f64>()? * factor)
}
