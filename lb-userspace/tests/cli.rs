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
