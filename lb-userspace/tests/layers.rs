//! The daemon's layers, as ARCHITECTURE.md draws them, hold in the code: no module imports
//! (`crate::...`) a module of a layer above its own. The layer table in ARCHITECTURE.md is
//! this test's data, so the drawing and the code cannot drift apart.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The rows of the layer table: `| N | module, module | what |` between the markers.
fn layers(architecture: &str) -> BTreeMap<String, u32> {
    let table = architecture
        .split("<!-- layers -->")
        .nth(1)
        .expect("ARCHITECTURE.md has a layer table between <!-- layers --> markers");
    let mut layers = BTreeMap::new();
    for row in table.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<u32>() else {
            continue; // the header and the rule
        };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`').trim_end_matches('/');
            let module = module.trim_end_matches(".rs");
            assert!(
                layers.insert(module.to_owned(), layer).is_none(),
                "{module} is in two layers"
            );
        }
    }
    layers
}

/// The top-level modules a source file names through `crate::` (in `use` declarations and
/// paths alike), outside comments.
fn imports(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the heads at depth 0.
            let (mut depth, mut head, mut in_head) = (0, String::new(), true);
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(std::mem::take(&mut head));
                        in_head = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && in_head {
                    if c.is_alphanumeric() || c == '_' {
                        head.push(c);
                    } else if !head.is_empty() {
                        in_head = false;
                    }
                }
            }
            found.insert(head);
        } else {
            let head: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(head);
        }
    }
    found.retain(|name| name.chars().next().is_some_and(char::is_lowercase));
    found
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_one_of_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("../ARCHITECTURE.md")).unwrap();
    let layers = layers(&architecture);
    let src = root.join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&own) = layers.get(&top) else {
            unknown.insert(top);
            continue;
        };
        for import in imports(&std::fs::read_to_string(file).unwrap()) {
            match layers.get(&import) {
                Some(&layer) if layer > own => violations.push(format!(
                    "{} (layer {own}) imports {import} (layer {layer})",
                    relative.display()
                )),
                Some(_) => {}
                None => {
                    unknown.insert(import);
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from ARCHITECTURE.md's layer table: {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layers:\n{}",
        violations.join("\n")
    );
}

#[test]
fn imports_are_read_from_uses_and_paths() {
    let source = "use crate::{a::b, c, d::{e, f}};\n// crate::commented\nlet x = crate::g::h();\n\
                  use crate::{\n    i::{j::K, l},\n    m,\n};";
    let found: Vec<String> = imports(source).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "g", "i", "m"]);
}
