//! The wire format of requests: one JSON object each, tagged with its command, as clients of
//! earlier versions send them.

use super::{backend::Change, *};

#[test]
fn requests_are_one_json_object_each() {
    assert_eq!(
        serde_json::to_string(&Request::Status(status::Status::default())).unwrap(),
        r#"{"command":"status"}"#
    );
    assert_eq!(
        serde_json::to_string(&Request::Stats(stats::Stats::default())).unwrap(),
        r#"{"command":"stats"}"#
    );
    let drain: Request = serde_json::from_str(
        r#"{"command":"backend","service":"web","backend":"198.18.1.11:8080","action":"drain"}"#,
    )
    .unwrap();
    let target = backend::Target {
        service: "web".into(),
        backend: "198.18.1.11:8080".parse().unwrap(),
    };
    assert_eq!(
        drain,
        Request::Backend(backend::Backend {
            change: Change::Drain(target.clone())
        })
    );
    let pause = r#"{"command":"backend","service":"web","backend":"198.18.1.11:8080","action":"pause_checks"}"#;
    let parsed: Request = serde_json::from_str(pause).unwrap();
    assert_eq!(
        parsed,
        Request::Backend(backend::Backend {
            change: Change::PauseChecks(target.clone())
        })
    );
    assert_eq!(serde_json::to_string(&parsed).unwrap(), pause);
    let reset = r#"{"command":"backend","service":"web","backend":"198.18.1.11:8080","action":{"reset":{"client":"198.18.0.2:40000"}}}"#;
    let parsed: Request = serde_json::from_str(reset).unwrap();
    assert_eq!(
        parsed,
        Request::Backend(backend::Backend {
            change: Change::Reset {
                target: target.clone(),
                client: Some("198.18.0.2:40000".parse().unwrap()),
            }
        })
    );
    assert_eq!(serde_json::to_string(&parsed).unwrap(), reset);
    let weight =
        r#"{"command":"backend","service":"web","backend":"[fd00::1]:80","action":{"weight":7}}"#;
    let parsed: Request = serde_json::from_str(weight).unwrap();
    assert!(matches!(
        parsed,
        Request::Backend(backend::Backend {
            change: Change::Weight { weight: 7, .. }
        })
    ));
    assert_eq!(
        serde_json::to_string(&parsed).unwrap(),
        weight,
        "written as read"
    );
    let flows: Request =
        serde_json::from_str(r#"{"command":"flows","client":"198.18.0.0/24"}"#).unwrap();
    assert_eq!(
        flows,
        Request::Flows(flows::Flows {
            client: Some("198.18.0.0/24".into()),
            ..flows::Flows::default()
        })
    );
    let trace: Request = serde_json::from_str(r#"{"command":"trace","service":"web"}"#).unwrap();
    assert_eq!(
        trace,
        Request::Trace(trace::Trace {
            service: "web".into(),
            client: None,
            seconds: trace::DEFAULT_SECONDS,
            sample: 1,
        })
    );
    for bad in [
        r#"{"command":"frobnicate"}"#,
        r#"{"command":"backend","service":"web","backend":"198.18.1.1:80","action":{"weight":-1}}"#,
        r#"{"command":"backend","service":"web"}"#,
        r#"{"command":"backend","service":"web","backend":"198.18.1.1:80","action":"drain","x":1}"#,
        r#"{"command":"status","extra":1}"#,
        r#"{"command":"stats","extra":1}"#,
        "not json",
    ] {
        assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
    }
}

#[test]
fn requests_from_the_socket_are_held_to_the_command_lines_bounds() {
    let parse = |text: &str| serde_json::from_str::<Request>(text).unwrap().check();
    assert_eq!(
        parse(r#"{"command":"trace","service":"web","seconds":3601}"#),
        Err("seconds 3601 is out of range: 1 to 3600".into())
    );
    assert_eq!(
        parse(r#"{"command":"trace","service":"web","sample":0}"#),
        Err("sample 0 is out of range: 1 to 1000000 (1: every packet)".into())
    );
    assert_eq!(
        parse(r#"{"command":"flows","limit":100001}"#),
        Err("limit 100001 is out of range: 1 to 100000".into())
    );
    assert_eq!(
        parse(
            r#"{"command":"backend","service":"web","backend":"198.18.1.1:80","action":{"weight":300}}"#
        ),
        Err("weight 300 is out of range: 0 to 256".into())
    );
    assert_eq!(
        parse(r#"{"command":"trace","service":"web","seconds":3600}"#),
        Ok(())
    );
}
