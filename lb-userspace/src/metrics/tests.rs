use super::*;

/// A snapshot with every family present.
pub(crate) fn full_snapshot() -> Snapshot {
    let counters = Counters {
        packets_to_backend: 10,
        bytes_to_backend: 1000,
        new_flows: 3,
        ..Counters::default()
    };
    Snapshot {
        services: vec![ServiceMetrics {
            name: "web".into(),
            counters,
            backends: vec![BackendMetrics {
                address: "[fd00:1::11]:8080".into(),
                counters,
                state: State::Draining,
                weight: 100,
                active_flows: 4,
                connections: crate::report::Connections {
                    established: 6,
                    closing: 1,
                    ..Default::default()
                },
                check_seconds: Some(0.002),
                passive_marks: 1,
            }],
        }],
        events: vec![("no_backend", 4)],
        spills: vec![(("video".into(), "kr".into(), "jp".into()), 12)],
        flows: (7, 2),
        flow_capacity: [(65_536, 16_384), (65_536, 16_384)],
        flows_expired: 5,
        unserved: vec![("198.18.100.1".parse().unwrap(), 31)],
        guard: Some(GuardMetrics {
            hashing: true,
            budget: 4096,
            window_flows: 17,
        }),
        reloads: ReloadMetrics {
            succeeded: 2,
            failed: 1,
            last_succeeded: false,
            last_success_unix: 1_700_000_000.0,
        },
        announce: Some(crate::report::AnnounceReport {
            device: "xlb-vip".into(),
            bird: "BIRD 2.0.12 at /run/bird/bird.ctl".into(),
            bird_reachable: true,
            vips: vec![crate::report::VipReport {
                vip: "198.18.100.1".parse().unwrap(),
                announced: true,
                reason: "web takes new flows".into(),
                since_seconds: 3.0,
                announcements: 2,
                withdrawals: 1,
            }],
        }),
        fleet: Some(FleetMetrics {
            flows: vec![("sent", 40), ("installed", 12)],
            messages: vec![("sent", 4), ("refused_bad_tag", 2)],
        }),
    }
}

fn rendered(format: Format) -> String {
    render(&registry(Arc::new(Mutex::new(full_snapshot()))), format).unwrap()
}

/// The names of the samples of an exposition.
pub(crate) fn sample_names(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[test]
fn every_series_is_served_with_its_labels() {
    let text = rendered(Format::Classic);
    let backend = r#"service="web",backend="[fd00:1::11]:8080""#;
    for line in [
        r#"xlb_service_packets_total{service="web",direction="to_backend"} 10"#.to_owned(),
        format!(r#"xlb_backend_bytes_total{{{backend},direction="to_backend"}} 1000"#),
        format!(r#"xlb_backend_flows_total{{{backend}}} 3"#),
        format!(r#"xlb_backend_active_flows{{{backend}}} 4"#),
        format!(r#"xlb_backend_state{{{backend},state="draining"}} 1"#),
        format!(r#"xlb_backend_state{{{backend},state="up"}} 0"#),
        format!(r#"xlb_backend_weight{{{backend}}} 100"#),
        format!(r#"xlb_backend_connections{{{backend},state="established"}} 6"#),
        format!(r#"xlb_backend_connections{{{backend},state="closing"}} 1"#),
        r#"xlb_service_backends_available{service="web"} 1"#.to_owned(),
        format!(r#"xlb_backend_health_check_duration_seconds{{{backend}}} 0.002"#),
        r#"xlb_dataplane_events_total{event="no_backend"} 4"#.to_owned(),
        r#"xlb_pool_spilled_flows_total{service="video",from="kr",to="jp"} 12"#.to_owned(),
        r#"xlb_flows{family="ipv4",table="established"} 7"#.to_owned(),
        r#"xlb_flows{family="ipv6",table="established"} 2"#.to_owned(),
        r#"xlb_flow_table_capacity{family="ipv4",table="established"} 65536"#.to_owned(),
        r#"xlb_flow_table_capacity{family="ipv6",table="half_open"} 16384"#.to_owned(),
        "xlb_flows_expired_total 5".to_owned(),
        r#"xlb_vip_unserved_packets_total{vip="198.18.100.1"} 31"#.to_owned(),
        "xlb_handshake_guard_hashing 1".to_owned(),
        "xlb_handshake_guard_window_flows 17".to_owned(),
        "xlb_handshake_guard_budget 4096".to_owned(),
        r#"xlb_config_reloads_total{result="failure"} 1"#.to_owned(),
        "xlb_config_last_reload_successful 0".to_owned(),
        r#"xlb_fleet_flows_total{result="installed"} 12"#.to_owned(),
        r#"xlb_fleet_messages_total{result="refused_bad_tag"} 2"#.to_owned(),
        "xlb_config_last_reload_success_timestamp_seconds 1700000000.0".to_owned(),
        format!(
            r#"xlb_build_info{{version="{}",commit="{}"}} 1"#,
            env!("CARGO_PKG_VERSION"),
            env!("XLB_COMMIT")
        ),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// What `promtool check metrics` checks of metadata, for the classic format: every sample's
/// family has a TYPE and a HELP under the sample's own name (counters: `_total`).
#[test]
fn the_classic_format_gives_every_sample_its_help_and_type() {
    let text = rendered(Format::Classic);
    assert!(!text.contains("# EOF"));
    for name in sample_names(&text) {
        assert!(
            text.contains(&format!("\n# TYPE {name} ")),
            "no TYPE for {name}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        if text.contains(&format!("# TYPE {name} counter")) {
            assert!(name.ends_with("_total"), "{name}");
        }
    }
}

/// OpenMetrics: a counter family's metadata names it without `_total`, and the exposition
/// ends with `# EOF`.
#[test]
fn openmetrics_names_counter_families_without_the_suffix() {
    let text = rendered(Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE xlb_service_packets counter\n"));
    assert!(text.contains("# HELP xlb_service_packets "));
    for name in sample_names(&text) {
        let family = name.strip_suffix("_total").unwrap_or(&name);
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {name}"
        );
    }
}

/// Every series a query of contrib/grafana-dashboard.json names is one xlb serves.
#[test]
fn the_grafana_dashboard_asks_only_for_series_xlb_serves() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(definition) = variable["definition"].as_str() {
            queries.push(definition.to_owned());
        }
    }
    let served: std::collections::BTreeSet<String> = sample_names(&rendered(Format::Classic))
        .into_iter()
        .collect();
    let mut used = std::collections::BTreeSet::new();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("xlb_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(served.contains(&name), "{name} in {query:?} is not served");
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }
    assert!(
        used.len() >= 15,
        "the dashboard shows most series: {used:?}"
    );
}
