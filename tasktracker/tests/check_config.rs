//! `tasktracker --check-config`: every effective setting with its source,
//! and several JobTrackers taken from one flag or env var.

use std::process::Command;

fn line_of<'a>(out: &'a str, flag: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
        .unwrap_or_else(|| panic!("{flag} not printed:\n{out}"))
}

fn tasktracker(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasktracker"));
    command
        .args(["--check-config", "--node-group", "g"])
        .args(args);
    for name in [
        "TASKTRACKER_JOBTRACKER",
        "TASKTRACKER_CONFIG",
        "TASKTRACKER_SHUTDOWN_GRACE",
        "TASKTRACKER_METRICS_ADDR",
        "TASKTRACKER_LOG_FORMAT",
    ] {
        command.env_remove(name);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run tasktracker");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_config_prints_metrics_grace_and_log_format_with_their_source() {
    let text = tasktracker(
        &["--metrics-addr", "127.0.0.1:9464"],
        &[("TASKTRACKER_SHUTDOWN_GRACE", "30s")],
    );
    let metrics = line_of(&text, "--metrics-addr");
    assert!(
        metrics.contains("127.0.0.1:9464") && metrics.ends_with("(command line)"),
        "{metrics}"
    );
    let grace = line_of(&text, "--shutdown-grace");
    assert!(
        grace.contains("30s") && grace.ends_with("(env TASKTRACKER_SHUTDOWN_GRACE)"),
        "{grace}"
    );
    let format = line_of(&text, "--log-format");
    assert!(
        format.contains("human") && format.ends_with("(default)"),
        "{format}"
    );
}

#[test]
fn several_jobtrackers_from_repeated_flags_commas_or_the_env_var() {
    for (args, env) in [
        (
            vec![
                "--jobtracker",
                "10.0.0.1:7070",
                "--jobtracker",
                "10.0.0.2:7070",
            ],
            vec![],
        ),
        (vec!["--jobtracker", "10.0.0.1:7070,10.0.0.2:7070"], vec![]),
        (
            vec![],
            vec![("TASKTRACKER_JOBTRACKER", "10.0.0.1:7070,10.0.0.2:7070")],
        ),
    ] {
        let text = tasktracker(&args, &env);
        let used = text
            .lines()
            .find(|l| l.trim_start().starts_with("jobtracker:"))
            .unwrap_or_else(|| panic!("no jobtracker line:\n{text}"));
        assert!(
            used.contains("http://10.0.0.1:7070, http://10.0.0.2:7070"),
            "{args:?} {env:?}: {used}"
        );
    }
}
