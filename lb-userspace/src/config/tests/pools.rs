//! Locality pools, fallbacks and client prefixes in the file.

use super::*;

#[test]
fn pools_with_fallbacks_and_client_prefixes() {
    let dir = std::env::temp_dir().join(format!("xlb-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("regions.txt"),
        "# more\n198.18.5.0/24 jp\n198.18.6.7 kr\n",
    )
    .unwrap();
    let text = POOLS.replace(
        "default_pool = \"jp\"",
        "default_pool = \"jp\"\nclient_prefix_file = \"regions.txt\"",
    );
    let config = Config::parse_in(&text, &dir).unwrap();
    let video = &config.services[0];
    let names: Vec<&str> = video.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["kr", "jp"]);
    assert_eq!(video.pools[0].fallback, [1]);
    assert_eq!(video.pools[1].fallback, [0]);
    assert_eq!(video.default_pool, 1);
    let pools: Vec<usize> = video.backends.iter().map(|b| b.pool).collect();
    assert_eq!(pools, [0, 0, 1]);
    let prefixes: Vec<(String, usize)> = video
        .client_prefixes
        .iter()
        .map(|(net, pool)| (net.to_string(), *pool))
        .collect();
    assert_eq!(
        prefixes,
        [
            ("198.18.0.0/25".to_owned(), 0),
            ("198.18.0.128/25".to_owned(), 1),
            ("198.18.5.0/24".to_owned(), 1),
            ("198.18.6.7/32".to_owned(), 0)
        ]
    );
    // A service without pools has one, "default", with every backend.
    let plain = Config::parse(VALID).unwrap();
    assert_eq!(plain.services[0].pools.len(), 1);
    assert_eq!(plain.services[0].pools[0].name, DEFAULT_POOL_NAME);

    std::fs::write(
        dir.join("regions.txt"),
        "198.18.5.0/24 jp\n198.18.5.0/33 jp\nfd00::/8 kr\n198.18.7.0/24 us\n",
    )
    .unwrap();
    let errors = errors_of_in(&text, &dir);
    let file = dir.join("regions.txt").display().to_string();
    assert!(
        errors[0].contains(&format!("{file}:2: \"198.18.5.0/33\" is not a prefix")),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 1, "a bad line stops the file: {errors:?}");
    std::fs::write(
        dir.join("regions.txt"),
        "fd00::/8 kr\n198.18.7.0/24 us\n198.18.0.0/25 kr\n",
    )
    .unwrap();
    let errors = errors_of_in(&text, &dir);
    assert!(
        errors[0].contains(&format!(
            "{file}:1: fd00::/8 is not of the service's address family"
        )),
        "{errors:?}"
    );
    assert!(
        errors[1].contains(&format!("{file}:2: 198.18.7.0/24: \"us\" is not a pool")),
        "{errors:?}"
    );
    assert!(
        errors[2].contains(&format!(
            "{file}:3: 198.18.0.0/25 is listed twice (first at line 10)"
        )),
        "{errors:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let errors = errors_of_in(&text, &dir);
    assert!(
        errors[0].contains("client_prefix_file") && errors[0].contains("No such file"),
        "{errors:?}"
    );
}

fn errors_of_in(text: &str, dir: &Path) -> Vec<String> {
    Config::parse_in(text, dir)
        .unwrap_err()
        .iter()
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
        .collect()
}

#[test]
fn a_long_bad_prefix_table_is_reported_briefly() {
    let entries: Vec<String> = (0..25)
        .map(|i| format!("\"198.18.{i}.1/24\" = \"kr\""))
        .collect();
    let text = POOLS.replace(
        "\"198.18.0.0/25\" = \"kr\", \"198.18.0.128/25\" = \"jp\"",
        &entries.join(", "),
    );
    let errors = errors_of(&text);
    let prefix_errors = errors
        .iter()
        .filter(|e| e.contains("client_prefixes"))
        .count();
    assert_eq!(prefix_errors, 11, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("15 more bad entries")),
        "{errors:?}"
    );
}

#[test]
fn bad_pools_are_reported() {
    let cases = [
        (
            POOLS.replace("fallback = [\"jp\"]", "fallback = [\"us\"]"),
            "fallback \"us\" is not a pool of the service",
        ),
        (
            POOLS.replace("fallback = [\"jp\"]", "fallback = [\"kr\"]"),
            "a pool cannot fall back to itself",
        ),
        (
            POOLS.replace("fallback = [\"jp\"]", "fallback = [\"jp\", \"jp\"]"),
            "fallback \"jp\" is listed twice",
        ),
        (
            POOLS.replace("name = \"jp\"", "name = \"kr\""),
            "pool \"kr\" is defined twice",
        ),
        (
            POOLS.replace("198.18.1.13:8080", "198.18.1.12:8080"),
            "backend 198.18.1.12:8080 is already in pool \"kr\"",
        ),
        (
            POOLS.replace("default_pool = \"jp\"", "default_pool = \"us\""),
            "default_pool \"us\" is not a pool",
        ),
        (
            POOLS.replace(
                "\"198.18.0.128/25\" = \"jp\"",
                "\"198.18.0.128/25\" = \"us\"",
            ),
            "\"us\" is not a pool of the service",
        ),
        (
            POOLS.replace("\"198.18.0.128/25\" = \"jp\"", "\"fd00::/64\" = \"jp\""),
            "fd00::/64 is not of the service's address family",
        ),
        (
            POOLS.replace(
                "\"198.18.0.128/25\" = \"jp\"",
                "\"198.18.0.129/25\" = \"jp\"",
            ),
            "did you mean \"198.18.0.128/25\"",
        ),
        (
            POOLS.replace(
                "protocol = \"tcp\"",
                "protocol = \"tcp\"\nbackends = [ { address = \"198.18.1.9:80\" } ]",
            ),
            "`backends` and `[[service.pool]]` exclude each other",
        ),
        (
            VALID.replace(
                "scheduler = \"round-robin\"",
                "client_prefixes = { \"198.18.0.0/24\" = \"default\" }",
            ),
            "client prefixes choose among `[[service.pool]]`s, and the service has none",
        ),
    ];
    for (text, expected) in cases {
        let errors = errors_of(&text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errors:?}"
        );
    }
}
