//! The `jobclient` binary's local commands (`cron next`, `cron explain`,
//! `plan check`): run as a user would, checking stdout, stderr and the exit
//! code. None needs a JobTracker.

use std::process::{Command, Output};

/// An address nothing listens on: the local commands must not care.
const NO_TRACKER: &str = "127.0.0.1:1";

fn jobclient(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jobclient"))
        .args(["--jobtracker", NO_TRACKER])
        .args(args)
        .env_remove("JOBCLIENT_CONFIG")
        .env_remove("JOBCLIENT_JOBTRACKER")
        .output()
        .expect("run jobclient")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn usage_error(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}, stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cron_next_quartz_six_fields() {
    // 2026-01-02 is a Friday.
    let out = jobclient(&[
        "cron",
        "next",
        "0 0 12 ? * MON-FRI",
        "--after",
        "2026-01-02T00:00:00Z",
        "--count",
        "3",
    ]);
    assert_eq!(
        stdout_lines(&out),
        [
            "2026-01-02T12:00:00+00:00",
            "2026-01-05T12:00:00+00:00",
            "2026-01-06T12:00:00+00:00",
        ]
    );
}

#[test]
fn cron_next_crontab_five_fields_in_a_zone() {
    // Mondays at 09:30 New York time, five by default.
    let out = jobclient(&[
        "cron",
        "next",
        "30 9 * * 1",
        "--tz",
        "America/New_York",
        "--after",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(
        stdout_lines(&out),
        [
            "2026-01-05T09:30:00-05:00",
            "2026-01-12T09:30:00-05:00",
            "2026-01-19T09:30:00-05:00",
            "2026-01-26T09:30:00-05:00",
            "2026-02-02T09:30:00-05:00",
        ]
    );
}

#[test]
fn cron_next_shows_the_offset_change_at_dst() {
    // Spring forward in Paris: 02:30 does not exist on 29 March 2026 and
    // fires once at 03:00 CEST; the offset goes from +01:00 to +02:00.
    let out = jobclient(&[
        "cron",
        "next",
        "0 30 2 * * ?",
        "--tz",
        "Europe/Paris",
        "--after",
        "2026-03-27T12:00:00Z",
        "--count",
        "3",
    ]);
    assert_eq!(
        stdout_lines(&out),
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00",
        ]
    );
    // Fall back in New York (1 November 2026): hourly fires at 01:00 EDT,
    // stays silent through the repeated hour, then goes on in EST.
    let out = jobclient(&[
        "cron",
        "next",
        "0 * * * *",
        "--time-zone",
        "America/New_York",
        "--after",
        "2026-11-01T04:30:00Z",
        "--count",
        "3",
    ]);
    assert_eq!(
        stdout_lines(&out),
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T02:00:00-05:00",
            "2026-11-01T03:00:00-05:00",
        ]
    );
}

#[test]
fn cron_next_json_for_scripts() {
    let out = jobclient(&[
        "--json",
        "cron",
        "next",
        "@daily",
        "--tz",
        "Asia/Tokyo",
        "--after",
        "2026-01-01T00:00:00Z",
        "--count",
        "1",
    ]);
    let text = stdout_lines(&out).join("\n");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["time_zone"], "Asia/Tokyo");
    assert_eq!(v["dialect"], "crontab");
    assert_eq!(v["next"][0]["at"], "2026-01-02T00:00:00+09:00");
    assert_eq!(v["next"][0]["unix_ms"], 1_767_279_600_000i64);
}

