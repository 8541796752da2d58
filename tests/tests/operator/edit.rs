//! `xlb backend add` and `remove`: the configuration file changed and reloaded, so that the
//! file stays the truth; a change that cannot be applied leaves the file as it was.

use super::*;

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn backends_are_added_and_removed_through_the_file() {
    let Setup {
        lab,
        xlb,
        _backends,
    } = setup("drain_timeout = \"0s\"");
    let b3 = web_backend(2);
    let file = || std::fs::read_to_string(&xlb.config_path).unwrap();
    let original = file();
    assert!(original.contains(&b3), "{original}");

    // Removed: out of the file, and of the table (it drains; with drain_timeout 0s, at once).
    let done = ok(&xlb, &["backend", "remove", "web", &b3]);
    assert!(done.contains("changed; reloaded"), "{done}");
    assert!(!file().contains(&format!("\"{b3}\"")), "{}", file());
    let balanced = connections(&lab, 6);
    assert_eq!(balanced.get("b3"), None, "{balanced:?}");
    assert_eq!(balanced.values().sum::<usize>(), 6);

    // Added back with a weight: in the file as written, and in the table.
    ok(&xlb, &["backend", "add", "web", &b3, "--weight", "2"]);
    let text = file();
    assert!(
        text.contains(&format!("{{ address = \"{b3}\", weight = 2 }}")),
        "{text}"
    );
    let start = Instant::now();
    while connections(&lab, 8).get("b3").copied().unwrap_or(0) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "b3 takes no flow"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // What cannot be done says why and leaves the file as it was.
    let before = file();
    for (args, why) in [
        (
            vec!["backend", "add", "web", b3.as_str()],
            "service \"web\" already has backend",
        ),
        (
            vec!["backend", "add", "nope", "198.18.1.99:8080"],
            "no service named \"nope\"",
        ),
        (
            vec!["backend", "remove", "web", "198.18.1.99:8080"],
            "service \"web\" has no backend 198.18.1.99:8080",
        ),
        // A backend on the VIP: the file would be invalid.
        (
            vec!["backend", "add", "web", "198.18.100.1:8080"],
            "the change would leave the file invalid",
        ),
    ] {
        let error = fails(&xlb, &args);
        assert!(
            error.contains(why) && error.contains("nothing was changed"),
            "{error}"
        );
        assert_eq!(file(), before);
    }
    drop(lab);
}
