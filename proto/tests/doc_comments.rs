//! Every service and RPC of the `.proto` files carries a doc comment, so
//! the generated stubs and the reflection descriptors document them.

use std::path::{Path, PathBuf};

/// The services and RPCs of `text` whose line is not preceded by a `//`
/// comment line: `(line number, line)`.
fn undocumented(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut previous = "";
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let declares = (t.starts_with("service ") && t.contains('{'))
            || (t.starts_with("rpc ") && t.contains('('));
        if declares && !previous.trim_start().starts_with("//") {
            out.push((i + 1, line.trim().to_string()));
        }
        previous = line;
    }
    out
}

fn proto_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lts/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_service_and_rpc_has_a_doc_comment() {
    let files = proto_files();
    assert!(files.len() >= 4, "{files:?}");
    let mut services = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        services += text
            .lines()
            .filter(|l| l.trim_start().starts_with("service "))
            .count();
        for (n, line) in undocumented(&text) {
            missing.push(format!("{}:{n}: {line}", file.display()));
        }
    }
    assert!(services >= 4, "the services were found");
    assert!(
        missing.is_empty(),
        "no doc comment (a `//` line right above) on:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_check_finds_a_service_or_rpc_without_a_comment() {
    let text = "\
// Documented.
service A {
  rpc B(X) returns (Y);
  // Documented.
  rpc C(X) returns (Y);
}

service D {
}
";
    assert_eq!(
        undocumented(text),
        vec![
            (3, "rpc B(X) returns (Y);".to_string()),
            (8, "service D {".to_string())
        ]
    );
}