#[test]
fn invalid_expressions_and_zones_exit_2_naming_the_field() {
    let e = usage_error(&jobclient(&["cron", "next", "0 0 25 * * ?"]));
    assert!(
        e.contains("field 3 (hour)") && e.contains("25") && e.contains("0-23"),
        "{e}"
    );
    let e = usage_error(&jobclient(&["cron", "next", "*/5 * * * MOON"]));
    assert!(e.contains("field 5 (day-of-week)"), "{e}");
    let e = usage_error(&jobclient(&["cron", "next", "* * *"]));
    assert!(e.contains("found 3"), "{e}");
    let e = usage_error(&jobclient(&["cron", "next", "@daily", "--tz", "Mars/Base"]));
    assert!(e.contains("--tz") && e.contains("Mars/Base"), "{e}");
    let e = usage_error(&jobclient(&["cron", "explain", "0 0 0 ? * 8"]));
    assert!(e.contains("field 6 (day-of-week)"), "{e}");
    let e = usage_error(&jobclient(&["cron", "next", "@daily", "--after", "soon"]));
    assert!(e.contains("--after"), "{e}");
}

#[test]
fn cron_explain_says_when() {
    let lines = stdout_lines(&jobclient(&[
        "cron",
        "explain",
        "0 30 9 ? * MON-FRI",
        "--tz",
        "Europe/Berlin",
    ]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("Europe/Berlin"), "{lines:?}");
}

#[test]
fn schedules_that_end_print_what_there_is() {
    let out = jobclient(&[
        "cron",
        "next",
        "0 0 0 1 1 ? 2030",
        "--after",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(stdout_lines(&out), ["2030-01-01T00:00:00+00:00"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no more before the year 2400"), "{stderr}");
}

#[test]
fn schedules_with_no_time_to_come_say_so_and_exit_1() {
    for format in [&[][..], &["--json"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_jobclient"))
            .args(["--jobtracker", NO_TRACKER])
            .args(format)
            .args([
                "cron",
                "next",
                "0 0 0 1 1 ? 2020-2022",
                "--after",
                "2026-01-01T00:00:00Z",
            ])
            .env_remove("JOBCLIENT_CONFIG")
            .env_remove("JOBCLIENT_JOBTRACKER")
            .output()
            .expect("run jobclient");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("never fires after 2026-01-01"), "{stderr}");
    }
}

#[test]
fn plan_check_shows_each_error_and_bad_plans_exit_2() {
    let lines = stdout_lines(&jobclient(&[
        "plan",
        "check",
        "[retry_after 1s, backoff 1s x2 max 1m] x2",
    ]));
    assert_eq!(
        lines,
        [
            "plan [retry_after 1000ms, backoff 1000ms x2 max 60000ms] x2",
            "error 1: retry after 1s",
            "error 2: retry after 2s",
            "error 3: retry after 1s",
            "error 4: retry after 8s",
            "error 5: give up: the job fails",
        ]
    );
    let e = usage_error(&jobclient(&["plan", "check", "[retry, retyr]"]));
    assert!(e.contains("position 9") && e.contains("`retyr`"), "{e}");
}

#[test]
fn https_addresses_are_refused_until_tls_is_configured() {
    // Nothing listens there: a client that tried would fail with exit 3
    // after a connect attempt, not with a usage error naming TLS.
    for args in [
        vec!["--jobtracker", "https://127.0.0.1:1", "get", "j-1"],
        vec!["--jobtracker", "127.0.0.1:1,https://127.0.0.1:2", "list"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_jobclient"))
            .args(&args)
            .env_remove("JOBCLIENT_CONFIG")
            .env_remove("JOBCLIENT_JOBTRACKER")
            .output()
            .expect("run jobclient");
        let e = usage_error(&out);
        assert!(e.contains("no CA certificate"), "{args:?}: {e}");
        assert!(e.contains("https://127.0.0.1:"), "{args:?}: {e}");
    }
}

/// Checks a table of the README against a `--help`.
fn check_readme_table(header: &str, help_args: &[&str], complete: bool) {
    let out = jobclient(help_args);
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let readme = include_str!("../README.md");
    let rows = lts_common::config::readme_flag_rows(readme, header, "JOBCLIENT_")
        .unwrap_or_else(|e| panic!("the README's table `{header}`: {e}"));
    assert!(rows.len() >= 2, "{rows:?}");
    let mismatches =
        lts_common::config::readme_table_mismatches(readme, header, "JOBCLIENT_", &help, complete)
            .unwrap_or_else(|e| panic!("the README's table `{header}`: {e}"));
    assert!(
        mismatches.is_empty(),
        "the README's table `{header}` and `jobclient {}` differ:\n{}",
        help_args.join(" "),
        mismatches.join("\n")
    );
}

#[test]
fn the_readme_flag_table_matches_help() {
    check_readme_table("| global flag | env | default |", &["--help"], true);
    for command in [
        &["submit", "--help"][..],
        &["spool", "status", "--help"],
        &["spool", "replay", "--help"],
        &["spool", "purge", "--help"],
    ] {
        check_readme_table("| spool flag | env | default |", command, false);
    }
}

#[test]
fn jobclient_json_in_the_environment_gives_json() {
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_jobclient"))
            .args([
                "--jobtracker",
                NO_TRACKER,
                "cron",
                "next",
                "@daily",
                "--count",
                "1",
            ])
            .env("JOBCLIENT_JSON", value)
            .env_remove("JOBCLIENT_CONFIG")
            .output()
            .expect("run jobclient")
    };
    let out = run("1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["next"].as_array().map(Vec::len), Some(1), "{v}");
    let out = run("false");
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_err());
    assert_eq!(stdout_lines(&out).len(), 1);
    let e = usage_error(&run("perhaps"));
    assert!(e.contains("env var JOBCLIENT_JSON (--json)"), "{e}");
}

#[test]
fn a_bad_value_names_the_env_var_or_file_key_it_came_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_jobclient"))
        .args(["--jobtracker", NO_TRACKER, "list"])
        .env("JOBCLIENT_CONNECT_TIMEOUT", "soon")
        .env_remove("JOBCLIENT_CONFIG")
        .output()
        .expect("run jobclient");
    let e = usage_error(&out);
    assert!(
        e.contains("env var JOBCLIENT_CONNECT_TIMEOUT (--connect-timeout): invalid value `soon`"),
        "{e}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jobclient.toml");
    std::fs::write(&file, "connect_timeout = \"soon\"\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_jobclient"))
        .args(["--jobtracker", NO_TRACKER, "--config"])
        .arg(&file)
        .arg("list")
        .env_remove("JOBCLIENT_CONNECT_TIMEOUT")
        .env_remove("JOBCLIENT_CONFIG")
        .output()
        .expect("run jobclient");
    let e = usage_error(&out);
    assert!(
        e.contains(&format!(
            "config file {}, key `connect_timeout` (--connect-timeout)",
            file.display()
        )),
        "{e}"
    );

    // A bad flag on the command line is still reported under the flag.
    let e = usage_error(&jobclient(&["--connect-timeout", "soon", "list"]));
    assert!(
        e.contains("--connect-timeout") && !e.contains("env var"),
        "{e}"
    );
}

#[test]
fn a_full_spool_refuses_a_submit_naming_its_directory_and_limit_and_keeps_the_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let spool_arg = spool.display().to_string();
    let submit = |task_id: &str| {
        jobclient(&[
            "submit",
            "--spool",
            &spool_arg,
            "--spool-max-entries",
            "2",
            "-g",
            "workers",
            "--task-id",
            task_id,
            "--payload",
            "x",
        ])
    };
    for task_id in ["t-1", "t-2"] {
        let lines = stdout_lines(&submit(task_id));
        assert_eq!(lines, vec![format!("spooled task {task_id}")]);
    }
    let out = submit("t-3");
    assert!(!out.status.success(), "the third submit is refused");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("spooled"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&spool_arg), "{e}");
    assert!(e.contains("full (limit 2 entries"), "{e}");
    assert!(e.contains("--spool-max-entries"), "{e}");

    let out = jobclient(&["spool", "status", "--spool", &spool_arg, "--json"]);
    let status: serde_json::Value =
        serde_json::from_str(&stdout_lines(&out).join("\n")).expect("json status");
    assert_eq!(status["entries"], 2, "{status}");
}
