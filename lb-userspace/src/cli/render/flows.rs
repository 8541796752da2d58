//! `xlb flows` as a table.

use std::fmt::Write as _;

use super::age;
use crate::report::FlowsReport;

/// `xlb flows`: one line per flow, columns as wide as their widest value.
pub(crate) fn flows(report: &FlowsReport) -> String {
    let header = [
        "SERVICE", "PROTO", "CLIENT", "VIP", "BACKEND", "STATE", "AGE", "IDLE",
    ];
    let rows: Vec<[String; 8]> = report
        .flows
        .iter()
        .map(|f| {
            [
                f.service.clone(),
                f.protocol.clone(),
                f.client.to_string(),
                f.vip.to_string(),
                f.backend.to_string(),
                f.state.clone(),
                f.age_seconds.map_or("-".to_owned(), age),
                age(f.idle_seconds),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 8]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join(" ").trim_end());
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    let _ = writeln!(
        out,
        "{} of {} matching flows shown",
        report.flows.len(),
        report.matched
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::FlowReport;

    #[test]
    fn flows_are_a_table_with_a_count() {
        let flow = |client: &str, backend: &str, age_seconds| FlowReport {
            service: "web".into(),
            protocol: "tcp".into(),
            client: client.parse().unwrap(),
            vip: "198.18.0.10:80".parse().unwrap(),
            backend: backend.parse().unwrap(),
            state: "established".into(),
            age_seconds,
            idle_seconds: 2.5,
        };
        let report = FlowsReport {
            flows: vec![
                flow("198.18.2.1:40000", "[fd00:1::11]:8080", Some(90.0)),
                flow("198.18.2.2:40001", "198.18.1.12:8080", None),
            ],
            matched: 3,
        };
        let text = flows(&report);
        let expected = "\
SERVICE PROTO CLIENT           VIP            BACKEND           STATE       AGE IDLE
web     tcp   198.18.2.1:40000 198.18.0.10:80 [fd00:1::11]:8080 established 1m  2s
web     tcp   198.18.2.2:40001 198.18.0.10:80 198.18.1.12:8080  established -   2s
2 of 3 matching flows shown
";
        assert_eq!(text, expected);
    }
}
