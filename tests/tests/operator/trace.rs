//! `xlb trace`: what the data plane decides for a service's packets, through the daemon.

use super::*;
use std::process::{Child, Stdio};

/// Starts `xlb trace ARGS --json` in the background; returns once the daemon has started it.
fn start_trace(xlb: &mut Xlb, args: &[&str]) -> Child {
    // Counted before the spawn: the daemon may log the start before this function reads its output.
    let before = xlb.output().matches("trace started").count();
    let child = std::process::Command::new(binary("xlb").unwrap())
        .arg("--socket")
        .arg(&xlb.socket)
        .arg("--json")
        .arg("trace")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while xlb.output().matches("trace started").count() == before {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", xlb.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn trace_shows_what_the_data_plane_decides() {
    let Setup {
        lab,
        mut xlb,
        _backends,
    } = setup("");
    // Bad filters change nothing.
    let error = fails(&xlb, &["trace", "nope"]);
    assert!(error.contains("no service named \"nope\""), "{error}");
    let error = fails(
        &xlb,
        &["trace", "web", "--client", "fd00::/64", "--seconds", "1"],
    );
    assert!(
        error.contains("client prefix fd00::/64 is IPv6 and service \"web\" is IPv4"),
        "{error}"
    );
    let (code, _, error) = xlb.cli(&["trace", "web", "--seconds", "0"]).unwrap();
    assert_eq!(code, 2, "{error}");

    let trace = start_trace(
        &mut xlb,
        &["web", "--client", "198.18.0.0/24", "--seconds", "3"],
    );
    let error = fails(&xlb, &["trace", "web", "--seconds", "1"]);
    assert!(error.contains("another trace is running"), "{error}");
    assert_eq!(connections(&lab, 3).len(), 3);
    let output = trace.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let answers: Vec<Response> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let events: Vec<&xlb::report::TraceEventReport> = answers
        .iter()
        .filter_map(|a| match a {
            Response::TraceEvent(event) => Some(event),
            _ => None,
        })
        .collect();
    let Some(Response::TraceEnd(summary)) = answers.last() else {
        panic!("no trace_end: {answers:?}");
    };
    let new: Vec<_> = events
        .iter()
        .filter(|e| e.decision == "new_round_robin")
        .collect();
    assert_eq!(new.len(), 3, "{events:?}");
    let backends: std::collections::BTreeSet<_> = new.iter().map(|e| e.backend).collect();
    assert_eq!(backends.len(), 3, "each new flow took the next backend");
    assert!(
        new.iter()
            .all(|e| e.client.ip() == CLIENT && e.tcp_flags == "SYN")
    );
    assert!(
        events
            .iter()
            .any(|e| e.decision == "established" && e.direction == "to_client"),
        "replies are traced too"
    );
    assert_eq!(summary.matched, events.len() as u64);
    assert_eq!((summary.recorded, summary.lost), (events.len() as u64, 0));

    // A filter that matches nothing, in text.
    let quiet = ok(
        &xlb,
        &[
            "trace",
            "web",
            "--client",
            "198.18.99.0/24",
            "--seconds",
            "1",
        ],
    );
    assert!(quiet.contains("0 packets matched"), "{quiet}");

    // An operator who leaves ends the trace: another can start at once.
    let mut left = start_trace(&mut xlb, &["web", "--seconds", "60"]);
    left.kill().unwrap();
    let _ = left.wait();
    connections(&lab, 1); // a packet to write, which finds the operator gone
    let start = Instant::now();
    loop {
        let (code, stdout, stderr) = xlb.cli(&["trace", "web", "--seconds", "1"]).unwrap();
        if code == 0 {
            assert!(stdout.contains("trace: "), "{stdout}");
            break;
        }
        assert!(stderr.contains("another trace is running"), "{stderr}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the left trace still runs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
