//! The README's table of flags and env vars says what `tasktracker --help`
//! says: each flag, its env var and its default.

use std::process::Command;

#[test]
fn the_readme_flag_table_matches_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_tasktracker"))
        .arg("--help")
        .output()
        .expect("run tasktracker");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let readme = include_str!("../README.md");
    let header = "| flag | env var | default | meaning |";
    let rows = lts_common::config::readme_flag_rows(readme, header, "TASKTRACKER_")
        .unwrap_or_else(|e| panic!("the README's flag table: {e}"));
    assert!(rows.len() >= 20, "{rows:?}");
    let mismatches =
        lts_common::config::readme_table_mismatches(readme, header, "TASKTRACKER_", &help, true)
            .unwrap_or_else(|e| panic!("the README's flag table: {e}"));
    assert!(
        mismatches.is_empty(),
        "the README's flag table and `tasktracker --help` differ:\n{}",
        mismatches.join("\n")
    );
}
