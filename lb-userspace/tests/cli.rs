//! The `xlb` command line, as an operator meets it (no root needed for these).

use std::process::Command;

fn xlb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xlb"))
        .args(args)
        .output()
        .expect("running xlb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xlb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_every_error_with_its_location_and_fails() {
    let path = write_config(
        "bad.toml",
        r#"interfaces = ["eth0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:80", weight = 300 }, { address = "nonsense" } ]
"#,
    );
    let (code, stdout, stderr) = xlb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:6:53: service \"web\": weight 300 is out of range"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:6:72: service \"web\": backend: \"nonsense\" is not an address"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}: 2 errors")), "{stderr}");
}

#[test]
fn check_reports_a_syntax_error_with_its_location() {
    let path = write_config(
        "syntax.toml",
        "interfaces = [\"eth0\"\nxdp_mode = \"auto\"\n",
    );
    let (code, _, stderr) = xlb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("{}:", path.display())), "{stderr}");
    assert!(stderr.contains("1 error"), "{stderr}");
}

#[test]
fn check_reports_a_missing_file() {
    let (code, _, stderr) = xlb(&["check", "--config", "/nonexistent/xlb.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/xlb.toml: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn check_reports_an_interface_this_host_does_not_have() {
    let path = write_config(
        "noif.toml",
        r#"interfaces = ["xlbnosuchif0"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:80" } ]
"#,
    );
    let (code, _, stderr) = xlb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("interface xlbnosuchif0 does not exist"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_config_before_touching_anything() {
    let path = write_config("invalid-run.toml", "interfaces = []\n");
    let (code, _, stderr) = xlb(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("interfaces: the list is empty"), "{stderr}");
}

#[test]
fn unknown_subcommands_and_missing_arguments_are_usage_errors() {
    let (code, _, stderr) = xlb(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unrecognized subcommand 'frobnicate'"),
        "{stderr}"
    );
    let (code, _, stderr) = xlb(&["run"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--config <FILE>"), "{stderr}");
}

#[test]
fn check_offline_checks_the_file_but_not_this_host() {
    let path = write_config(
        "offline.toml",
        r#"interfaces = ["xlbnosuchif1"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:80" } ]
"#,
    );
    let file = path.to_str().unwrap();
    let (code, stdout, stderr) = xlb(&["check", "--offline", "--config", file]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ok (1 services, 1 backends, 1 interfaces; host not checked)"),
        "{stdout}"
    );
    // Offline or not, an error in the file is an error.
    let bad = write_config("offline-bad.toml", "interfaces = []\n");
    let (code, _, stderr) = xlb(&["check", "--offline", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("interfaces: the list is empty"), "{stderr}");
}

#[test]
fn check_speaks_json() {
    let bad = write_config(
        "json-bad.toml",
        "interfaces = [\"eth0\"]\nflow_table_size = 3\n",
    );
    let (code, stdout, _) = xlb(&["check", "--json", "--offline", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    let size = errors
        .iter()
        .find(|e| e["message"].as_str().unwrap().contains("flow_table_size"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!((&size["line"], &size["column"]), (&2.into(), &19.into()));
    // A host problem is an error in the JSON too.
    let noif = write_config(
        "json-noif.toml",
        r#"interfaces = ["xlbnosuchif2"]
[[service]]
name = "web"
listen = "198.18.100.1:80"
protocol = "tcp"
backends = [ { address = "198.18.1.11:80" } ]
"#,
    );
    let (code, stdout, _) = xlb(&["check", "--json", "-c", noif.to_str().unwrap()]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["host_checked"], true);
    let message = report["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("xlbnosuchif2 does not exist"), "{message}");
}

#[test]
fn version_names_the_commit() {
    let (code, stdout, _) = xlb(&["--version"]);
    assert_eq!(code, 0);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words[0], "xlb");
    assert_eq!(words[1], env!("CARGO_PKG_VERSION"));
    let commit = words[2].trim_matches(['(', ')']);
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{stdout}"
    );
}

#[test]
fn json_is_refused_where_nothing_is_answered() {
    for args in [
        &["run", "--json", "-c", "/nonexistent.toml"][..],
        &["completions", "bash", "--json"],
        &["man", "--json"],
    ] {
        let (code, stdout, stderr) = xlb(args);
        assert_eq!(code, 1, "{args:?}");
        assert!(stdout.is_empty());
        assert!(stderr.contains("--json does not apply"), "{stderr}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_definitions() {
    for (shell, marker) in [
        ("bash", "_xlb()"),
        ("zsh", "#compdef xlb"),
        ("fish", "complete -c xlb"),
    ] {
        let (code, stdout, _) = xlb(&["completions", shell]);
        assert_eq!(code, 0);
        assert!(stdout.contains(marker), "{shell}: {stdout}");
        assert!(
            stdout.contains("flows"),
            "{shell} completes the subcommands"
        );
    }
    let (code, stdout, _) = xlb(&["man"]);
    assert_eq!(code, 0);
    assert!(stdout.contains(".TH xlb 1"), "{stdout}");
    assert!(stdout.contains("backend"), "{stdout}");
    let dir = std::env::temp_dir().join(format!("xlb-man-{}", std::process::id()));
    let (code, _, stderr) = xlb(&["man", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for page in ["xlb.1", "xlb-run.1", "xlb-flows.1", "xlb-backend-weight.1"] {
        assert!(dir.join(page).is_file(), "{page}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn commands_of_a_daemon_that_is_not_running_say_so() {
    let socket = std::env::temp_dir().join(format!("xlb-nosock-{}", std::process::id()));
    let socket = socket.to_str().unwrap();
    for args in [
        &["status", "web"][..],
        &["flows", "--client", "198.18.0.0/16"],
        &["backend", "weight", "web", "198.18.1.1:80", "7"],
    ] {
        let mut all = vec!["--socket", socket];
        all.extend_from_slice(args);
        let (code, _, stderr) = xlb(&all);
        assert_eq!(code, 1, "{args:?}");
        assert!(stderr.contains(socket), "{stderr}");
    }
}
