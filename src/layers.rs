//! The layer rule, checked: every `crate::` path in `src/` names a module of a lower rank
//! than the module it is written in, by the table in the crate docs (`lib.rs`). The README's
//! code map must be the same table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// module → rank, from the crate docs' table rows (`//! | 3 | `upstream` | ... |`).
fn ranks(lib: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for row in table_rows(lib) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (Some(rank), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(rank) = rank.parse::<usize>() else {
            continue;
        };
        for m in modules.split_whitespace() {
            out.insert(m.trim_matches('`').to_string(), rank);
        }
    }
    out
}

/// The rows of the layer table, without the doc-comment prefix.
fn table_rows(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter(|l| {
            l.starts_with("| ")
                && l.split('|')
                    .nth(1)
                    .is_some_and(|c| c.trim().parse::<usize>().is_ok())
        })
        .map(str::to_string)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The modules a source text names through `crate::`, outside comments.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                // `use crate::{a, b}`: every name in the braces.
                if let Some(group) = after.strip_prefix('{') {
                    for part in group.split('}').next().unwrap_or("").split(',') {
                        let m: String = part
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if !m.is_empty() {
                            out.push((n + 1, m));
                        }
                    }
                }
            } else {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_uses_one_above_it() {
    let lib = std::fs::read_to_string(Path::new(ROOT).join("src/lib.rs")).expect("lib.rs");
    let ranks = ranks(&lib);
    assert!(
        ranks.len() >= 10,
        "the layer table in lib.rs was not found: {ranks:?}"
    );
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(Path::new(ROOT).join("src"))
            .expect("under src");
        let top = rel.components().next().expect("a path");
        let module = top
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main" | "layers") {
            continue;
        }
        let Some(&own) = ranks.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in the layer table of lib.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("source");
        for (line, dep) in uses(&text) {
            if dep == module {
                continue;
            }
            match ranks.get(&dep) {
                Some(&r) if r < own => {}
                Some(&r) => wrong.push(format!(
                    "{}:{line}: `{module}` (rank {own}) uses `{dep}` (rank {r})",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "{}:{line}: `crate::{dep}` is not in the layer table",
                    rel.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_is_in_the_table_and_the_readme_shows_the_same_map() {
    let lib = std::fs::read_to_string(Path::new(ROOT).join("src/lib.rs")).expect("lib.rs");
    let ranks = ranks(&lib);
    let declared: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    for m in &declared {
        assert!(
            ranks.contains_key(m),
            "`{m}` is declared in lib.rs but has no rank"
        );
    }
    for m in ranks.keys() {
        assert!(declared.contains(m), "`{m}` has a rank but is no module");
    }
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    for row in table_rows(&lib) {
        assert!(
            readme.lines().any(|l| l == row),
            "README's code map lacks this row of lib.rs's layer table:\n{row}"
        );
    }
}

#[test]
fn the_scanner_sees_what_it_must() {
    let text = "use crate::error::Error;\n// crate::http in a comment\nuse crate::{oci, storage::Store};\nlet x = crate::clock::now_millis();";
    let found: Vec<String> = uses(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["error", "oci", "storage", "clock"]);
    let table =
        "//! | 0 | `oci` `clock` | x |\n//! | 2 | `config` | y |\n//! | rank | modules | what |";
    let r = ranks(table);
    assert_eq!((r["oci"], r["clock"], r["config"]), (0, 0, 2));
}
