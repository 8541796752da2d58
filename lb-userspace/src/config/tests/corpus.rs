//! The corpus of planted mistakes (`corpus/NAME.toml`): each file's errors, all of them, in
//! one run, exactly as `xlb check` prints them after the file's name (`corpus/NAME.errors`).

use std::path::Path;

use crate::config::Config;

/// The errors of `text` as `xlb check` prints them, without the file's name.
fn printed(text: &str, base: &Path) -> Vec<String> {
    let Err(errors) = Config::parse_in(text, base) else {
        return vec!["(accepted)".into()];
    };
    errors
        .iter()
        .map(|e| match e.line {
            0 => e.message.clone(),
            line => format!("{line}:{}: {}", e.column, e.message),
        })
        .collect()
}

#[test]
fn every_planted_mistake_is_reported_as_written_down() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/tests/corpus");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("errors")).unwrap();
        let expected: Vec<&str> = expected.lines().collect();
        assert_eq!(printed(&text, &dir), expected, "{}", path.display());
        files += 1;
    }
    assert!(files >= 4, "the corpus is in {}", dir.display());
}
